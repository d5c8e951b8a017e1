"""`libra-edge tui` (also a bare `libra-edge`): the terminal UI for checks, runs and review."""

from __future__ import annotations

import argparse
from pathlib import Path

from libra_edge.cli.common import add_model_options, guard_options
from libra_edge.errors import LibraError

EPILOG = """\
screens (switch with F1 / F2 / F3, quit with ctrl+q):
  F1 Check    type a question and a response, ctrl+r judges them, ctrl+t fast/full mode
  F2 Runs     batch runs: n new run (file picker), r resume, x cancel, Enter browses results
              results: f flagged/all, / search, o sort by score, [ ] pages, e export,
              Enter opens an item: c confirm, s / u override to 安全 / 不安全, e note,
              n / p next / previous flagged item
  F3 Models   installed models: Enter uses one, d makes it the default

examples:
  libra-edge                                  open the TUI with the default model
  libra-edge tui --model libra-guard-3b-q4_k_m
  libra-edge tui --db /data/review.db -m ./Libra-Guard-3B.Q8_0.gguf

Everything stays on this machine: the TUI never opens a network connection.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tui",
        help="open the terminal UI (the default command)",
        description="Check pairs, run and watch batches, review flagged items and export decisions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", metavar="PATH", type=Path,
                   help="results database (default: libra-edge.db in the libra-edge home)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N",
                   help="longest analysis in tokens (default: 256, as the authors)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Textual is imported here, not at registration: `libra-edge --help` stays instant and
    # the headless commands never load it.
    from libra_edge.tui.app import make_app
    from libra_edge.tui.session import GuardSettings

    if args.max_tokens < 1:
        raise LibraError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    opts = guard_options(args)
    settings = GuardSettings(
        n_ctx=opts["n_ctx"], threshold=opts["threshold"], max_new_tokens=args.max_tokens,
        threads=opts["threads"], gpu_layers=opts["gpu_layers"], verbose=opts["verbose"],
    )
    if args.db is not None and args.db.is_dir():
        raise LibraError(f"--db {args.db}: is a folder, expected a database file")
    app = make_app(model=args.model, db_path=args.db, settings=settings)
    app.run()
    return 0
