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
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from libra_edge.engine.decoding import CheckCancelled, Generation, JsonStringStream
from libra_edge.errors import LibraError

if TYPE_CHECKING:
    from libra_edge.engine.guard import Guard, Verdict, _Pending


@dataclass
class Request:
    """One submitted pair, waiting or in flight."""

    question: str
    response: str
    analysis: bool
    on_text: Callable[[str], None] | None
    future: Future[Verdict] = field(default_factory=Future)
    cancel: threading.Event | None = None
    """Set by the caller to stop the request wherever it is (a batch being stopped)."""
    on_window: Callable[[int, int], None] | None = None
    """`on_window(k, n)` before window k (0-based) of n of a response judged in windows."""

    def stopped(self) -> bool:
        """Whether the caller gave up on it (future cancelled, or its cancel event set)."""
        return self.future.cancelled() or (self.cancel is not None and self.cancel.is_set())


@dataclass
class _Slot:
    """A sequence writing an analysis."""

    request: Request
    pending: _Pending
    span: tuple[int, int] | None
    extra: dict[str, Any]
    logits: np.ndarray
    written: int = 0


class Scheduler:
    """The worker that runs a Guard's submitted requests with continuous batching."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._slots: dict[int, _Slot] = {}
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
        guard = self._guard
        n_seq = guard.parallel
        while True:
            with self._cv:
                while not self._closing and not self._queue and not self._slots:
                    self._cv.wait()
                if self._closing:
                    for slot in self._slots.values():
                        _fail(slot.request, LibraError("this Guard was closed"))
                    self._slots.clear()
                    return
                admit: list[tuple[int, Request]] = []
                free = [s for s in range(n_seq) if s not in self._slots]
                while free and self._queue:
                    req = self._queue.popleft()
                    if req.stopped():
                        _fail(req, CheckCancelled())
                        continue
                    admit.append((free.pop(0), req))
            for seq, req in admit:
                self._admit(seq, req)
            self._step()

    def _admit(self, seq: int, req: Request) -> None:
        """Decide the verdict of `req` in sequence `seq`; keep it if an analysis follows."""
        guard = self._guard
        try:
            with guard._lock:
                guard._require_open()
                dec = guard._decoder
                # Asked before each llama.cpp call of this verdict: its caller gave up, or the
                # Guard is closing (Ctrl-C in `check`: closing must not wait for every window).
                dec.interrupt = lambda: req.stopped() or self._closing
                try:
                    pending, span, extra = guard._start(req.question, req.response, req.analysis, req.on_text,
                                                        seq=seq, on_window=req.on_window)
                finally:
                    dec.interrupt = None
                if pending.stream is None or pending.logits is None:
                    verdict = guard._finish(pending, span, extra)
                    _resolve(req, verdict)
                    return
        except BaseException as exc:  # noqa: BLE001 - the caller gets it through the future
            _fail(req, exc)
            return
        with self._cv:
            self._slots[seq] = _Slot(req, pending, span, extra, pending.logits)

    def _step(self) -> None:
        """One analysis token for every open sequence, in one batch; finish the done ones."""
        guard = self._guard
        with self._cv:
            slots = dict(self._slots)
        if not slots:
            return
        dec = guard._decoder
        cap = guard.max_new_tokens
        going: list[tuple[int, _Slot]] = []
        done: list[tuple[int, _Slot]] = []
        stopped: list[tuple[int, _Slot]] = []  # given up by their callers: no verdict
        try:
            with guard._lock:
                for seq, slot in slots.items():
                    gen: Generation = slot.pending.gen
                    stream: JsonStringStream = slot.pending.stream  # type: ignore[assignment]
                    if slot.request.stopped():
                        stopped.append((seq, slot))
                        continue
                    if slot.written >= cap or len(dec.kv[seq]) >= dec.n_ctx_seq:
                        gen.cut = not stream.closed
                        done.append((seq, slot))
                        continue
                    slot.written += 1
                    if not gen.step(slot.logits, stream):
                        done.append((seq, slot))
                    elif slot.written >= cap:  # nothing follows this token: no need to evaluate it
                        gen.cut = not stream.closed
                        done.append((seq, slot))
                    else:
                        going.append((seq, slot))
                if going:
                    rows = dec.decode_each([(seq, slot.pending.gen.tokens[-1]) for seq, slot in going])
                    for (_seq, slot), row in zip(going, rows):
                        slot.logits = row
                finished = [(slot, guard._finish(slot.pending, slot.span, slot.extra))
                            for _seq, slot in done if not slot.request.future.cancelled()]
        except BaseException as exc:  # noqa: BLE001 - a failed batch fails its requests
            with self._cv:
                for seq, slot in slots.items():
                    self._slots.pop(seq, None)
                    _fail(slot.request, exc)
            with guard._lock:
                guard._decoder.forget()
            return
        with self._cv:
            for seq, _slot in done + stopped:
                self._slots.pop(seq, None)
        for slot, verdict in finished:
            _resolve(slot.request, verdict)
        for _seq, slot in stopped:
            _fail(slot.request, CheckCancelled())


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
