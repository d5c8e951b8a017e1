"""How the TUI writes values in cells and status lines: scores, sizes, previews, decisions."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from libra_edge import units
from libra_edge.prompt import UNSAFE

REVIEW_WORDS = {"confirm": "confirmed", "safe": "→ 安全", "unsafe": "→ 不安全"}


def score_text(score: float | None) -> str:
    """P(unsafe) with three decimals, `—` when there is none (a failed item)."""
    return "—" if score is None else f"{score:.3f}"


def human_size(n: int | None) -> str:
    """Bytes as B / KB / MB / GB (decimal units, as disks are sold); `—` when unknown."""
    return units.human_size(n, missing="—")


def preview(text: str | None, width: int = 48) -> str:
    """One line of at most `width` characters (wide CJK characters count double)."""
    if not text:
        return ""
    line = " ".join(text.split())
    out, used = [], 0
    for ch in line:
        w = 2 if ord(ch) >= 0x1100 and not 0xFF61 <= ord(ch) <= 0xFFDC else 1
        if used + w > width - 1:
            out.append("…")
            break
        out.append(ch)
        used += w
    return "".join(out)


def verdict_cell(label: str | None, error: str | None = None) -> Text:
    """The verdict column: 不安全 in red, 安全 in green, errors in yellow."""
    if error is not None:
        return Text("error", style="bold yellow")
    if label is None:
        return Text("—")
    return Text(label, style="bold red" if label == UNSAFE else "green")


def review_cell(decision: str | None) -> Text:
    """The review column: what the reviewer decided, empty when not reviewed."""
    if decision is None:
        return Text("")
    style = {"confirm": "cyan", "safe": "green", "unsafe": "red"}.get(decision, "")
    return Text(REVIEW_WORDS.get(decision, decision), style=style)


def inputs_label(inputs: list[str]) -> str:
    """A run's inputs by file name: `a.jsonl`, `a.jsonl +2`."""
    if not inputs:
        return "—"
    first = Path(inputs[0]).name
    return first if len(inputs) == 1 else f"{first} +{len(inputs) - 1}"
