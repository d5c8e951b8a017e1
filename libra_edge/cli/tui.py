"""`libra-edge tui` (also a bare `libra-edge`): open the terminal UI for checks, runs and review."""

from __future__ import annotations

import argparse
from pathlib import Path

from libra_edge.cli.common import add_command, add_model_options, engine_settings
from libra_edge.errors import LibraError

EPILOG = """\
screens (switch with F1 / F2 / F3, ? lists the keys of the screen you are on, ctrl+q quits):
  F1 Check    type a question and a response, ctrl+r judges them, ctrl+t fast/full mode
  F2 Runs     batch runs: n new run (type or paste a path), r resume, x cancel, Enter results
              results: f flagged, d decision filter, t source, k category, m min score,
              / search, a clear filters, o sort, e export (sort and filter as shown),
              i summary, w write the run's report, g refresh;
              decide: c confirm, s / u → 安全 / 不安全, x clear, z undo,
              n / p next / previous undecided flagged item, v select + b confirm range
  F3 Models   installed models: Enter uses one, d makes it the default

Every decision records the reviewer (--reviewer, else $LIBRA_EDGE_REVIEWER, else the OS
user) and the time; earlier decisions stay in the review history (undo restores them).

examples:
  libra-edge                                  open the TUI with the default model
  libra-edge tui --model libra-guard-3b-q4_k_m --reviewer alice
  libra-edge tui --db /data/review.db -m ./Libra-Guard-3B.Q8_0.gguf

Everything stays on this machine: the TUI never opens a network connection.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "tui", __doc__,
        description="Check pairs, run and watch batches, review flagged items and export decisions.",
        epilog=EPILOG)
    p.add_argument("--db", metavar="PATH", type=Path,
                   help="results database (default: libra-edge.db in the libra-edge home)")
    p.add_argument("--reviewer", metavar="NAME",
                   help="who records review decisions (default: $LIBRA_EDGE_REVIEWER, else the OS user)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Textual is imported here, not at registration: `libra-edge --help` stays instant and
    # the headless commands never load it.
    from libra_edge.tui.app import make_app

    settings = engine_settings(args)
    if args.db is not None and args.db.is_dir():
        raise LibraError(f"--db {args.db}: is a folder, expected a database file")
    if args.reviewer is not None and not args.reviewer.strip():
        raise LibraError("--reviewer: give a name")
    app = make_app(model=args.model, db_path=args.db, settings=settings, reviewer=args.reviewer)
    app.run()
    return 0
