"""Quantization through llama.cpp's own quantizer, in process (llama-cpp-python), C logs silenced."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from convert.outtypes import QUANT_FTYPES
from convert.progress import Progress, Ticker
from convert.tensors import default_threads
from libra_edge.errors import ConversionError



@contextmanager
def quiet_c_output(enabled: bool = True) -> Iterator[TextIO]:
    """Silence llama.cpp for the duration: a no-op log callback plus fds 1/2 sent to /dev/null.

    The log callback covers `LLAMA_LOG_*`; the file-descriptor redirect covers anything the
    C side prints directly. Yields a text stream on the *original* stderr so a progress bar
    can keep drawing while fd 2 points at /dev/null.
    """
    import llama_cpp
    import llama_cpp._logger as llama_logger

    if not enabled:
        llama_logger.set_verbose(True)  # llama-cpp-python's own callback, now unfiltered
        yield sys.stderr
        return

    @llama_cpp.llama_log_callback
    def _drop(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    progress_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    # Same terminal-ness as the real stderr, so Progress decides the same way.
    stream = os.fdopen(progress_fd, "w", buffering=1, encoding="utf-8", errors="replace")
    llama_cpp.llama_log_set(_drop, ctypes.c_void_p(0))
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield stream
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        stream.close()
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize_gguf(
    src: Path, dst: Path, outtype: str, *, threads: int | None = None, verbose: bool = False
) -> None:
    """Quantize GGUF `src` (F32/F16/BF16) into `dst` with llama.cpp's quantizer (`llama-quantize`)."""
    if outtype not in QUANT_FTYPES:
        raise ConversionError(f"unknown quantized type {outtype!r} (choose from {', '.join(QUANT_FTYPES)})")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[outtype])
    params.nthread = threads or default_threads()
    with quiet_c_output(not verbose) as err:
        progress = Progress(f"quantizing to {outtype.upper()}", None, stream=err)
        measure = lambda: dst.stat().st_size if dst.exists() else 0  # noqa: E731
        with Ticker(progress, measure):
            rc = llama_cpp.llama_model_quantize(
                os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
            )
    if rc != 0:
        raise ConversionError(
            f"{src}: llama.cpp could not quantize to {outtype.upper()} (code {rc}; run with --verbose for its log)"
        )
