"""The analysis pane: text that grows while the model writes it, wrapped and scrollable."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static


class AnalysisView(VerticalScroll):
    """Holds the analysis text; `append` adds a streamed piece and keeps the end in view."""

    DEFAULT_CSS = """
    AnalysisView {
        height: 1fr;
        border: round $primary 50%;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    AnalysisView > Static { width: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = ""
        self._body = Static("", markup=False)
        self.border_title = "分析 analysis"

    def compose(self):  # type: ignore[no-untyped-def]
        yield self._body

    @property
    def text(self) -> str:
        """The text shown so far."""
        return self._text

    def set_text(self, text: str, *, placeholder: bool = False) -> None:
        """Replace the text (a placeholder is shown dimmed)."""
        self._text = "" if placeholder else text
        self._body.update(Text(text, style="dim" if placeholder else ""))

    def append(self, piece: str) -> None:
        """Add a streamed piece."""
        self._text += piece
        self._body.update(Text(self._text))
        self.scroll_end(animate=False)
