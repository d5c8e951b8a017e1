"""`libra-edge runs`: the runs the results database holds: list them, or everything about one.

`batch --runs` and `batch --run-info RUN` are the same listings (aliases kept for scripts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_edge.cli.common import add_command, help_from_doc

if TYPE_CHECKING:
    from libra_edge.store import RunRow, Store

EPILOG = """\
what a run is: one `libra-edge batch` over its inputs (resumable: the same command
continues it), or one `libra-edge serve --log-results` session. Each records its model
(name, file, sha256), its engine settings, the tool version and the llama.cpp build, the
machines that judged its items, and its counts.

examples:
  libra-edge runs list                       runs, newest first: status, counts, model, inputs
  libra-edge runs list --json | jq '.[0]'    every run's whole record, as JSON
  libra-edge runs info 7                     one run: settings, inputs, times, nodes
  libra-edge runs info 7 --json              the same, as JSON
  libra-edge report 7                        its audit report; libra-edge batch --resume 7 finishes it

`libra-edge batch --runs [--json]` and `batch --run-info RUN [--json]` print the same.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `runs` subcommand (`list`, `info`)."""
    p = add_command(sub, "runs", __doc__,
        description="The runs in the results database: `list` shows them all, newest first; "
                    "`info RUN` everything the database holds about one.",
        epilog=EPILOG)
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    s = rsub.add_parser("list", help=help_from_doc(run_list.__doc__),
                        description="One line per run, newest first: id, status, when, done/total, flagged, "
                        "errors, analysis mode, model and inputs.")
    s.add_argument("--json", action="store_true", help="every run's whole record as one JSON array (stdout)")
    s.set_defaults(func=run_list)
    s = rsub.add_parser("info", help=help_from_doc(run_info.__doc__),
                        description="Everything the database holds about run RUN: model, settings, inputs, "
                        "counts, times and the machines that judged it.")
    s.add_argument("run", type=int, metavar="RUN", help="the run's id (see `libra-edge runs list`)")
    s.add_argument("--json", action="store_true", help="print one JSON object (stdout)")
    s.set_defaults(func=run_info)
    p.set_defaults(func=run_list, json=False)  # a bare `libra-edge runs` lists them


def run_list(args: argparse.Namespace) -> int:
    """List the runs, newest first."""
    from libra_edge.store import open_store

    with open_store() as store:
        runs = store.runs()
        if args.json:
            print_runs_json(store, runs)
        else:
            print_runs(store, runs)
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print what the database holds about one run."""
    from libra_edge.store import open_store

    with open_store() as store:
        print_run_info(store, store.run(args.run), as_json=args.json)
    return 0


def run_record(store: Store, run: RunRow) -> dict[str, Any]:
    """Everything the store holds about a run, JSON-ready, with its remaining items, duration and
    the machines that judged it (node, host, llama.cpp build, items: the audit trail)."""
    record: dict[str, Any] = dataclasses.asdict(run)
    record["nodes"] = [dataclasses.asdict(n) for n in store.run_nodes(run.id)]
    record["remaining"] = run.remaining
    elapsed = None
    if run.started_at and run.finished_at:
        elapsed = (datetime.fromisoformat(run.finished_at) - datetime.fromisoformat(run.started_at)).total_seconds()
    record["elapsed_s"] = elapsed
    return record


def print_runs_json(store: Store, runs: list[RunRow]) -> None:
    """`runs list --json`: every run as one JSON array, newest first."""
    print(json.dumps([run_record(store, r) for r in runs], ensure_ascii=False, indent=1))


def print_run_info(store: Store, run: RunRow, *, as_json: bool) -> None:
    """`runs info RUN`: one run's record, as JSON or as aligned `key: value` lines."""
    record = run_record(store, run)
    if as_json:
        print(json.dumps(record, ensure_ascii=False, indent=1))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        print(f"{key:<{width}}  {'-' if text is None else text}")


def print_runs(store: Store, runs: list[RunRow]) -> None:
    """`runs list`: one line per run, newest first, and the nodes of a run judged on several."""
    if not runs:
        print("no runs yet: `libra-edge batch INPUT -o OUT.jsonl` starts one", file=sys.stderr)
        return
    print(f"{'RUN':>4}  {'STATUS':<11} {'CREATED':<20} {'DONE':>11} {'FLAGGED':>7} {'ERRORS':>6}  {'ANALYSIS':<8} "
          "MODEL / INPUTS")
    for r in runs:
        inputs = ", ".join(Path(p).name for p in r.inputs[:3]) + (" ..." if len(r.inputs) > 3 else "")
        print(f"{r.id:>4}  {r.status:<11} {r.created_at[:19]:<20} {f'{r.done}/{r.total}':>11} {r.flagged:>7} "
              f"{r.errors:>6}  {r.options.get('analysis', '?'):<8} {r.model_name} / {inputs}")
        nodes = store.run_nodes(r.id)
        if len(nodes) > 1 or any(not n.node.startswith("local:") for n in nodes):
            builds = {n.build for n in nodes}
            for n in nodes:
                name = n.node if n.node.startswith("local:") else f"{n.host} (node {n.node[:12]})"
                build = f", build {n.build}" if len(builds) > 1 else ""
                print(f"{'':>6}node {name}: {n.items} items{build}")
