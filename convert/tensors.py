"""Lazy tensors for GGUFWriter: dtype conversion done block by block while writing, so memory stays flat."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import gguf
import numpy as np

from .safetensors_reader import TensorRef
from libra_edge.engine.threads import usable_cpus
from libra_edge.errors import ConversionError

# Output types written directly (everything else goes through llama.cpp's quantizer).
DIRECT_TYPES: dict[str, gguf.GGMLQuantizationType] = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
}
ITEMSIZE_OUT = {"f32": 4, "f16": 2, "bf16": 2}
# The checkpoint dtype each direct type copies without any arithmetic.
SAME_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
F16_MAX = 65504.0
BLOCK_BYTES = 32 * 1024 * 1024


def default_threads() -> int:
    """CPU threads for converting and quantizing: every logical CPU usable (the thread policy's)."""
    return usable_cpus()


CONVERT_THREADS = min(4, default_threads())


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the 16-bit patterns."""
    bits = x.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out: np.ndarray = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # rounding could turn a NaN payload into infinity: keep it a quiet NaN
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return out


class ConvertedTensor:
    """What GGUFWriter needs of a tensor (shape, dtype, nbytes, tofile), computed lazily.

    `tofile` streams the source tensor in row blocks: read, convert, write. Worker threads
    convert blocks while the main thread reads and writes (numpy and file I/O release the
    GIL), so every core is busy and only a few blocks are ever in memory.
    """

    def __init__(
        self, name: str, source: TensorRef, outtype: str,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.outtype = outtype
        # A whole-tensor reordering (the Llama q/k row permutation): read whole, as float32.
        self.transform = transform
        self.shape = source.shape
        self.raw_dtype = DIRECT_TYPES[outtype]
        self.dtype = np.dtype({"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[outtype])
        self.nbytes = source.n_elements * ITEMSIZE_OUT[outtype]

    def _blocks(self) -> Iterator[np.ndarray]:
        """Source blocks (float32, or raw bytes when no conversion is needed)."""
        if self.transform is not None:
            # float32 holds every bf16/f16 value exactly: a reordered copy stays bit-exact.
            yield np.ascontiguousarray(self.transform(self.source.read_f32()), dtype=np.float32)
        elif SAME_DTYPE[self.outtype] == self.source.dtype:
            yield from self.source.iter_raw(BLOCK_BYTES)
        else:
            yield from self.source.iter_rows_f32(BLOCK_BYTES)

    def _convert(self, block: np.ndarray) -> np.ndarray:
        if block.dtype == np.uint8:  # raw bytes, already in the output dtype
            return block
        if self.outtype == "f32":
            return block
        if self.outtype == "f16":
            if block.size and float(np.abs(block).max()) > F16_MAX:
                raise ConversionError(
                    f"{self.source.file}: tensor {self.source.name!r} has values beyond the F16 range; "
                    "use --outtype bf16 or f32"
                )
            return block.astype(np.float16)
        return f32_to_bf16_bits(block)

    def tofile(self, fout: BinaryIO) -> None:
        """Write the converted data to `fout` (called once by GGUFWriter)."""
        written = 0
        workers = CONVERT_THREADS
        pending: deque[Future[np.ndarray]] = deque()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for block in self._blocks():
                pending.append(pool.submit(self._convert, block))
                if len(pending) > workers:  # bounded read-ahead: memory stays at a few blocks
                    written += _write(fout, pending.popleft().result())
            while pending:
                written += _write(fout, pending.popleft().result())
        if written != self.nbytes:
            raise ConversionError(f"{self.source.file}: tensor {self.source.name!r}: wrote {written} of {self.nbytes} bytes")


def _write(fout: BinaryIO, data: np.ndarray) -> int:
    view = np.ascontiguousarray(data).data.cast("B")
    fout.write(view)
    return view.nbytes


def output_type_for(source: TensorRef, outtype: str) -> str:
    """Norms and biases (1-D) stay F32 whatever the output type, as llama.cpp expects."""
    return "f32" if len(source.shape) <= 1 else outtype

