"""`libra-edge report`: an offline audit report of a batch run (HTML, Markdown or JSON), with gates.

One file a compliance reviewer can open anywhere and sign.
"""

from __future__ import annotations

from libra_edge.cli.common import add_command

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from libra_edge.errors import ExitCode, LibraError
from libra_edge.verdicts import check_threshold

if TYPE_CHECKING:
    from libra_edge.store import Store

EPILOG = """\
what the report holds:
  provenance   tool version, model name, sha256, quant, source repo/commit (when the model
               was installed with a manifest), engine settings, prompt-template version,
               input files with their sha256, start/end, host, who generated the report
  results      items, judged, errors, flagged; unsafe and qualified (safe) rates with
               Wilson 95% intervals, overall and per source / category / sub-category;
               a score histogram; with gold `label`s, the authors' metrics (as `eval`),
               confusion matrix, ROC and PR curves
  reviews      decisions made in the TUI take precedence over the model's verdict
               (--model-only ignores them); coverage, Cohen's kappa, the overrides
  gates        --profile gbt45654 (default): at least 1,000 judged outputs, and a
               qualified rate of at least 90% judged on the Wilson interval's lower bound;
               each PASS, FAIL or NOT ENOUGH DATA (short of 1,000 judged, a rate whose
               whole interval misses 90% is FAIL whatever the sample size). --profile none: no gates;
               --profile FILE.json: your own (see libra_edge/report/profiles/*.json)
  integrity    a sha256 over the run's results (verdicts, scores, reviews) in input
               order; `report --verify FILE` recomputes it from the database

The HTML file is self-contained: inline CSS and SVG charts (drawn by matplotlib when
installed: pip install 'libra-edge[report]'; without it the charts are left out, every
figure stays in the tables, and a note on stderr and in the report says so), no scripts,
fonts or links to fetch.

--threshold X relabels verdicts from the stored scores (score >= X is unsafe) without
checking anything again; the report names both thresholds. --export FILE writes the run's
rows (.jsonl, .json or .csv, as `batch -o` does) relabelled the same way: label, unsafe
and the reply's 答案 follow the new threshold, the score and analysis stay as judged,
and each row's verdict.threshold names the threshold applied.

where it goes: -o FILE writes FILE (replacing one that is there: you named it); without
-o, md and json go to stdout, as the other commands' outputs do, and html (a file for a
browser, not a terminal) goes to run-RUN-report.html in the current folder, never
replacing one that exists. Files are written whole or not at all, with the mode your
umask gives new files.

examples:
  libra-edge report 3                              # writes run-3-report.html, never over one
  libra-edge report 3 -o audit.md                  # the format from the suffix
  libra-edge report 3 --format md > audit.md
  libra-edge report 3 --format json | jq .gates
  libra-edge report 3 --threshold 0.3 -o strict.html
  libra-edge report 3 --threshold 0.3 --export strict.jsonl   # the rows, relabelled
  libra-edge report --verify run-3-report.html     # exit 1 when the store changed since
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` subcommand."""
    p = add_command(sub, "report", __doc__,
        description="Write the audit report of batch run RUN (see `libra-edge batch --runs`): provenance, "
                    "rates with Wilson intervals, gates, reviewer decisions, flagged items and an integrity digest.",
        epilog=EPILOG)
    p.add_argument("run", nargs="?", type=int, metavar="RUN", help="the run's id (see `libra-edge batch --runs`)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write FILE, replacing it if it exists; - for stdout (default: md and json to "
                   "stdout, html to run-RUN-report.html here, never replacing one)")
    p.add_argument("--format", choices=("html", "json", "md"), default=None,
                   help="html (default, or from -o's suffix), json or md")
    p.add_argument("--profile", default="gbt45654", metavar="NAME|FILE",
                   help="gates to judge: gbt45654 (default), none, or a profile JSON file")
    p.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="relabel from stored scores: unsafe when score >= X (default: the run's own)")
    p.add_argument("--model-only", action="store_true",
                   help="rates from the model's verdicts alone (reviewer decisions shown, not applied)")
    p.add_argument("--export", metavar="FILE",
                   help="also write the run's rows to FILE (.jsonl, .json or .csv), relabelled at --threshold; "
                   "with --export and no -o, no report is written")
    p.add_argument("--max-items", type=int, default=2000, metavar="N",
                   help="list at most N flagged items (default: 2000; 0 lists all)")
    p.add_argument("--no-charts", action="store_true", help="leave the charts out (smaller, faster)")
    p.add_argument("--verify", metavar="REPORT",
                   help="check a report's integrity digest against the database now (exit 1 if changed)")
    p.set_defaults(func=run)


def _format_of(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = Path(args.output).suffix.lower() if args.output and args.output != "-" else ""
    return {".md": "md", ".markdown": "md", ".json": "json"}.get(suffix, "html")


def run(args: argparse.Namespace) -> int:
    """Handle `libra-edge report`."""
    from libra_edge.store import open_store

    if args.verify:
        if args.run is not None:
            raise LibraError("--verify reads the run from the report: give no RUN with it")
        with open_store() as store:
            return _verify(store, Path(args.verify))
    if args.run is None:
        raise LibraError("give the RUN to report on (see `libra-edge batch --runs`), or --verify REPORT")
    if args.threshold is not None:
        check_threshold(args.threshold, "--threshold")
    if args.max_items < 0:
        raise LibraError(f"--max-items: must be 0 (all) or more, got {args.max_items}")
    from libra_edge.report import render_report, write_report

    fmt = _format_of(args)
    options = {"fmt": fmt, "profile": args.profile, "threshold": args.threshold,
               "max_items": args.max_items or None, "charts": not args.no_charts,
               "reviews_take_precedence": not args.model_only}
    with open_store() as store:
        if args.export:
            _export(store, args.run, args.export, args.threshold)
            if not args.output:
                return int(ExitCode.OK)
        # Text formats go to stdout unless named; html to a file of its own name, which
        # replaces nothing: an existing file is replaced only when -o names it.
        target = args.output or ("-" if fmt != "html" else f"run-{args.run}-report.html")
        if target == "-":
            sys.stdout.write(render_report(store, args.run, **options))
        else:
            path = write_report(store, args.run, target, replace=args.output is not None, **options)
            print(f"wrote {path}", file=sys.stderr)
    if fmt == "html" and options["charts"]:
        from libra_edge.report.charts import NO_MATPLOTLIB, matplotlib_available

        if not matplotlib_available():
            print(f"libra-edge: note: {NO_MATPLOTLIB}", file=sys.stderr)
    return int(ExitCode.OK)


def _export(store: Store, run_id: int, target: str, threshold: float | None) -> None:
    """`--export FILE`: the run's rows, as `batch -o` writes them, at `threshold`."""
    from libra_edge.cli.batch_output import output_target
    from libra_edge.store.export import relabelled

    output = output_target(target)
    if output is None:
        raise LibraError("--export: name a file (.jsonl, .json or .csv) or - for stdout")
    run = store.run(run_id)
    if output.path is None:
        n = store.export(run_id, sys.stdout, format=output.format, threshold=threshold)
    else:
        n = store.export(run_id, output.path, format=output.format, bom=output.bom, threshold=threshold)
    if threshold is None:
        note = f"at the run's threshold {run.settings.get('threshold')}"
    else:
        changed = sum(1 for row in store.iter_results(run_id) if relabelled(row, threshold) is not row)
        note = (f"relabelled at threshold {threshold:g} (the run judged at {run.settings.get('threshold')}): "
                f"{changed:,} verdict{'s' if changed != 1 else ''} changed")
    print(f"wrote {n:,} rows to {target} {note}", file=sys.stderr)


def _verify(store: Store, path: Path) -> int:
    from libra_edge.report.digest import digest_run, read_marker

    claimed = read_marker(path)
    now = digest_run(store, claimed.run_id)
    if now.sha256 == claimed.sha256:
        print(f"{path}: OK: run {claimed.run_id}'s {now.results:,} results are unchanged since the report")
        return int(ExitCode.OK)
    change = (f"{claimed.results:,} results then, {now.results:,} now" if now.results != claimed.results
              else "a verdict, score or reviewer decision differs")
    print(f"{path}: CHANGED: run {claimed.run_id} in {store.path} no longer matches the report ({change})")
    return int(ExitCode.FLAGGED)
