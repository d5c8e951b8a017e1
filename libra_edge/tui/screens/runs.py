"""The Runs screen: batch runs in the store; launch, watch, cancel and resume them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from libra_edge.batch.readers import read_inputs
from libra_edge.batch.runner import BatchJob, BatchOptions, BatchProgress, resume_settings
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError
from libra_edge.store import RunRow
from libra_edge.tui.messages import BatchEnded, BatchProgressed, BatchStarted, RunsListed, WorkFailed
from libra_edge.tui.screens.launch import LaunchRequest, LaunchScreen
from libra_edge.tui.screens.results import ResultsScreen
from libra_edge.tui.session import ActiveBatch
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.run_progress import RunProgress
from libra_edge.tui.widgets.runs_table import RunsTable

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

POLL_S = 2.0  # how often runs checked by other processes (`libra-edge batch`) are re-read


def analysis_words(mode: object, max_tokens: int) -> str:
    """How a run was judged, in words: a `--fast` run wrote no analysis, so no token cap applies."""
    if mode == "none":
        return "fast: verdicts and scores, no analysis"
    which = "flagged items" if mode == "flagged" else "every item"
    return f"analysis of {which}, max tokens {max_tokens}"


class RunsScreen(Screen[None]):
    """All runs, newest first; Enter opens a run's results."""

    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("r", "resume_run", "Resume"),
        Binding("x", "cancel_run", "Cancel run"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunRow] = []
        self._select_next: int | None = None  # a run to put the cursor on once listed

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunsTable(id="runs-table")
        yield RunProgress(id="run-progress")
        yield Static("", id="run-info", markup=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = "Runs"
        self.set_interval(POLL_S, self._poll)
        self.query_one(RunsTable).focus()

    def on_screen_resume(self) -> None:
        self.load_runs()

    # -- listing ----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="runs-list")
    def load_runs(self) -> None:
        """Read the runs with their counts (a GROUP BY over all results: off the event loop)."""
        try:
            runs = self.libra.session.store.runs()
        except Exception as exc:
            self.post_message(WorkFailed.of("listing runs", exc))
            return
        self.post_message(RunsListed(runs))

    def _poll(self) -> None:
        # Only runs in progress change by themselves; ours report through progress messages.
        if self.is_current and any(r.status == "running" for r in self.runs):
            self.load_runs()

    @on(RunsListed)
    def _listed(self, event: RunsListed) -> None:
        self.runs = event.runs
        table = self.query_one(RunsTable)
        table.show_runs(event.runs)
        if self._select_next is not None:
            table.select_run(self._select_next)
            self._select_next = None
        self._show_info()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_info()

    def _show_info(self) -> None:
        run = self._selected()
        info = self.query_one("#run-info", Static)
        if run is None:
            info.update("No runs yet: press n to check a file.")
            return
        parts = [f"run {run.id}", f"model {run.model_name} ({run.quant or '?'})"]
        try:
            s = EngineSettings.from_stored(run.settings)
            parts.append(f"ctx {s.ctx_per_seq} per sequence, threshold {s.threshold:g}, "
                         f"{analysis_words(run.options.get('analysis'), s.max_new_tokens)}"
                         + (f", parallel {s.parallel}" if s.parallel > 1 else ""))
        except LibraError as exc:
            parts.append(f"settings unreadable: {exc}")
        if run.skipped:
            parts.append(f"{run.skipped} input records skipped")
        if run.message:
            parts.append(run.message)
        info.update(" · ".join(parts))

    def _selected(self) -> RunRow | None:
        run_id = self.query_one(RunsTable).selected_run_id
        return next((r for r in self.runs if r.id == run_id), None)

    # -- actions ----------------------------------------------------------------------------
    def action_refresh(self) -> None:
        """Re-read the runs from the store."""
        self.load_runs()

    def action_open_results(self) -> None:
        """Browse the selected run's results."""
        run = self._selected()
        if run is not None:
            self.app.push_screen(ResultsScreen(run.id))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_results()

    def action_new_run(self) -> None:
        """Choose an input file and start checking it."""
        if self._busy():
            return
        self.app.push_screen(LaunchScreen(self.libra.start_dir), self._launch)

    def _launch(self, request: LaunchRequest | None) -> None:
        if request is None:
            return
        options = BatchOptions(analysis=request.analysis, format=request.format)  # type: ignore[arg-type]
        self._start([request.path], options, model=None, settings=self.libra.session.settings, resume=None)

    def action_resume_run(self) -> None:
        """Continue the selected run where it stopped (with its own model and settings)."""
        run = self._selected()
        if run is None or self._busy():
            return
        if run.status == "running":
            self.notify(f"run {run.id} is being checked right now", severity="warning")
            return
        if run.status == "finished" and run.done >= run.total and not run.errors:
            self.notify(f"run {run.id} is complete: nothing to resume")
            return
        # The batch CLI's own resume rule: the run's verdict settings, this session's threads.
        mine = self.libra.session.settings
        try:
            settings = resume_settings(run, threads=mine.threads, verbose=mine.verbose)
        except LibraError as exc:
            self.notify(str(exc), title=f"run {run.id} cannot resume", severity="error", timeout=8)
            return
        self._start([Path(p) for p in run.inputs], BatchOptions.from_json(run.options),
                    model=run.model_path, settings=settings, resume=run.id)

    def action_cancel_run(self) -> None:
        """Stop the run this TUI is checking after the item in hand (resume continues it)."""
        batch = self.libra.session.batch
        if batch is None:
            self.notify("no run is being checked here", severity="warning")
            return
        batch.cancel.set()
        self.notify("cancelling: the run stops after the current item")

    def _busy(self) -> bool:
        if self.libra.session.batch is not None:
            self.notify("a run is already being checked: wait for it or cancel it (x)", severity="warning")
            return True
        return False

    def _start(self, inputs: list[Path], options: BatchOptions, *, model: str | None,
               settings: EngineSettings, resume: int | None) -> None:
        self.libra.session.batch = ActiveBatch()
        self.query_one(RunProgress).start(resume or 0, 0, 0)
        self.run_batch(inputs, options, model=model, settings=settings, resume=resume)

    # -- the worker -------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="batch")
    def run_batch(self, inputs: list[Path], options: BatchOptions, *, model: str | None,
                  settings: EngineSettings, resume: int | None) -> None:
        """Read the inputs, open (or resume) the run and check it, posting progress."""
        session = self.libra.session
        control = session.batch
        assert control is not None
        try:
            batch = read_inputs(inputs, options.fields, strict=options.strict, format=options.format,  # type: ignore[arg-type]
                                turns=options.turns)  # type: ignore[arg-type]
            if not batch.items:
                raise LibraError("no items to check", hint="; ".join(str(i) for i in batch.issues[:3]) or None)
            with session.lease(model, settings) as guard:
                job = BatchJob.open(session.store, guard, batch, options, resume=resume)
                control.run_id = job.run_id
                self.post_message(BatchStarted(job.run_id, job.resumed, len(job.pending),
                                               len(batch.items), [str(i) for i in batch.issues]))
                summary = job.execute(on_progress=self._post_progress, cancel=control.cancel)
            self.post_message(BatchEnded(summary))
        except Exception as exc:  # one notification; finished items are already stored
            self.post_message(WorkFailed.of("batch run", exc))
        finally:
            session.batch = None
            control.finished.set()

    def _post_progress(self, progress: BatchProgress) -> None:
        self.post_message(BatchProgressed(progress))

    # -- handlers ---------------------------------------------------------------------------
    @on(BatchStarted)
    def _batch_started(self, event: BatchStarted) -> None:
        done = event.total - event.pending
        self.query_one(RunProgress).start(event.run_id, done, event.total)
        verb = "resuming" if event.resumed else "checking"
        self.notify(f"run {event.run_id}: {verb} {event.pending} of {event.total} items", timeout=3)
        if event.issues:
            more = f" (+{len(event.issues) - 1} more)" if len(event.issues) > 1 else ""
            self.notify(f"{event.issues[0]}{more}", title="input issues", severity="warning", timeout=8)
        self._select_next = event.run_id
        self.load_runs()

    @on(BatchProgressed)
    def _batch_progressed(self, event: BatchProgressed) -> None:
        p = event.progress
        self.query_one(RunProgress).show(p)
        self.query_one(RunsTable).show_counts(p.run_id, done=p.done, total=p.total,
                                              flagged=p.flagged, errors=p.errors)

    @on(BatchEnded)
    def _batch_ended(self, event: BatchEnded) -> None:
        s = event.summary
        text = (f"run {s.run_id} {s.status}: {s.done}/{s.total} done, {s.flagged} flagged, "
                f"{s.errors} errors, {s.items_per_s:.1f} items/s")
        self.query_one(RunProgress).stop(text)
        self.notify(text, severity="information" if s.status == "finished" else "warning")
        self.load_runs()

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        self.query_one(RunProgress).stop(f"{event.action} failed: {event.message}")
        self.notify(event.message, title=f"{event.action} failed", severity="error", timeout=8)
        self.load_runs()
