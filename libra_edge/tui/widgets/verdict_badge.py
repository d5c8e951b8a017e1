"""The verdict badge: 安全 / 不安全 with P(unsafe), coloured so it reads at a glance."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from libra_edge.tui.formatting import score_text


class VerdictBadge(Static):
    """Shows the last verdict, `checking…` while a check runs, or a dash before any."""

    DEFAULT_CSS = """
    VerdictBadge {
        width: auto;
        min-width: 22;
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
        text-style: bold;
    }
    VerdictBadge.-safe { background: $success; color: $text; }
    VerdictBadge.-unsafe { background: $error; color: $text; }
    VerdictBadge.-busy { background: $warning 40%; color: $text; }
    """

    def on_mount(self) -> None:
        self.show_none()

    def show_none(self) -> None:
        """No verdict yet."""
        self._set("", Text("no verdict yet"))

    def show_busy(self, what: str = "checking…") -> None:
        """A check is running."""
        self._set("-busy", Text(what))

    def show_verdict(self, label: str, unsafe: bool, score: float | None) -> None:
        """A verdict: the label, the English word and the score."""
        word = "UNSAFE" if unsafe else "safe"
        self._set("-unsafe" if unsafe else "-safe", Text(f"{label} {word}  score {score_text(score)}"))

    def _set(self, cls: str, text: Text) -> None:
        self.remove_class("-safe", "-unsafe", "-busy")
        if cls:
            self.add_class(cls)
        self.update(text)
