"""Run a batch: check items with a Guard, commit each verdict to the store, resume where stopped.

    batch = read_inputs(["logs.jsonl"])
    with Guard.load(model, EngineSettings(...)) as guard, open_store() as store:
        job = BatchJob.open(store, guard, batch, BatchOptions(analysis="flagged"))
        summary = job.execute(on_progress=print, cancel=threading.Event())

    # continue a stored run: its verdict settings, this machine's speed settings
    settings = resume_settings(store.run(run_id), threads=4)

Every input record ends as one stored row: a verdict, a failure (retried on resume) or a
placeholder saying why the record was skipped. The CLI and the TUI drive runs through
this same API; only they draw progress.

This module executes runs: a job's items go to an executor (this process's guard, or a
Ray cluster's actors: `batch.cluster`) and each outcome is committed. What identifies a
run and what it records is `batch.identity`; how items are judged (the analysis modes,
a failure as an outcome) is `batch.policy`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from libra_edge.batch.identity import (
    BatchOptions,
    describe_mismatch,
    fingerprint,
    input_labels,
    model_sha256,
    record_run,
    resume_settings,
)
from libra_edge.batch.policy import (
    ANALYSIS_MODES,
    AnalysisMode,
    GuardLike,
    Outcome,
    VerdictLike,
    describe,
    judge_pairs,
    parallel_of,
)
from libra_edge.batch.readers import BatchInput, Item
from libra_edge.engine import Guard
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import DiskFullError, InputError, LibraError
from libra_edge.store import RunRow, Store

# Failures listed in a summary (all of them are in the store).
_FAILURES_SHOWN = 5
# Items handed to a parallel guard at a time, per sequence: enough that a freed sequence
# is refilled at once, few enough that Ctrl-C stops soon.
_REFILL = 4


@dataclass(frozen=True)
class BatchProgress:
    """Where a run stands, after each stored item (for progress bars)."""

    run_id: int
    total: int
    done: int
    """Items with a result, including those stored before a resume."""
    done_now: int
    """Items checked by this `execute` call."""
    flagged: int
    errors: int
    elapsed_s: float
    rate: float
    """Items per second in this `execute` call."""
    eta_s: float | None
    last_seq: int | None = None
    window: int | None = None
    """A response judged in windows: the window being judged now (1-based), else None."""
    windows: int | None = None
    """Its number of windows (with `window`)."""


@dataclass(frozen=True)
class BatchSummary:
    """How an `execute` call ended."""

    run_id: int
    status: Literal["finished", "interrupted", "failed"]
    total: int
    done: int
    done_now: int
    flagged: int
    errors: int
    """Items whose check failed (stored with the error; a rerun retries them)."""
    skipped: int
    """Input records that yield no item (each has a placeholder row)."""
    elapsed_s: float
    message: str | None = None
    truncated: int = 0
    """Items whose text was cut to fit the context."""
    chunked: int = 0
    """Items whose response was judged in more than one window."""
    failures: tuple[str, ...] = ()
    """The first few failures of this call, as `file:line: error`."""

    @property
    def items_per_s(self) -> float:
        """Throughput of this call."""
        return self.done_now / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Finished, with no record skipped and no item failed."""
        return self.status == "finished" and not self.errors and not self.skipped


def load_guard(model: str | os.PathLike[str], settings: EngineSettings) -> Guard:
    """`Guard.load(model, settings)`: the guard a run (CLI or TUI) checks with.

    Never wrapped in file-descriptor redirection: in the TUI fd 2 is where Textual draws,
    and the engine keeps llama.cpp quiet through its log callback.
    """
    return Guard.load(model, settings)


def processing_order(items: Iterable[Item]) -> list[Item]:
    """Items grouped by question (groups in order of first appearance, stable inside).

    The engine keeps the KV state of the prompt prefix shared with the previous check;
    adjacent items with the same question skip re-evaluating it. Output order is
    unaffected: results are stored and exported by `seq`.
    """
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.question, []).append(item)
    return [item for group in groups.values() for item in group]


def verdict_record(verdict: VerdictLike) -> dict[str, Any]:
    """What the store keeps of a verdict: `Verdict.to_dict()`."""
    return dict(verdict.to_dict())


class BatchJob:
    """One run bound to its store, guard and items; `execute` checks what is still missing."""

    def __init__(self, store: Store, guard: GuardLike, batch: BatchInput, options: BatchOptions,
                 run: RunRow, *, resumed: bool) -> None:
        self.store = store
        self.guard = guard
        self.batch = batch
        self.options = options
        self.run_id = run.id
        self.resumed = resumed
        done = store.done_seqs(run.id, include_errors=False)
        self.pending: list[Item] = [item for item in batch.items if item.seq not in done]
        self.local_node: str | None = None
        """The node an outcome without one was judged on (set by the executor)."""
        self.allow_mixed_builds = False
        self.on_window: Callable[[Item, int, int], None] | None = None
        """`on_window(item, k, n)`: an executor judging `item` in windows reports window k of n
        (0-based; set by `execute` to report progress)."""

    @classmethod
    def open(cls, store: Store, guard: GuardLike, batch: BatchInput, options: BatchOptions, *,
             resume: int | None = None, new: bool = False) -> BatchJob:
        """Continue run `resume`, else the run with the same fingerprint, else start one.

        `new=True` always starts a fresh run. The inputs' placeholders (records that yield
        no item) are stored at once. Raises LibraError when `resume` names a run made from
        other inputs, model or settings, or one another process is running.
        """
        if not batch.items:
            hint = "; ".join(str(i) for i in batch.issues[:3]) or "every input record was empty or unreadable"
            raise InputError("no items to check", hint=hint)
        sha = model_sha256(guard)
        settings = guard.settings
        fp = fingerprint(batch, options, sha, settings)
        run: RunRow | None = None
        if resume is not None:
            run = store.run(resume)
            if run.fingerprint != fp:
                raise LibraError(f"cannot resume run {resume}: {describe_mismatch(run, batch, options, sha, settings)}")
        elif not new:
            run = store.find_run(fp)
        if run is None:
            run_id = record_run(store, guard, fingerprint=fp, inputs=input_labels(batch),
                                options={**options.to_json(), "inputs_digest": batch.digest},
                                total=len(batch.items), skipped=batch.skipped, sha256=sha)
            store.add_placeholders(run_id, batch.placeholders)
            return cls(store, guard, batch, options, store.run(run_id), resumed=False)
        job = cls(store, guard, batch, options, run, resumed=True)
        if not job.pending:  # complete already (perhaps killed right after its last commit)
            store.add_placeholders(run.id, batch.placeholders)
            if run.status != "finished":
                store.finish_run(run.id, "finished")
            return job
        if run.status == "running":
            raise LibraError(f"run {run.id} is being checked by another process right now",
                             hint="wait for it, or stop it (Ctrl-C) and resume")
        store.claim_run(run.id, total=len(batch.items), skipped=batch.skipped)
        store.add_placeholders(run.id, batch.placeholders)
        return job

    @property
    def n_parallel(self) -> int:
        """Items handed to the guard at once (its `parallel`; 1 without `check_many`)."""
        return parallel_of(self.guard)

    def execute(self, *, on_progress: Callable[[BatchProgress], None] | None = None,
                cancel: threading.Event | None = None, executor: Executor | None = None,
                allow_mixed_builds: bool = False) -> BatchSummary:
        """Check the pending items, committing each result; stop early when `cancel` is set.

        A set `cancel` stops the local guard within one llama.cpp call, wherever it is
        (between a long response's windows, between decode steps of an analysis): the
        items being judged stay pending, to be judged whole on resume (with the same
        score). `on_progress` also gets a `BatchProgress` with `window`/`windows` before
        each window of a response judged in windows (from the engine's worker thread).

        `executor` judges the items (default: this process's guard; `batch.cluster` has
        one for a Ray cluster). Each machine that judges is recorded with its llama.cpp
        build (`Store.run_nodes`); a build other than the run's first one raises
        `MixedBuildError` unless `allow_mixed_builds`. Returns how the run ended; the
        run's status in the store says the same. A KeyboardInterrupt marks the run
        `interrupted` and propagates; so does a full disk (`DiskFullError`, saying how
        much space the rest needs: every stored item is kept). An executor that loses
        its machines (`RunInterrupted`) ends the run `interrupted`, to be resumed.
        """
        cancel = cancel or threading.Event()
        executor = executor or LocalExecutor()
        self.allow_mixed_builds = allow_mixed_builds
        run = self.store.run(self.run_id)
        counts = {"done": run.done - run.errors, "flagged": run.flagged, "errors": 0}
        total = len(self.batch.items)
        t0 = time.perf_counter()
        done_now = 0
        failures: list[str] = []
        status: Literal["finished", "interrupted", "failed"] = "interrupted"
        message: str | None = None

        def progress(last_seq: int | None, window: int | None = None, windows: int | None = None) -> None:
            if on_progress is None:
                return
            elapsed = time.perf_counter() - t0
            rate = done_now / elapsed if elapsed > 0 else 0.0
            left = total - counts["done"]
            on_progress(BatchProgress(
                run_id=self.run_id, total=total, done=counts["done"], done_now=done_now,
                flagged=counts["flagged"], errors=counts["errors"], elapsed_s=elapsed,
                rate=rate, eta_s=left / rate if rate > 0 else None, last_seq=last_seq,
                window=window, windows=windows))

        self.on_window = lambda item, k, n: progress(item.seq, k + 1, n)
        try:
            order = processing_order(self.pending)

            def record(item: Item, outcome: Outcome) -> None:
                nonlocal done_now
                self._store(item, outcome)
                done_now += 1
                counts["done"] += 1
                if isinstance(outcome, Exception):
                    counts["errors"] += 1
                    if len(failures) < _FAILURES_SHOWN:
                        failures.append(f"{item.file}:{item.line}: {describe(outcome)}")
                elif outcome.unsafe:
                    counts["flagged"] += 1
                progress(item.seq)

            # With parallel sequences the engine refills a finished sequence at once
            # (continuous batching), so it gets several slots' worth of items at a time;
            # each verdict is committed as it finishes.
            if executor.run(self, order, record, cancel):
                status = "finished"
            else:
                message = "cancelled"
        except RunInterrupted as exc:
            status, message = "interrupted", str(exc)
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by Ctrl-C"
            raise
        except DiskFullError:
            status, message = "interrupted", "disk full"
            left = len(self.pending) - done_now
            raise self.store.disk_full(left) from None
        except Exception as exc:
            status, message = "failed", describe(exc)
            raise
        finally:
            try:
                self.store.finish_run(self.run_id, status, message)
            except DiskFullError:
                pass  # the run reads as interrupted once this process is gone
            done = self.store.done_seqs(self.run_id, include_errors=False)  # once, not per item
            self.pending = [i for i in self.pending if i.seq not in done]
        final = self.store.run(self.run_id)
        return BatchSummary(run_id=self.run_id, status=status, total=total, done=final.done,
                            done_now=done_now, flagged=final.flagged, errors=final.errors,
                            skipped=self.batch.skipped, elapsed_s=time.perf_counter() - t0, message=message,
                            truncated=final.truncated, chunked=final.chunked, failures=tuple(failures))

    # -- machines ------------------------------------------------------------------------
    def join(self, node: str, *, host: str | None, build: str, model_sha256: str) -> None:
        """Admit a machine to the run before storing its verdicts (executors call this).

        Raises LibraError when its model file is not the run's, `MixedBuildError` when
        its llama.cpp build differs from the run's first machine's (unless allowed).
        """
        run = self.store.run(self.run_id)
        where = f"{host} (node {node[:12]})" if host and host != node else node
        if model_sha256 != run.model_sha256:
            raise LibraError(f"{where} holds another model file: sha256 {model_sha256[:16]}…, "
                             f"the run's is {run.model_sha256[:16]}…",
                             hint="put the same GGUF on every node (see the README's cluster section)")
        first = next(iter(self.store.run_nodes(self.run_id)), None)
        if first is not None and first.build != build and not self.allow_mixed_builds:
            raise MixedBuildError(
                f"{where} runs another llama.cpp build than {first.host or first.node}, which judged "
                f"this run first: {build!r} vs {first.build!r}; the same pair would get slightly other "
                "scores", hint="use one build everywhere, or accept it with --allow-mixed-builds "
                "(the run then records which node judged each item)")
        self.store.record_node(self.run_id, node, host=host, build=build, model_sha256=model_sha256)

    def _store(self, item: Item, outcome: Outcome) -> None:
        error = verdict = None
        if isinstance(outcome, Exception):
            error = str(outcome) or type(outcome).__name__
        else:
            verdict = verdict_record(outcome)
        self.store.add_result(
            self.run_id, seq=item.seq, question=item.question, response=item.response, fields=item.fields,
            verdict=verdict, error=error, item_id=item.item_id, source=item.source, category=item.category,
            sub_category=item.sub_category, input_file=item.file, input_line=item.line,
            conversation_id=item.conversation_id, turn_index=item.turn_index,
            node=getattr(outcome, "node", None) or self.local_node,
        )


class RunInterrupted(LibraError):
    """An executor lost the machines judging the run: it ends `interrupted`, to be resumed."""


class MixedBuildError(LibraError):
    """A machine with another llama.cpp build than the run's first would judge its items."""


class Executor(Protocol):
    """Judges a job's items somewhere: `run` calls `record(item, verdict or exception)` for each.

    Returns True when every item was recorded, False when `cancel` stopped it first.
    """

    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Outcome], None],
            cancel: threading.Event) -> bool: ...


def local_node() -> tuple[str, str, str]:
    """(node name, host, llama.cpp build) of this process, for a run judged here."""
    import socket

    from libra_edge.engine import llama

    host = socket.gethostname()
    return f"local:{host}", host, llama.build_features()


class LocalExecutor:
    """Judges in this process with the job's guard, committing each verdict as it finishes."""

    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Outcome], None],
            cancel: threading.Event) -> bool:
        node, host, build = local_node()
        job.join(node, host=host, build=build, model_sha256=job.store.run(job.run_id).model_sha256)
        job.local_node = node
        # With parallel sequences the engine refills a finished sequence at once
        # (continuous batching), so it gets several slots' worth of items at a time.
        n = parallel_of(job.guard)
        step = n * _REFILL if n > 1 else 1
        report = job.on_window
        for start in range(0, len(items), step):
            if cancel.is_set():
                return False
            chunk = items[start:start + step]
            windows = None if report is None else (lambda k, w, n_w, c=chunk: report(c[k], w, n_w))
            try:
                judge_pairs(job.guard, [(i.question, i.response) for i in chunk], job.options.analysis,
                            lambda k, outcome: record(chunk[k], outcome), cancel=cancel, on_window=windows)
            except CheckCancelled:
                return False  # the items being judged stay pending; the finished ones are stored
        return True


__all__ = [
    "ANALYSIS_MODES",
    "AnalysisMode",
    "BatchJob",
    "BatchOptions",
    "BatchProgress",
    "BatchSummary",
    "Executor",
    "GuardLike",
    "LocalExecutor",
    "MixedBuildError",
    "Outcome",
    "RunInterrupted",
    "VerdictLike",
    "fingerprint",
    "judge_pairs",
    "load_guard",
    "local_node",
    "parallel_of",
    "processing_order",
    "resume_settings",
    "verdict_record",
]
