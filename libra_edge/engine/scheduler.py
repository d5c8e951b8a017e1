"""Continuous batching: requests share decode steps, and a freed sequence is refilled at once.

One worker thread owns the Guard's llama.cpp context while requests are in flight. Each
loop turn it (1) admits queued requests into free sequences — a request's verdict is
decided right there, in the canonical blocks of its own sequence (decoding.py), so its
score is bit-identical to a lone `check` — and (2) decodes one analysis token for every
sequence still writing one, in a single batch. A finished sequence's slot is taken by
the next request on the next turn, not when a whole group is done.

A request stops when its future is cancelled or its `cancel` event is set: before it is
admitted, between two llama.cpp calls while its verdict is decided (a long response's
windows are many calls), or between two decode steps of its analysis. It then fails with
`CheckCancelled`; nothing half-made is kept, so the same pair checked later gets the same
score.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from libra_edge.engine.checker import Checker, PendingCheck, Request
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.engine.verdict import Verdict
from libra_edge.errors import LibraError


@dataclass
class _Slot:
    """A sequence writing an analysis."""

    request: Request
    pending: PendingCheck


class Scheduler:
    """The worker that runs a Checker's submitted requests with continuous batching.

    Every call into the Checker is made holding `lock` (the Guard's): the Checker's
    context is one. Once the worker runs, it alone calls the Checker (`forget_cache`
    hands its work to the worker). Lock order: `lock` first, then the scheduler's own
    condition.
    """

    def __init__(self, checker: Checker, lock: threading.Lock, *, sequences: int) -> None:
        self._checker = checker
        self._lock = lock
        self._sequences = sequences
        self._queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._slots: dict[int, _Slot] = {}
        self._forget_when_free: set[int] = set()
        self._resets: list[threading.Event] = []  # forget_cache calls waiting for the worker
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Requests submitted and not finished (queued plus in flight)."""
        with self._cv:
            return len(self._queue) + len(self._slots)

    def submit(self, request: Request) -> Future[Verdict]:
        """Queue a request; its future gets the Verdict (or the exception)."""
        with self._cv:
            if self._closing:
                raise LibraError("this Guard was closed")
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="libra-edge-scheduler", daemon=True)
                self._thread.start()
            self._cv.notify()
        return request.future

    def forget_cache(self) -> None:
        """Drop every sequence's cached prompt blocks; a sequence writing an analysis, once it is done.

        Done by the worker between two decode steps, before it admits another request
        (this call returns then): clearing a sequence in the middle of its analysis would
        cut its KV state from under the next step, so such a sequence is forgotten as soon
        as its check finishes, before it takes another request.
        """
        with self._cv:
            if self._closing:
                raise LibraError("this Guard was closed")
            if self._thread is threading.current_thread():  # it would wait for itself
                raise LibraError("reset_cache() cannot be called from a check's callback")
            running = self._thread is not None
            if running:
                done = threading.Event()
                self._resets.append(done)
                self._cv.notify()
        if running:
            done.wait()
            return
        with self._lock:
            self._checker.require_open()
            self._checker.forget()

    def close(self) -> None:
        """Stop the worker; requests not finished fail with 'closed'."""
        with self._cv:
            self._closing = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cv:
            for req in self._queue:
                _fail(req, LibraError("this Guard was closed"))
            self._queue.clear()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._queue and not self._slots and not self._resets:
                    self._cv.wait()
                resets, self._resets = self._resets, []
                if self._closing:
                    for slot in self._slots.values():
                        _fail(slot.request, LibraError("this Guard was closed"))
                    self._slots.clear()
                    for done in resets:
                        done.set()
                    return
                admit: list[tuple[int, Request]] = []
                free = [s for s in range(self._sequences) if s not in self._slots]
                while free and self._queue:
                    req = self._queue.popleft()
                    if req.stopped():
                        _fail(req, CheckCancelled())
                        continue
                    admit.append((free.pop(0), req))
            if resets:
                self._forget_idle(resets)
            for seq, req in admit:
                self._admit(seq, req)
            self._step()

    def _admit(self, seq: int, req: Request) -> None:
        """Decide the verdict of `req` in sequence `seq`; keep it if an analysis follows."""
        try:
            with self._lock:
                # Asked before each llama.cpp call of this verdict: its caller gave up, or the
                # Guard is closing (Ctrl-C in `check`: closing must not wait for every window).
                pending = self._checker.start(req, seq, stop=lambda: req.stopped() or self._closing)
                if pending.writing:
                    with self._cv:  # `depth` reads the slots from other threads
                        self._slots[seq] = _Slot(req, pending)
                    return
                verdict = self._checker.finish(pending)
        except BaseException as exc:  # noqa: BLE001 - the caller gets it through the future
            _fail(req, exc)
            return
        _resolve(req, verdict)

    def _forget_idle(self, resets: list[threading.Event]) -> None:
        """forget_cache's work: idle sequences now, those writing an analysis when they finish."""
        try:
            with self._lock, self._cv:
                busy = set(self._slots)
                self._forget_when_free |= busy
                for seq in range(self._sequences):
                    if seq not in busy:
                        self._checker.forget(seq)
        finally:
            for done in resets:
                done.set()

    def _step(self) -> None:
        """One analysis token for every open sequence, in one batch; finish the done ones."""
        with self._cv:
            slots = dict(self._slots)
        if not slots:
            return
        stopped = [seq for seq, slot in slots.items() if slot.request.stopped()]  # given up: no verdict
        try:
            with self._lock:
                self._checker.advance([slot.pending for seq, slot in slots.items() if seq not in stopped])
                done = [seq for seq, slot in slots.items() if seq not in stopped and not slot.pending.writing]
                finished = [(slots[seq], self._checker.finish(slots[seq].pending))
                            for seq in done if not slots[seq].request.future.cancelled()]
                self._free(done + stopped)
        except BaseException as exc:  # noqa: BLE001 - a failed batch fails its requests
            with self._lock:
                self._free(list(slots))
                self._checker.forget()
            for slot in slots.values():
                _fail(slot.request, exc)
            return
        for slot, verdict in finished:
            _resolve(slot.request, verdict)
        for seq in stopped:
            _fail(slots[seq].request, CheckCancelled())

    def _free(self, seqs: list[int]) -> None:
        """Give the sequences back (holding the lock); forget those `forget_cache` marked."""
        with self._cv:
            for seq in seqs:
                self._slots.pop(seq, None)
                if seq in self._forget_when_free:
                    self._forget_when_free.discard(seq)
                    self._checker.forget(seq)


def _resolve(req: Request, verdict: Verdict) -> None:
    if not req.future.cancelled():
        try:
            req.future.set_result(verdict)
        except Exception:  # noqa: BLE001 - cancelled meanwhile
            pass


def _fail(req: Request, exc: BaseException) -> None:
    if not req.future.cancelled() and not req.future.done():
        try:
            req.future.set_exception(exc)
        except Exception:  # noqa: BLE001 - cancelled meanwhile
            pass
