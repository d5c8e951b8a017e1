"""How `batch` stops: the first Ctrl-C or SIGTERM asks the run to stop, a second stops at once."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def stop_signals(cancel: threading.Event, *, local: bool = True) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) sets `cancel`; a second raises KeyboardInterrupt at once.

    The handler runs in the main thread, which waits for the engine's worker; setting
    `cancel` is what reaches the worker: a local guard checks it before every llama.cpp
    call (a long response's windows, each decode step), so the stop lands within one
    call. (It used to be checked between items only, and one long item is thousands of
    calls; a second signal then unwound the main thread, but closing the guard waited
    for the worker to finish that item.) A cluster run stops after its current items.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        what = ("stopping now: finished items are kept, the items being judged are judged again on resume"
                if local else "stopping after the current item")
        print(f"\nlibra-edge: {name}: {what} (Ctrl-C again to stop at once)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
