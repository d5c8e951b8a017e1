"""One page of a run's results as a table; the page, not the run, is what gets built."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from libra_edge.store import ResultRow
from libra_edge.tui.formatting import preview, review_cell, score_text, verdict_cell

COLUMNS = ("#", "id", "verdict", "score", "review", "source", "category", "question")


class ResultsTable(DataTable[object]):
    """Rows of the current page; `page_offset` is the first row's position in the filtered list."""

    DEFAULT_CSS = """
    ResultsTable { height: 1fr; }
    """
    BINDINGS = [Binding("enter", "select_cursor", "Open item")]

    @dataclass
    class EdgeReached(Message):
        """The cursor tried to leave the page: `direction` +1 (past the end) or -1 (before the start)."""

        direction: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.rows_shown: list[ResultRow] = []
        self.page_offset = 0

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name)

    def show_page(self, rows: list[ResultRow], offset: int, *, cursor: int = 0) -> None:
        """Replace the rows with this page and put the cursor on row `cursor` of it."""
        self.clear()
        self.rows_shown = list(rows)
        self.page_offset = offset
        self.add_rows(self._cells(r) for r in rows)
        if rows:
            self.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)

    # Moving past either end of the page asks for the neighbouring page, so scrolling
    # through a 10,000-item run feels continuous while only one page is ever built.
    def action_cursor_down(self) -> None:
        if self.row_count and self.cursor_row >= self.row_count - 1:
            self.post_message(self.EdgeReached(1))
            return
        super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.cursor_row <= 0:
            self.post_message(self.EdgeReached(-1))
            return
        super().action_cursor_up()

    def action_page_down(self) -> None:
        if self.row_count and self.cursor_row >= self.row_count - 1:
            self.post_message(self.EdgeReached(1))
            return
        super().action_page_down()

    def action_page_up(self) -> None:
        if self.cursor_row <= 0:
            self.post_message(self.EdgeReached(-1))
            return
        super().action_page_up()

    @property
    def selected(self) -> tuple[ResultRow, int] | None:
        """The result under the cursor and its position in the filtered list."""
        if not self.rows_shown or not 0 <= self.cursor_row < len(self.rows_shown):
            return None
        return self.rows_shown[self.cursor_row], self.page_offset + self.cursor_row

    @staticmethod
    def _cells(row: ResultRow) -> tuple[object, ...]:
        category = row.category or ""
        if row.sub_category:
            category = f"{category}/{row.sub_category}" if category else row.sub_category
        # Text, not str: a DataTable parses str cells as markup, and user text may hold `[...]`.
        return (
            Text(str(row.seq + 1)),
            Text(preview(row.item_id or "", 14)),
            verdict_cell(row.label, row.error),
            Text(score_text(row.score)),
            review_cell(row.review),
            Text(preview(row.source or "", 16)),
            Text(preview(category, 22)),
            Text(preview(row.question, 44)),
        )
