"""`libra-edge doctor` (being built: see the issue tracker)."""

from __future__ import annotations

import argparse

from libra_edge.errors import LibraError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise LibraError("'doctor' is not built yet")
