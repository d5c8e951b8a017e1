"""One page of a run's results as a table; the page, not the run, is what gets built.

The question and the response (each folded to one line) share whatever width the
terminal leaves after the other columns, so a wide terminal shows more of both. The
other columns are as wide as the page's widest cell (at most their cap in FIXED): short
ids, sources and categories leave their width to the texts. The gold column appears
when the run's inputs carry Libra-Test's `label` field.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.events import Resize
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable

from libra_edge.store import ResultRow
from libra_edge.tui.formatting import gold_cell, gold_label, preview, review_cell, score_text, verdict_cell

# (key, header, widest) of the columns before the question and the response.
FIXED = (
    ("#", "#", 6), ("id", "id", 14), ("verdict", "verdict", 7), ("score", "score", 5),
    ("gold", "gold", 7), ("decision", "decision", 9), ("source", "source", 14), ("category", "category", 16),
)
MIN_TEXT = 20  # the narrowest the question and the response columns get
COLUMNS = tuple(key for key, _, _ in FIXED) + ("question", "response")


def _category(row: ResultRow) -> str:
    """The category column's text: `category/sub-category`, either alone, or empty."""
    if row.sub_category:
        return f"{row.category}/{row.sub_category}" if row.category else row.sub_category
    return row.category or ""


class Cell:
    """A cell's text, drawn as is and never measured.

    DataTable measures every new cell's width, even in columns of a fixed width (all of
    this table's are), and each measure asks the OS for the terminal's size: a page's
    2,000 cells took about a sixth of a page turn. A renderable without `__rich_measure__`
    is not measured.
    """

    __slots__ = ("text",)

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.text

    def __str__(self) -> str:
        return self.text.plain


class ResultsTable(DataTable[object]):
    """Rows of the current page; `page_offset` is the first row's position in the filtered list."""

    DEFAULT_CSS = """
    ResultsTable { height: 1fr; width: 1fr; }
    """
    BINDINGS = [Binding("enter", "select_cursor", "Open item", show=False)]

    @dataclass
    class EdgeReached(Message):
        """The cursor tried to leave the page: `direction` +1 (past the end) or -1 (before the start)."""

        direction: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.rows_shown: list[ResultRow] = []
        self.page_offset = 0
        self.show_gold = False
        self.marked: tuple[int, int] | None = None
        """A range of list positions (inclusive) marked for a bulk decision."""
        self._text_widths = (0, 0)
        self._fixed_widths: tuple[int, ...] = ()
        self._styles_seen: dict[object, tuple[object, ...]] = {}
        """The table's styles under each pseudo-class state (focus, hover, enabled) its cached cells were drawn with."""

    # DataTable drops every drawn cell on any style update, and a focus move is one: each
    # move between the table and the search box drew the page's ~300 cells again (about a
    # third of the move on a 2-core VM). Its cell, row and line caches are keyed by the
    # pseudo-class state as well as the row's style, so while the table's styles in a
    # state are what they were when that state was last drawn, its cached cells are right.
    def notify_style_update(self) -> None:
        state = self.get_pseudo_class_state()
        Widget.notify_style_update(self)  # the widget's own style caches, so the signature is fresh
        try:
            signature = self._style_signature()
        except KeyError:  # not mounted yet: no component styles
            super().notify_style_update()
            return
        if self._styles_seen.get(state) == signature and hasattr(self, "_get_styles_to_render_cell"):
            self._styles_cache.clear()
            self._get_styles_to_render_cell.cache_clear()  # keyed without the state: cursor colours
            self.refresh()
            return
        if state in self._styles_seen:  # the styles themselves changed (a theme): nothing kept is right
            self._styles_seen.clear()
        self._styles_seen[state] = signature
        super().notify_style_update()

    def _style_signature(self) -> tuple[object, ...]:
        return (self.rich_style, *(self.get_component_rich_style(name, partial=True)
                                   for name in sorted(self.COMPONENT_CLASSES)))

    # Columns are built with the first page, once the table knows its width: building
    # them at mount (width 0) would mean building every row twice.
    def on_resize(self, event: Resize) -> None:
        if self.columns and self._layout() != (self._fixed_widths, self._text_widths):
            self._rebuild(self.cursor_row)

    # -- columns -------------------------------------------------------------------------
    def _fixed(self) -> tuple[int, ...]:
        """Widths of the columns before the texts: the page's widest cell, from header to cap."""
        rows = self.rows_shown
        content = {
            # the page's largest item number, and a marked range's ▌ before it
            "#": max((len(str(r.seq + 1)) for r in rows), default=1) + 1,
            "id": max((cell_len(r.item_id or "") for r in rows), default=0),
            "source": max((cell_len(r.source or "") for r in rows), default=0),
            "category": max((cell_len(_category(r)) for r in rows), default=0),
        }
        return tuple(min(widest, max(cell_len(header), content.get(key, widest)))
                     for key, header, widest in FIXED if key != "gold" or self.show_gold)

    def _layout(self) -> tuple[tuple[int, ...], tuple[int, int]]:
        """The fixed columns' widths, and the question's and response's for the table's width."""
        fixed = self._fixed()
        # Each column is padded by one cell on both sides; 2 more for the scrollbar.
        spare = self.size.width - sum(fixed) - 2 * (len(fixed) + 2) - 2
        question = max(MIN_TEXT, spare * 2 // 5)
        return fixed, (question, max(MIN_TEXT, spare - question))

    def _build_columns(self) -> None:
        self._fixed_widths, self._text_widths = self._layout()
        shown = [k for k in FIXED if k[0] != "gold" or self.show_gold]
        for (key, header, _widest), width in zip(shown, self._fixed_widths):
            self.add_column(header, key=key, width=width)
        self.add_column("question", key="question", width=self._text_widths[0])
        self.add_column("response", key="response", width=self._text_widths[1])

    def _rebuild(self, cursor: int) -> None:
        self.clear(columns=True)
        self._build_columns()
        self._add_rows(cursor)

    # -- rows ------------------------------------------------------------------------------
    def show_page(self, rows: list[ResultRow], offset: int, *, cursor: int = 0, gold: bool | None = None) -> None:
        """Replace the rows with this page and put the cursor on row `cursor` of it.

        `gold`: show the gold-label column (default: when a row of the page has one).
        """
        self.rows_shown = list(rows)
        self.page_offset = offset
        self.show_gold = any(gold_label(r.fields) for r in rows) if gold is None else gold
        # Another page may need other widths (longer ids, another category, the gold column).
        if not self.columns or self._layout() != (self._fixed_widths, self._text_widths):
            self._rebuild(cursor)
            return
        self.clear()
        self._add_rows(cursor)

    def _add_rows(self, cursor: int) -> None:
        self.add_rows(self._cells(r, self.page_offset + i) for i, r in enumerate(self.rows_shown))
        if self.rows_shown:
            self.move_cursor(row=min(max(cursor, 0), len(self.rows_shown) - 1), animate=False)

    def replace_row(self, row: ResultRow) -> None:
        """Show a changed result (a decision) in place, if it is on this page."""
        for i, shown in enumerate(self.rows_shown):
            if shown.id == row.id:
                self.rows_shown[i] = row
                for column, cell in enumerate(self._cells(row, self.page_offset + i)):
                    self.update_cell_at(Coordinate(i, column), cell)
                return

    def set_marked(self, marked: tuple[int, int] | None) -> None:
        """Mark a range of list positions (the `#` column shows ▌ on marked rows)."""
        self.marked = marked
        for i, row in enumerate(self.rows_shown):
            self.update_cell_at(Coordinate(i, 0), Cell(self._number(row, self.page_offset + i)))

    def _number(self, row: ResultRow, position: int) -> Text:
        lo, hi = self.marked or (-1, -2)
        if lo <= position <= hi:
            return Text(f"▌{row.seq + 1}", style="bold magenta")
        return Text(str(row.seq + 1))

    def _cells(self, row: ResultRow, position: int) -> tuple[Cell, ...]:
        category = _category(row)
        question_w, response_w = self._text_widths
        # Text, not str: a DataTable parses str cells as markup, and user text may hold `[...]`.
        cells: list[Text] = [
            self._number(row, position),
            Text(preview(row.item_id or "", 14)),
            verdict_cell(row.label, row.error),
            Text(score_text(row.score)),
        ]
        if self.show_gold:
            cells.append(gold_cell(gold_label(row.fields), row.label))
        cells += [
            review_cell(row.review),
            Text(preview(row.source or "", 14)),
            Text(preview(category, 16)),
            Text(preview(row.question, question_w)),
            Text(preview(row.response, response_w), style="dim" if not row.flagged else ""),
        ]
        return tuple(Cell(text) for text in cells)

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
