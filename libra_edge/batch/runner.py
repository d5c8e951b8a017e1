"""Run a batch: check items with a Guard, commit each verdict to the store, resume where stopped.

    batch = read_inputs(["logs.jsonl"])
    with Guard.load(model) as guard, open_store() as store:
        job = BatchJob.open(store, guard, batch, BatchOptions(analysis="flagged"))
        summary = job.execute(on_progress=print, cancel=threading.Event())

The CLI and the TUI drive runs through this same API; only they draw progress.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from libra_edge.batch.fields import FieldMap
from libra_edge.batch.readers import BatchInput, Item
from libra_edge.errors import LibraError
from libra_edge.store import RunRow, Store

AnalysisMode = Literal["all", "flagged", "none"]
ANALYSIS_MODES: tuple[str, ...] = ("all", "flagged", "none")

# Engine settings that change speed but not verdicts: a run may resume with other values.
# (`n_ctx` is the whole context, `parallel` sequences' worth; what decides truncation, and
# so verdicts, is each sequence's share, `n_ctx_seq`, which stays in the fingerprint.)
_UNFINGERPRINTED = ("threads", "gpu_layers", "gpu_offload_compiled", "parallel", "n_batch", "mmap", "n_ctx")


class GuardLike(Protocol):
    """What the runner needs from `libra_edge.engine.Guard`.

    A Guard may also offer `check_many(pairs, *, analysis) -> list[Verdict]` (several
    sequences decoded together in one context) and `parallel: int`; the runner then
    hands it chunks of `parallel` items instead of one at a time.
    """

    info: Any
    settings: dict[str, Any]

    def check(self, question: str, response: str, *, analysis: bool = True) -> Any: ...


@dataclass(frozen=True)
class BatchOptions:
    """How a run checks its items; part of the run's identity (fingerprint)."""

    analysis: AnalysisMode = "all"
    """`all`: every item gets an analysis; `flagged`: only unsafe ones (a fast check
    first); `none`: verdict and score only (`--fast`)."""
    fields: FieldMap = field(default_factory=FieldMap)
    strict: bool = False

    def __post_init__(self) -> None:
        if self.analysis not in ANALYSIS_MODES:
            raise LibraError(f"analysis: expected all, flagged or none, got {self.analysis!r}")

    def to_json(self) -> dict[str, Any]:
        """Stored with the run (`RunRow.options`)."""
        return {"analysis": self.analysis, "fields": self.fields.to_json(), "strict": self.strict}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchOptions:
        """The options a stored run was made with."""
        return cls(analysis=data.get("analysis", "all"), fields=FieldMap.from_json(data.get("fields")),
                   strict=bool(data.get("strict", False)))


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
    skipped: int
    elapsed_s: float
    message: str | None = None

    @property
    def items_per_s(self) -> float:
        """Throughput of this call."""
        return self.done_now / self.elapsed_s if self.elapsed_s > 0 else 0.0


def fingerprint(batch: BatchInput, options: BatchOptions, model_sha256: str, settings: dict[str, Any]) -> str:
    """Identity of a run: same inputs, model, verdict-relevant settings and mode = same run."""
    payload = {
        "inputs": batch.digest,
        "model": model_sha256,
        "settings": {k: v for k, v in sorted(settings.items()) if k not in _UNFINGERPRINTED},
        "analysis": options.analysis,
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


def _describe_mismatch(run: RunRow, batch: BatchInput, options: BatchOptions, sha: str,
                       settings: dict[str, Any]) -> str:
    """Why a run cannot be resumed with these inputs/model/settings, in words."""
    reasons = []
    if run.model_sha256 != sha:
        reasons.append(f"it used model {run.model_name} (sha256 {run.model_sha256[:12]}…), not this one")
    if run.options.get("analysis") != options.analysis:
        reasons.append(f"it used --analysis {run.options.get('analysis')}, not {options.analysis}")
    if FieldMap.from_json(run.options.get("fields")) != options.fields:
        reasons.append("it used other field names")
    for key, value in settings.items():
        if key not in _UNFINGERPRINTED and run.settings.get(key) != value:
            reasons.append(f"its {key} was {run.settings.get(key)!r}, now {value!r}")
    if not reasons:
        reasons.append("the input files changed since")
    return "; ".join(reasons)


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

    @classmethod
    def open(cls, store: Store, guard: GuardLike, batch: BatchInput, options: BatchOptions, *,
             resume: int | None = None, new: bool = False) -> BatchJob:
        """Continue run `resume`, else the run with the same fingerprint, else start one.

        `new=True` always starts a fresh run. Raises LibraError when `resume` names a run
        made from other inputs, model or settings, or one another process is running.
        """
        if not batch.items:
            raise LibraError("no items to check", hint="every input record was empty or unreadable")
        sha = store.file_sha256(guard.info.path)
        settings = dict(guard.settings)
        fp = fingerprint(batch, options, sha, settings)
        run: RunRow | None = None
        if resume is not None:
            run = store.run(resume)
            if run.fingerprint != fp:
                raise LibraError(f"cannot resume run {resume}: "
                                 f"{_describe_mismatch(run, batch, options, sha, settings)}")
        elif not new:
            run = store.find_run(fp)
        if run is None:
            run_id = store.create_run(
                fingerprint=fp, inputs=[str(p.resolve()) for p in batch.files],
                model_path=str(guard.info.path), model_name=guard.info.name, model_sha256=sha,
                quant=getattr(guard.info, "quant", None), settings=settings,
                prompt_template_version=str(settings.get("prompt_template_version", "")),
                options=options.to_json(), total=len(batch.items), skipped=batch.skipped,
            )
            return cls(store, guard, batch, options, store.run(run_id), resumed=False)
        job = cls(store, guard, batch, options, run, resumed=True)
        if not job.pending:  # complete already (perhaps killed right after its last commit)
            if run.status != "finished":
                store.finish_run(run.id, "finished")
            return job
        if run.status == "running":
            raise LibraError(f"run {run.id} is being checked by another process right now",
                             hint="wait for it, or stop it (Ctrl-C) and resume")
        store.claim_run(run.id, total=len(batch.items), skipped=batch.skipped)
        return job

    @property
    def n_parallel(self) -> int:
        """Items handed to the guard at once (1 unless it offers `check_many`)."""
        if not hasattr(self.guard, "check_many"):
            return 1
        return max(1, int(getattr(self.guard, "parallel", 1)))

    def execute(self, *, on_progress: Callable[[BatchProgress], None] | None = None,
                cancel: threading.Event | None = None) -> BatchSummary:
        """Check the pending items, committing each result; stop early when `cancel` is set.

        Returns how the run ended; the run's status in the store says the same. A
        KeyboardInterrupt marks the run `interrupted` and propagates.
        """
        cancel = cancel or threading.Event()
        run = self.store.run(self.run_id)
        counts = {"done": run.done - run.errors, "flagged": run.flagged, "errors": 0}
        total = len(self.batch.items)
        t0 = time.perf_counter()
        done_now = 0
        status: Literal["finished", "interrupted", "failed"] = "interrupted"
        message: str | None = None
        try:
            order = processing_order(self.pending)
            for start in range(0, len(order), self.n_parallel):
                if cancel.is_set():
                    message = "cancelled"
                    break
                chunk = order[start:start + self.n_parallel]
                for item, outcome in zip(chunk, self._check_chunk(chunk)):
                    self._store(item, outcome)
                    done_now += 1
                    counts["done"] += 1
                    if isinstance(outcome, Exception):
                        counts["errors"] += 1
                    elif outcome.unsafe:
                        counts["flagged"] += 1
                    if on_progress is not None:
                        elapsed = time.perf_counter() - t0
                        rate = done_now / elapsed if elapsed > 0 else 0.0
                        left = total - counts["done"]
                        on_progress(BatchProgress(
                            run_id=self.run_id, total=total, done=counts["done"], done_now=done_now,
                            flagged=counts["flagged"], errors=counts["errors"], elapsed_s=elapsed,
                            rate=rate, eta_s=left / rate if rate > 0 else None, last_seq=item.seq))
            else:
                status = "finished"
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by Ctrl-C"
            raise
        except Exception as exc:
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.store.finish_run(self.run_id, status, message)
            self.pending = [i for i in self.pending
                            if i.seq not in self.store.done_seqs(self.run_id, include_errors=False)]
        final = self.store.run(self.run_id)
        return BatchSummary(run_id=self.run_id, status=status, total=total, done=final.done,
                            done_now=done_now, flagged=final.flagged, errors=final.errors,
                            skipped=self.batch.skipped, elapsed_s=time.perf_counter() - t0, message=message)

    # -- checking ------------------------------------------------------------------------
    def _check_chunk(self, chunk: Sequence[Item]) -> list[Any]:
        """Verdicts (or the exception each item raised) for a chunk, per the analysis mode."""
        first = self._check_many(chunk, analysis=self.options.analysis == "all")
        if self.options.analysis == "flagged":
            # A fast check decided; only unsafe items pay for generating an analysis.
            # The engine keeps this prompt's KV state, so the second pass only decodes.
            unsafe = [i for i, v in enumerate(first) if not isinstance(v, Exception) and v.unsafe]
            for i, verdict in zip(unsafe, self._check_many([chunk[i] for i in unsafe], analysis=True)):
                first[i] = verdict
        return first

    def _check_many(self, items: Sequence[Item], *, analysis: bool) -> list[Any]:
        check_many = getattr(self.guard, "check_many", None)
        if check_many is not None and len(items) > 1:
            try:
                return list(check_many([(i.question, i.response) for i in items], analysis=analysis))
            except Exception:  # one bad item must not fail its neighbours: retry one by one
                pass
        outcomes: list[Any] = []
        for item in items:
            try:
                outcomes.append(self.guard.check(item.question, item.response, analysis=analysis))
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _store(self, item: Item, outcome: Any) -> None:
        error = verdict = None
        if isinstance(outcome, Exception):
            error = str(outcome) or type(outcome).__name__
        else:
            verdict = outcome.to_dict()
        self.store.add_result(
            self.run_id, seq=item.seq, question=item.question, response=item.response, fields=item.fields,
            verdict=verdict, error=error, item_id=item.item_id, source=item.source, category=item.category,
            sub_category=item.sub_category, input_file=item.file, input_line=item.line,
        )
