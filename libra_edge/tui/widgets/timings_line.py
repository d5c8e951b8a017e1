"""One line saying where a check spent its time and tokens."""

from __future__ import annotations

from textual.widgets import Static

from libra_edge.engine import Timings


class TimingsLine(Static):
    """`362 prompt tokens (336 reused) · 32 generated · prefill 0.26 s · ... · total 0.27 s`."""

    DEFAULT_CSS = """
    TimingsLine { height: 1; color: $text-muted; padding: 0 1; width: 1fr; }
    """

    def show(self, t: Timings | None, *, truncated: bool = False) -> None:
        """Show these timings (None clears the line)."""
        if t is None:
            self.update("")
            return
        parts = [
            f"{t.prompt_tokens} prompt tokens ({t.reused_tokens} reused)",
            f"{t.generated_tokens} generated",
            f"prefill {t.prefill_s:.2f} s",
            f"decode {t.decode_s:.2f} s",
            f"total {t.total_s:.2f} s",
        ]
        if truncated:
            parts.append("inputs truncated to fit the context")
        self.update(" · ".join(parts))
