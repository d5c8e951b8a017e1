"""`libra-edge convert`: convert a Hugging Face checkpoint (safetensors) into a GGUF model.

Delegates to `libra_edge.convert`.
"""

from __future__ import annotations

from libra_edge.cli.common import add_command

import argparse

from libra_edge.convert.cli import DESCRIPTION, EPILOG, add_arguments


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `convert` subcommand (options defined once, in libra_edge.convert.cli)."""
    p = add_command(sub, "convert", __doc__,
        description=DESCRIPTION,
        epilog=EPILOG.replace("%(prog)s", "libra-edge convert"))
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the conversion; errors are LibraError subclasses (one line, exit code 6)."""
    from libra_edge.convert.cli import run as convert_run

    return int(convert_run(args))
