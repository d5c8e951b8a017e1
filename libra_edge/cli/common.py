"""Options shared by the commands that load a model, how they become `Guard` options, and the
one rule for folders a command writes into."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from libra_edge.engine.settings import LONG_MODES, EngineSettings, SettingError
from libra_edge.errors import InputError, LibraError
from libra_edge.verdicts import MIN_CTX_PER_SEQ


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, doc: str | None, *,
                description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A (sub)command as every libra-edge command declares it: its one-line help from its
    docstring (`help_from_doc`), a description, and examples printed as written."""
    return sub.add_parser(name, help=help_from_doc(doc), description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


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


# The engine settings a command line sets, with the flag that sets each (a SettingError
# from `EngineSettings` is told with the flag's name).
FLAGS: dict[str, str] = {
    "ctx_per_seq": "--ctx", "threshold": "--threshold", "max_new_tokens": "--max-tokens", "long": "--long",
    "normalize": "--no-normalize", "gpu_layers": "--gpu-layers", "threads": "--threads", "parallel": "--parallel",
}
# The options that decide verdicts, declared once for every command that loads a model.
VERDICT_OPTIONS = ("--ctx", "--threshold", "--max-tokens", "--max-new-tokens", "--long", "--no-normalize")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--model`, the hardware options and the verdict options of every model-loading command.

    `check`, `batch`, `serve`, `tui` (and `bench`, `doctor`) call this, so each option has
    one declaration: the same names, help and defaults, read from `EngineSettings`.
    `engine_settings(args)` turns them into the settings a Guard loads with.
    """
    defaults = EngineSettings()
    group = parser.add_argument_group("model and hardware")
    group.add_argument(
        "-m", "--model", metavar="PATH|NAME",
        help="GGUF file or installed model name (default: the configured default model, "
        "else the only installed one; see `libra-edge models`)",
    )
    group.add_argument(
        "--gpu-layers", default=defaults.gpu_layers, metavar="auto|all|0|N",
        help="layers to offload to the GPU: auto (all if this build has GPU offload, else 0), "
        f"all, 0 (pure CPU) or a number (default: {defaults.gpu_layers})",
    )
    group.add_argument(
        "--threads", type=int, default=defaults.threads, metavar="N",
        help="CPU threads for llama.cpp (default: physical cores)",
    )
    verdict = parser.add_argument_group(
        "verdict settings", "they decide scores and verdicts: a run records them, and `batch --resume` "
        "uses the run's own")
    verdict.add_argument(
        "--ctx", type=int, default=defaults.ctx_per_seq, metavar="TOKENS",
        help=f"context size in tokens of each sequence, at least {MIN_CTX_PER_SEQ} (default: "
        f"{defaults.ctx_per_seq}); a longer response is judged whole in overlapping windows, the "
        "highest score deciding (--long chunk, the default), or cut to its head and tail (--long truncate)",
    )
    verdict.add_argument(
        "--threshold", type=float, default=defaults.threshold, metavar="X",
        help=f"flag as unsafe when P(unsafe) >= X, 0..1 (default: {defaults.threshold:g})",
    )
    verdict.add_argument(
        "--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=defaults.max_new_tokens,
        metavar="N", help=f"longest analysis in tokens (default: {defaults.max_new_tokens}, as the authors); "
        "a cut analysis keeps its verdict and is marked analysis_cut",
    )
    verdict.add_argument(
        "--long", choices=LONG_MODES, default=defaults.long,
        help="a response too long for the context: judge it whole in overlapping windows, the "
        "highest score deciding (chunk, the default), or keep its head and tail (truncate)",
    )
    verdict.add_argument(
        "--no-normalize", dest="normalize", action="store_false", default=defaults.normalize,
        help="judge the text exactly as given (default: NFKC, zero-width and bidi controls "
        "removed, full-width ASCII folded)",
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


def engine_settings(args: argparse.Namespace, **more: Any) -> EngineSettings:
    """The settings the shared options (and MORE, e.g. `parallel`) give, checked by `EngineSettings`.

    A setting out of range is a usage error naming its flag: `--ctx: must be at least ...`.
    """
    fields: dict[str, Any] = {
        "ctx_per_seq": args.ctx, "threshold": args.threshold, "max_new_tokens": args.max_tokens,
        "long": args.long, "normalize": args.normalize, "gpu_layers": parse_gpu_layers(args.gpu_layers),
        "threads": args.threads, "verbose": args.verbose, **more,
    }
    try:
        return EngineSettings(**fields)
    except SettingError as exc:
        raise LibraError(f"{FLAGS.get(exc.setting, exc.setting)}: {exc.problem}") from None


def guard_options(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """Keyword arguments for `Guard.load` from the shared options (`engine_settings`, as a dict)."""
    return engine_settings(args, **more).to_dict()
