"""Checkpoint -> GGUF: plan (validate, metadata, tokenizer, tensor list), write, then quantize if asked.

Quantizing, the direct F32/F16/BF16 file is written first; with `imatrix="auto"` the
importance matrix is computed from it over the shipped calibration set (`convert.imatrix`)
and saved beside the output as `<model>.imatrix.gguf`, which a later quantization of the
same source (same sha256) reuses instead of computing it again.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import gguf

from .architectures import ModelSpec, spec_for
from .checkpoint import Checkpoint, open_checkpoint
from .metadata import Provenance, add_metadata
from .progress import Progress
from .outtypes import OUTTYPES, QUANT_FTYPES
from .quantize import quantize_gguf
from .tensors import DIRECT_TYPES, FILE_TYPES, ConvertedTensor, output_type_for
from .vocab import VocabSummary
from libra_edge.errors import ConversionError
# Metadata the quantized file carries about its importance matrix (llama-quantize's keys,
# and the calibration set's sha256): read back by `models info`, the manifest and doctor.
from libra_edge.models.ggufinfo import (
    KEY_IMATRIX_CHUNKS,
    KEY_IMATRIX_DATASET,
    KEY_IMATRIX_ENTRIES,
    KEY_IMATRIX_FILE,
    KEY_IMATRIX_SHA256,
)


@dataclass
class ConversionPlan:
    """Everything that would be written, decided before any weight is read."""

    checkpoint: Checkpoint
    spec: ModelSpec
    outtype: str
    write_type: str  # the direct type written first (the quantizer's input when quantizing)
    writer: gguf.GGUFWriter
    tensors: list[ConvertedTensor]
    vocab: VocabSummary
    n_params: int

    @property
    def quantized(self) -> bool:
        """Whether the quantizer runs after the direct write."""
        return self.outtype in QUANT_FTYPES

    def metadata(self) -> list[tuple[str, Any]]:
        """(key, value) of every metadata entry, long arrays summarised."""
        rows = []
        for key, val in self.writer.kv_data[0].items():
            value = val.value
            if isinstance(value, (list, tuple)) and len(value) > 8:
                value = f"[{len(value)} items]"
            elif isinstance(value, str) and len(value) > 120:
                value = value[:60].replace("\n", "\\n") + f"... ({len(value)} chars)"
            rows.append((key, value))
        return rows

    def describe(self, out: TextIO) -> None:
        """The `--dry-run` listing: metadata, then one line per tensor."""
        print(f"# {self.checkpoint.path} ({self.spec.hf_architecture}) -> {self.spec.arch_name}, "
              f"{self.outtype.upper()}, {self.n_params:,} parameters", file=out)
        v = self.vocab
        print(f"# tokenizer: {v.tokenizer_model} ({v.pre_tokenizer}), {v.n_tokens:,} tokens "
              f"({v.n_control} control, {v.n_user_defined} user-defined, {v.n_byte} byte, {v.n_padding} padding), "
              f"{v.n_merges:,} merges; chat template from {v.chat_template_source}", file=out)
        print("# metadata", file=out)
        for key, value in self.metadata():
            print(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}", file=out)
        print(f"# tensors ({len(self.tensors)})", file=out)
        for t in self.tensors:
            shape = ", ".join(str(d) for d in reversed(t.shape))  # GGUF order: ne0 first
            print(f"{t.name:<28} {{{shape}}}  {t.source.dtype} -> {t.outtype.upper()}  ({t.source.name})", file=out)
        if self.quantized:
            print(f"# then quantized from {self.write_type.upper()} to {self.outtype.upper()} with llama.cpp's "
                  "per-tensor type rules (some tensors keep more bits; norms and biases stay as they are)",
                  file=out)


def _write_type(checkpoint: Checkpoint, outtype: str) -> str:
    """Direct type to write: the output type itself, or the lossless input for the quantizer."""
    if outtype in DIRECT_TYPES:
        return outtype
    dtypes = {ref.dtype for ref in checkpoint.tensors.values() if len(ref.shape) > 1}
    if dtypes <= {"BF16"}:
        return "bf16"  # bf16 -> bf16 is a plain copy, and keeps bf16's range
    if dtypes <= {"F16"}:
        return "f16"
    return "f32"


def plan_conversion(
    src: Path,
    *,
    outtype: str = "f16",
    vocab_only: bool = False,
    source_repo: str | None = None,
    source_revision: str | None = None,
    name: str | None = None,
) -> ConversionPlan:
    """Validate the checkpoint and decide every tensor and metadata entry; reads no weights."""
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    checkpoint = open_checkpoint(Path(src))
    spec = spec_for(checkpoint)
    planned = [] if vocab_only else spec.plan_tensors()
    write_type = _write_type(checkpoint, outtype)
    tensors = [
        ConvertedTensor(p.gguf_name, p.source, output_type_for(p.source, write_type), p.transform)
        for p in planned
    ]
    n_params = sum(t.source.n_elements for t in tensors)

    writer = gguf.GGUFWriter(None, spec.arch_name)
    provenance = Provenance.resolve(checkpoint, source_repo, source_revision)
    add_metadata(writer, checkpoint, n_params=n_params, provenance=provenance, name=name)
    spec.add_hparams(writer)
    writer.add_file_type(FILE_TYPES[write_type])
    vocab = spec.add_vocab(writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, t.dtype, t.nbytes, raw_dtype=t.raw_dtype)
    return ConversionPlan(checkpoint, spec, outtype, write_type, writer, tensors, vocab, n_params)


IMATRIX_SUFFIX = ".imatrix.gguf"


def imatrix_path_for(model: Path) -> Path:
    """`dir/guard.gguf` -> `dir/guard.imatrix.gguf`: where `--imatrix auto` keeps the matrix."""
    stem = model.name[: -len(".gguf")] if model.name.endswith(".gguf") else model.name
    return model.with_name(stem + IMATRIX_SUFFIX)


@dataclass(frozen=True)
class ImatrixUse:
    """The importance matrix a quantization used, and where it came from."""

    path: Path | None  # the file it was read from or saved to
    dataset: str  # the calibration set's name
    calibration_sha256: str
    source_sha256: str | None  # sha256 of the F32/F16/BF16 file it was computed from, when known
    entries: int
    chunks: int
    n_tokens: int
    reused: bool  # read from a file rather than computed now
    seconds: float  # computing it (0 when reused)
    peak_rss_mib: float | None = None  # the process's peak RSS once computed (Linux), when computed

    def line(self) -> str:
        """One line for the user."""
        what = (f"{self.entries} tensors from {self.chunks} prompts ({self.n_tokens:,} tokens) of {self.dataset}, "
                f"calibration sha256 {self.calibration_sha256[:12]}")
        if self.reused:
            return f"importance matrix: {what}: reused {self.path}"
        where = f", saved to {self.path}" if self.path else ""
        return f"importance matrix: {what}: computed in {self.seconds:.1f} s{where}"


@dataclass(frozen=True)
class ConversionResult:
    """A finished conversion."""

    path: Path
    outtype: str
    n_tensors: int
    n_params: int
    file_size: int
    seconds: float
    vocab: VocabSummary
    imatrix: ImatrixUse | None = None


def write_plan(plan: ConversionPlan, path: Path, *, progress_stream: TextIO | None = None) -> None:
    """Write the planned GGUF to `path`, tensor by tensor (memory stays at a few blocks)."""
    w = plan.writer
    total = sum(t.nbytes for t in plan.tensors)
    progress = Progress(f"writing {plan.write_type.upper()}", total, stream=progress_stream)
    try:
        w.write_header_to_file(path=path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in plan.tensors:
            w.write_tensor_data(t)  # type: ignore[arg-type]  # duck-typed lazy tensor
            progress.update(t.nbytes)
        w.flush()
    finally:
        w.close()
        if total:
            progress.close()


def convert_checkpoint(
    src: Path,
    out: Path,
    *,
    outtype: str = "f16",
    vocab_only: bool = False,
    source_repo: str | None = None,
    source_revision: str | None = None,
    name: str | None = None,
    threads: int | None = None,
    verbose: bool = False,
    progress_stream: TextIO | None = None,
    imatrix: str | Path | None = None,
) -> ConversionResult:
    """Convert HF checkpoint folder `src` into GGUF `out` (replaced only once complete).

    `imatrix` (quantized types only): "auto" to compute the importance matrix over the
    shipped calibration set (or reuse `<out>.imatrix.gguf` when it was computed from the
    same source), or the path of an imatrix file (llama.cpp's GGUF or .dat format).
    """
    started = time.monotonic()
    out = Path(out)
    if out.is_dir():
        raise ConversionError(f"{out}: is a folder; give the output GGUF file name")
    plan = plan_conversion(
        src, outtype=outtype, vocab_only=vocab_only, source_repo=source_repo,
        source_revision=source_revision, name=name,
    )
    if imatrix is not None and (not plan.quantized or vocab_only or outtype == "q8_0"):
        raise ConversionError(f"--imatrix: not for {outtype.upper()}" + (" --vocab-only" if vocab_only else "")
                              + " (only quantized types below 8 bits use an importance matrix)")
    given = None
    if imatrix is not None and str(imatrix) != "auto":
        from .imatrix import Imatrix

        given = Imatrix.load(Path(imatrix))  # before a long conversion: a bad file fails now
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    direct = out.with_name(f"{out.name}.{plan.write_type}.part") if plan.quantized and not vocab_only else part
    used: ImatrixUse | None = None
    try:
        write_plan(plan, direct, progress_stream=progress_stream)
        if direct != part:
            data: dict[str, Any] | None = None
            extra: dict[str, str | int] = {}
            if imatrix is not None:
                matrix, used = _importance_matrix(direct, out, given, Path(imatrix) if given else None,
                                                  threads=threads, verbose=verbose, stream=progress_stream)
                data = matrix.data
                extra = {
                    KEY_IMATRIX_FILE: used.path.name if used.path else "",
                    KEY_IMATRIX_DATASET: used.dataset,
                    KEY_IMATRIX_ENTRIES: used.entries,
                    KEY_IMATRIX_CHUNKS: used.chunks,
                    KEY_IMATRIX_SHA256: used.calibration_sha256,
                }
            quantize_gguf(direct, part, outtype, threads=threads, verbose=verbose, imatrix=data, metadata=extra)
        part.replace(out)
    except OSError as exc:
        raise ConversionError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        for leftover in {direct, part}:
            leftover.unlink(missing_ok=True)
    return ConversionResult(
        path=out, outtype=outtype, n_tensors=len(plan.tensors), n_params=plan.n_params,
        file_size=out.stat().st_size, seconds=time.monotonic() - started, vocab=plan.vocab, imatrix=used,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0  # Linux: KiB


def _importance_matrix(
    source: Path, out: Path, given: Any, given_path: Path | None, *, threads: int | None, verbose: bool,
    stream: TextIO | None,
) -> tuple[Any, ImatrixUse]:
    """The matrix to quantize `source` with: the file given, the one saved beside `out`, or a new one."""
    from .imatrix import Imatrix, compute_imatrix, default_calibration

    def use(m: Any, path: Path | None, *, reused: bool, seconds: float = 0.0, source_sha: str | None = None,
            rss: float | None = None) -> ImatrixUse:
        return ImatrixUse(path=path, dataset=m.dataset, calibration_sha256=m.calibration_sha256,
                          source_sha256=source_sha or m.source_sha256 or None,
                          entries=len(m.data), chunks=m.chunks, n_tokens=m.n_tokens, reused=reused,
                          seconds=seconds, peak_rss_mib=rss)

    if given is not None:
        return given, use(given, given_path, reused=True)
    source_sha = _sha256(source)
    saved = imatrix_path_for(out)
    _, calibration_sha = default_calibration()
    if saved.is_file():
        try:
            previous = Imatrix.load(saved)
        except ConversionError as exc:
            previous = None
            if verbose:
                print(f"convert: {exc}: computing it again", file=sys.stderr)
        if (previous is not None and previous.source_sha256 == source_sha
                and previous.calibration_sha256 == calibration_sha):
            return previous, use(previous, saved, reused=True, source_sha=source_sha)
    progress = _PromptProgress(stream if stream is not None else sys.stderr)
    started = time.monotonic()
    matrix = compute_imatrix(source, threads=threads, verbose=verbose, progress=progress)
    progress.close()
    seconds = time.monotonic() - started
    rss = _peak_rss_mib()
    matrix.source_sha256 = source_sha  # recorded in the file: a re-quantization checks it
    matrix.save(saved)
    return matrix, use(matrix, saved, reused=False, seconds=seconds, source_sha=source_sha, rss=rss)


class _PromptProgress:
    """`computing the importance matrix 12/73 prompts` redrawn on a terminal (silent otherwise)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            self.stream.write(f"\rcomputing the importance matrix {done}/{total} prompts "
                              f"{time.monotonic() - self.started:.0f}s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
