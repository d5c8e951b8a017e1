"""`libra-edge audit`: audit steps before a run: reproducible random samples."""

from __future__ import annotations

from libra_edge.cli.common import help_from_doc

import argparse
import sys
from pathlib import Path

from libra_edge.errors import ExitCode, LibraError

SAMPLE_EPILOG = """\
how the sample is drawn (so anyone can redraw it):
  each record's key is sha256("libra-edge-sample v1|SEED|<file's sha256>|<record index>");
  the records with the smallest keys are taken (per stratum with --by). The same seed and
  the same file contents give the same sample on any machine, whatever the file names.
  OUT gets the records unchanged, in input order; OUT.meta.json records the seed, the
  inputs' sha256, the per-stratum counts and the sample's own sha256.

stratified (--by FIELD): N is split over the field's values in proportion to their sizes
(--allocation proportional, the default) or equally (--allocation equal: a stratum smaller
than its share gives all it has, with a note, and the others make up the difference).
Records without the field form the stratum "(none)".

examples:
  libra-edge audit sample bank.jsonl -n 1000 --seed 2025 -o sample.jsonl
  libra-edge audit sample bank/ -n 1000 --by category_name --seed 7 -o sample.jsonl
  libra-edge batch sample.jsonl -o judged.jsonl && libra-edge report RUN
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `audit` subcommand group."""
    p = sub.add_parser("audit", help=help_from_doc(__doc__),
                       description="Audit helpers. `audit sample` draws a reproducible (optionally "
                       "stratified) random sample of a test bank or of conversation logs.")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION")
    s = actions.add_parser("sample", help=help_from_doc(run_sample.__doc__),
                           description="Draw N records at random from the inputs, reproducibly.",
                           epilog=SAMPLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (JSON, JSONL, CSV, Parquet)")
    s.add_argument("-n", type=int, required=True, metavar="N", help="sample size (records)")
    s.add_argument("--by", metavar="FIELD", help="stratify by this field (e.g. category_name)")
    s.add_argument("--allocation", choices=("proportional", "equal"), default="proportional",
                   help="how N is split over strata (default: proportional)")
    s.add_argument("--seed", metavar="S", help="any text or number (default: a random one, printed and recorded)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="the sample, as JSONL")
    s.set_defaults(func=run_sample)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return int(ExitCode.USAGE)


def run_sample(args: argparse.Namespace) -> int:
    """Draw a reproducible random sample of records (`libra-edge audit sample`)."""
    from libra_edge.audit.sample import draw, write_sample

    output = Path(args.output)
    if output.suffix.lower() not in (".jsonl", ".ndjson"):
        raise LibraError(f"-o {output}: the sample is written as JSONL; name it .jsonl")
    sample = draw(args.inputs, args.n, seed=args.seed, by=args.by, allocation=args.allocation)
    side = write_sample(sample, output)
    print(f"drew {sample.n_drawn:,} of {sum(i.records for i in sample.inputs):,} records (seed {sample.seed})")
    if args.by:
        width = max(len(s.value) for s in sample.strata)
        print(f"  {args.by:<{width}}  {'records':>9}  {'drawn':>7}")
        for s in sample.strata:
            print(f"  {s.value:<{width}}  {s.population:>9,}  {s.drawn:>7,}")
    for note in sample.notes:
        print(f"note: {note}")
    print(f"wrote {output} and {side} (redraw: same inputs, --seed {sample.seed})")
    return int(ExitCode.OK)
