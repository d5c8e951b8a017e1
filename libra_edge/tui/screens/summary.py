"""A run's summary panel: the figures `libra-edge report` prints, for the run on screen."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Header

from libra_edge.tui.messages import SummaryReady, WorkFailed
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.summary_panel import SummaryPanel

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp


class SummaryScreen(Screen[None]):
    """Counts, rates with Wilson intervals by source and category, scores, review coverage."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.summary: object | None = None

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield SummaryPanel(id="summary")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = f"Run {self.run_id} summary"
        self.compute()

    @work(thread=True, exclusive=True, group="summary")
    def compute(self) -> None:
        """Read the run's results and compute its figures (a pass over the run: off the loop)."""
        try:
            from libra_edge.report import summarize_run

            summary = summarize_run(self.libra.session.store, self.run_id)
        except Exception as exc:
            self.post_message(WorkFailed.of("summary", exc))
            return
        self.post_message(SummaryReady(summary))

    @on(SummaryReady)
    def _ready(self, event: SummaryReady) -> None:
        self.summary = event.summary
        self.query_one(SummaryPanel).show(event.summary)

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        self.notify(event.message, title=f"{event.action} failed", severity="error", timeout=8)

    def action_refresh(self) -> None:
        """Compute the figures again (decisions made since count)."""
        self.compute()

    def action_back(self) -> None:
        """Back to the results."""
        self.app.pop_screen()
