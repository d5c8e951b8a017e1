"""Item detail: the full question, response and analysis, and the reviewer's decision.

n / p jump to the next / previous flagged item of the list the item was opened from
(same filter and sort), so a reviewer works through flagged items without the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from libra_edge.store import Order, ResultFilter, ResultRow, Store
from libra_edge.tui.formatting import score_text
from libra_edge.tui.messages import ItemLoaded, WorkFailed
from libra_edge.tui.widgets.review_panel import ReviewPanel
from libra_edge.tui.widgets.verdict_badge import VerdictBadge

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

SCAN = 64  # rows fetched per step when looking for the next flagged item


@dataclass(frozen=True)
class ResultList:
    """The list an item was opened from: a run, a filter and a sort order."""

    run_id: int
    filter: ResultFilter
    order: Order

    def page(self, store: Store, offset: int, limit: int) -> list[ResultRow]:
        """Rows `offset` .. `offset + limit` of the list."""
        return list(store.iter_results(self.run_id, self.filter, order=self.order, limit=limit, offset=offset))


def next_flagged(store: Store, lst: ResultList, current: ResultRow, index: int) -> tuple[ResultRow, int] | None:
    """The first flagged item after `current` (at `index`) in the list, with its index."""
    offset = index
    while True:
        rows = lst.page(store, offset, SCAN)
        if not rows:
            return None
        for i, row in enumerate(rows):
            # The list may have lost `current` (a review under a review filter): then the
            # row now at `index` is already the next one.
            if row.id == current.id or (offset + i) < index:
                continue
            if row.flagged:
                return row, offset + i
        offset += len(rows)


def previous_flagged(store: Store, lst: ResultList, index: int) -> tuple[ResultRow, int] | None:
    """The last flagged item before position `index` in the list, with its index."""
    end = index
    while end > 0:
        start = max(0, end - SCAN)
        rows = lst.page(store, start, end - start)
        for i in range(len(rows) - 1, -1, -1):
            if rows[i].flagged:
                return rows[i], start + i
        end = start
    return None


class DetailScreen(Screen[None]):
    """One item, wrapped and scrollable, with review keys."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "review('confirm')", "Confirm"),
        Binding("s", "review('safe')", "→ 安全"),
        Binding("u", "review('unsafe')", "→ 不安全"),
        Binding("x", "review('')", "Clear review"),
        Binding("e", "edit_note", "Note"),
        Binding("n", "next_flagged", "Next flagged"),
        Binding("p", "previous_flagged", "Prev flagged"),
    ]

    def __init__(self, lst: ResultList, row: ResultRow, index: int) -> None:
        super().__init__()
        self.source_list = lst
        self.row = row
        self.index = index

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield VerdictBadge(id="detail-verdict")
        yield Static("", id="detail-meta", markup=False)
        with VerticalScroll(id="detail-body"):
            yield Static("", id="detail-question", classes="detail-text", markup=False)
            yield Static("", id="detail-response", classes="detail-text", markup=False)
            yield Static("", id="detail-analysis", classes="detail-text", markup=False)
        yield ReviewPanel(id="review")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail-question").border_title = "问题 question"
        self.query_one("#detail-response").border_title = "回答 response"
        self.query_one("#detail-analysis").border_title = "分析 analysis"
        self._show(self.row)
        self.query_one("#detail-body").focus()

    def _show(self, row: ResultRow) -> None:
        self.row = row
        self.sub_title = f"Run {row.run_id} · item {row.seq + 1}"
        badge = self.query_one(VerdictBadge)
        if row.error is not None:
            badge.show_busy("check failed")
        elif row.label is not None:
            badge.show_verdict(row.label, bool(row.unsafe), row.score)
        meta = [f"#{row.seq + 1}"]
        if row.item_id:
            meta.append(f"id {row.item_id}")
        for value in (row.source, row.category, row.sub_category):
            if value:
                meta.append(value)
        if row.truncated:
            meta.append("inputs were truncated")
        meta.append(f"score {score_text(row.score)}")
        self.query_one("#detail-meta", Static).update(" · ".join(meta))
        self.query_one("#detail-question", Static).update(Text(row.question))
        self.query_one("#detail-response", Static).update(Text(row.response))
        analysis = row.error if row.error is not None else row.analysis
        self.query_one("#detail-analysis", Static).update(
            Text(analysis) if analysis else Text("(no analysis: fast mode, or not generated for safe items)",
                                                 style="dim"))
        self.query_one("#detail-body", VerticalScroll).scroll_home(animate=False)
        self.query_one(ReviewPanel).show(row)

    # -- review -----------------------------------------------------------------------------
    def action_review(self, decision: str) -> None:
        """Record the decision now (`''` clears it); the note field's text is saved with it."""
        note = self.query_one("#note", Input).value.strip() or None
        self._save(decision or None, note)

    def action_edit_note(self) -> None:
        """Type a note; Enter saves it with the current decision."""
        self.query_one(ReviewPanel).edit_note()

    @on(ReviewPanel.NoteSubmitted)
    def _note(self, event: ReviewPanel.NoteSubmitted) -> None:
        self._save(self.row.review, event.note or None)
        self.query_one("#detail-body").focus()

    def _save(self, decision: str | None, note: str | None) -> None:
        # One UPDATE of one row: immediate, so the decision is on disk before the next key.
        try:
            row = self.libra.session.store.set_review(self.row.id, decision, note)
        except Exception as exc:
            failed = WorkFailed.of("saving the review", exc)
            self.notify(failed.message, title="review not saved", severity="error", timeout=8)
            return
        self._show(row)
        word = {"confirm": "confirmed", "safe": "overridden → 安全", "unsafe": "overridden → 不安全"}
        self.notify(f"item {row.seq + 1}: {word.get(decision or '', 'review cleared')}"
                    + (" · note saved" if note else ""), timeout=2)

    # -- navigation -------------------------------------------------------------------------
    def action_next_flagged(self) -> None:
        """Move to the next flagged item of the list."""
        self._navigate(1)

    def action_previous_flagged(self) -> None:
        """Move to the previous flagged item of the list."""
        self._navigate(-1)

    @work(thread=True, exclusive=True, group="detail-nav")
    def _navigate(self, direction: int) -> None:
        store = self.libra.session.store
        try:
            if direction > 0:
                found = next_flagged(store, self.source_list, self.row, self.index)
            else:
                found = previous_flagged(store, self.source_list, self.index)
        except Exception as exc:
            self.post_message(WorkFailed.of("moving to the next item", exc))
            return
        if found is None:
            self.post_message(WorkFailed("navigation", f"no {'next' if direction > 0 else 'previous'} "
                                                       "flagged item in this list"))
            return
        self.post_message(ItemLoaded(*found))

    @on(ItemLoaded)
    def _loaded(self, event: ItemLoaded) -> None:
        self.index = event.index
        self._show(event.row)

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        severity = "warning" if event.action == "navigation" else "error"
        self.notify(event.message, severity=severity, timeout=4)

    def action_back(self) -> None:
        """Leave the note field, else go back to the table."""
        if isinstance(self.focused, Input):
            self.query_one("#detail-body").focus()
            return
        self.app.pop_screen()
