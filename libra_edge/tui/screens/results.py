"""The results browser: one run's items, filtered, searched and sorted, a page at a time; the
reviewer decides items here or in the item detail.

Only the current page (PAGE_SIZE rows) is ever fetched and built, so a run of 10,000+
items opens as fast as a run of ten; moving the cursor past a page's end loads the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from libra_edge.store import Order, ResultFilter, ResultRow, RunRow
from libra_edge.tui.formatting import filter_words, inputs_label
from libra_edge.tui.messages import (
    ExportDone,
    QueueFound,
    RangeReady,
    ReportWritten,
    ResultsPage,
    ReviewProgress,
    RunLoaded,
    WorkFailed,
)
from libra_edge.tui.queue import ResultList, next_undecided, previous_undecided, rows_between
from libra_edge.tui.screens.confirm import ConfirmScreen
from libra_edge.tui.screens.detail import DetailScreen
from libra_edge.tui.screens.export import ExportRequest, ExportScreen
from libra_edge.tui.screens.summary import SummaryScreen
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.results_filters import ResultsFilters
from libra_edge.tui.widgets.results_table import ResultsTable

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

# Rows built per page (Textual's DataTable measures every row it is given and renders the
# visible ones). Fewer rows open a page a little faster but send the queue keys (n/p) to
# another page more often (tests/benchmarks/bench_tui.py).
PAGE_SIZE = 200
ORDERS: tuple[Order, ...] = ("seq", "score_desc", "score_asc")
ORDER_WORDS = {"seq": "input order", "score_desc": "score ↓", "score_asc": "score ↑"}
DECISION_WORDS = {"confirm": "confirmed", "safe": "→ 安全", "unsafe": "→ 不安全"}


class ResultsScreen(Screen[None]):
    """A run's results with filters and review keys; Enter opens an item."""

    # Keys the footer leaves out first when it is too narrow for all (the filter bar
    # shows the filters; `?` lists every key).
    FOOTER_SPARE = ("clear_filters", "min_score", "cycle('category')", "cycle('source')", "cycle('review')",
                    "cycle_order", "summary", "export")
    BINDINGS = [
        Binding("escape", "back", "Back"),
        # filters: each has a key (the status line lists every active one)
        Binding("f", "toggle_flagged", "Flagged"),
        Binding("d", "cycle('review')", "Decision",
                tooltip="Filter by decision: any → undecided → decided → confirmed → → 安全 → → 不安全."),
        Binding("t", "cycle('source')", "Source", tooltip="Filter by source: the next source of the run (then any)."),
        Binding("k", "cycle('category')", "Category",
                tooltip="Filter by category: the next category of the run (then any)."),
        Binding("m", "min_score", "Min score"),
        Binding("slash", "search", "Search"),
        Binding("a", "clear_filters", "All"),
        Binding("o", "cycle_order", "Sort"),
        # decisions and the queue
        Binding("c", "review('confirm')", "Confirm", tooltip="Confirm the model's verdict on the item under the cursor."),
        Binding("s", "review('safe')", "→安全",
                tooltip="Decide 安全 (safe): an override of a flagged item, a confirmation of a safe one."),
        Binding("u", "review('unsafe')", "→不安全",
                tooltip="Decide 不安全 (unsafe): a confirmation of a flagged item, an override of a safe one."),
        Binding("x", "review('')", "Clear decision", show=False, tooltip="Clear the decision on the item (undo restores it)."),
        Binding("z", "undo", "Undo"),
        Binding("n", "queue(1)", "Next", tooltip="Next flagged item without a decision (in this list's filter and order)."),
        Binding("p", "queue(-1)", "Prev", show=False, tooltip="Previous flagged item without a decision."),
        Binding("v", "mark", "Mark range", show=False),
        Binding("b", "bulk_confirm", "Confirm range", show=False),
        # the run
        Binding("e", "export", "Export"),
        Binding("i", "summary", "Summary"),
        Binding("w", "write_report", "Report", show=False),
        Binding("g", "reload", "Refresh", show=False),
        Binding("right_square_bracket", "page(1)", "Next page", show=False, tooltip=f"The next page of {PAGE_SIZE} items."),
        Binding("left_square_bracket", "page(-1)", "Prev page", show=False, tooltip=f"The previous page of {PAGE_SIZE} items."),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.filter = ResultFilter()
        self.order: Order = "seq"
        self.page_offset = 0
        self.total = 0
        self._request = 0
        self._loading = False
        self._focus_after_load = False
        self._cursor_after_load = 0
        self.run_record: RunRow | None = None
        self.progress: tuple[int, int] | None = None
        """(decided, flagged) of the run's flagged items."""
        self.mark_start: int | None = None
        """The list position where a marked range starts (`v`), if one is being marked."""

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    @property
    def result_list(self) -> ResultList:
        """The list on screen: this run, the current filter and sort."""
        return ResultList(self.run_id, self.filter, self.order)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"run {self.run_id}", id="run-summary", markup=False)
        yield Static("", id="review-progress", markup=False)
        yield ResultsFilters(id="filters")
        yield ResultsTable(id="results-table")
        yield Static("loading…", id="pager", markup=False)
        yield KeysFooter()

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
        """The run record, its facets and the review progress (for the header lines and menus)."""
        store = self.libra.session.store
        try:
            self.post_message(RunLoaded(store.run(self.run_id), store.facets(self.run_id)))
            flagged = store.count_results(self.run_id, verdict="flagged")
            decided = store.count_results(self.run_id, verdict="flagged", review="reviewed")
            self.post_message(ReviewProgress(decided, flagged))
        except Exception as exc:
            self.post_message(WorkFailed.of("opening the run", exc))

    def load_page(self, offset: int, *, cursor: int = 0) -> None:
        """Fetch the page starting at `offset` of the filtered, sorted list."""
        self._request += 1
        self._loading = True
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
            f"{run.done}/{run.total} checked · {run.flagged} flagged · {run.errors} errors"
        )
        if first:
            self.query_one(ResultsFilters).set_facets(event.facets)

    @on(ReviewProgress)
    def _progress(self, event: ReviewProgress) -> None:
        self.progress = (event.decided, event.flagged)
        self._show_progress()

    def _show_progress(self) -> None:
        if self.progress is None:
            return
        decided, flagged = self.progress
        share = f" ({100 * decided / flagged:.0f}%)" if flagged else ""
        self.query_one("#review-progress", Static).update(
            f"review: {decided}/{flagged} flagged decided{share} · reviewer {self.libra.session.reviewer}")

    @on(ResultsPage)
    def _page(self, event: ResultsPage) -> None:
        if event.request != self._request:
            return  # an answer to a filter the user has already changed
        self.page_offset, self.total = event.offset, event.total
        self._loading = False
        cursor = self._cursor_after_load
        if cursor < 0:  # "the last row" (moving up from the next page)
            cursor = len(event.rows) - 1
        table = self.query_one(ResultsTable)
        table.show_page(event.rows, event.offset, cursor=cursor)
        self._show_pager()
        if self._focus_after_load:
            self._focus_after_load = False
            self.call_after_refresh(table.focus)

    def _show_pager(self) -> None:
        pager = self.query_one("#pager", Static)
        words = filter_words(self.filter)
        status = f"sort: {ORDER_WORDS[self.order]} · filter: {', '.join(words) if words else 'none'}"
        if self.mark_start is not None:
            selected = self.query_one(ResultsTable).selected
            here = selected[1] if selected else self.mark_start
            lo, hi = sorted((self.mark_start, here))
            status += f" · marked items {lo + 1}–{hi + 1} ({hi - lo + 1}): b confirms, v unmarks"
        if not self.total:
            pager.update(f"no items match · {status}")
            return
        last = min(self.page_offset + PAGE_SIZE, self.total)
        pages = (self.total + PAGE_SIZE - 1) // PAGE_SIZE
        pager.update(
            f"items {self.page_offset + 1:,}–{last:,} of {self.total:,} · page {self.page_offset // PAGE_SIZE + 1}"
            f"/{pages} · {status}"
        )

    # -- filters and paging -----------------------------------------------------------------
    @on(ResultsFilters.Changed)
    def _filters_changed(self, event: ResultsFilters.Changed) -> None:
        self.filter = event.filter
        self._unmark()
        self.load_page(0)

    @on(ResultsFilters.Done)
    def _filter_done(self) -> None:
        # Back to the table once its new rows are drawn: the rows first, then the focus
        # (moving it restyles the footer and the fields, which would delay the rows).
        if self._loading:
            self._focus_after_load = True
        else:
            self.query_one(ResultsTable).focus()

    @on(ResultsTable.EdgeReached)
    def _edge(self, event: ResultsTable.EdgeReached) -> None:
        self._go_page(event.direction, cursor=0 if event.direction > 0 else -1)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        if self.mark_start is not None:
            self._mark_rows()

    def action_page(self, direction: int) -> None:
        """Next (+1) or previous (-1) page."""
        self._go_page(direction, cursor=0)

    def _go_page(self, direction: int, *, cursor: int) -> None:
        offset = self.page_offset + direction * PAGE_SIZE
        if offset < 0 or offset >= self.total:
            return
        self.load_page(offset, cursor=cursor)

    def action_toggle_flagged(self) -> None:
        """Show only the items the model flagged (不安全), or all again."""
        filters = self.query_one(ResultsFilters)
        filters.set_verdict("all" if filters.verdict == "flagged" else "flagged")

    def action_cycle(self, control: str) -> None:
        """Step a menu filter to its next value: `review` (decided or not, by decision), `source`, `category`."""
        self.query_one(ResultsFilters).cycle(control)

    def action_min_score(self) -> None:
        """Type the lowest score to list (Enter returns to the table)."""
        self.query_one(ResultsFilters).focus_min_score()

    def action_search(self) -> None:
        """Type words to find in the question, response or analysis (Enter returns to the table)."""
        self.query_one(ResultsFilters).focus_search()

    def action_clear_filters(self) -> None:
        """Drop every filter: all items of the run."""
        self.query_one(ResultsFilters).clear_all()

    def action_cycle_order(self) -> None:
        """Sort: input order → score high to low → score low to high."""
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        self._unmark()
        self.load_page(0)

    def action_reload(self) -> None:
        """Re-read the page and the run's counts (shows decisions made in another window)."""
        self.load_page(self.page_offset, cursor=self.query_one(ResultsTable).cursor_row)
        self.load_run()

    def action_back(self) -> None:
        """Back to the runs (from anywhere on this screen, the filter fields included)."""
        self.app.pop_screen()

    # -- item detail ------------------------------------------------------------------------
    def action_open_item(self) -> None:
        """Open the item under the cursor."""
        selected = self.query_one(ResultsTable).selected
        if selected is None:
            return
        row, index = selected
        self.app.push_screen(DetailScreen(self.result_list, row, index))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_item()

    # -- decisions ----------------------------------------------------------------------------
    def action_review(self, decision: str) -> None:
        """Decide the item under the cursor: confirm the model, or override it (`''` clears)."""
        selected = self.query_one(ResultsTable).selected
        if selected is None:
            return
        row, _ = selected
        try:
            saved = self.libra.session.decide(row.id, decision or None, None, keep_note=True)
        except Exception as exc:
            self.notify(WorkFailed.of("saving the decision", exc).message, title="decision not saved",
                        severity="error", timeout=8)
            return
        self._decided([saved])
        what = DECISION_WORDS.get(saved.review or "", "decision cleared")
        self.notify(f"item {saved.seq + 1}: {what}", timeout=2)

    def action_undo(self) -> None:
        """Undo the last decision made in this window (the earlier one comes back)."""
        try:
            rows = self.libra.session.undo()
        except Exception as exc:
            self.notify(WorkFailed.of("undo", exc).message, title="not undone", severity="warning", timeout=6)
            return
        self._decided(rows)
        items = ", ".join(str(r.seq + 1) for r in sorted(rows, key=lambda r: r.seq))
        self.notify(f"undone: item{'s' if len(rows) > 1 else ''} {items}", timeout=3)

    def _decided(self, rows: list[ResultRow]) -> None:
        table = self.query_one(ResultsTable)
        for row in rows:
            table.replace_row(row)
        self.load_run()  # the counts and the progress line

    def action_queue(self, direction: int) -> None:
        """Move to the next (+1) / previous (-1) flagged item that has no decision yet."""
        selected = self.query_one(ResultsTable).selected
        row, index = selected if selected else (None, -1)
        self._find_queue(direction, row.id if row else None, index)

    @work(thread=True, exclusive=True, group="results-queue")
    def _find_queue(self, direction: int, current_id: int | None, index: int) -> None:
        store = self.libra.session.store
        try:
            if direction > 0:
                found = next_undecided(store, self.result_list, current_id, index)
            else:
                found = previous_undecided(store, self.result_list, index)
        except Exception as exc:
            self.post_message(WorkFailed.of("finding the next item", exc))
            return
        if found is None:
            word = "next" if direction > 0 else "previous"
            self.post_message(WorkFailed("queue", f"no {word} undecided flagged item in this list"))
            return
        self.post_message(QueueFound(*found))

    @on(QueueFound)
    def _queue_found(self, event: QueueFound) -> None:
        table = self.query_one(ResultsTable)
        if self.page_offset <= event.index < self.page_offset + table.row_count:
            table.move_cursor(row=event.index - self.page_offset, animate=False)
            return
        page = event.index // PAGE_SIZE * PAGE_SIZE
        self.load_page(page, cursor=event.index - page)

    # -- bulk confirmation ----------------------------------------------------------------------
    def action_mark(self) -> None:
        """Start marking a range at the cursor (move to its other end, then b); again to unmark."""
        if self.mark_start is not None:
            self._unmark()
            return
        selected = self.query_one(ResultsTable).selected
        if selected is not None:
            self.mark_start = selected[1]
            self._mark_rows()

    def _mark_rows(self) -> None:
        table = self.query_one(ResultsTable)
        selected = table.selected
        if self.mark_start is None or selected is None:
            table.set_marked(None)
        else:
            table.set_marked(tuple(sorted((self.mark_start, selected[1]))))  # type: ignore[arg-type]
        self._show_pager()

    def _unmark(self) -> None:
        if self.mark_start is not None:
            self.mark_start = None
            self._mark_rows()

    def action_bulk_confirm(self) -> None:
        """Confirm the model's verdict on every undecided item of the marked range (asks first)."""
        selected = self.query_one(ResultsTable).selected
        if self.mark_start is None or selected is None:
            self.notify("mark a range first: v at one end, move to the other, then b", severity="warning")
            return
        self._read_range(self.mark_start, selected[1])

    @work(thread=True, exclusive=True, group="results-range")
    def _read_range(self, first: int, last: int) -> None:
        try:
            rows = rows_between(self.libra.session.store, self.result_list, first, last)
        except Exception as exc:
            self.post_message(WorkFailed.of("reading the range", exc))
            return
        self.post_message(RangeReady(rows, min(first, last), max(first, last)))

    @on(RangeReady)
    def _range_ready(self, event: RangeReady) -> None:
        todo = [r for r in event.rows if r.review is None and r.error is None and r.label is not None]
        decided = sum(r.review is not None for r in event.rows)
        failed = sum(r.error is not None for r in event.rows)
        if not todo:
            self.notify("nothing to confirm: every item of the range is decided or failed", severity="warning")
            return
        flagged = sum(r.flagged for r in todo)
        lines = [f"Confirm the model's verdict on {len(todo)} undecided items "
                 f"({flagged} flagged, {len(todo) - flagged} safe), list positions {event.first + 1}–{event.last + 1}?"]
        if decided:
            lines.append(f"{decided} already decided keep their decision.")
        if failed:
            lines.append(f"{failed} failed checks are left alone.")
        lines.append(f"Recorded as {self.libra.session.reviewer}; z undoes it in one step.")
        ids = [r.id for r in todo]

        def answered(yes: bool | None) -> None:
            if yes:
                self._confirm_ids(ids)

        self.app.push_screen(ConfirmScreen("Bulk confirm", "\n".join(lines)), answered)

    def _confirm_ids(self, ids: list[int]) -> None:
        try:
            done = self.libra.session.confirm_many(ids)
        except Exception as exc:
            self.notify(WorkFailed.of("bulk confirm", exc).message, severity="error", timeout=8)
            return
        self._unmark()
        self.notify(f"confirmed {len(done)} items", timeout=3)
        self.action_reload()

    # -- export, summary, report ----------------------------------------------------------------
    def action_export(self) -> None:
        """Write the listed items, in the order shown, to a JSONL or CSV file (with decisions)."""
        name = f"run{self.run_id}-{self.filter.verdict}"
        if self.filter.review:
            name += f"-{self.filter.review}"
        self.app.push_screen(ExportScreen(self.libra.start_dir, name, self.total, self.order), self._export)

    def _export(self, request: ExportRequest | None) -> None:
        if request is not None:
            self.export(request, self.filter, self.order)

    @work(thread=True, exclusive=True, group="export")
    def export(self, request: ExportRequest, flt: ResultFilter, order: Order = "seq") -> None:
        """Write the file (atomically: it appears only once complete)."""
        try:
            count = self.libra.session.store.export(self.run_id, request.path, format=request.format,
                                                    filters=flt, order=order, bom=request.format == "csv")
        except Exception as exc:
            self.post_message(WorkFailed.of("export", exc))
            return
        self.post_message(ExportDone(request.path, count))

    @on(ExportDone)
    def _exported(self, event: ExportDone) -> None:
        self.notify(f"exported {event.count} items to {event.path}", title="export", timeout=6)

    def action_summary(self) -> None:
        """The run's figures: counts, flag rates by source and category, scores, review coverage."""
        self.app.push_screen(SummaryScreen(self.run_id))

    def action_write_report(self) -> None:
        """Write the run's audit report (HTML, the same figures as `libra-edge report`)."""
        self.write_report(self.libra.start_dir / f"run{self.run_id}-report.html")

    @work(thread=True, exclusive=True, group="report")
    def write_report(self, path: Path) -> None:
        """Render the report file for this run."""
        try:
            from libra_edge.report import write_report

            write_report(self.libra.session.store, self.run_id, path, fmt="html")
        except Exception as exc:
            self.post_message(WorkFailed.of("report", exc))
            return
        self.post_message(ReportWritten(path))

    @on(ReportWritten)
    def _report_written(self, event: ReportWritten) -> None:
        self.notify(f"report written to {event.path}", title="report", timeout=6)

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        if event.action == "queue":
            self.notify(event.message, severity="warning", timeout=4)
            return
        self._show_pager()
        self.notify(event.message, title=f"{event.action} failed", severity="error", timeout=8)

