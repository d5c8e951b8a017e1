"""Entry point of the `libra-edge` command: parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from libra_edge import __version__
from libra_edge.errors import ExitCode, LibraError

# Each name is a module in this package exposing `register(subparsers)`; registration
# must stay import-cheap (no llama.cpp, no Textual) so `--help` is instant.
COMMANDS = ("check", "batch", "runs", "eval", "report", "audit", "models", "convert", "bundle", "doctor", "bench", "serve", "tui")

DESCRIPTION = """\
Libra-Guard, offline: judge whether an LLM's response to a question is safe.

Common tasks:
  libra-edge check -q "问题" -r "回答"        judge one pair (exit 1 when unsafe)
  libra-edge batch logs.jsonl -o out.jsonl   judge a whole file, resumable
  libra-edge runs list                       the runs in the results database (runs info RUN)
  libra-edge eval out.jsonl                  Libra-Test metrics for predictions
  libra-edge report 3                        audit report of run 3 (HTML, gates)
  libra-edge models list                     installed models (pull, import, verify)
  libra-edge serve -m guard.gguf             HTTP moderation service on 127.0.0.1:8080
  ./install.sh --bundle OUT                  everything an air-gapped machine needs (bundle)
  libra-edge                                 open the terminal UI

Exit codes: 0 ok/safe, 1 unsafe (check) or a rule/gate failed (audit bank/report),
2 usage, 3 model, 4 input, 5 network (pull; the service under test for audit ask),
6 conversion, 7 incomplete (batch: records skipped or failed; audit ask: questions
unanswered), 8 disk full, 70 internal error, 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="libra-edge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"libra-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"libra_edge.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see `ExitCode`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `libra-edge` opens the TUI
        args = parser.parse_args(["tui", *(argv or [])])
    verbose = bool(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or ExitCode.OK)
    except LibraError as exc:
        print(f"libra-edge: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("libra-edge: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # `libra-edge ... | head`
        return int(ExitCode.OK)
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if verbose:
            raise
        print(
            f"libra-edge: internal error: {type(exc).__name__}: {exc} "
            "(run again with --verbose for the traceback)",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
