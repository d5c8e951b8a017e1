"""The per-tensor quantizer: llama.cpp's type rules and ggml's kernels, driven from Python.

`quantize_gguf` reads an F32/F16/BF16 GGUF, gives every tensor the type
llama.cpp would (`quant_rules`, a translation of `llama-quant.cpp`), quantizes each one
with ggml's own `ggml_quantize_chunk` through the engine's llama.cpp seam, and writes the
GGUF exactly as `llama_model_quantize` lays it out: the source's metadata in its order
(each entry copied byte for byte),
then `general.quantization_version` and `general.file_type` moved to the end, tensors in
the loader's order (by block, then name), 32-byte alignment, zero padding. Without an
importance matrix the file is byte-identical to llama.cpp's (tests/test_quantize_rules.py).

The header is read with libra-edge's own GGUF reader (`libra_edge.models.gguf_header`,
which walks a 151k-token vocabulary in well under a second; gguf-py's `GGUFReader` builds
an array per string and takes over a minute on it) and the tensor data through a memory map.

What it adds over `llama_model_quantize`: an importance matrix given as a plain mapping
(tensor name -> float32 per column, as `convert.imatrix` computes it), the per-tensor
decisions reported back (`QuantizeResult`), and one-line errors instead of C++ aborts.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import quant_rules as qr
from .outtypes import QUANT_FTYPES
from .progress import Progress
from .tensors import default_threads
from libra_edge.errors import ConversionError
from libra_edge.models.gguf_header import GGUFArray

KEY_QUANT_VERSION = "general.quantization_version"
KEY_FILE_TYPE = "general.file_type"
KEY_ALIGNMENT = "general.alignment"
GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
_GGUF_TYPE_UINT32 = 4  # gguf_type GGUF_TYPE_UINT32
_GGUF_TYPE_STRING = 8
# Elements converted to float32 and quantized per call (per thread): 16 MiB of float32.
_CHUNK_ELEMENTS = 4 * 1024 * 1024


def file_type_for(outtype: str) -> qr.FileType:
    """The llama_ftype of an `--outtype` name (`q4_k_m` -> MOSTLY_Q4_K_M)."""
    if outtype not in QUANT_FTYPES:
        raise ConversionError(f"unknown quantized type {outtype!r} (choose from {', '.join(QUANT_FTYPES)})")
    return qr.FileType[QUANT_FTYPES[outtype].removeprefix("LLAMA_FTYPE_")]


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_gguf` did: each tensor's type and whether its importance matrix was used."""

    outtype: str
    file_type: int
    tensors: tuple[qr.TensorPlan, ...]
    with_imatrix: tuple[str, ...]  # tensors quantized with an importance-matrix row
    without_imatrix: tuple[str, ...]  # quantized tensors the matrix had no entry for
    seconds: float

    def type_counts(self) -> dict[str, int]:
        """{"Q4_K": 12, "Q6_K": 7, "F32": 25, ...}: how many tensors of each type the file holds."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.target_type.name] = counts.get(t.target_type.name, 0) + 1
        return dict(sorted(counts.items()))


def model_facts(fields: Mapping[str, Any], where: Path) -> qr.ModelFacts:
    """The hyper-parameters the type rules read, from a GGUF's metadata."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ConversionError(f"{where}: no general.architecture in the GGUF metadata")

    def first_int(key: str, default: int | None = None) -> int:
        value = fields.get(f"{arch}.{key}", default)
        if isinstance(value, GGUFArray):  # per-layer counts (not read): only whole-model ones are used
            raise ConversionError(f"{where}: {arch}.{key} is per layer; this quantizer needs one value")
        if value is None:
            raise ConversionError(f"{where}: no {arch}.{key} in the GGUF metadata")
        return int(value)

    n_head = first_int("attention.head_count")
    return qr.ModelFacts(
        arch=arch, n_layer=first_int("block_count"), n_head=n_head,
        n_head_kv=first_int("attention.head_count_kv", n_head), n_expert=first_int("expert_count", 0),
    )


def _gguf_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _u32_entry(key: str, value: int) -> bytes:
    return _gguf_str(key) + struct.pack("<II", _GGUF_TYPE_UINT32, value)


def _pad(n: int, align: int = qr.GGUF_ALIGNMENT) -> int:
    return (align - n % align) % align


def _to_f32(raw: np.ndarray, src_type: qr.GGMLType) -> np.ndarray:
    """Rows of F32/F16/BF16 bytes as float32 (the exact values ggml's row converters give)."""
    if src_type == qr.GGMLType.F32:
        return raw.view(np.float32)
    if src_type == qr.GGMLType.F16:
        return raw.view(np.float16).astype(np.float32)
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _check_imatrix(
    imatrix: Mapping[str, np.ndarray], plans: tuple[qr.TensorPlan, ...], src: Path
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The matrix rows to use per tensor, and the quantized tensors it has none for (llama.cpp's rules)."""
    for name, values in imatrix.items():
        arr = np.asarray(values)
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise ConversionError(f"importance matrix: entry {name!r} is not all finite numbers")
    rows: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for plan in plans:
        if not plan.quantize:
            continue
        found = imatrix.get(plan.name)
        if found is None:
            missing.append(plan.name)  # quantized without one, as llama.cpp does
            continue
        n_expert = plan.shape[2] if len(plan.shape) > 2 else 1
        want = plan.shape[0] * n_expert
        arr = np.ascontiguousarray(found, dtype=np.float32).reshape(-1)
        if arr.size != want:
            if plan.name in ("token_embd.weight", "per_layer_token_embd.weight"):
                missing.append(plan.name)  # llama.cpp ignores a token_embd mismatch
                continue
            raise ConversionError(
                f"importance matrix: {plan.name} has {arr.size} values, the tensor needs {want} "
                f"(a matrix made for another model? {src})"
            )
        rows[plan.name] = arr.reshape(n_expert, plan.shape[0])
    return rows, missing


def quantize_gguf(
    src: Path,
    dst: Path,
    outtype: str,
    *,
    threads: int | None = None,
    verbose: bool = False,
    imatrix: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, str | int] | None = None,
) -> QuantizeResult:
    """Quantize GGUF `src` (F32/F16/BF16) into `dst` with llama.cpp's type rules and kernels.

    `imatrix`: importance per column for each weight tensor (float32 of the tensor's row
    length, times its experts). A tensor it lacks is quantized without one, as
    llama.cpp's quantizer does; giving one also turns on the few rules that depend on it.
    `metadata`: entries to add after llama.cpp's own, as `llama-quantize --imatrix` adds
    its `quantize.imatrix.*` keys (its key-value overrides: a string, or an integer
    written as u32). Errors are one-line ConversionErrors naming the file and tensor.
    """
    from libra_edge.engine import llama as llama_seam
    from libra_edge.models.gguf_header import GGUFFormatError, read_header

    started = time.monotonic()
    ftype = file_type_for(outtype)
    src, dst = Path(src), Path(dst)
    try:
        header = read_header(src)
    except (OSError, GGUFFormatError) as exc:
        raise ConversionError(f"{src}: not a readable GGUF file ({exc})") from None
    if header.byte_order != "<" or header.alignment != qr.GGUF_ALIGNMENT:
        raise ConversionError(f"{src}: only little-endian GGUF files with 32-byte alignment can be quantized")
    facts = model_facts(header.metadata, src)
    by_name = {t.name: t for t in header.tensors}
    if len(by_name) != len(header.tensors):
        raise ConversionError(f"{src}: two tensors share a name")
    try:
        mix = qr.plan_mix(facts, [(t.name, t.shape, qr.GGMLType(t.ggml_type)) for t in header.tensors],
                          ftype, has_imatrix=imatrix is not None)
    except (qr.RuleError, ValueError) as exc:
        raise ConversionError(f"{src}: {exc}") from None
    for plan in mix.tensors:
        if plan.quantize and plan.source_type not in (qr.GGMLType.F32, qr.GGMLType.F16, qr.GGMLType.BF16):
            raise ConversionError(
                f"{src}: {plan.name} is already {plan.source_type.name}: quantize from the F32/F16/BF16 file"
            )
    rows, missing = _check_imatrix(imatrix, mix.tensors, src) if imatrix is not None else ({}, [])
    for plan in mix.tensors:
        if plan.quantize and plan.requires_imatrix and plan.name not in rows:
            raise ConversionError(
                f"{plan.name}: {outtype.upper()} needs an importance matrix for {plan.target_type.name} "
                "tensors (pass --imatrix)"
            )
    if verbose:
        for name, was, now in mix.fallbacks:
            print(f"quantize: {name}: row length not divisible by {was.name}'s block: {now.name}", file=sys.stderr)
        for name in missing:
            print(f"quantize: importance matrix has no entry for {name}: quantized without one", file=sys.stderr)

    n_threads = max(1, threads or default_threads())
    sizes = [llama_seam.ggml_row_size(int(p.target_type), p.shape[0]) * _rows(p.shape) for p in mix.tensors]
    progress = Progress(f"quantizing to {outtype.upper()}", sum(sizes), stream=sys.stderr)
    llama_seam.set_logging(verbose)
    data = np.memmap(src, dtype=np.uint8, mode="r")
    try:
        with open(dst, "wb") as out, ThreadPoolExecutor(n_threads, thread_name_prefix="quantize") as pool:
            _write_header(out, data, header.kv_spans, mix, sizes, ftype, metadata or {})
            for i, (plan, size) in enumerate(zip(mix.tensors, sizes), 1):
                if verbose:
                    _log_tensor(i, len(mix.tensors), plan, size, plan.name in rows)
                start = header.data_offset + by_name[plan.name].offset
                n_bytes = llama_seam.ggml_row_size(int(plan.source_type), plan.shape[0]) * _rows(plan.shape)
                if start + n_bytes > data.size:
                    raise ConversionError(f"{src}: truncated: {plan.name}'s data ends past the end of the file")
                written = _write_tensor(out, pool, plan, data[start: start + n_bytes], rows.get(plan.name),
                                        progress, n_threads)
                if written != size:
                    raise ConversionError(f"{plan.name}: wrote {written} bytes, expected {size}")
                out.write(b"\0" * _pad(size))
    except BaseException as exc:
        dst.unlink(missing_ok=True)  # never half a file where a model is expected
        if isinstance(exc, RuntimeError):  # ggml's validation of the quantized rows
            raise ConversionError(f"{src}: quantizing to {outtype.upper()} failed: {exc}") from None
        if isinstance(exc, OSError):
            raise ConversionError(f"{dst}: cannot write: {exc.strerror or exc}") from None
        raise
    finally:
        progress.close()
        del data
    return QuantizeResult(
        outtype=outtype, file_type=int(ftype), tensors=mix.tensors,
        with_imatrix=tuple(n for n in rows), without_imatrix=tuple(missing),
        seconds=time.monotonic() - started,
    )


def _log_tensor(i: int, n: int, plan: qr.TensorPlan, size: int, with_imatrix: bool) -> None:
    """One line per tensor on stderr (--verbose), in the layout of llama-quantize's log."""
    from libra_edge.engine import llama as llama_seam

    shape = ", ".join(f"{d:5d}" for d in (*plan.shape, 1, 1, 1)[:4])
    src = llama_seam.ggml_type_name(int(plan.source_type))
    if plan.quantize:
        was = llama_seam.ggml_row_size(int(plan.source_type), plan.shape[0]) * _rows(plan.shape)
        what = (f"converting to {llama_seam.ggml_type_name(int(plan.target_type))}"
                f"{' with its importance matrix' if with_imatrix else ''} .. "
                f"size = {was / 2**20:8.2f} MiB -> {size / 2**20:8.2f} MiB")
    else:
        what = f"size = {size / 2**20:8.3f} MiB"
    print(f"[{i:4d}/{n:4d}] {plan.name:<36} - [{shape}], type = {src:>6}, {what}", file=sys.stderr, flush=True)


def _rows(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def _write_header(
    out: BinaryIO, data: np.ndarray, spans: Mapping[str, tuple[int, int]], mix: qr.MixPlan, sizes: list[int],
    ftype: qr.FileType, metadata: Mapping[str, str | int],
) -> None:
    """Header, metadata and tensor infos, padded: `gguf_get_meta_data` of llama.cpp's output context."""
    replaced = {KEY_QUANT_VERSION, KEY_FILE_TYPE, *metadata}
    # gguf_set_kv copies every entry as it is (same type, same bytes), in the file's order.
    kv = [bytes(data[a:b]) for key, (a, b) in spans.items() if key not in replaced]
    # gguf_set_val_* removes a key and appends it: these two end the metadata, in this
    # order, then the overrides in theirs.
    kv.append(_u32_entry(KEY_QUANT_VERSION, qr.GGML_QNT_VERSION))
    kv.append(_u32_entry(KEY_FILE_TYPE, int(ftype)))
    for key, value in metadata.items():
        if isinstance(value, str):
            kv.append(_gguf_str(key) + struct.pack("<I", _GGUF_TYPE_STRING) + _gguf_str(value))
        else:
            kv.append(_u32_entry(key, int(value)))
    head = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(mix.tensors), len(kv)), *kv]
    offset = 0
    for plan, size in zip(mix.tensors, sizes):
        dims = plan.shape[: qr.n_dims(plan.shape)]
        head.append(_gguf_str(plan.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims,
                                                        int(plan.target_type), offset))
        offset += size + _pad(size)
    meta = b"".join(head)
    out.write(meta + b"\0" * _pad(len(meta)))


def _write_tensor(
    out: BinaryIO, pool: ThreadPoolExecutor, plan: qr.TensorPlan, raw: np.ndarray,
    imatrix: np.ndarray | None, progress: Progress, n_threads: int,
) -> int:
    """Write one tensor's data (copied, or quantized chunk by chunk in parallel); bytes written."""
    from libra_edge.engine import llama as llama_seam

    if not plan.quantize:
        out.write(np.ascontiguousarray(raw).tobytes())
        progress.update(raw.nbytes)
        return int(raw.nbytes)
    n_per_row = plan.shape[0]
    nrows = _rows(plan.shape)
    rows_per_expert = plan.shape[1] if len(plan.shape) > 1 else 1
    in_row = raw.nbytes // nrows
    chunk = max(1, _CHUNK_ELEMENTS // n_per_row)
    # Chunks never cross an expert's boundary: each expert has its own importance row.
    starts = [(e, r) for e in range(0, nrows, rows_per_expert)
              for r in range(e, min(e + rows_per_expert, nrows), chunk)]

    def work(span: tuple[int, int]) -> np.ndarray:
        expert_start, first = span
        last = min(first + chunk, expert_start + rows_per_expert, nrows)
        f32 = _to_f32(raw[first * in_row: last * in_row], plan.source_type).reshape(last - first, n_per_row)
        weights = None if imatrix is None else imatrix[first // rows_per_expert]
        return llama_seam.quantize_rows(int(plan.target_type), f32, weights)

    written = 0
    # At most 2 x threads chunks in flight: memory stays at a few chunks, whatever the tensor.
    window = 2 * n_threads
    pending = [pool.submit(work, s) for s in starts[:window]]
    next_i = len(pending)
    while pending:
        data = pending.pop(0).result()
        if next_i < len(starts):
            pending.append(pool.submit(work, starts[next_i]))
            next_i += 1
        out.write(data.data)
        written += int(data.nbytes)
        progress.update(int(data.nbytes))
    return written

