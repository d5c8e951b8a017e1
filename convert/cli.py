"""Command line of the converter: `python -m convert` and `libra-edge convert` share these options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .outtypes import OUTTYPES
from libra_edge.errors import ConversionError, ExitCode, LibraError

DESCRIPTION = """\
Convert a Hugging Face Libra-Guard checkpoint (safetensors; Qwen2.5, Yi-1.5 or Qwen1 base)
into one GGUF file for llama.cpp: weights, the complete tokenizer and chat template, and
provenance metadata. The checkpoint's own Python code is never imported or run.
Quantized types get llama.cpp's per-tensor type rules and ggml's kernels (the file is
byte-identical to llama-quantize's), optionally steered by an importance matrix computed
on Libra prompts (--imatrix auto): it keeps a 4-bit guard closer to the checkpoint's scores.
"""

EPILOG = """\
examples:
  %(prog)s ./Libra-Guard-Qwen2.5-3B-Instruct -o libra-guard-3b-q4_k_m.gguf --outtype q4_k_m
  %(prog)s ./ckpt -o guard-q4_k_m.gguf --outtype q4_k_m --imatrix auto
                                       quantize with an importance matrix from the calibration set
                                       (saved as guard-q4_k_m.imatrix.gguf; reused next time)
  %(prog)s ./ckpt -o guard-iq4.gguf --outtype iq4_xs --imatrix guard-q4_k_m.imatrix.gguf
                                       reuse a matrix (or one made by llama.cpp's llama-imatrix)
  %(prog)s ./ckpt -o guard-q8_0.gguf --verify        convert, then compare with the checkpoint
  %(prog)s ./ckpt --dry-run --outtype f16            list tensors and metadata, write nothing
  %(prog)s ./ckpt -o vocab.gguf --vocab-only         tokenizer only (for tokenizer tests)

output types: f32, f16, bf16 (written directly); q8_0 (near-lossless, half of f16),
q6_k, q5_k_m, q4_k_m (smallest that usually keeps verdicts), q5_k_s, q4_k_s, q3_k_*, q2_k,
q4_0, q4_1, q5_0, q5_1, iq4_xs, iq4_nl.

--imatrix auto runs the F16/BF16 model over the calibration set that ships with libra-edge
(Libra-style question/response pairs in the authors' prompt; Chinese and English, safe and
unsafe) and records the squared inputs of every matrix multiply: the quantizer then spends
its error where the activations are small. It costs one pass of the unquantized model
over the set (on the CPU, a long pass for a 3B: see the README's quantization table) and
matters below 8 bits: ggml's Q8_0 does not use one (refused). The quantized file,
`models info` and `doctor` record the calibration set's sha256.

--verify needs the optional extra: pip install 'libra-edge[verify]' (torch, transformers).
architectures: Qwen2ForCausalLM (tokenizer.json), LlamaForCausalLM (tokenizer.model),
QWenLMHeadModel (qwen.tiktoken; --verify is not available: transformers has no Qwen1 class).
Pickle weights (.bin/.pt) are refused: use the model's safetensors release.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All converter options on `parser` (used by both entry points)."""
    parser.add_argument("src", metavar="SRC_DIR", type=Path,
                        help="checkpoint folder: config.json, tokenizer files, *.safetensors")
    parser.add_argument("-o", "--outfile", type=Path, metavar="OUT.gguf",
                        help="GGUF file to write (required unless --dry-run); replaced only once complete")
    parser.add_argument("--outtype", default="q8_0", choices=OUTTYPES, metavar="TYPE",
                        help="weight type: " + ", ".join(OUTTYPES) + " (default: q8_0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the metadata and tensors that would be written; write nothing")
    parser.add_argument("--vocab-only", action="store_true",
                        help="write only the tokenizer and metadata (no weights)")
    parser.add_argument("--verify", action="store_true",
                        help="after converting, compare the GGUF with the checkpoint on Libra prompts "
                        "(needs torch + transformers); exit 6 if tokens or verdicts differ")
    group = parser.add_argument_group("metadata")
    group.add_argument("--name", help="general.name (default: the source repo's name, else the folder name)")
    group.add_argument("--source-repo", metavar="OWNER/NAME",
                       help="Hugging Face repo the checkpoint came from (default: libra_edge_source.json)")
    group.add_argument("--source-revision", metavar="REV",
                       help="commit/revision of that repo (default: libra_edge_source.json)")
    parser.add_argument("--imatrix", metavar="auto|FILE",
                        help="quantize with an importance matrix: 'auto' computes it on the shipped Libra "
                        "calibration set (kept beside the output as NAME.imatrix.gguf and reused when "
                        "the source is the same), or FILE, an imatrix in llama.cpp's GGUF or .dat format "
                        "(quantized types other than q8_0; default: none)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for quantizing (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show llama.cpp's own logs and full tracebacks (on stderr)")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed `convert` command line; returns the exit code."""
    from .pipeline import convert_checkpoint, plan_conversion

    if args.threads is not None and args.threads < 1:
        raise LibraError(f"--threads: must be at least 1, got {args.threads}")
    if args.dry_run:
        plan = plan_conversion(
            args.src, outtype=args.outtype, vocab_only=args.vocab_only,
            source_repo=args.source_repo, source_revision=args.source_revision, name=args.name,
        )
        plan.describe(sys.stdout)
        return int(ExitCode.OK)
    if args.outfile is None:
        raise LibraError("convert: -o/--outfile is required (or use --dry-run)")
    if args.verify and args.vocab_only:
        raise LibraError("convert: --verify needs weights; drop --vocab-only")
    imatrix = _imatrix_option(args)
    if args.verify:
        from .verify import require_reference

        _require_verifiable(args.src)
        require_reference()  # fail before a long conversion, not after it
    result = convert_checkpoint(
        args.src, args.outfile, outtype=args.outtype, vocab_only=args.vocab_only,
        source_repo=args.source_repo, source_revision=args.source_revision, name=args.name,
        threads=args.threads, verbose=args.verbose, imatrix=imatrix,
    )
    if result.imatrix is not None:
        print(result.imatrix.line())
    kind = "vocab-only" if args.vocab_only else args.outtype.upper()
    print(f"wrote {result.path} ({kind}, {result.file_size / 2**20:.1f} MiB, {result.n_tensors} tensors, "
          f"{result.n_params:,} parameters, {result.seconds:.1f} s)")
    if args.verify:
        from .verify import verify

        report = verify(args.src, result.path, threads=args.threads, verbose=args.verbose)
        print("\n".join(report.lines()))
        if not report.passed:
            raise ConversionError(
                f"{result.path}: verification failed (tokens or verdicts differ from the checkpoint; the file is kept)"
            )
    return int(ExitCode.OK)


def _imatrix_option(args: argparse.Namespace) -> str | Path | None:
    """`--imatrix`: "auto", an existing file, or None; a usage error (one line) otherwise."""
    from .outtypes import QUANT_FTYPES

    value = getattr(args, "imatrix", None)
    if value is None:
        return None
    if args.outtype not in QUANT_FTYPES or args.vocab_only:
        raise LibraError(f"--imatrix: only for quantized types (--outtype {args.outtype} is not quantized)"
                         if not args.vocab_only else "--imatrix: not with --vocab-only (no weights)")
    if args.outtype == "q8_0":
        raise LibraError("--imatrix: Q8_0 does not use an importance matrix (ggml quantizes it without one); "
                         "drop --imatrix")
    if value == "auto":
        return "auto"
    path = Path(value).expanduser()
    if not path.is_file():
        raise LibraError(f"--imatrix: {path}: no such file (give 'auto' or an imatrix file)")
    return path


def _require_verifiable(src: Path) -> None:
    """--verify runs the checkpoint with transformers: refuse architectures it has no class for."""
    from .architectures import spec_for
    from .checkpoint import open_checkpoint

    spec = spec_for(open_checkpoint(src))
    if not spec.transformers_reference:
        raise LibraError(
            f"convert: --verify cannot run {spec.hf_architecture} (transformers has no class for it and "
            "checkpoint code is never run); drop --verify"
        )


def build_parser(prog: str = "python -m convert") -> argparse.ArgumentParser:
    """The standalone converter's parser."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m convert") -> int:
    """Standalone entry point: same error handling as `libra-edge` (one line, exit code)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except LibraError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("convert: interrupted (no output written)", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)

