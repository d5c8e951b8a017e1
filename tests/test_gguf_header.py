"""Our GGUF header reader against gguf-py's GGUFWriter: every value type, both byte orders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter

from libra_edge.models.gguf_header import (
    GGUFArray,
    GGUFFormatError,
    ValueType,
    parse_header,
    read_header,
)

# (key, value, GGUF type, item type for arrays): one of each scalar type, arrays of each.
SCALARS: list[tuple[str, Any, GGUFValueType]] = [
    ("t.uint8", 200, GGUFValueType.UINT8),
    ("t.int8", -100, GGUFValueType.INT8),
    ("t.uint16", 60000, GGUFValueType.UINT16),
    ("t.int16", -30000, GGUFValueType.INT16),
    ("t.uint32", 4_000_000_000, GGUFValueType.UINT32),
    ("t.int32", -2_000_000_000, GGUFValueType.INT32),
    ("t.float32", 0.1, GGUFValueType.FLOAT32),
    ("t.bool", True, GGUFValueType.BOOL),
    ("t.string", "问题 <|im_end|> ✓", GGUFValueType.STRING),
    ("t.uint64", 2**63 + 5, GGUFValueType.UINT64),
    ("t.int64", -(2**62), GGUFValueType.INT64),
    ("t.float64", 1e-300, GGUFValueType.FLOAT64),
]
ARRAYS: list[tuple[str, list[Any], GGUFValueType]] = [
    (f"a.{t.name.lower()}", [v, v], t) for _, v, t in SCALARS
] + [("a.long_strings", [f"token{i}" for i in range(1000)], GGUFValueType.STRING)]


def write(path: Path, endian: GGUFEndian = GGUFEndian.LITTLE, alignment: int | None = None) -> Path:
    writer = GGUFWriter(path, "qwen2", endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value, vtype in SCALARS:
        writer.add_key_value(key, value, vtype)
    for key, items, itype in ARRAYS:
        writer.add_key_value(key, items, GGUFValueType.ARRAY, sub_type=itype)
    writer.add_array("a.nested", [[1, 2], [3]])
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("output_norm.weight", np.ones(5, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def expected(value: Any, vtype: GGUFValueType) -> Any:
    """What a value reads back as after its trip through the type (float32 loses digits)."""
    return float(np.float32(value)) if vtype == GGUFValueType.FLOAT32 else value


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG], ids=["little", "big"])
def test_every_value_type_reads_back_as_written(tmp_path: Path, endian: GGUFEndian) -> None:
    header = read_header(write(tmp_path / "all.gguf", endian), array_values=True)
    assert header.byte_order == ("<" if endian == GGUFEndian.LITTLE else ">")
    assert header.metadata["general.architecture"] == "qwen2"
    for key, value, vtype in SCALARS:
        assert header.value_types[key] == ValueType(vtype)
        assert header.metadata[key] == expected(value, vtype), key
    for key, items, itype in ARRAYS:
        array = header.metadata[key]
        assert isinstance(array, GGUFArray)
        assert (array.item_type, array.length) == (ValueType(itype), len(items))
        assert array.values == tuple(expected(v, itype) for v in items), key
    nested = header.metadata["a.nested"]
    assert isinstance(nested, GGUFArray) and nested.item_type == ValueType.ARRAY
    assert [a.values for a in nested.values or () if isinstance(a, GGUFArray)] == [(1, 2), (3,)]


@pytest.mark.parametrize("alignment", [None, 64])
def test_tensor_table_and_data_offset_match_gguf_py(tmp_path: Path, alignment: int | None) -> None:
    path = write(tmp_path / "t.gguf", alignment=alignment)
    header = read_header(path)
    reference = GGUFReader(path)
    assert header.version == 3
    assert header.alignment == (alignment or 32)
    assert header.data_offset == reference.data_offset
    assert [(t.name, list(t.shape), t.ggml_type, header.data_offset + t.offset) for t in header.tensors] == [
        (t.name, t.shape.tolist(), int(t.tensor_type), int(t.data_offset)) for t in reference.tensors]
    assert [t.n_elements for t in header.tensors] == [int(t.n_elements) for t in reference.tensors]
    user_keys = [k for k in reference.fields if not k.startswith("GGUF.")]
    assert list(header.metadata) == user_keys


def test_arrays_are_only_counted_unless_asked_for(tmp_path: Path) -> None:
    header = read_header(write(tmp_path / "c.gguf"))
    strings = header.metadata["a.long_strings"]
    assert isinstance(strings, GGUFArray) and strings.length == 1000 and strings.values is None
    assert header.metadata["t.string"] == "问题 <|im_end|> ✓"  # scalars are always read


def test_any_cut_inside_the_header_is_a_format_error(tmp_path: Path) -> None:
    data = write(tmp_path / "h.gguf").read_bytes()
    last = b"output_norm.weight"  # the last tensor-table entry: name, n_dims, 1 dim, type, offset
    end = data.index(last) + len(last) + 4 + 8 + 4 + 8
    # Every cut in the first bytes (counts, keys, types), then a sample through the rest.
    for cut in sorted({*range(0, 600), *range(600, end, 11), end - 1}):
        with pytest.raises(GGUFFormatError):
            parse_header(data[:cut])
    assert parse_header(data[:end]).tensors[-1].name == "output_norm.weight"


def test_unsupported_versions_and_wrong_magic_are_named(tmp_path: Path) -> None:
    data = bytearray(write(tmp_path / "v.gguf").read_bytes())
    data[4:8] = (1).to_bytes(4, "little")
    with pytest.raises(GGUFFormatError, match="GGUF version 1 is not supported"):
        parse_header(bytes(data))
    with pytest.raises(GGUFFormatError, match="starts with b'PK"):
        parse_header(b"PK\x03\x04" + bytes(data[4:]))


def test_an_unknown_value_type_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "u.gguf"
    writer = GGUFWriter(path, "qwen2")
    writer.add_uint32("x.key", 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    data = path.read_bytes()
    at = data.index(b"x.key") + len(b"x.key")
    broken = data[:at] + (99).to_bytes(4, "little") + data[at + 4:]
    with pytest.raises(GGUFFormatError, match="unknown value type 99"):
        parse_header(broken)
