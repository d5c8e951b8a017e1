"""Keep llama.cpp's C logs off the user's terminal unless they asked for them (`--verbose`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

_SILENT = logging.CRITICAL + 10


def configure(verbose: bool) -> None:
    """Route llama.cpp's log callback: everything when verbose, nothing otherwise.

    llama-cpp-python installs a log callback that prints to stderr whenever its Python
    logger's level allows; `Llama(verbose=False)` still lets errors through. We decide.
    """
    from llama_cpp import _logger  # imported here: loading llama.cpp is not free

    _logger.logger.setLevel(logging.DEBUG if verbose else _SILENT)


@contextlib.contextmanager
def silenced_fds(enabled: bool = True) -> Iterator[None]:
    """Redirect file descriptors 1 and 2 to /dev/null (C code that prints directly).

    Python's own sys.stdout/sys.stderr objects are flushed first so nothing of ours is
    lost, and restored byte-exact afterwards. Not thread-safe: fds are process-wide, so
    use it only around short C calls (model load, quantization) on one thread.
    """
    if not enabled:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
