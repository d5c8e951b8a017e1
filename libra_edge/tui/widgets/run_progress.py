"""The progress panel of the batch run this TUI is checking: bar, counts, rate and ETA."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from libra_edge.batch.runner import BatchProgress


class RunProgress(Horizontal):
    """Hidden until a run starts here; then a bar and `run 3: 120/500 · 14 flagged · 2.1/s · ETA 3m`."""

    DEFAULT_CSS = """
    RunProgress { height: 1; display: none; padding: 0 1; }
    RunProgress.-active { display: block; }
    RunProgress > ProgressBar { width: 40; }
    RunProgress > Static { width: 1fr; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False, show_percentage=True)
        yield Static("", id="run-progress-text", markup=False)

    def start(self, run_id: int, done: int, total: int) -> None:
        """Show the panel for a run about to be checked."""
        self.add_class("-active")
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one(Static).update(f"run {run_id}: {done}/{total} · starting…")

    def show(self, p: BatchProgress) -> None:
        """Show the newest progress of the run."""
        self.query_one(ProgressBar).update(total=max(p.total, 1), progress=p.done)
        eta = "" if p.eta_s is None else f" · ETA {_duration(p.eta_s)}"
        self.query_one(Static).update(
            f"run {p.run_id}: {p.done}/{p.total} · {p.flagged} flagged · {p.errors} errors"
            f" · {p.rate:.1f}/s{eta}  (x cancels)"
        )

    def stop(self, text: str) -> None:
        """The run ended: keep the final line, hide the bar's animation."""
        self.query_one(Static).update(text)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
