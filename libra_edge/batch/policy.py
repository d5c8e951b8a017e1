"""The analysis policy: how a run's items are judged, the same in this process and on a cluster.

    judge_pairs(guard, pairs, "flagged", record)   # record(index, verdict or exception)

`all` gives every item an analysis, `none` none (verdict and score only), `flagged` a
fast check first and an analysis only for the unsafe items. A failed check is an outcome
(its exception), recorded like a verdict; a rerun retries it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from libra_edge.engine.decoding import CheckCancelled
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import DiskFullError, LibraError
from libra_edge.models.ggufinfo import GGUFInfo

AnalysisMode = Literal["all", "flagged", "none"]
ANALYSIS_MODES: tuple[str, ...] = ("all", "flagged", "none")


class VerdictLike(Protocol):
    """What the runner reads of a verdict: `engine.Verdict`, or one an actor sent back."""

    @property
    def unsafe(self) -> bool:
        """The verdict is 不安全."""

    def to_dict(self) -> Mapping[str, Any]:
        """The verdict as `check --json` prints it (what the store keeps)."""


Outcome = VerdictLike | Exception
"""What judging one item gives: its verdict, or the exception its check raised."""


class GuardLike(Protocol):
    """What the runner needs from `libra_edge.engine.Guard` (read-only attributes and two methods)."""

    @property
    def info(self) -> GGUFInfo:
        """The model file's header: `path`, `name`, `quant`."""

    @property
    def settings(self) -> EngineSettings:
        """The effective settings: their verdict fields make the run's fingerprint."""

    @property
    def parallel(self) -> int:
        """Sequences decoded together: `check_many` gets chunks of this many items."""

    def check(self, question: str, response: str, *, analysis: bool = True,
              cancel: threading.Event | None = None,
              on_window: Callable[[int, int], None] | None = None) -> VerdictLike: ...

    def check_many(self, pairs: Sequence[tuple[str, str]], *, analysis: bool = True,
                   on_verdict: Callable[[int, Any], None] | None = None,
                   cancel: threading.Event | None = None,
                   on_window: Callable[[int, int, int], None] | None = None) -> Sequence[VerdictLike]: ...


class GroupFailure(Exception):
    """A parallel group's `check_many` failed: each of its items is a failure with this message."""


def parallel_of(guard: GuardLike) -> int:
    """Items a guard judges at once (its `parallel`; 1 without `check_many`)."""
    if not callable(getattr(guard, "check_many", None)):
        return 1
    return max(1, int(getattr(guard, "parallel", 1)))


def describe(exc: BaseException) -> str:
    """An exception as one line: its message, or its class name when it has none."""
    if isinstance(exc, (LibraError, GroupFailure)):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def judge_pairs(guard: GuardLike, pairs: Sequence[tuple[str, str]], analysis: str,
                record: Callable[[int, Outcome], None], *, cancel: threading.Event | None = None,
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

    def triage(i: int, outcome: Outcome) -> None:
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
                record: Callable[[int, Outcome], None], extra: dict[str, Any]) -> None:
    """`extra`: `cancel` and `on_window(index, k, n)` for the guard, when given."""
    if parallel_of(guard) > 1 and len(pairs) > 1:
        seen: set[int] = set()

        def on_verdict(i: int, verdict: VerdictLike) -> None:
            seen.add(i)
            record(i, verdict)

        try:
            guard.check_many(pairs, analysis=analysis, on_verdict=on_verdict, **extra)
        except (KeyboardInterrupt, MemoryError, DiskFullError, CheckCancelled):
            raise
        except Exception as exc:
            # Recorded against every unfinished item of the group (a rerun retries them).
            failure = GroupFailure(f"its parallel group of {len(pairs)} failed: {describe(exc)}")
            for i in range(len(pairs)):
                if i not in seen:
                    record(i, failure)
        return
    report = extra.get("on_window")
    for i, (question, response) in enumerate(pairs):
        single = {k: v for k, v in extra.items() if k != "on_window"}
        if report is not None:
            single["on_window"] = lambda k, n, i=i: report(i, k, n)
        outcome: Outcome
        try:
            outcome = guard.check(question, response, analysis=analysis, **single)
        except (KeyboardInterrupt, MemoryError, CheckCancelled):
            raise
        except Exception as exc:
            outcome = exc
        record(i, outcome)
