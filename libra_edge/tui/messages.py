"""Messages that workers post to screens: small dataclasses, one per event of the slow work.

Workers never touch widgets; they post one of these and the screen's `@on` handler
updates its widgets on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message

from libra_edge.batch.runner import BatchProgress, BatchSummary
from libra_edge.engine import Verdict
from libra_edge.errors import LibraError
from libra_edge.models.registry import InstalledModel
from libra_edge.store import Facets, ResultRow, RunRow


@dataclass
class WorkFailed(Message):
    """A worker stopped on an error; `message` is one line for a notification."""

    action: str
    message: str

    @classmethod
    def of(cls, action: str, exc: BaseException) -> WorkFailed:
        """From an exception: a LibraError's own message, else its type and text."""
        if isinstance(exc, LibraError):
            return cls(action, str(exc))
        return cls(action, f"{type(exc).__name__}: {exc}")


@dataclass
class ModelReady(Message):
    """A guard is loaded and ready (shown in the model line)."""

    name: str
    quant: str


@dataclass
class AnalysisText(Message):
    """A piece of the analysis as the model generates it."""

    text: str


@dataclass
class CheckDone(Message):
    """A check finished."""

    verdict: Verdict


@dataclass
class RunsListed(Message):
    """The store's runs, newest first."""

    runs: list[RunRow]


@dataclass
class RunLoaded(Message):
    """A run's record and its sources/categories (for the results screen's header and menus)."""

    run: RunRow
    facets: Facets


@dataclass
class BatchStarted(Message):
    """A batch run was opened (new or resumed) and is being checked."""

    run_id: int
    resumed: bool
    pending: int
    total: int
    issues: list[str]
    """Input records skipped or warned about, as `file:line: reason`."""


@dataclass
class BatchProgressed(Message):
    """One more item of the running batch is stored."""

    progress: BatchProgress

    def can_replace(self, message: Message) -> bool:
        # Only the newest progress matters: a backlog of updates coalesces into one.
        return isinstance(message, BatchProgressed) and message.progress.run_id == self.progress.run_id


@dataclass
class BatchEnded(Message):
    """The batch run stopped: finished, cancelled (interrupted) or failed."""

    summary: BatchSummary


@dataclass
class ResultsPage(Message):
    """A page of a run's results, for the request numbered `request`."""

    request: int
    rows: list[ResultRow]
    total: int
    offset: int


@dataclass
class ItemLoaded(Message):
    """The item detail moved to another result (`index` is its position in the list)."""

    row: ResultRow
    index: int


@dataclass
class ExportDone(Message):
    """An export file was written."""

    path: Path
    count: int


@dataclass
class ModelsListed(Message):
    """The installed models, read from their manifests."""

    models: list[InstalledModel]


@dataclass
class ReviewProgress(Message):
    """How far the review of a run has got: flagged items with a decision, of all flagged."""

    decided: int
    flagged: int


@dataclass
class QueueFound(Message):
    """The next (or previous) undecided flagged item of the list, at position `index`."""

    row: ResultRow
    index: int


@dataclass
class RangeReady(Message):
    """The rows of a marked range, read for a bulk confirmation."""

    rows: list[ResultRow]
    first: int
    last: int


@dataclass
class SummaryReady(Message):
    """A run's figures (`libra_edge.report.stats.RunSummary`), for the summary panel."""

    summary: Any


@dataclass
class ReportWritten(Message):
    """The run's report file was written."""

    path: Path


@dataclass
class ConversationLoaded(Message):
    """The other turns of the conversation an item belongs to, in turn order."""

    result_id: int
    turns: list[ResultRow]
