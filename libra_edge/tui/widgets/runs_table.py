"""The table of batch runs: one row per run, newest first, with live counts."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from libra_edge.store import RunRow
from libra_edge.tui.formatting import inputs_label

COLUMNS = ("run", "status", "input", "model", "analysis", "done", "flagged", "errors", "reviewed", "progress")
STATUS_STYLE = {"running": "bold yellow", "finished": "green", "interrupted": "magenta", "failed": "bold red"}


def _progress(done: int, total: int) -> str:
    return f"{100 * done / total:5.1f}%" if total else "  —  "


class RunsTable(DataTable[object]):
    """Runs keyed by id; `show_runs` refreshes them all, `show_counts` one running row."""

    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """
    BINDINGS = [Binding("enter", "select_cursor", "Results")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._ids: list[int] = []

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_run_id(self) -> int | None:
        """The id of the run under the cursor (None when there are no runs)."""
        if not self._ids or not 0 <= self.cursor_row < len(self._ids):
            return None
        return self._ids[self.cursor_row]

    def show_runs(self, runs: list[RunRow]) -> None:
        """Replace the rows (keeping the cursor on the same run when it is still listed)."""
        keep = self.selected_run_id
        ids = [r.id for r in runs]
        if ids == self._ids:  # same runs: update cells in place, no flicker
            for run in runs:
                for name, value in zip(COLUMNS, self._cells(run)):
                    self.update_cell(str(run.id), name, value)
            return
        self.clear()
        self._ids = ids
        for run in runs:
            self.add_row(*self._cells(run), key=str(run.id))
        if keep in ids:
            self.move_cursor(row=ids.index(keep))

    def select_run(self, run_id: int) -> None:
        """Put the cursor on this run."""
        if run_id in self._ids:
            self.move_cursor(row=self._ids.index(run_id))

    def show_counts(self, run_id: int, *, done: int, total: int, flagged: int, errors: int) -> None:
        """Live counts of a running run (from the batch worker's progress)."""
        if run_id not in self._ids:
            return
        key = str(run_id)
        self.update_cell(key, "status", Text("running", style=STATUS_STYLE["running"]))
        self.update_cell(key, "done", Text(f"{done}/{total}"))
        self.update_cell(key, "flagged", Text(str(flagged)))
        self.update_cell(key, "errors", Text(str(errors)))
        self.update_cell(key, "progress", Text(_progress(done, total)))

    @staticmethod
    def _cells(run: RunRow) -> tuple[object, ...]:
        # Text, not str: a DataTable parses str cells as markup (file names may hold `[`).
        return (
            Text(str(run.id)),
            Text(run.status, style=STATUS_STYLE.get(run.status, "")),
            Text(inputs_label(run.inputs)),
            Text(run.model_name),
            Text(str(run.options.get("analysis", "all"))),
            Text(f"{run.done}/{run.total}"),
            Text(str(run.flagged)),
            Text(str(run.errors)),
            Text(str(run.reviewed)),
            Text(_progress(run.done, run.total)),
        )
