"""Options shared by the commands that load a model, how they become `Guard` options, and the
one rule for folders a command writes into."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from libra_edge.errors import InputError, LibraError


def help_from_doc(doc: str | None) -> str:
    """A subcommand's one-line help: its docstring's first line, without "`libra-edge x`: " or the final period.

    A plain capitalized first word is lowered ("List the models." -> "list the models"),
    names such as "Libra-Test" or "GGUF" are kept.
    """
    lines = (doc or "").strip().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError("a subcommand needs a docstring: its first line is the --help text")
    line = re.sub(r"^`libra-edge [^`]*`(\s*\([^)]*\))?:\s*", "", lines[0].strip()).rstrip(".")
    rest = line.split(" ", 1)[0][1:].replace("-", "")
    if line[:1].isupper() and rest.isalpha() and rest.islower():
        line = line[0].lower() + line[1:]
    return line


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """`--verbose`: llama.cpp's C logs and Python tracebacks on stderr."""
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show llama.cpp's own logs and full tracebacks (on stderr)",
    )


def destination_folder(folder: Path, *, mkdir: bool, name: str, missing: str = "") -> Path:
    """The folder a command writes into (`batch -o`, `models export`): it must exist, unless `mkdir`.

    One rule for every command: a missing folder is refused (exit 4, the message names it
    and `--mkdir`), because a mistyped path or an unmounted drive would otherwise get a new
    folder and hours of output in the wrong place; with `mkdir` it is created with its
    parents. `name` starts the message (the flag or the path as given), `missing` is said
    after "no such folder".
    """
    folder = Path(folder)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise InputError(f"{name}: {folder} is not a folder")
    if not mkdir:
        raise InputError(f"{name}: no such folder{missing}", hint="pass --mkdir to create it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{name}: cannot create {folder}: {exc.strerror or exc}") from None
    return folder


def add_model_options(parser: argparse.ArgumentParser, *, long_option: bool = False) -> None:
    """`--model` plus the engine options every model-loading command accepts.

    `long_option`: the command has `--long` (its `--ctx` help names it).
    """
    group = parser.add_argument_group("model and hardware")
    group.add_argument(
        "-m", "--model", metavar="PATH|NAME",
        help="GGUF file or installed model name (default: the configured default model, "
        "else the only installed one; see `libra-edge models`)",
    )
    group.add_argument(
        "--gpu-layers", default="auto", metavar="auto|all|0|N",
        help="layers to offload to the GPU: auto (all if this build has GPU offload, else 0), "
        "all, 0 (pure CPU) or a number (default: auto)",
    )
    group.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="CPU threads for llama.cpp (default: physical cores)",
    )
    longer = ("a longer response is judged whole in overlapping windows, the highest score "
              "deciding (--long chunk, the default), or cut to its head and tail (--long truncate)"
              if long_option else
              "a longer response is judged whole in overlapping windows, the highest score deciding")
    group.add_argument(
        "--ctx", type=int, default=4096, metavar="TOKENS",
        help=f"context size in tokens of each sequence (default: 4096); {longer}",
    )
    group.add_argument(
        "--threshold", type=float, default=0.5, metavar="X",
        help="flag as unsafe when P(unsafe) >= X, 0..1 (default: 0.5)",
    )
    add_verbose_option(parser)


def parse_gpu_layers(value: str) -> int | str:
    """`auto`/`all`/integer from the command line, or a usage error naming the flag."""
    v = value.strip().lower()
    if v in ("auto", "all"):
        return v
    try:
        n = int(v)
    except ValueError:
        raise LibraError(f"--gpu-layers: expected auto, all or a number, got {value!r}") from None
    if n < 0:
        raise LibraError(f"--gpu-layers: must be >= 0, got {n}")
    return n


def guard_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `Guard.load` from the shared options."""
    if not 0.0 <= args.threshold <= 1.0:
        raise LibraError(f"--threshold: must be between 0 and 1, got {args.threshold}")
    if args.ctx < 512:
        raise LibraError(f"--ctx: must be at least 512 tokens, got {args.ctx}")
    if args.threads is not None and args.threads < 1:
        raise LibraError(f"--threads: must be at least 1, got {args.threads}")
    return {
        "gpu_layers": parse_gpu_layers(args.gpu_layers),
        "threads": args.threads,
        "ctx_per_seq": args.ctx,
        "threshold": args.threshold,
        "verbose": args.verbose,
    }
