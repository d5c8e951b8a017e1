"""Safetensors reading without torch: header parsing, validation and bounded-memory tensor reads."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from libra_edge.errors import ConversionError

# Element size of the dtypes a Hugging Face checkpoint of a Qwen2.5 model can carry.
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, absolute byte offset, dtype and shape. Nothing is read yet."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Number of scalar values."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def iter_rows_f32(self, max_bytes: int = 64 * 1024 * 1024) -> Iterator[np.ndarray]:
        """The tensor as float32, in blocks of whole rows of at most ~`max_bytes` (as float32).

        Reads with pread into fresh buffers rather than through a memory map: mapped file
        pages count as resident memory until unmapped, so a 6 GB checkpoint read through
        one map would show a 6 GB peak RSS.
        """
        rows = self.shape[0] if self.shape else 1
        row_elems = self.n_elements // rows if rows else 0
        step = max(1, max_bytes // max(1, row_elems * 4))
        with open(self.file, "rb") as f:
            fd = f.fileno()
            for start in range(0, rows, step):
                n = min(step, rows - start)
                yield self._read_f32(fd, start * row_elems, n * row_elems).reshape(
                    (n, *self.shape[1:]) if self.shape else ()
                )

    def iter_raw(self, max_bytes: int = 64 * 1024 * 1024) -> Iterator[np.ndarray]:
        """The tensor's bytes unchanged (uint8 blocks of whole elements), for same-dtype copies."""
        size = ITEMSIZE[self.dtype]
        step = max(size, max_bytes - max_bytes % size)
        with open(self.file, "rb") as f:
            fd = f.fileno()
            for start in range(0, self.nbytes, step):
                n = min(step, self.nbytes - start)
                buf = bytearray(n)
                if os.preadv(fd, [buf], self.offset + start) != n:
                    raise ConversionError(f"{self.file}: truncated while reading tensor {self.name!r}")
                yield np.frombuffer(buf, dtype=np.uint8)

    def read_f32(self) -> np.ndarray:
        """The whole tensor as float32 (use `iter_rows_f32` for large tensors)."""
        with open(self.file, "rb") as f:
            return self._read_f32(f.fileno(), 0, self.n_elements).reshape(self.shape)

    def _read_f32(self, fd: int, first: int, count: int) -> np.ndarray:
        size = ITEMSIZE[self.dtype]
        want = count * size
        buf = bytearray(want)
        got = os.preadv(fd, [buf], self.offset + first * size) if want else 0
        if got != want:
            raise ConversionError(f"{self.file}: truncated while reading tensor {self.name!r}")
        if self.dtype == "F32":
            return np.frombuffer(buf, dtype="<f4")
        if self.dtype == "F16":
            return np.frombuffer(buf, dtype="<f2").astype(np.float32)
        # bfloat16 is the top half of a float32: widen the bits, no rounding involved.
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Parse one safetensors file's JSON header; returns (entries, start of the data section)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ConversionError(
                    f"{path}: not a safetensors file or truncated (header says {n} bytes)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor_refs(path: Path) -> dict[str, TensorRef]:
    """All tensors of one safetensors file, checked against its size (a truncated file is refused)."""
    header, data_start = read_header(path)
    size = path.stat().st_size
    refs: dict[str, TensorRef] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: malformed header entry for tensor {name!r}") from None
        if dtype not in ITEMSIZE:
            raise ConversionError(
                f"{path}: tensor {name!r} has dtype {dtype}; only BF16, F16 and F32 are supported"
            )
        ref = TensorRef(name, dtype, shape, path, data_start + begin, end - begin)
        if end < begin or ref.nbytes != ref.n_elements * ITEMSIZE[dtype]:
            raise ConversionError(f"{path}: tensor {name!r}: byte range does not match its shape")
        refs[name] = ref
        data_end = max(data_end, end)
    if data_start + data_end > size:
        missing = data_start + data_end - size
        raise ConversionError(
            f"{path}: truncated: {size} bytes on disk, the header needs {size + missing} "
            "(an interrupted download or copy?)"
        )
    return refs
