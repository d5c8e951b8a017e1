"""A GGUF file's header, read by our own code: magic, version, metadata and tensor table.

The layout (GGUF versions 2 and 3, either byte order) is the one llama.cpp's `gguf.h`
and gguf-py's `GGUFWriter` write; tests check this reader against that writer. We read
it ourselves rather than through `GGUFReader`'s private hooks, which change between
gguf-py releases, and so that an array (a 151k-token vocabulary) costs only a walk over
its length prefixes unless its values are asked for.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Union

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGML_MAX_DIMS in ggml.h: a tensor with more dimensions is a damaged header.
MAX_DIMS = 4


class ValueType(IntEnum):
    """The type tag of a metadata value (`gguf_type` in gguf.h)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "?",
    ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d",
}


class GGUFFormatError(ValueError):
    """The header is cut short or holds something no GGUF writer produces."""


@dataclass(frozen=True)
class GGUFArray:
    """An array value: its item type, its length and (when they were read) its items."""

    item_type: ValueType
    length: int
    values: tuple[GGUFValue, ...] | None = None


GGUFValue = Union[int, float, bool, str, GGUFArray]


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table; OFFSET counts from the start of the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of values in the tensor (the product of its dimensions)."""
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before a GGUF's tensor data."""

    version: int
    byte_order: str  # struct prefix: "<" little-endian, ">" big-endian
    metadata: dict[str, GGUFValue]
    value_types: dict[str, ValueType]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int  # where the (aligned) tensor data begins
    # Where each metadata entry (key, type tag and value) lies in the file: [start, end).
    # The quantizer copies entries byte for byte from them (convert/quantize.py).
    kv_spans: dict[str, tuple[int, int]] = field(default_factory=dict)


def read_header(path: str | Path, *, array_values: bool = False) -> GGUFHeader:
    """Parse the header of the GGUF at PATH (memory-mapped: tensor data is never read).

    Arrays come back as `GGUFArray` with `values=None` unless ARRAY_VALUES. Raises
    GGUFFormatError for a file that is not GGUF or whose header is cut short or damaged,
    OSError when the file cannot be read.
    """
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            raise GGUFFormatError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return parse_header(data, array_values=array_values)


def parse_header(data: bytes | mmap.mmap, *, array_values: bool = False) -> GGUFHeader:
    """Parse a GGUF header from bytes (see `read_header`)."""
    return _Parser(data, array_values).header()


class _Parser:
    """A cursor over the header bytes; every read checks that the bytes exist."""

    def __init__(self, data: bytes | mmap.mmap, array_values: bool) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0
        self.order = "<"
        self.array_values = array_values

    def header(self) -> GGUFHeader:
        magic = self._take(4, "the magic")
        if magic != GGUF_MAGIC:
            raise GGUFFormatError(f"starts with {magic!r}, expected {GGUF_MAGIC!r}")
        (version,) = struct.unpack_from("<I", self._take(4, "the version"))
        if version & 0xFFFF == 0:  # a small number read in the wrong byte order
            self.order = ">"
            (version,) = struct.unpack_from(">I", self.data, 4)
        if version not in SUPPORTED_VERSIONS:
            raise GGUFFormatError(f"GGUF version {version} is not supported "
                                  f"(this reader knows {', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = self._scalar(ValueType.UINT64, "the tensor count")
        n_kv = self._scalar(ValueType.UINT64, "the metadata count")
        metadata: dict[str, GGUFValue] = {}
        types: dict[str, ValueType] = {}
        spans: dict[str, tuple[int, int]] = {}
        for _ in range(int(n_kv)):
            start = self.pos
            key = self._string("a metadata key")
            vtype = self._type(f"the type of {key!r}")
            metadata[key] = self._value(vtype, key)
            types[key] = vtype
            spans[key] = (start, self.pos)
        tensors = tuple(self._tensor_info() for _ in range(int(n_tensors)))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if "general.alignment" in types and types["general.alignment"] != ValueType.UINT32:
            raise GGUFFormatError("general.alignment is not a uint32")
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        return GGUFHeader(version, self.order, metadata, types, tensors, alignment, data_offset, spans)

    def _take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > self.size:
            raise GGUFFormatError(f"the header ends (byte {self.size:,}) inside {what}")
        chunk = bytes(self.data[self.pos:end])
        self.pos = end
        return chunk

    def _scalar(self, vtype: ValueType, what: str) -> int | float | bool:
        fmt = self.order + _SCALAR_FORMATS[vtype]
        (value,) = struct.unpack(fmt, self._take(struct.calcsize(fmt), what))
        return value  # type: ignore[no-any-return]

    def _type(self, what: str) -> ValueType:
        raw = int(self._scalar(ValueType.UINT32, what))
        try:
            return ValueType(raw)
        except ValueError:
            raise GGUFFormatError(f"unknown value type {raw} in {what}") from None

    def _string(self, what: str) -> str:
        length = int(self._scalar(ValueType.UINT64, what))
        return self._take(length, what).decode("utf-8", errors="replace")

    def _value(self, vtype: ValueType, key: str) -> GGUFValue:
        if vtype == ValueType.STRING:
            return self._string(f"the value of {key!r}")
        if vtype == ValueType.ARRAY:
            return self._array(key)
        return self._scalar(vtype, f"the value of {key!r}")

    def _array(self, key: str) -> GGUFArray:
        item_type = self._type(f"the item type of {key!r}")
        length = int(self._scalar(ValueType.UINT64, f"the length of {key!r}"))
        what = f"the items of {key!r}"
        if item_type in _SCALAR_FORMATS:
            fmt = _SCALAR_FORMATS[item_type]
            body = self._take(length * struct.calcsize(fmt), what)  # checks before allocating
            if not self.array_values:
                return GGUFArray(item_type, length)
            return GGUFArray(item_type, length, tuple(struct.unpack(f"{self.order}{length}{fmt}", body)))
        if item_type == ValueType.STRING and not self.array_values:
            # Walk the length prefixes only: no string is built for a vocabulary we only count.
            # A Qwen vocabulary and its merges are 300,000 strings, walked at every start:
            # one compiled unpacker and no copies (the whole header read: 1.3 s -> 0.4 s).
            unpack = struct.Struct(self.order + "Q").unpack_from
            data, pos, size = self.data, self.pos, self.size
            for _ in range(length):
                if pos + 8 > size:
                    raise GGUFFormatError(f"the header ends (byte {size:,}) inside {what}")
                (skip,) = unpack(data, pos)
                pos += 8
                if skip > size - pos:
                    raise GGUFFormatError(f"the header ends (byte {size:,}) inside {what}")
                pos += skip
            self.pos = pos
            return GGUFArray(item_type, length)
        items = tuple(self._value(item_type, key) for _ in range(length))
        return GGUFArray(item_type, length, items if self.array_values else None)

    def _tensor_info(self) -> TensorInfo:
        name = self._string("a tensor name")
        n_dims = int(self._scalar(ValueType.UINT32, f"the dimensions of tensor {name!r}"))
        if n_dims > MAX_DIMS:
            raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(int(self._scalar(ValueType.UINT64, f"the shape of tensor {name!r}"))
                      for _ in range(n_dims))
        ggml_type = int(self._scalar(ValueType.UINT32, f"the type of tensor {name!r}"))
        offset = int(self._scalar(ValueType.UINT64, f"the offset of tensor {name!r}"))
        return TensorInfo(name, shape, ggml_type, offset)
