"""Read and validate a GGUF file's header and metadata without reading its tensor data."""

from __future__ import annotations

import functools
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_edge.errors import ModelError

GGUF_MAGIC = b"GGUF"

# The product runs Libra-Guard, a Qwen2.5 fine-tune: llama.cpp calls that architecture
# "qwen2". Other architectures still load by path (`--model`), but `models import`
# refuses them unless forced, since the prompt and verdict scoring assume Qwen2.5.
SUPPORTED_ARCHITECTURES = ("qwen2",)

# Scalar metadata worth showing in `models info`; arrays (vocabulary, merges) are skipped.
_SHOWN_PREFIXES = ("general.", "tokenizer.ggml.model", "tokenizer.ggml.pre", "libra_edge.")


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file says about itself: enough to validate, list and describe a model."""

    path: Path
    file_size: int
    gguf_version: int
    architecture: str | None
    name: str | None
    quant: str
    file_type: int | None
    context_length: int | None
    n_params: int
    n_tensors: int
    n_layers: int | None
    embedding_length: int | None
    tokenizer_model: str | None
    vocab_size: int
    chat_template: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def has_tokenizer(self) -> bool:
        """Whether the file embeds a vocabulary (`tokenizer.ggml.tokens`)."""
        return self.vocab_size > 0

    def problems(self) -> list[str]:
        """Why this file is not usable as a Libra-Guard model (empty when it is)."""
        found = []
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            found.append(
                f"architecture {self.architecture or '(missing)'} is not supported "
                f"(expected {', '.join(SUPPORTED_ARCHITECTURES)}: a Qwen2.5-based Libra-Guard)"
            )
        if not self.has_tokenizer:
            found.append("no tokenizer in the file (tokenizer.ggml.tokens is missing)")
        if not self.chat_template:
            found.append("no chat template in the file (tokenizer.chat_template is missing)")
        return found


def quant_name(file_type: int | None) -> str:
    """Human name of a `general.file_type` value: 15 -> "Q4_K_M", 1 -> "F16"."""
    from gguf import LlamaFileType

    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return f"type-{file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_model_info(path: str | Path) -> GGUFInfo:
    """Parse a GGUF's header, metadata and tensor table; raises ModelError naming the problem.

    Cheap: the file is memory-mapped and tensor data is never read. Detects files that are
    not GGUF, truncated files (tensor data extending beyond the end of the file) and
    corrupt headers. Does not judge the architecture: see `GGUFInfo.problems()`.
    """
    path = Path(path).expanduser()
    size = _check_readable(path)
    reader = _open_reader(path, size)
    return _info_from_reader(path, size, reader)


def _check_readable(path: Path) -> int:
    """File size after checking the path is a readable file that starts with the GGUF magic."""
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        what = "empty file" if size == 0 else f"starts with {head!r}, expected {GGUF_MAGIC!r}"
        raise ModelError(f"{path}: not a GGUF model file ({what})")
    return size


class _HeaderError(ValueError):
    """A metadata field runs past the end of the file."""


class _TruncatedError(Exception):
    """The tensor table points past the end of the file."""

    def __init__(self, needed: int, actual: int) -> None:
        super().__init__(f"needs {needed} bytes, file has {actual}")
        self.needed = needed
        self.actual = actual


@functools.cache
def _checked_reader_class() -> type:
    """GGUFReader made cheap and strict: arrays are skipped over, tensor extents checked.

    Stock GGUFReader builds one numpy view per array element, which takes seconds for a
    Qwen vocabulary (151,665 tokens + as many merges); we only need array lengths. It also
    fails with an opaque reshape error on a truncated file; we check extents first.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

    class CheckedReader(GGUFReader):  # type: ignore[misc]
        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list, list]:
            if raw_type != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            if raw_itype.size != 1 or alen.size != 1:
                raise _HeaderError("an array header runs past the end of the file")
            itype, count, offs = GGUFValueType(int(raw_itype[0])), int(alen[0]), orig_offs + 12
            if itype == GGUFValueType.STRING:
                # Walk the length prefixes only; parts keep the raw bytes, not one view per string.
                order = ">" if (self.byte_order == "S") == (sys.byteorder == "little") else "<"
                end = len(self.data)
                for _ in range(count):
                    if offs + 8 > end:
                        raise _HeaderError("a string array runs past the end of the file")
                    (slen,) = struct.unpack_from(order + "Q", self.data, offs)
                    offs += 8 + slen
                body = self._get(orig_offs + 12, np.uint8, offs - orig_offs - 12)
                return offs - orig_offs, [raw_itype, alen, body], [], [GGUFValueType.ARRAY, itype]
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is None:  # nested arrays: rare, leave them to the stock parser
                return super()._get_field_parts(orig_offs, raw_type)
            values = self._get(offs, nptype, count)
            if values.size != count:
                raise _HeaderError("an array runs past the end of the file")
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [GGUFValueType.ARRAY, itype]

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            end = start_offs
            for fld in fields:
                # Same layout GGUFReader itself unpacks: name_len, name, n_dims, dims, type, offset.
                _, _, _, dims, raw_dtype, offset = fld.parts
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_dtype[0]))]
                n_elems = 1
                for d in dims.tolist():
                    n_elems *= int(d)
                end = max(end, start_offs + int(offset[0]) + n_elems * type_size // block)
            if end > len(self.data):
                raise _TruncatedError(end, len(self.data))
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def _array_length(field: Any) -> int:
    """Element count of an array field read by CheckedReader (parts: key, type, itype, len, ...)."""
    return int(field.parts[4][0])


def _open_reader(path: Path, size: int) -> Any:
    reader_class = _checked_reader_class()
    try:
        return reader_class(path, "r")
    except _TruncatedError as exc:
        raise ModelError(
            f"{path}: truncated GGUF: tensor data needs {exc.needed:,} bytes but the file has "
            f"{exc.actual:,} (an incomplete copy or download?)"
        ) from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        # GGUFReader raises these (numpy's wording) when a header field runs past the end
        # of the file or holds garbage: a header cut short or damaged.
        detail = str(exc) if isinstance(exc, _HeaderError) else f"file has {size:,} bytes"
        raise ModelError(f"{path}: corrupt or truncated GGUF header ({detail})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _info_from_reader(path: Path, size: int, reader: Any) -> GGUFInfo:
    def scalar(key: str) -> Any:
        fld = reader.get_field(key)
        if fld is None or not fld.types:
            return None
        try:
            return fld.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    arch = scalar("general.architecture")
    file_type = scalar("general.file_type")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    metadata = {}
    for key, fld in reader.fields.items():
        if key.startswith(_SHOWN_PREFIXES) and len(fld.types) == 1:
            metadata[key] = scalar(key)
    quant = quant_name(file_type) if file_type is not None else _guess_quant(reader)

    def arch_int(suffix: str) -> int | None:
        value = scalar(f"{arch}.{suffix}") if arch else None
        return int(value) if isinstance(value, (int, float)) else None

    return GGUFInfo(
        path=path,
        file_size=size,
        gguf_version=int(scalar("GGUF.version") or 0),
        architecture=arch,
        name=scalar("general.name"),
        quant=quant,
        file_type=file_type,
        context_length=arch_int("context_length"),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        n_tensors=len(reader.tensors),
        n_layers=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        tokenizer_model=scalar("tokenizer.ggml.model"),
        vocab_size=_array_length(tokens) if tokens is not None else 0,
        chat_template=scalar("tokenizer.chat_template"),
        metadata=metadata,
    )


def _guess_quant(reader: Any) -> str:
    """Without `general.file_type`: the type holding most of the weights, e.g. "Q8_0"."""
    totals: dict[str, int] = {}
    for t in reader.tensors:
        totals[t.tensor_type.name] = totals.get(t.tensor_type.name, 0) + int(t.n_elements)
    if not totals:
        return "unknown"
    return max(totals, key=lambda k: totals[k])
