"""How the TUI writes values in cells and status lines: scores, sizes, previews, decisions, filters."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from typing import Any

from libra_edge import units
from libra_edge.engine.prompt import SAFE, UNSAFE
from libra_edge.store import ResultFilter

REVIEW_WORDS = {"confirm": "confirmed", "safe": "→ 安全", "unsafe": "→ 不安全"}
REVIEW_FILTER_WORDS = {
    "unreviewed": "undecided", "reviewed": "decided", "confirm": "confirmed",
    "safe": "overridden → 安全", "unsafe": "overridden → 不安全",
}
GOLD_LABELS = (SAFE, UNSAFE)


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
    # Only the head can show: never split a 100 KB response to draw 48 cells of it.
    line = " ".join(text[: width * 4].split())
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
    """The decision column: what the reviewer decided, empty when not reviewed."""
    if decision is None:
        return Text("")
    style = {"confirm": "cyan", "safe": "green", "unsafe": "red"}.get(decision, "")
    return Text(REVIEW_WORDS.get(decision, decision), style=style)


def gold_label(fields: dict[str, Any]) -> str | None:
    """The input's own (gold) label, when the record carries one in Libra-Test's form."""
    value = fields.get("label")
    return value if isinstance(value, str) and value in GOLD_LABELS else None


def gold_analysis(fields: dict[str, Any]) -> str | None:
    """The input's own (gold) analysis (Libra-Test's `analyze` field), if any."""
    value = fields.get("analyze")
    return value if isinstance(value, str) and value.strip() else None


def gold_cell(gold: str | None, model_label: str | None) -> Text:
    """The gold column: the input's label, reversed out when the model disagrees with it."""
    if gold is None:
        return Text("")
    if model_label is not None and model_label != gold:
        return Text(f"{gold}≠", style="bold reverse yellow")
    return Text(gold, style="red" if gold == UNSAFE else "green")


def filter_words(flt: ResultFilter) -> list[str]:
    """Every active part of a filter, in words (the status line lists them all)."""
    words: list[str] = []
    if flt.verdict != "all":
        words.append({"flagged": "flagged", "safe": "safe", "error": "errors"}.get(flt.verdict, flt.verdict))
    if flt.review is not None:
        words.append(REVIEW_FILTER_WORDS.get(flt.review, flt.review))
    if flt.min_score is not None:
        words.append(f"score ≥ {flt.min_score:g}")
    if flt.max_score is not None:
        words.append(f"score ≤ {flt.max_score:g}")
    if flt.source is not None:
        words.append(f"source {flt.source}")
    if flt.category is not None:
        words.append(f"category {flt.category}")
    if flt.search:
        words.append(f"search “{flt.search}”")
    return words


def inputs_label(inputs: list[str]) -> str:
    """A run's inputs by file name: `a.jsonl`, `a.jsonl +2`."""
    if not inputs:
        return "—"
    first = Path(inputs[0]).name
    return first if len(inputs) == 1 else f"{first} +{len(inputs) - 1}"
