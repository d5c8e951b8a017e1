"""The reviewer's panel on an item: the decision taken so far and the note field."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Static

from libra_edge.store import ResultRow
from libra_edge.tui.formatting import REVIEW_WORDS


class ReviewPanel(Horizontal):
    """`review: confirmed` plus a note input; Enter in the note posts `NoteSubmitted`."""

    DEFAULT_CSS = """
    ReviewPanel { height: 3; border-top: solid $primary 50%; padding: 0 1; }
    ReviewPanel > #review-state { width: 56; height: 1; content-align: left middle; }
    ReviewPanel > Input { width: 1fr; }
    """

    @dataclass
    class NoteSubmitted(Message):
        """The reviewer pressed Enter in the note field."""

        note: str

    def compose(self) -> ComposeResult:
        yield Static("", id="review-state")
        yield Input(placeholder="note (e to edit, Enter saves)", compact=True, id="note")

    def show(self, row: ResultRow) -> None:
        """Show this item's decision and note."""
        state = self.query_one("#review-state", Static)
        if row.review is None:
            state.update(Text.assemble(("review: ", "dim"), ("not reviewed", "italic")))
        else:
            who = f" by {row.reviewer}" if row.reviewer else ""
            when = f" {row.reviewed_at[:16].replace('T', ' ')}" if row.reviewed_at else ""
            state.update(Text.assemble(("review: ", "dim"), (REVIEW_WORDS[row.review], "bold"), (who + when, "dim")))
        self.query_one(Input).value = row.review_note or ""

    def edit_note(self) -> None:
        """Focus the note field."""
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.NoteSubmitted(event.value.strip()))
