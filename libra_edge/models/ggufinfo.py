"""Read and validate a GGUF file's header and metadata without reading its tensor data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_edge.errors import ModelError
from libra_edge.models.gguf_header import (
    GGUF_MAGIC,
    GGUFArray,
    GGUFFormatError,
    GGUFHeader,
    TensorInfo,
    read_header,
)

# The Libra-Guard series in llama.cpp's names: Qwen2.5 ("qwen2"), Yi-1.5 ("llama") and
# Qwen1 ("qwen"). Other architectures still load by path (`--model`), but `models import`
# refuses them unless forced: no published guard uses them.
SUPPORTED_ARCHITECTURES = ("qwen2", "llama", "qwen")

# Scalar metadata worth showing in `models info`; arrays (vocabulary, merges) are skipped.
_SHOWN_PREFIXES = ("general.", "tokenizer.ggml.model", "tokenizer.ggml.pre", "libra_edge.", "quantize.")

# What a file quantized with an importance matrix says about it: llama-quantize's keys
# (tools/quantize/quantize.cpp) and libra-edge's calibration-set digest (convert/pipeline.py).
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
KEY_IMATRIX_SHA256 = "libra_edge.imatrix.calibration_sha256"


@dataclass(frozen=True)
class ImatrixInfo:
    """The importance matrix a GGUF was quantized with, as its metadata records it."""

    file: str | None  # the imatrix file's name
    dataset: str | None  # the calibration set's name
    calibration_sha256: str | None  # libra-edge's files only
    entries: int | None
    chunks: int | None

    def line(self) -> str:
        """`libra_calibration.jsonl (sha256 1a2b3c4d5e6f…), 168 tensors, 73 prompts`."""
        parts = [self.dataset or self.file or "an importance matrix"]
        if self.calibration_sha256:
            parts[0] += f" (sha256 {self.calibration_sha256[:12]}…)"
        if self.entries is not None:
            parts.append(f"{self.entries} tensors")
        if self.chunks:
            parts.append(f"{self.chunks} prompts")
        return ", ".join(parts)


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
    imatrix: ImatrixInfo | None = None  # set when the file was quantized with an importance matrix

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
                f"(expected {', '.join(SUPPORTED_ARCHITECTURES)}: a Libra-Guard on Qwen2.5, Yi-1.5 or Qwen1)"
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

    Cheap: the file is memory-mapped, tensor data is never read and arrays (the
    vocabulary) are only counted. Detects files that are not GGUF, truncated files
    (tensor data extending beyond the end of the file) and corrupt headers. Does not
    judge the architecture: see `GGUFInfo.problems()`.
    """
    path = Path(path).expanduser()
    size = _check_readable(path)
    return _info_from_header(path, size, _read_header(path, size))


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


def _read_header(path: Path, size: int) -> GGUFHeader:
    """The header, with a tensor table that fits the file; ModelError naming the problem."""
    try:
        header = read_header(path)
    except GGUFFormatError as exc:
        raise ModelError(f"{path}: corrupt or truncated GGUF header ({exc}; file has {size:,} bytes)") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    from gguf import GGML_QUANT_SIZES  # public table: (block size, bytes per block) per type

    needed = max((header.data_offset + t.offset + _tensor_bytes(path, t, GGML_QUANT_SIZES)
                  for t in header.tensors), default=header.data_offset)
    if needed > size:
        raise ModelError(
            f"{path}: truncated GGUF: tensor data needs {needed:,} bytes but the file has "
            f"{size:,} (an incomplete copy or download?)"
        )
    return header


def _tensor_bytes(path: Path, tensor: TensorInfo, sizes: Mapping[Any, tuple[int, int]]) -> int:
    """Size of a tensor's data, from ggml's block layout of its type."""
    try:
        block, type_size = sizes[tensor.ggml_type]
    except KeyError:
        raise ModelError(f"{path}: corrupt GGUF header (tensor {tensor.name!r} has unknown "
                         f"type {tensor.ggml_type})") from None
    return tensor.n_elements * type_size // block


def _info_from_header(path: Path, size: int, header: GGUFHeader) -> GGUFInfo:
    meta = header.metadata

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) else None

    def integer(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    arch = text("general.architecture")
    file_type = integer("general.file_type")
    tokens = meta.get("tokenizer.ggml.tokens")
    shown = {key: value for key, value in meta.items()
             if key.startswith(_SHOWN_PREFIXES) and not isinstance(value, GGUFArray)}
    quant = quant_name(file_type) if file_type is not None else _guess_quant(header.tensors)

    def arch_int(suffix: str) -> int | None:
        return integer(f"{arch}.{suffix}") if arch else None

    return GGUFInfo(
        path=path,
        file_size=size,
        gguf_version=header.version,
        architecture=arch,
        name=text("general.name"),
        quant=quant,
        file_type=file_type,
        context_length=arch_int("context_length"),
        n_params=sum(t.n_elements for t in header.tensors),
        n_tensors=len(header.tensors),
        n_layers=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        tokenizer_model=text("tokenizer.ggml.model"),
        vocab_size=tokens.length if isinstance(tokens, GGUFArray) else 0,
        chat_template=text("tokenizer.chat_template"),
        metadata=shown,
        imatrix=_imatrix_info(meta),
    )


def _imatrix_info(meta: Mapping[str, Any]) -> ImatrixInfo | None:
    """The `quantize.imatrix.*` entries, when the file has any."""
    if not any(k in meta for k in (KEY_IMATRIX_FILE, KEY_IMATRIX_DATASET, KEY_IMATRIX_ENTRIES)):
        return None

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) and value else None

    def integer(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ImatrixInfo(file=text(KEY_IMATRIX_FILE), dataset=text(KEY_IMATRIX_DATASET),
                       calibration_sha256=text(KEY_IMATRIX_SHA256), entries=integer(KEY_IMATRIX_ENTRIES),
                       chunks=integer(KEY_IMATRIX_CHUNKS))


def _guess_quant(tensors: tuple[TensorInfo, ...]) -> str:
    """Without `general.file_type`: the type holding most of the weights, e.g. "Q8_0"."""
    from gguf import GGMLQuantizationType

    totals: dict[str, int] = {}
    for t in tensors:
        try:
            name = GGMLQuantizationType(t.ggml_type).name
        except ValueError:
            name = f"type-{t.ggml_type}"
        totals[name] = totals.get(name, 0) + t.n_elements
    if not totals:
        return "unknown"
    return max(totals, key=lambda k: totals[k])
