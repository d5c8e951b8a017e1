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
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from libra_edge import __version__
from libra_edge.batch.fields import FieldMap
from libra_edge.batch.readers import BatchInput, Item
from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS
from libra_edge.engine import Guard
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.engine.prompt import PROMPT_TEMPLATE_VERSION
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import DiskFullError, InputError, LibraError
from libra_edge.store import RunRow, Store

AnalysisMode = Literal["all", "flagged", "none"]
ANALYSIS_MODES: tuple[str, ...] = ("all", "flagged", "none")
# Verdict fields the store keeps, with what their absence means (a Verdict-like object
# that lacks them judged one window of the text as given).
_VERDICT_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("windows", 1), ("window", 0), ("span", None), ("normalized", False), ("analysis_cut", False))
# Failures listed in a summary (all of them are in the store).
# Items handed to a parallel guard at a time, per sequence: enough that a freed sequence
# is refilled at once, few enough that Ctrl-C stops soon.
_REFILL = 4
_FAILURES_SHOWN = 5


class GuardLike(Protocol):
    """What the runner needs from `libra_edge.engine.Guard` (read-only attributes and two methods)."""

    @property
    def info(self) -> Any:
        """`GGUFInfo`: `path`, `name`, `quant`."""

    @property
    def settings(self) -> EngineSettings:
        """The effective settings: their verdict fields make the run's fingerprint."""

    @property
    def parallel(self) -> int:
        """Sequences decoded together: `check_many` gets chunks of this many items."""

    def check(self, question: str, response: str, *, analysis: bool = True,
              cancel: threading.Event | None = None,
              on_window: Callable[[int, int], None] | None = None) -> Any: ...

    def check_many(self, pairs: Sequence[tuple[str, str]], *, analysis: bool = True,
                   on_verdict: Callable[[int, Any], None] | None = None,
                   cancel: threading.Event | None = None,
                   on_window: Callable[[int, int, int], None] | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class BatchOptions:
    """How a run reads and checks its items; part of the run's identity (fingerprint)."""

    analysis: AnalysisMode = "all"
    """`all`: every item gets an analysis; `flagged`: only unsafe ones (a fast check
    first); `none`: verdict and score only (`--fast`)."""
    fields: FieldMap = field(default_factory=FieldMap)
    strict: bool = False
    format: str = "auto"
    """Record format: `auto` (detected per file), `pairs`, `messages`, `conversations`."""
    turns: str = "all"
    """Transcripts: judge `all` assistant turns or only the `last` of each conversation."""

    def __post_init__(self) -> None:
        if self.analysis not in ANALYSIS_MODES:
            raise LibraError(f"analysis: expected all, flagged or none, got {self.analysis!r}")
        if self.format not in INPUT_FORMATS:
            raise LibraError(f"format: expected {', '.join(INPUT_FORMATS)}, got {self.format!r}")
        if self.turns not in TURN_SELECTIONS:
            raise LibraError(f"turns: expected all or last, got {self.turns!r}")

    def to_json(self) -> dict[str, Any]:
        """Stored with the run (`RunRow.options`)."""
        return {"analysis": self.analysis, "fields": self.fields.to_json(), "strict": self.strict,
                "format": self.format, "turns": self.turns}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchOptions:
        """The options a stored run was made with (runs before transcripts: pairs, all turns)."""
        return cls(analysis=data.get("analysis", "all"), fields=FieldMap.from_json(data.get("fields")),
                   strict=bool(data.get("strict", False)), format=str(data.get("format", "auto")),
                   turns=str(data.get("turns", "all")))


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


class GroupFailure(Exception):
    """A parallel group's `check_many` failed: each of its items is a failure with this message."""


def resume_settings(run: RunRow, **speed: Any) -> EngineSettings:
    """The settings to load a Guard with to continue `run`: the CLI's and the TUI's resume.

    Verdict-relevant settings (context per sequence, threshold, max tokens, long-text
    mode, normalisation, GPU layers) are the run's own, so the resumed run has the same
    fingerprint; speed settings (`parallel`, `threads`, `mmap`, `verbose`) are the run's
    unless given here (None keeps the run's). Naming a verdict setting raises LibraError.
    """
    if run.options.get("kind") == "serve":
        raise LibraError(f"run {run.id} was recorded by `libra-edge serve`: it has no input files to resume",
                         hint=f"see it with `libra-edge report {run.id}`")
    verdict = sorted(set(speed) & set(EngineSettings.verdict_fields()))
    if verdict:
        raise LibraError(f"run {run.id}: {', '.join(verdict)} decide verdicts and cannot change on resume",
                         hint="start a new run to use other values")
    return EngineSettings.from_stored(run.settings).replace(**{k: v for k, v in speed.items() if v is not None})


def load_guard(model: str | os.PathLike[str], settings: EngineSettings) -> Guard:
    """`Guard.load(model, settings)`: the guard a run (CLI or TUI) checks with."""
    return Guard.load(model, settings)


def fingerprint(batch: BatchInput, options: BatchOptions, model_sha256: str, settings: EngineSettings) -> str:
    """Identity of a run: same inputs, model, verdict-relevant settings and mode = same run."""
    payload = {
        "inputs": batch.digest,
        "model": model_sha256,
        "settings": settings.verdict_key(),
        "prompt": PROMPT_TEMPLATE_VERSION,
        "analysis": options.analysis,
        "format": options.format,
        "turns": options.turns,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


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


def verdict_record(verdict: Any) -> dict[str, Any]:
    """`Verdict.to_dict()` with every field the store keeps (older engines' defaults filled in)."""
    record = dict(verdict.to_dict())
    for name, default in _VERDICT_DEFAULTS:
        record.setdefault(name, getattr(verdict, name, default))
    return record


def _describe_mismatch(run: RunRow, batch: BatchInput, options: BatchOptions, sha: str,
                       settings: EngineSettings) -> str:
    """Why a run cannot be resumed with these inputs/model/settings, in words."""
    reasons = []
    if run.model_sha256 != sha:
        reasons.append(f"it used model {run.model_name} (sha256 {run.model_sha256[:12]}…), not this one")
    stored = BatchOptions.from_json(run.options)
    for name in ("analysis", "format", "turns"):
        if getattr(stored, name) != getattr(options, name):
            reasons.append(f"it used --{name} {getattr(stored, name)}, not {getattr(options, name)}")
    if stored.fields != options.fields:
        reasons.append("it used other field names")
    try:
        before = EngineSettings.from_stored(run.settings).verdict_key()
    except LibraError:
        before = {}
    for key, value in settings.verdict_key().items():
        if before.get(key) != value:
            reasons.append(f"its {key} was {before.get(key)!r}, now {value!r}")
    digest = run.options.get("inputs_digest")
    if digest is not None and digest != batch.digest:
        reasons.append("the input files changed since")
    if not reasons:
        reasons.append("the input files changed since" if digest is not None else
                       "it was recorded by an earlier libra-edge, which identified runs differently "
                       "(start a new run; the old one stays in the database)")
    return "; ".join(reasons)


def _stored_settings(settings: EngineSettings) -> dict[str, Any]:
    """What a run records: every setting, the prompt template's and the tool's versions, and
    the llama.cpp build whose arithmetic made the scores (another SIMD path differs slightly)."""
    from libra_edge.engine import llama

    return {**settings.to_dict(), "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "libra_edge_version": __version__, "build": llama.build_features()}


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
        sha = _model_sha256(guard, store)
        settings = guard.settings
        fp = fingerprint(batch, options, sha, settings)
        run: RunRow | None = None
        if resume is not None:
            run = store.run(resume)
            if run.fingerprint != fp:
                raise LibraError(f"cannot resume run {resume}: {_describe_mismatch(run, batch, options, sha, settings)}")
        elif not new:
            run = store.find_run(fp)
        if run is None:
            run_id = store.create_run(
                fingerprint=fp, inputs=[_input_label(label) for label in batch.labels],
                model_path=str(guard.info.path), model_name=guard.info.name, model_sha256=sha,
                quant=getattr(guard.info, "quant", None), settings=_stored_settings(settings),
                prompt_template_version=PROMPT_TEMPLATE_VERSION,
                options={**options.to_json(), "inputs_digest": batch.digest}, total=len(batch.items),
                skipped=batch.skipped,
            )
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

            def record(item: Item, outcome: Any) -> None:
                nonlocal done_now
                self._store(item, outcome)
                done_now += 1
                counts["done"] += 1
                if isinstance(outcome, Exception):
                    counts["errors"] += 1
                    if len(failures) < _FAILURES_SHOWN:
                        failures.append(f"{item.file}:{item.line}: {_describe(outcome)}")
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
            status, message = "failed", _describe(exc)
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

    def _store(self, item: Item, outcome: Any) -> None:
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

    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Any], None],
            cancel: threading.Event) -> bool: ...


def parallel_of(guard: GuardLike) -> int:
    """Items a guard judges at once (its `parallel`; 1 without `check_many`)."""
    if not callable(getattr(guard, "check_many", None)):
        return 1
    return max(1, int(getattr(guard, "parallel", 1)))


def local_node() -> tuple[str, str, str]:
    """(node name, host, llama.cpp build) of this process, for a run judged here."""
    import socket

    from libra_edge.engine import llama

    host = socket.gethostname()
    return f"local:{host}", host, llama.build_features()


class LocalExecutor:
    """Judges in this process with the job's guard, committing each verdict as it finishes."""

    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Any], None],
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


def judge_pairs(guard: GuardLike, pairs: Sequence[tuple[str, str]], analysis: str,
                record: Callable[[int, Any], None], *, cancel: threading.Event | None = None,
                on_window: Callable[[int, int, int], None] | None = None) -> None:
    """Judge `pairs` per the analysis mode; `record(index, verdict or exception)` as each ends.

    The batch runner's and each cluster actor's way of judging, so both give the same rows.
    A failed check is recorded as its exception (a rerun retries it); MemoryError,
    KeyboardInterrupt and a full disk propagate, and so does `CheckCancelled` once
    `cancel` is set (the pairs not recorded yet are not judged). `on_window(index, k, n)`
    reports a windowed pair's windows. Both are handed to the guard only when given, so
    a guard without them serves a caller that needs neither.
    """
    extra: dict[str, Any] = {}
    if cancel is not None:
        extra["cancel"] = cancel
    if analysis != "flagged":
        if on_window is not None:
            extra["on_window"] = on_window
        _judge_many(guard, pairs, analysis=analysis == "all", record=record, extra=extra)
        return
    # A fast check decides; only unsafe items pay for an analysis. The engine keeps the
    # header's and question's blocks, so the second pass evaluates the response block
    # again (the same blocks, the same score) and then writes the analysis.
    unsafe: list[int] = []

    def triage(i: int, outcome: Any) -> None:
        if not isinstance(outcome, Exception) and outcome.unsafe:
            unsafe.append(i)
        else:
            record(i, outcome)

    report = on_window
    _judge_many(guard, pairs, analysis=False, record=triage,
                extra=extra if report is None else {**extra, "on_window": report})
    if unsafe:
        again = dict(extra)
        if report is not None:
            again["on_window"] = lambda k, w, n: report(unsafe[k], w, n)
        _judge_many(guard, [pairs[i] for i in unsafe], analysis=True,
                    record=lambda k, outcome: record(unsafe[k], outcome), extra=again)


def _judge_many(guard: GuardLike, pairs: Sequence[tuple[str, str]], *, analysis: bool,
                record: Callable[[int, Any], None], extra: dict[str, Any]) -> None:
    """`extra`: `cancel` and `on_window(index, k, n)` for the guard, when given."""
    if parallel_of(guard) > 1 and len(pairs) > 1:
        seen: set[int] = set()

        def on_verdict(i: int, verdict: Any) -> None:
            seen.add(i)
            record(i, verdict)

        try:
            guard.check_many(pairs, analysis=analysis, on_verdict=on_verdict, **extra)
        except (KeyboardInterrupt, MemoryError, DiskFullError, CheckCancelled):
            raise
        except Exception as exc:
            # Recorded against every unfinished item of the group (a rerun retries them).
            failure = GroupFailure(f"its parallel group of {len(pairs)} failed: {_describe(exc)}")
            for i in range(len(pairs)):
                if i not in seen:
                    record(i, failure)
        return
    report = extra.get("on_window")
    for i, (question, response) in enumerate(pairs):
        single = {k: v for k, v in extra.items() if k != "on_window"}
        if report is not None:
            single["on_window"] = lambda k, n, i=i: report(i, k, n)
        try:
            outcome: Any = guard.check(question, response, analysis=analysis, **single)
        except (KeyboardInterrupt, MemoryError, CheckCancelled):
            raise
        except Exception as exc:
            outcome = exc
        record(i, outcome)


def _model_sha256(guard: GuardLike, store: Store) -> str:
    """The model file's sha256 as the guard's verdicts carry it (`Guard.model_sha256`: the
    manifest of an installed model, else hashed once per file and cached), so a new file is
    hashed once, not once for the run and again for the verdicts; else the store's cache."""
    sha = getattr(guard, "model_sha256", None)
    return sha if isinstance(sha, str) else store.file_sha256(guard.info.path)


def _describe(exc: BaseException) -> str:
    """An exception as one line: its message, or its class name when it has none."""
    if isinstance(exc, (LibraError, GroupFailure)):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _input_label(label: str) -> str:
    """How a run records one input: `-` for stdin, else the absolute path."""
    from pathlib import Path

    return label if label == "-" else str(Path(label).expanduser().resolve())
