"""The batch command's progress bar: one redrawn line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from libra_edge.batch import BatchProgress


def fmt_duration(seconds: float | None) -> str:
    """`m:ss`, or `h:mm:ss` past an hour; `--:--` when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line progress bar with rate and ETA on a terminal; periodic lines otherwise.

    A response judged in windows shows them (`item 1/1, window 7/41`): the engine's worker
    thread reports each window, so updates are serialized by a lock.
    """

    WIDTH = 24

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def update(self, p: BatchProgress) -> None:
        with self._lock:
            try:
                self._update(p)
            except (OSError, ValueError):
                pass  # stderr gone (closed pipe): progress is not worth failing an item for

    def _update(self, p: BatchProgress) -> None:
        now = time.monotonic()
        window = p.window
        final = p.done >= p.total and window is None
        interval = 0.1 if self.tty else 10.0
        # An item's first window is shown at once: the user learns the item is long.
        if not final and now - self.last_draw < interval and window != 1:
            return
        self.last_draw = now
        frac = p.done / p.total if p.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "█" * filled + "░" * (self.WIDTH - filled)
        line = (f"[{bar}] {p.done}/{p.total} {frac:4.0%}  {p.rate:.2f} items/s  ETA {fmt_duration(p.eta_s)}"
                f"  flagged {p.flagged}  errors {p.errors}")
        if window is not None:
            line += f"  item {min(p.done + 1, p.total)}/{p.total}, window {window}/{p.windows}"
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        with self._lock:
            if self.drawn:
                self.out.write("\n")
                self.out.flush()
                self.drawn = False
