"""The results browser: one run's items, filtered, searched and sorted, a page at a time.

Only the current page (PAGE_SIZE rows) is ever fetched and built, so a run of 10,000+
items opens as fast as a run of ten; moving the cursor past a page's end loads the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from libra_edge.store import Order, ResultFilter, RunRow
from libra_edge.tui.formatting import inputs_label
from libra_edge.tui.messages import ExportDone, ResultsPage, RunLoaded, WorkFailed
from libra_edge.tui.screens.detail import DetailScreen, ResultList
from libra_edge.tui.screens.export import ExportRequest, ExportScreen
from libra_edge.tui.widgets.results_filters import ResultsFilters
from libra_edge.tui.widgets.results_table import ResultsTable

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

PAGE_SIZE = 200
ORDERS: tuple[Order, ...] = ("seq", "score_desc", "score_asc")
ORDER_WORDS = {"seq": "input order", "score_desc": "score ↓", "score_asc": "score ↑"}


class ResultsScreen(Screen[None]):
    """A run's results with filters; Enter opens an item, e exports the current filter."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_flagged", "Flagged"),
        Binding("slash", "search", "Search"),
        Binding("o", "cycle_order", "Sort"),
        Binding("right_square_bracket", "page(1)", "Next page"),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False),
        Binding("e", "export", "Export"),
        Binding("g", "reload", "Refresh", show=False),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.filter = ResultFilter()
        self.order: Order = "seq"
        self.page_offset = 0
        self.total = 0
        self._request = 0
        self._cursor_after_load = 0
        self.run_record: RunRow | None = None

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"run {self.run_id}", id="run-summary", markup=False)
        yield ResultsFilters(id="filters")
        yield ResultsTable(id="results-table")
        yield Static("loading…", id="pager", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Run {self.run_id} results"
        self.query_one(ResultsTable).focus()
        self.load_run()
        self.load_page(0)

    def on_screen_resume(self) -> None:
        # Back from an item: its review may have changed; keep the cursor where it was.
        if self.run_record is not None:
            table = self.query_one(ResultsTable)
            self.load_page(self.page_offset, cursor=table.cursor_row)
            self.load_run()

    # -- loading ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="results-run")
    def load_run(self) -> None:
        """The run record and its facets (for the summary line and the menus)."""
        store = self.libra.session.store
        try:
            self.post_message(RunLoaded(store.run(self.run_id), store.facets(self.run_id)))
        except Exception as exc:
            self.post_message(WorkFailed.of("opening the run", exc))

    def load_page(self, offset: int, *, cursor: int = 0) -> None:
        """Fetch the page starting at `offset` of the filtered, sorted list."""
        self._request += 1
        self._cursor_after_load = cursor
        self.query_one("#pager", Static).update("loading…")
        self._fetch(self._request, self.filter, self.order, max(offset, 0))

    @work(thread=True, exclusive=True, group="results-page")
    def _fetch(self, request: int, flt: ResultFilter, order: Order, offset: int) -> None:
        store = self.libra.session.store
        try:
            total = store.count_results(self.run_id, flt)
            if offset >= total:  # the list shrank (a filter, a review): show its last page
                offset = max(0, (total - 1) // PAGE_SIZE * PAGE_SIZE)
            rows = list(store.iter_results(self.run_id, flt, order=order, limit=PAGE_SIZE, offset=offset))
        except Exception as exc:
            self.post_message(WorkFailed.of("loading results", exc))
            return
        self.post_message(ResultsPage(request, rows, total, offset))

    @on(RunLoaded)
    def _run_loaded(self, event: RunLoaded) -> None:
        first = self.run_record is None
        self.run_record = run = event.run
        self.query_one("#run-summary", Static).update(
            f"run {run.id} · {inputs_label(run.inputs)} · {run.model_name} · {run.status} · "
            f"{run.done}/{run.total} checked · {run.flagged} flagged · {run.errors} errors · "
            f"{run.reviewed} reviewed"
        )
        if first:
            self.query_one(ResultsFilters).set_facets(event.facets)

    @on(ResultsPage)
    def _page(self, event: ResultsPage) -> None:
        if event.request != self._request:
            return  # an answer to a filter the user has already changed
        self.page_offset, self.total = event.offset, event.total
        cursor = self._cursor_after_load
        if cursor < 0:  # "the last row" (moving up from the next page)
            cursor = len(event.rows) - 1
        self.query_one(ResultsTable).show_page(event.rows, event.offset, cursor=cursor)
        self._show_pager()

    def _show_pager(self) -> None:
        pager = self.query_one("#pager", Static)
        if not self.total:
            pager.update(f"no items match · sort: {ORDER_WORDS[self.order]}")
            return
        last = min(self.page_offset + PAGE_SIZE, self.total)
        pages = (self.total + PAGE_SIZE - 1) // PAGE_SIZE
        pager.update(
            f"items {self.page_offset + 1:,}–{last:,} of {self.total:,} · page {self.page_offset // PAGE_SIZE + 1}"
            f"/{pages} · sort: {ORDER_WORDS[self.order]} · filter: {self.filter.verdict}"
        )

    # -- filters and paging -----------------------------------------------------------------
    @on(ResultsFilters.Changed)
    def _filters_changed(self, event: ResultsFilters.Changed) -> None:
        self.filter = event.filter
        self.load_page(0)

    @on(ResultsTable.EdgeReached)
    def _edge(self, event: ResultsTable.EdgeReached) -> None:
        self._go_page(event.direction, cursor=0 if event.direction > 0 else -1)

    def action_page(self, direction: int) -> None:
        """Next (+1) or previous (-1) page."""
        self._go_page(direction, cursor=0)

    def _go_page(self, direction: int, *, cursor: int) -> None:
        offset = self.page_offset + direction * PAGE_SIZE
        if offset < 0 or offset >= self.total:
            return
        self.load_page(offset, cursor=cursor)

    def action_toggle_flagged(self) -> None:
        """Show only flagged items, or all again."""
        filters = self.query_one(ResultsFilters)
        filters.set_verdict("all" if filters.verdict == "flagged" else "flagged")

    def action_search(self) -> None:
        """Focus the search field."""
        self.query_one(ResultsFilters).focus_search()

    def action_cycle_order(self) -> None:
        """Input order → score high to low → score low to high."""
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        self.load_page(0)

    def action_reload(self) -> None:
        """Re-read the current page and the run's counts."""
        self.load_page(self.page_offset, cursor=self.query_one(ResultsTable).cursor_row)
        self.load_run()

    def action_back(self) -> None:
        """Leave a filter field for the table, else go back to the runs."""
        table = self.query_one(ResultsTable)
        if self.focused is not table:
            table.focus()
            return
        self.app.pop_screen()

    # -- item detail ------------------------------------------------------------------------
    def action_open_item(self) -> None:
        """Open the item under the cursor."""
        selected = self.query_one(ResultsTable).selected
        if selected is None:
            return
        row, index = selected
        self.app.push_screen(DetailScreen(ResultList(self.run_id, self.filter, self.order), row, index))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_item()

    # -- export -----------------------------------------------------------------------------
    def action_export(self) -> None:
        """Write the items of the current filter to a JSONL or CSV file."""
        name = f"run{self.run_id}-{self.filter.verdict}"
        if self.filter.review:
            name += f"-{self.filter.review}"
        self.app.push_screen(ExportScreen(self.libra.start_dir, name, self.total), self._export)

    def _export(self, request: ExportRequest | None) -> None:
        if request is not None:
            self.export(request, self.filter)

    @work(thread=True, exclusive=True, group="export")
    def export(self, request: ExportRequest, flt: ResultFilter) -> None:
        """Write the file (atomically: it appears only once complete)."""
        try:
            count = self.libra.session.store.export(self.run_id, request.path, format=request.format, filters=flt)
        except Exception as exc:
            self.post_message(WorkFailed.of("export", exc))
            return
        self.post_message(ExportDone(request.path, count))

    @on(ExportDone)
    def _exported(self, event: ExportDone) -> None:
        self.notify(f"exported {event.count} items to {event.path}", title="export", timeout=6)

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        self.query_one("#pager", Static).update(f"{event.action} failed")
        self.notify(event.message, title=f"{event.action} failed", severity="error", timeout=8)
