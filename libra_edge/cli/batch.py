"""`libra-edge batch`: check whole files of (question, response) pairs, resumably, into SQLite and JSONL."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from libra_edge.cli.common import add_model_options, guard_options
from libra_edge.errors import ExitCode, LibraError

if TYPE_CHECKING:
    from libra_edge.batch import BatchInput, BatchProgress, BatchSummary
    from libra_edge.store import RunRow, Store

EPILOG = """\
inputs:
  JSON array (.json), JSONL (.jsonl/.ndjson; other suffixes are read as JSONL), CSV (.csv,
  UTF-8 with a header row; a BOM is fine), Parquet (.parquet, needs pip install
  'libra-edge[parquet]'), or folders of those. Libra-Test's fields are the defaults:
  question, response, id, source, category_name, sub_category_name.
  A malformed record is reported as FILE:LINE: reason and skipped (--strict stops);
  duplicate ids are reported and both items kept; an over-long response is cut to fit
  the context (head and tail kept) and its verdict marked truncated.

output (-o OUT.jsonl, in input order):
  every input field unchanged (so a test set's gold `label` stays the gold label), plus
    critic   the model's raw JSON reply, as the authors' inference script writes it
    verdict  {"label", "unsafe", "score", "analysis", "truncated", "error"}: the keys
             `check --json` prints, in their own object so they never overwrite an
             input field. `libra-edge eval OUT.jsonl` and the authors' metric script
             read these files unchanged.
  -o OUT.csv writes CSV: the input columns, critic, verdict_label, verdict_unsafe, ...

resuming:
  Every verdict is committed to the results database as soon as it is made: Ctrl-C, a
  crash or kill -9 loses nothing finished. Run the same command again (same inputs,
  model and settings) to continue where it stopped, or name the run with --resume.
  Run it again after it finished to rewrite -o without checking anything.

examples:
  libra-edge batch logs.jsonl -o judged.jsonl
  libra-edge batch Libra-Test.json --fast -o preds.jsonl && libra-edge eval preds.jsonl
  libra-edge batch chats.csv --question-field prompt --response-field answer -o out.csv
  libra-edge batch exports/ --analysis flagged -o audit.jsonl     # a folder of files
  libra-edge batch --runs                                         # list runs
  libra-edge batch --resume 4 -o judged.jsonl                     # finish run 4
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `batch` subcommand."""
    p = sub.add_parser(
        "batch", help="check whole files of (question, response) pairs, resumably",
        description="Check every (question, response) pair in the inputs; results go to the "
        "results database as they are made, and to -o in input order at the end.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders to check")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="write results here when the run completes: .jsonl (default) or .csv; - for stdout")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true",
                      help="verdict and score only, no analysis text (same as --analysis none)")
    mode.add_argument("--analysis", choices=("all", "flagged", "none"), default=None,
                      help="which items get an analysis: all (default), flagged (a fast check first, "
                      "then analysis only for unsafe items), none")
    p.add_argument("--resume", type=int, metavar="RUN",
                   help="continue run RUN (see --runs) with its recorded inputs, model and settings")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run even if the same inputs were checked before")
    p.add_argument("--runs", action="store_true", help="list the runs in the results database and exit")
    fields = p.add_argument_group("input fields")
    fields.add_argument("--question-field", default="question", metavar="F", help="default: question")
    fields.add_argument("--response-field", default="response", metavar="F", help="default: response")
    fields.add_argument("--id-field", default="id", metavar="F", help="default: id")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first malformed record instead of reporting and skipping it")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="longest analysis in tokens (default: 256, as the authors)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="generate up to N analyses at once, as parallel sequences in one llama.cpp "
                   "context; each gets --ctx tokens, so KV memory grows N times. On a 2-core CPU, 16 give "
                   "about 1.7x the items/s of one (see the README's benchmarks). Default: 1")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `libra-edge batch`."""
    from libra_edge.store import open_store

    with open_store() as store:
        if args.runs:
            _print_runs(store.runs())
            return int(ExitCode.OK)
        return _run_batch(args, store)


def _run_batch(args: argparse.Namespace, store: Store) -> int:
    from libra_edge.batch import BatchJob, BatchOptions, FieldMap, read_inputs
    from libra_edge.engine import Guard
    from libra_edge.models import resolve_model

    load_options = guard_options(args)
    load_options["max_new_tokens"] = args.max_new_tokens
    if args.max_new_tokens < 1:
        raise LibraError(f"--max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    if not 1 <= args.parallel <= 64:
        raise LibraError(f"--parallel: must be between 1 and 64, got {args.parallel}")
    load_options["parallel"] = args.parallel
    load_options["n_ctx"] = args.ctx * args.parallel  # --ctx is each sequence's share
    analysis = "none" if args.fast else args.analysis
    fields = FieldMap(question=args.question_field, response=args.response_field, id=args.id_field)
    model: str | None = args.model
    inputs: list[str] = list(args.inputs)
    if args.resume is not None:
        past = store.run(args.resume)
        options = BatchOptions.from_json(past.options)
        if analysis is not None and analysis != options.analysis:
            raise LibraError(f"--resume {past.id}: the run uses --analysis {options.analysis}; "
                             "drop the option or start a new run")
        # Verdict-relevant settings come from the run; speed settings from this command.
        for key in ("n_ctx", "threshold", "max_new_tokens"):
            if key in past.settings:
                load_options[key] = past.settings[key]
        inputs = inputs or past.inputs
        model = model or past.model_path
    else:
        if not inputs:
            raise LibraError("give INPUT files or folders to check (or --resume RUN, or --runs)")
        options = BatchOptions(analysis=analysis or "all", fields=fields, strict=args.strict)
    batch = read_inputs(inputs, options.fields, strict=args.strict or options.strict)
    _print_issues(batch)
    model_path = resolve_model(model)
    with Guard.load(model_path, **load_options) as guard:
        job = BatchJob.open(store, guard, batch, options, resume=args.resume, new=args.new_run)
        done_before = len(batch.items) - len(job.pending)
        verb = "resuming" if job.resumed else "new"
        print(f"run {job.run_id} ({verb}): {len(batch.items)} items, {done_before} already done; "
              f"model {guard.info.name}; analysis {options.analysis}", file=sys.stderr)
        summary = _execute(job) if job.pending else None
    final = store.run(job.run_id)
    _print_summary(final, summary)
    if summary is not None and summary.status != "finished":
        print(f"libra-edge: resume with: libra-edge batch --resume {job.run_id}"
              + (f" -o {args.output}" if args.output else ""), file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    if args.output:
        _write_output(store, job.run_id, args.output)
    return int(ExitCode.OK)


@contextmanager
def _stop_signals(cancel: threading.Event) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) finishes the current item and stops; a second stops at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nlibra-edge: stopping after the current item (Ctrl-C again to stop now)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _execute(job: Any) -> BatchSummary:
    from libra_edge.batch import BatchProgress

    cancel = threading.Event()
    bar = ProgressBar(sys.stderr)
    run = job.store.run(job.run_id)
    total = len(job.batch.items)
    bar.update(BatchProgress(run_id=run.id, total=total, done=total - len(job.pending), done_now=0,
                             flagged=run.flagged, errors=0, elapsed_s=0.0, rate=0.0, eta_s=None))
    try:
        with _stop_signals(cancel):
            return job.execute(on_progress=bar.update, cancel=cancel)  # type: ignore[no-any-return]
    except KeyboardInterrupt:
        bar.close()
        from libra_edge.batch import BatchSummary

        run = job.store.run(job.run_id)
        return BatchSummary(run_id=job.run_id, status="interrupted", total=run.total, done=run.done,
                            done_now=0, flagged=run.flagged, errors=run.errors, skipped=run.skipped,
                            elapsed_s=bar.elapsed, message="stopped by Ctrl-C")
    finally:
        bar.close()


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line progress bar with rate and ETA on a terminal; periodic lines otherwise."""

    WIDTH = 24

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def update(self, p: BatchProgress) -> None:
        now = time.monotonic()
        final = p.done >= p.total
        interval = 0.1 if self.tty else 10.0
        if not final and now - self.last_draw < interval:
            return
        self.last_draw = now
        frac = p.done / p.total if p.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "█" * filled + "░" * (self.WIDTH - filled)
        line = (f"[{bar}] {p.done}/{p.total} {frac:4.0%}  {p.rate:.2f} items/s  ETA {_fmt_duration(p.eta_s)}"
                f"  flagged {p.flagged}  errors {p.errors}")
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False


def _print_issues(batch: BatchInput, limit: int = 20) -> None:
    for issue in batch.issues[:limit]:
        print(f"libra-edge: {issue.kind}: {issue}", file=sys.stderr)
    if len(batch.issues) > limit:
        print(f"libra-edge: ... and {len(batch.issues) - limit} more input issues", file=sys.stderr)


def _print_summary(run: RunRow, summary: BatchSummary | None) -> None:
    checked = run.done - run.errors
    share = f" ({run.flagged / checked:.1%})" if checked else ""
    lines = [f"run {run.id} {run.status}: {run.done}/{run.total} items, {run.flagged} flagged{share}, "
             f"{run.errors} errors, {run.skipped} input records skipped"]
    if summary is not None and summary.done_now:
        lines.append(f"  this session: {summary.done_now} items in {_fmt_duration(summary.elapsed_s)} "
                     f"({summary.items_per_s:.2f} items/s)")
    elif summary is None:
        lines.append("  nothing left to check")
    for line in lines:
        print(line, file=sys.stderr)


def _write_output(store: Store, run_id: int, output: str) -> None:
    fmt = "csv" if output.lower().endswith(".csv") else "jsonl"
    if output == "-":
        n = store.export(run_id, sys.stdout, format=fmt)
        sys.stdout.flush()
    else:
        n = store.export(run_id, Path(output), format=fmt)
        print(f"  wrote {n} rows to {output}", file=sys.stderr)


def _print_runs(runs: list[RunRow]) -> None:
    if not runs:
        print("no runs yet: `libra-edge batch INPUT -o OUT.jsonl` starts one", file=sys.stderr)
        return
    print(f"{'RUN':>4}  {'STATUS':<11} {'CREATED':<20} {'DONE':>11} {'FLAGGED':>7} {'ERRORS':>6}  {'ANALYSIS':<8} "
          "MODEL / INPUTS")
    for r in runs:
        inputs = ", ".join(Path(p).name for p in r.inputs[:3]) + (" ..." if len(r.inputs) > 3 else "")
        print(f"{r.id:>4}  {r.status:<11} {r.created_at[:19]:<20} {f'{r.done}/{r.total}':>11} {r.flagged:>7} "
              f"{r.errors:>6}  {r.options.get('analysis', '?'):<8} {r.model_name} / {inputs}")
