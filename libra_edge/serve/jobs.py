"""Handing pairs to the guard: the one submit wrapper, and the bounded queue in front of it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from libra_edge.engine import Guard, Verdict



def submit(guard: Guard, question: str, response: str, *, analysis: bool,
           on_text: Callable[[str], None] | None = None) -> Future[Verdict]:
    """Queue one check with the engine's continuous batching (bit-identical to `guard.check`).

    Cancelling the future frees a queued check and stops a running one at its next step.
    """
    return guard.submit(question, response, analysis=analysis, on_text=on_text)


class QueueFull(Exception):
    """The bounded queue cannot take the request now (answered 429 with Retry-After)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Admission:
    """At most `capacity` pairs waiting or being judged at once; the rest are refused.

    A slot is taken when a pair is admitted and given back when its future is done
    (finished, failed or cancelled), so a client that goes away frees its slots.
    """

    def __init__(self, capacity: int, parallel: int) -> None:
        self.capacity = capacity
        self.parallel = max(1, parallel)
        self._held = 0
        self._lock = threading.Lock()
        self._mean_s = 1.0  # running mean of one pair's time, for Retry-After

    @property
    def held(self) -> int:
        """Pairs admitted and not yet done."""
        with self._lock:
            return self._held

    def admit(self, n: int) -> None:
        """Take `n` slots, or raise QueueFull saying when to retry."""
        with self._lock:
            if self._held + n > self.capacity:
                wait = self._mean_s * (self._held + n - self.capacity) / self.parallel
                raise QueueFull(max(1, int(wait + 0.999)))
            self._held += n

    def release(self, seconds: float | None = None) -> None:
        """Give back one slot (a pair's future is done); `seconds` it took, when judged."""
        with self._lock:
            self._held = max(0, self._held - 1)
            if seconds is not None:
                self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
