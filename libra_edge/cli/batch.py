"""`libra-edge batch`: check whole files of pairs or chat transcripts, resumably.

Verdicts go to the SQLite store as they are made, and to JSONL/JSON/CSV at the end.
This module is the command line and the command's flow; the parts live beside it:
`batch_plan` (a new run or a resumed one; the cluster options), `batch_output` (-o and
OUT.partial), `progress` (the bar), `stopping` (Ctrl-C and SIGTERM), `runs` (the listings
behind --runs / --run-info). The run itself is `libra_edge.batch`'s.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS
from libra_edge.cli.batch_output import output_target, write_output, write_partial
from libra_edge.cli.batch_plan import cluster_options, new_run_settings, plan_run
from libra_edge.cli.common import add_command, add_model_options
from libra_edge.cli.progress import ProgressBar, fmt_duration
from libra_edge.cli.runs import print_run_info, print_runs, print_runs_json
from libra_edge.cli.stopping import stop_signals
from libra_edge.errors import DiskFullError, ExitCode, InputError

if TYPE_CHECKING:
    from libra_edge.batch import BatchInput, BatchJob, BatchSummary, Executor, GuardLike
    from libra_edge.batch.cluster import ClusterOptions
    from libra_edge.engine.settings import EngineSettings
    from libra_edge.store import RunRow, Store

EPILOG = """\
inputs:
  JSON array (.json), JSONL (.jsonl/.ndjson; other suffixes are read as JSONL), CSV (.csv,
  UTF-8 with a header row; a BOM is fine), Parquet (.parquet, needs pip install
  'libra-edge[parquet]'), folders of those, or - for JSONL on standard input.
  Records are (question, response) pairs or chat transcripts, detected per file
  (--format names it):
    pairs          {"question": ..., "response": ..., ...}; Libra-Test's fields are the
                   defaults: question, response, id, source, category_name, sub_category_name
    messages       OpenAI chat: {"messages": [{"role": "system"|"user"|"assistant"|"tool",
                   "content": "..." or [{"type": "text", "text": "..."}, ...]}], ...}
                   (text parts are joined; images and other parts are noted and skipped)
    conversations  ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}
  One conversation per JSONL line or per JSON array element. Each assistant turn with
  text is judged with the user turn before it (--turns last: only the last one).
  A malformed record is reported as FILE:LINE: reason and skipped (--strict stops);
  so is a conversation with no assistant turn; unknown roles are named. Duplicate
  ids are reported and both items kept.

output (-o OUT, checked before the model loads; rows in input order):
  .jsonl (one object per line), .json (one array) or .csv (UTF-8 with a BOM, so
  spreadsheet tools show Chinese; --no-bom drops it); - writes JSONL to stdout.
  Every input record has exactly one row (a transcript: one per judged turn), so for
  JSONL pairs `wc -l` in equals `wc -l` out:
    judged   every input field unchanged (so a test set's gold `label` stays the gold
             label), plus `critic` (the model's raw JSON reply, as the authors' inference
             script writes it) and `verdict`: {"label", "unsafe", "score", "analysis",
             "truncated", "error", "status", "input" (FILE:LINE), "windows", "window",
             "span", "normalized", "analysis_cut"}, in its own object so it never
             overwrites an input field. `libra-edge eval OUT.jsonl` and the authors'
             metric script read these files unchanged.
    skipped  a placeholder: the record's fields (if it had any), critic "", verdict.status
             "skipped" and verdict.error saying why.
    failed   the check raised: verdict.status "failed", verdict.error; a rerun retries it.
  Transcript rows carry the conversation's other fields, conversation_id (its id or
  conversation_id field, else FILE:LINE), turn_index (the assistant message's position,
  0-based), question and response.
  OUT's folder must exist (--mkdir creates it), as for `models export`.
  If the run stops early, what is done so far is written to OUT.partial instead (same
  format, stored rows only); the finished run writes OUT and removes OUT.partial.

long responses (--long):
  chunk (default) judges a response too long for --ctx in overlapping windows and
  keeps the highest score (verdict.windows, .window, .span say which window decided);
  truncate keeps its head and tail (verdict.truncated). --no-normalize judges the text
  exactly as given (by default NFKC, zero-width/bidi characters removed, full-width
  ASCII folded; verdict.normalized says when that changed anything).

exit status:
  0 every record judged; 7 finished, but records were skipped or items failed (each
  has its row; --allow-skips makes this 0); 8 disk full (the message names the file
  and the space needed; finished items are kept: free space, run the command again);
  130 stopped by Ctrl-C or SIGTERM; 2 usage, 3 model, 4 input (no items, an unreadable
  file, a missing or unwritable -o folder, a malformed record with --strict: all found
  before the model loads), as for every command.

stopping:
  Ctrl-C (SIGINT) or SIGTERM stops within one llama.cpp call, wherever the work is
  (between the windows of a long response, between decode steps of an analysis):
  every finished item is kept, -o gets OUT.partial, and the items being judged are
  judged whole on resume, with the same scores as an uninterrupted run.

resuming:
  Every verdict is committed to the results database as soon as it is made: Ctrl-C, a
  crash or kill -9 loses nothing finished. Run the same command again (same inputs,
  model and settings) to continue where it stopped, or name the run with --resume
  (it takes the run's inputs, model and verdict settings; --parallel and --threads
  may differ). Run it again after it finished to rewrite -o without checking anything.

examples:
  libra-edge batch logs.jsonl -o judged.jsonl
  libra-edge batch Libra-Test.json --fast -o preds.jsonl && libra-edge eval preds.jsonl
  libra-edge batch chats.jsonl --turns last -o last-turns.csv      # OpenAI/ShareGPT transcripts
  libra-edge batch chats.csv --question-field prompt --response-field answer -o out.csv
  zcat logs.jsonl.gz | libra-edge batch - -o judged.jsonl          # JSONL on stdin
  libra-edge batch exports/ --analysis flagged -o audit.jsonl     # a folder of files
  libra-edge batch logs/ --fast --cluster ray=HEAD:6379 --cpus-per-actor 4 -o out.jsonl  # a Ray cluster
  libra-edge runs list                                            # the runs (also: batch --runs)
  libra-edge batch --resume 4 -o judged.jsonl                     # finish run 4

runs: `libra-edge runs list` and `libra-edge runs info RUN` show what the database holds;
`batch --runs` and `batch --run-info RUN` (each with --json) are aliases of them.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `batch` subcommand."""
    p = add_command(sub, "batch", __doc__,
        description="Check every (question, response) pair or assistant turn in the inputs; results "
                    "go to the results database as they are made, and to -o in input order at the end.",
        epilog=EPILOG)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders to check; - reads JSONL from stdin")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="write results here when the run completes: .jsonl, .json or .csv (checked "
                   "before the model loads; its folder must exist); - for JSONL on stdout")
    p.add_argument("--mkdir", action="store_true", help="create -o's folder (and its parents) if missing")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="verdict and score only, no analysis text (same as --analysis none)")
    mode.add_argument("--analysis", choices=("all", "flagged", "none"), default=None,
                      help="which items get an analysis: all (default), flagged (a fast check first, "
                      "then analysis only for unsafe items), none")
    p.add_argument("--resume", type=int, metavar="RUN",
                   help="continue run RUN (see `libra-edge runs list`) with its recorded inputs, model and settings")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run even if the same inputs were checked before")
    listing = p.add_argument_group("listing runs (aliases of `libra-edge runs list` / `runs info RUN`)")
    listing.add_argument("--runs", action="store_true", help="list the runs in the results database and exit")
    listing.add_argument("--run-info", type=int, metavar="RUN",
                         help="print what the database holds about run RUN (model, settings, inputs, counts, "
                         "times, nodes) and exit")
    listing.add_argument("--json", action="store_true", help="with --runs or --run-info: print JSON (stdout)")
    fields = p.add_argument_group("input records")
    fields.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                        help="record format: auto (default: detected per file), pairs, messages "
                        "(OpenAI chat), conversations (ShareGPT)")
    fields.add_argument("--turns", choices=TURN_SELECTIONS, default="all",
                        help="transcripts: judge all assistant turns (default) or only the last of each")
    fields.add_argument("--question-field", default="question", metavar="F", help="default: question")
    fields.add_argument("--response-field", default="response", metavar="F", help="default: response")
    fields.add_argument("--id-field", default="id", metavar="F", help="default: id")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first malformed record instead of reporting and skipping it")
    p.add_argument("--allow-skips", action="store_true",
                   help="exit 0 even when records were skipped or items failed (their rows say why)")
    p.add_argument("--no-bom", action="store_true", help="write CSV output without the UTF-8 BOM")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="generate up to N analyses at once, as parallel sequences in one llama.cpp "
                   "context; each gets --ctx tokens, so KV memory grows N times. On a 2-core CPU, 16 give "
                   "about 1.7x the items/s of one (see the README's benchmarks). Default: 1 (a resumed "
                   "run: its own); at most 64")
    p.add_argument("--allow-mixed-builds", action="store_true",
                   help="let machines with another llama.cpp build (AVX2 vs AVX-512, a GPU) judge items "
                   "of the same run; scores then differ slightly between them, and the run records which "
                   "node judged each item (default: refuse)")
    cluster = p.add_argument_group("cluster (pip install 'libra-edge[cluster]')")
    cluster.add_argument("--cluster", metavar="ray[=ADDRESS]",
                         help="judge on a Ray cluster through Ray Data: ray (or ray=auto) joins the cluster "
                         "this machine belongs to, else starts a local one; ray=HOST:PORT names one. Inputs, "
                         "store, resume and -o work as without it")
    cluster.add_argument("--actors", type=int, metavar="N",
                         help="most actors (one model copy each; default: as many as the nodes' CPUs fit)")
    cluster.add_argument("--cpus-per-actor", type=int, metavar="C",
                         help="CPUs per actor, which are llama.cpp's threads (default: --threads, else 2)")
    cluster.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                         help="GPUs per actor, for GPU nodes; with --gpu-layers (default: 0)")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `libra-edge batch` (`--runs` and `--run-info` are `libra-edge runs`'s listings)."""
    from libra_edge.store import open_store

    with open_store() as store:
        if args.run_info is not None:
            print_run_info(store, store.run(args.run_info), as_json=args.json)
            return int(ExitCode.OK)
        if args.runs:
            if args.json:
                print_runs_json(store, store.runs())
            else:
                print_runs(store, store.runs())
            return int(ExitCode.OK)
        return _run_batch(args, store)


def _run_batch(args: argparse.Namespace, store: Store) -> int:
    from libra_edge.batch import BatchJob, read_inputs
    from libra_edge.models import resolve_model

    output = output_target(args.output, bom=not args.no_bom, mkdir=args.mkdir)
    plan = plan_run(args, store)
    options = plan.options
    cluster = cluster_options(args)
    batch = read_inputs(plan.inputs, options.fields, strict=args.strict or options.strict,
                        format=options.format, turns=options.turns)  # type: ignore[arg-type]
    _print_issues(batch)
    if not batch.items:  # known without the model: say so before loading it
        raise InputError("no items to check", hint=_no_items_hint(batch))
    model_path = resolve_model(plan.model)
    with _guard_for(model_path, plan.settings, cluster) as guard:
        job = BatchJob.open(store, guard, batch, options, resume=plan.resume, new=args.new_run)
        done_before = len(batch.items) - len(job.pending)
        verb = "resuming" if job.resumed else "new"
        print(f"run {job.run_id} ({verb}): {len(batch.items)} items, {done_before} already done; "
              f"model {guard.info.name}; analysis {options.analysis}", file=sys.stderr)
        executor: Executor | None = None
        if cluster is not None:
            from libra_edge.batch.cluster import RayExecutor

            # Actors resolve the model as given: an installed name on each node, or a path.
            model = plan.model
            spec = model if model and not Path(model).expanduser().is_file() else str(model_path.resolve())
            executor = RayExecutor(spec, cluster, on_status=lambda msg: print(f"  {msg}", file=sys.stderr),
                                   verbose=args.verbose)
        try:
            summary = (_execute(job, executor=executor, allow_mixed_builds=args.allow_mixed_builds)
                       if job.pending else None)
        except DiskFullError:
            write_partial(store, job.run_id, output)
            raise
    final = store.run(job.run_id)
    _print_summary(final, summary)
    if summary is not None and summary.status != "finished":
        write_partial(store, job.run_id, output)
        print(f"libra-edge: resume with: libra-edge batch --resume {job.run_id}"
              + (f" -o {args.output}" if args.output else ""), file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    if output is not None:
        write_output(store, job.run_id, output)
    if (final.errors or final.skipped) and not args.allow_skips:
        parts = []
        if final.skipped:
            parts.append(f"{final.skipped} input record{'s' if final.skipped != 1 else ''} skipped")
        if final.errors:
            parts.append(f"{final.errors} item{'s' if final.errors != 1 else ''} failed "
                         "(run the same command again to retry)")
        print(f"libra-edge: incomplete: {' and '.join(parts)}; each has a row saying why "
              f"(exit {int(ExitCode.INCOMPLETE)}; --allow-skips accepts this)", file=sys.stderr)
        return int(ExitCode.INCOMPLETE)
    return int(ExitCode.OK)


def _no_items_hint(batch: BatchInput) -> str:
    """Why the inputs gave nothing to judge, in a few words (their first issues)."""
    if batch.issues:
        first = "; ".join(str(i) for i in batch.issues[:3])
        more = len(batch.issues) - 3
        return first + (f"; and {more} more" if more > 0 else "")
    return "every input record was empty or unreadable"


@contextmanager
def _guard_for(model_path: Path, settings: EngineSettings, cluster: ClusterOptions | None) -> Iterator[GuardLike]:
    """The run's guard: loaded here, or (with --cluster) the model's header only: actors load it."""
    from libra_edge.batch import load_guard

    if cluster is None:
        with load_guard(model_path, settings) as guard:
            yield guard
        return
    from libra_edge.batch.cluster import cluster_settings, model_stand_in

    yield model_stand_in(model_path, cluster_settings(settings, cluster))


def _execute(job: BatchJob, *, executor: Executor | None = None, allow_mixed_builds: bool = False) -> BatchSummary:
    from libra_edge.batch import BatchProgress, BatchSummary

    cancel = threading.Event()
    bar = ProgressBar(sys.stderr)
    run = job.store.run(job.run_id)
    total = len(job.batch.items)
    bar.update(BatchProgress(run_id=run.id, total=total, done=total - len(job.pending), done_now=0,
                             flagged=run.flagged, errors=0, elapsed_s=0.0, rate=0.0, eta_s=None))
    try:
        with stop_signals(cancel, local=executor is None):
            return job.execute(on_progress=bar.update, cancel=cancel, executor=executor,
                               allow_mixed_builds=allow_mixed_builds)
    except KeyboardInterrupt:
        bar.close()
        run = job.store.run(job.run_id)
        return BatchSummary(run_id=job.run_id, status="interrupted", total=run.total, done=run.done,
                            done_now=0, flagged=run.flagged, errors=run.errors, skipped=run.skipped,
                            elapsed_s=bar.elapsed, message="stopped by Ctrl-C")
    finally:
        bar.close()


def _print_issues(batch: BatchInput, limit: int = 20) -> None:
    for issue in batch.issues[:limit]:
        print(f"libra-edge: {issue.kind}: {issue}", file=sys.stderr)
    if len(batch.issues) > limit:
        print(f"libra-edge: ... and {len(batch.issues) - limit} more input issues", file=sys.stderr)


def _print_summary(run: RunRow, summary: BatchSummary | None) -> None:
    checked = run.done - run.errors
    share = f" ({run.flagged / checked:.1%})" if checked else ""
    lines = [f"run {run.id} {run.status}: {run.done}/{run.total} items, {run.flagged} flagged{share}, "
             f"{run.errors} failed, {run.skipped} input records skipped, {run.truncated} truncated, "
             f"{run.chunked} chunked"]
    if summary is not None and summary.done_now:
        lines.append(f"  this session: {summary.done_now} items in {fmt_duration(summary.elapsed_s)} "
                     f"({summary.items_per_s:.2f} items/s)")
    elif summary is None:
        lines.append("  nothing left to check")
    if summary is not None:
        lines.extend(f"  failed: {failure}" for failure in summary.failures)
    for line in lines:
        print(line, file=sys.stderr)


# `cli/audit.py` (`audit ask --judge --guard-option ...`) parses `batch`'s options and reads them with these.
__all__ = ["new_run_settings", "output_target", "register", "run"]
