"""A small progress bar on stderr for the long steps (tensor writing, quantization)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 28


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """One line redrawn in place; silent when the stream is not a terminal (logs, tests, pipes)."""

    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        """Count `n` more bytes done; redraws at most ten times a second."""
        with self._lock:
            self.done += n
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self.draw()

    def draw(self, done: int | None = None) -> None:
        """Redraw the line (optionally with an absolute byte count)."""
        if not self.enabled:
            return
        if done is not None:
            self.done = done
        elapsed = time.monotonic() - self.started
        if self.total:
            frac = min(1.0, self.done / self.total)
            fill = int(frac * BAR_WIDTH)
            bar = "#" * fill + "-" * (BAR_WIDTH - fill)
            text = f"{self.label} [{bar}] {frac:4.0%} {human_bytes(self.done)}/{human_bytes(self.total)} {elapsed:.0f}s"
        else:
            text = f"{self.label} {human_bytes(self.done)} {elapsed:.0f}s"
        self.stream.write("\r" + text.ljust(79)[:110])
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()


class Ticker:
    """Redraws a `Progress` from a background thread while a blocking call (llama.cpp) runs."""

    def __init__(self, progress: Progress, measure: Callable[[], int], interval: float = 0.5) -> None:
        self.progress = progress
        self.measure = measure
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.progress.draw(self.measure())

    def __enter__(self) -> Ticker:
        if self.progress.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.progress.draw(self.measure())
        self.progress.close()
