"""`audit ask --judge`: each answer judged by the guard as it arrives, into a normal batch run.

The asking threads hand every answered record (the bank record, its `response`, the `ask`
evidence and the refusal/keyword marks, as OUT will hold it) to one judging thread. That
thread is the batch runner itself (`BatchJob.execute`) with an executor that takes its
items from this stream instead of a list: the run is an ordinary run of the store, one row
per question of the bank (`seq` = the question's place in the bank), so `report`, the TUI
and `audit report` read it as any other, and each verdict is committed as it is made.

The run's identity is the evidence journal's header (the service, the request parameters,
the bank's sha256 and when this asking began), so `audit ask --resume --judge` continues
the same run after any stop, kill -9 included: a judged answer is not judged again (its
row is in the store), an answered but unjudged one is judged first, from the journal,
without asking again, and the rest as they are answered.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from libra_edge.audit.ask import Marks, Question, answered_record
from libra_edge.batch import (BatchInput, BatchJob, BatchOptions, BatchProgress, BatchSummary, FieldMap, GuardLike,
                              Item, RunInterrupted, judge_pairs)
from libra_edge.batch.runner import local_node
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.store import Store

if TYPE_CHECKING:
    from libra_edge.batch import AnalysisMode

_DONE = object()
"""Put on the stream when asking has ended: no more answers will come."""
_REFILL = 4
"""Answers taken at once per parallel sequence, when that many are waiting."""


def stream_digest(header: dict[str, Any]) -> str:
    """The identity of one asking (the evidence header), standing for the run's input digest."""
    return hashlib.sha256(json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


class StreamJudge:
    """Judges answers as `run_ask` hands them over (`on_start`, `on_answer`), in a thread of its own."""

    def __init__(self, store: Store, guard: GuardLike, marks: Marks, *, output: Path, analysis: str,
                 question_field: str = "question",
                 on_progress: Callable[[BatchProgress], None] | None = None) -> None:
        self.store = store
        self.guard = guard
        self.marks = marks
        self.output = output
        self.options = BatchOptions(analysis=cast("AnalysisMode", analysis), fields=FieldMap(question=question_field))
        self.on_progress = on_progress
        self.job: BatchJob | None = None
        self.judged_before = 0
        """Questions judged by an earlier run of the same asking (not judged again)."""
        self.replayed = 0
        """Answers from the journal judged now (answered before, not yet judged)."""
        self._stream: queue.Queue[Any] = queue.Queue()
        self._pending: set[int] = set()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._summary: BatchSummary | None = None
        self._error: BaseException | None = None

    # -- run_ask's hooks -----------------------------------------------------------------
    def start(self, header: dict[str, Any], questions: list[Question], outcomes: dict[str, dict[str, Any]]) -> None:
        """`on_start`: open (or continue) the run, queue the answers not judged yet, start judging."""
        fields = self.options.fields
        expected = [Item(seq=q.seq, question=q.text, response="", fields=q.record, item_id=None, source=None,
                         category=None, sub_category=None, file=q.file, line=q.line) for q in questions]
        batch = BatchInput(files=[self.output], fields=fields, items=expected, labels=[str(self.output)],
                           file_digests=[stream_digest(header)])
        self.job = job = BatchJob.open(self.store, self.guard, batch, self.options)
        self._pending = {item.seq for item in job.pending}
        self.judged_before = len(questions) - len(self._pending)
        for q in questions:  # answered before this command, not judged yet: judged first, in bank order
            outcome = outcomes.get(q.key)
            if outcome is not None and outcome.get("status") == "answered" and q.seq in self._pending:
                self._stream.put(self.item(q, outcome))
                self.replayed += 1
        if job.pending:
            self._thread = threading.Thread(target=self._judge, name="judge", daemon=True)
            self._thread.start()

    def submit(self, question: Question, outcome: dict[str, Any]) -> None:
        """`on_answer`: judge this answer (one already judged is not judged again)."""
        if question.seq in self._pending:
            self._stream.put(self.item(question, outcome))

    # -- the end ---------------------------------------------------------------------------
    def finish(self) -> BatchSummary | None:
        """Asking is over: judge what is queued, then return how the run ended (None: nothing was left)."""
        self._stream.put(_DONE)
        return self._join()

    def stop(self) -> BatchSummary | None:
        """Stop now (Ctrl-C): the answer being judged stays unjudged, for `--resume`."""
        self._cancel.set()
        self._stream.put(_DONE)
        return self._join()

    def _join(self) -> BatchSummary | None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._summary

    # -- the judging thread ------------------------------------------------------------------
    def item(self, q: Question, outcome: dict[str, Any]) -> Item:
        """The answered record as `batch OUT` would read it (marks included), at the question's place."""
        record = {**answered_record(q.record, outcome), **self.marks.of(outcome["response"])}
        f = self.options.fields

        def optional(key: str) -> str | None:
            value = record.get(key)
            if value in (None, ""):
                return None
            return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) else None

        return Item(seq=q.seq, question=q.text, response=record["response"], fields=record,
                    item_id=optional(f.id), source=optional(f.source), category=optional(f.category),
                    sub_category=optional(f.sub_category), file=q.file, line=q.line)

    def _judge(self) -> None:
        assert self.job is not None
        try:
            self._summary = self.job.execute(on_progress=self.on_progress, cancel=self._cancel, executor=self)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by _join
            self._error = exc

    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Any], None],
            cancel: threading.Event) -> bool:
        """The executor `BatchJob.execute` calls: judge the streamed answers until every expected
        question is judged, or asking ends (`RunInterrupted`: the rest wait for `--resume`)."""
        node, host, build = local_node()
        job.join(node, host=host, build=build, model_sha256=job.store.run(job.run_id).model_sha256)
        job.local_node = node
        expected = {item.seq for item in items}
        parallel = max(1, int(getattr(job.guard, "parallel", 1)))
        step = parallel * _REFILL if parallel > 1 else 1
        ended = False
        while expected and not ended:
            first = self._stream.get()
            if first is _DONE or cancel.is_set():
                break
            chunk: list[Item] = [first]
            while len(chunk) < step:  # whatever else is waiting, up to the guard's refill
                try:
                    nxt = self._stream.get_nowait()
                except queue.Empty:
                    break
                if nxt is _DONE:
                    ended = True
                    break
                chunk.append(nxt)
            chunk = [i for i in chunk if i.seq in expected]
            try:
                judge_pairs(job.guard, [(i.question, i.response) for i in chunk], job.options.analysis,
                            lambda k, outcome: record(chunk[k], outcome), cancel=cancel)
            except CheckCancelled:
                return False
            expected -= {i.seq for i in chunk}
        if cancel.is_set():
            return False
        if expected:
            raise RunInterrupted(f"{len(expected):,} question(s) not answered yet: `audit ask --resume --judge` "
                                 "asks and judges them")
        return True
