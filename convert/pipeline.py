"""Checkpoint -> GGUF: plan (validate, metadata, tokenizer, tensor list), write, then quantize if asked."""

from __future__ import annotations

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
        """Whether llama.cpp's quantizer runs after the direct write."""
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
            print(f"# then quantized by llama.cpp from {self.write_type.upper()} to {self.outtype.upper()} "
                  "(llama.cpp picks each tensor's type; norms and biases stay F32)", file=out)


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
) -> ConversionResult:
    """Convert HF checkpoint folder `src` into GGUF `out` (replaced only once complete)."""
    started = time.monotonic()
    out = Path(out)
    if out.is_dir():
        raise ConversionError(f"{out}: is a folder; give the output GGUF file name")
    plan = plan_conversion(
        src, outtype=outtype, vocab_only=vocab_only, source_repo=source_repo,
        source_revision=source_revision, name=name,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    direct = out.with_name(f"{out.name}.{plan.write_type}.part") if plan.quantized and not vocab_only else part
    try:
        write_plan(plan, direct, progress_stream=progress_stream)
        if direct != part:
            quantize_gguf(direct, part, outtype, threads=threads, verbose=verbose)
        part.replace(out)
    except OSError as exc:
        raise ConversionError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        for leftover in {direct, part}:
            leftover.unlink(missing_ok=True)
    return ConversionResult(
        path=out, outtype=outtype, n_tensors=len(plan.tensors), n_params=plan.n_params,
        file_size=out.stat().st_size, seconds=time.monotonic() - started, vocab=plan.vocab,
    )
