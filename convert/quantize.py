"""Quantization through llama.cpp's own quantizer, in process (through the engine's llama.cpp seam)."""

from __future__ import annotations

import sys
from pathlib import Path

from .outtypes import QUANT_FTYPES
from .progress import Progress, Ticker
from .tensors import default_threads
from libra_edge.errors import ConversionError


def quantize_gguf(
    src: Path, dst: Path, outtype: str, *, threads: int | None = None, verbose: bool = False
) -> None:
    """Quantize GGUF `src` (F32/F16/BF16) into `dst` with llama.cpp's quantizer (`llama-quantize`)."""
    if outtype not in QUANT_FTYPES:
        raise ConversionError(f"unknown quantized type {outtype!r} (choose from {', '.join(QUANT_FTYPES)})")
    from libra_edge.engine import llama as llama_seam

    # llama.cpp's quantizer logs through its log callback (silent unless --verbose); the
    # progress bar draws on stderr beside it.
    llama_seam.set_logging(verbose)
    progress = Progress(f"quantizing to {outtype.upper()}", None, stream=sys.stderr)
    measure = lambda: dst.stat().st_size if dst.exists() else 0  # noqa: E731
    with Ticker(progress, measure):
        rc = llama_seam.quantize(src, dst, QUANT_FTYPES[outtype], threads=threads or default_threads())
    if rc != 0:
        raise ConversionError(
            f"{src}: llama.cpp could not quantize to {outtype.upper()} (code {rc}; run with --verbose for its log)"
        )
