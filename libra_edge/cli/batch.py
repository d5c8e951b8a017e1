"""`libra-edge batch`: check whole files of pairs or chat transcripts, resumably.

Verdicts go to the SQLite store as they are made, and to JSONL/JSON/CSV at the end.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO, cast

from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS
from libra_edge.cli.common import add_model_options, destination_folder, guard_options, help_from_doc
from libra_edge.engine.settings import LONG_MODES
from libra_edge.errors import DiskFullError, ExitCode, InputError, LibraError

if TYPE_CHECKING:
    from libra_edge.batch import AnalysisMode, BatchInput, BatchProgress, BatchSummary
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
  libra-edge batch --runs                                         # list runs
  libra-edge batch --resume 4 -o judged.jsonl                     # finish run 4
"""

OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


@dataclass(frozen=True)
class OutputTarget:
    """Where `-o` writes: a validated file path (None: stdout) and its format."""

    path: Path | None
    format: str
    bom: bool

    @property
    def partial(self) -> Path | None:
        """Where an incomplete run's rows go (never the final name)."""
        return None if self.path is None else self.path.with_name(self.path.name + ".partial")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `batch` subcommand."""
    p = sub.add_parser(
        "batch", help=help_from_doc(__doc__),
        description="Check every (question, response) pair or assistant turn in the inputs; results "
        "go to the results database as they are made, and to -o in input order at the end.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
                   help="continue run RUN (see --runs) with its recorded inputs, model and settings")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run even if the same inputs were checked before")
    p.add_argument("--runs", action="store_true", help="list the runs in the results database and exit")
    p.add_argument("--run-info", type=int, metavar="RUN",
                   help="print what the database holds about run RUN (model, settings, inputs, counts, "
                   "times) and exit")
    p.add_argument("--json", action="store_true", help="with --runs or --run-info: print JSON (stdout)")
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
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=256, metavar="N",
                   help="longest analysis in tokens (default: 256, as the authors)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="generate up to N analyses at once, as parallel sequences in one llama.cpp "
                   "context; each gets --ctx tokens, so KV memory grows N times. On a 2-core CPU, 16 give "
                   "about 1.7x the items/s of one (see the README's benchmarks). Default: 1 (a resumed "
                   "run: its own)")
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
    add_model_options(p, long_option=True)
    if "--long" not in p._option_string_actions:  # unless the shared model options declare it
        p.add_argument("--long", choices=LONG_MODES, default="chunk",
                       help="a response too long for the context: chunk (default: judge every window, "
                       "the highest score decides) or truncate (keep head and tail)")
    if "--no-normalize" not in p._option_string_actions:
        p.add_argument("--no-normalize", action="store_true",
                       help="judge the text exactly as given (default: NFKC, invisible characters "
                       "removed, full-width ASCII folded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `libra-edge batch`."""
    from libra_edge.store import open_store

    with open_store() as store:
        if args.run_info is not None:
            _print_run_info(store, store.run(args.run_info), as_json=args.json)
            return int(ExitCode.OK)
        if args.runs:
            if args.json:
                _print_runs_json(store, store.runs())
            else:
                _print_runs(store, store.runs())
            return int(ExitCode.OK)
        return _run_batch(args, store)


def output_target(raw: str | None, *, bom: bool = True, mkdir: bool = False) -> OutputTarget | None:
    """`-o` checked before any work: a known suffix (else exit 2), and an existing folder this
    process can write in (else exit 4; `mkdir` creates a missing one: `destination_folder`)."""
    if raw is None:
        return None
    if raw == "-":
        return OutputTarget(None, "jsonl", bom)
    path = Path(raw).expanduser()
    fmt = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        suffix = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise LibraError(f"-o {raw}: unknown output format ({suffix}); use .jsonl, .json or .csv, or - for stdout")
    if path.is_dir():
        raise InputError(f"-o {raw}: is a folder; name a file in it, e.g. {path / 'results.jsonl'}")
    folder = destination_folder(path.parent, mkdir=mkdir, name=f"-o {raw}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".libra-edge-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"-o {raw}: cannot write in {folder}: {exc.strerror or exc}") from None
    return OutputTarget(path, fmt, bom)


def _new_settings(args: argparse.Namespace) -> EngineSettings:
    """Engine settings for a new run from the command line (`--ctx` is each sequence's share)."""
    from libra_edge.engine.settings import EngineSettings

    return EngineSettings(**guard_options(args)).replace(
        max_new_tokens=args.max_tokens, parallel=args.parallel or 1,
        long=getattr(args, "long", "chunk"), normalize=not getattr(args, "no_normalize", False))


def _run_batch(args: argparse.Namespace, store: Store) -> int:
    from libra_edge.batch import BatchJob, BatchOptions, FieldMap, read_inputs, resume_settings
    from libra_edge.models import resolve_model

    if args.max_tokens < 1:
        raise LibraError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    if args.parallel is not None and not 1 <= args.parallel <= 64:
        raise LibraError(f"--parallel: must be between 1 and 64, got {args.parallel}")
    output = output_target(args.output, bom=not args.no_bom, mkdir=args.mkdir)
    analysis = "none" if args.fast else args.analysis
    model: str | None = args.model
    inputs: list[str] = list(args.inputs)
    if args.resume is not None:
        past = store.run(args.resume)
        # Verdict-relevant settings come from the run; speed settings from this command.
        settings = resume_settings(past, parallel=args.parallel, threads=args.threads, verbose=args.verbose)
        options = BatchOptions.from_json(past.options)
        if analysis is not None and analysis != options.analysis:
            raise LibraError(f"--resume {past.id}: the run uses --analysis {options.analysis}; "
                             "drop the option or start a new run")
        if not inputs and "-" in past.inputs:
            raise LibraError(f"--resume {past.id}: the run read its input from stdin",
                             hint=f"pipe the same input again: ... | libra-edge batch - --resume {past.id}")
        inputs = inputs or past.inputs
        model = model or past.model_path
    else:
        if not inputs:
            raise LibraError("give INPUT files or folders to check (or --resume RUN, or --runs)")
        settings = _new_settings(args)
        fields = FieldMap(question=args.question_field, response=args.response_field, id=args.id_field)
        options = BatchOptions(analysis=cast("AnalysisMode", analysis or "all"), fields=fields, strict=args.strict,
                               format=args.format, turns=args.turns)
    cluster = _cluster_options(args)
    batch = read_inputs(inputs, options.fields, strict=args.strict or options.strict,
                        format=options.format, turns=options.turns)  # type: ignore[arg-type]
    _print_issues(batch)
    if not batch.items:  # known without the model: say so before loading it
        raise InputError("no items to check", hint=_no_items_hint(batch))
    model_path = resolve_model(model)
    with _guard_for(model_path, settings, cluster) as guard:
        job = BatchJob.open(store, guard, batch, options, resume=args.resume, new=args.new_run)
        done_before = len(batch.items) - len(job.pending)
        verb = "resuming" if job.resumed else "new"
        print(f"run {job.run_id} ({verb}): {len(batch.items)} items, {done_before} already done; "
              f"model {guard.info.name}; analysis {options.analysis}", file=sys.stderr)
        executor = None
        if cluster is not None:
            from libra_edge.batch.cluster import RayExecutor

            # Actors resolve the model as given: an installed name on each node, or a path.
            spec = model if model and not Path(model).expanduser().is_file() else str(model_path.resolve())
            executor = RayExecutor(spec, cluster, on_status=lambda msg: print(f"  {msg}", file=sys.stderr),
                                   verbose=args.verbose)
        try:
            summary = (_execute(job, executor=executor, allow_mixed_builds=args.allow_mixed_builds)
                       if job.pending else None)
        except DiskFullError:
            _write_partial(store, job.run_id, output)
            raise
    final = store.run(job.run_id)
    _print_summary(final, summary)
    if summary is not None and summary.status != "finished":
        _write_partial(store, job.run_id, output)
        print(f"libra-edge: resume with: libra-edge batch --resume {job.run_id}"
              + (f" -o {args.output}" if args.output else ""), file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    if output is not None:
        _write_output(store, job.run_id, output)
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


def _cluster_options(args: argparse.Namespace) -> Any:
    """`--cluster` and its pool options (None without --cluster); the threads are the actor's CPUs."""
    if args.cluster is None:
        for flag, value in (("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor),
                            ("--gpus-per-actor", args.gpus_per_actor or None)):
            if value is not None:
                raise LibraError(f"{flag} goes with --cluster ray[=ADDRESS]")
        return None
    from libra_edge.batch.cluster import ClusterOptions, import_ray, parse_cluster, probe_address

    address = parse_cluster(args.cluster)
    import_ray(quiet=not args.verbose)  # say what to install before reading anything
    if address:
        probe_address(address)
    if args.threads and args.cpus_per_actor and args.threads != args.cpus_per_actor:
        raise LibraError(f"--threads {args.threads} and --cpus-per-actor {args.cpus_per_actor} disagree: "
                         "an actor runs one llama.cpp thread per CPU Ray gives it; give one of them")
    return ClusterOptions(address=address, actors=args.actors,
                          cpus_per_actor=args.cpus_per_actor or args.threads or 2,
                          gpus_per_actor=args.gpus_per_actor)


@contextmanager
def _guard_for(model_path: Path, settings: EngineSettings, cluster: Any) -> Iterator[Any]:
    """The run's guard: loaded here, or (with --cluster) the model's header only: actors load it."""
    from libra_edge.batch import load_guard

    if cluster is None:
        with load_guard(model_path, settings) as guard:
            yield guard
        return
    from libra_edge.batch.cluster import cluster_settings, model_stand_in

    yield model_stand_in(model_path, cluster_settings(settings, cluster))


@contextmanager
def _stop_signals(cancel: threading.Event, *, local: bool = True) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) sets `cancel`; a second raises KeyboardInterrupt at once.

    The handler runs in the main thread, which waits for the engine's worker; setting
    `cancel` is what reaches the worker: a local guard checks it before every llama.cpp
    call (a long response's windows, each decode step), so the stop lands within one
    call. (It used to be checked between items only, and one long item is thousands of
    calls; a second signal then unwound the main thread, but closing the guard waited
    for the worker to finish that item.) A cluster run stops after its current items.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        what = ("stopping now: finished items are kept, the items being judged are judged again on resume"
                if local else "stopping after the current item")
        print(f"\nlibra-edge: {name}: {what} (Ctrl-C again to stop at once)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _execute(job: Any, *, executor: Any = None, allow_mixed_builds: bool = False) -> BatchSummary:
    from libra_edge.batch import BatchProgress

    cancel = threading.Event()
    bar = ProgressBar(sys.stderr)
    run = job.store.run(job.run_id)
    total = len(job.batch.items)
    bar.update(BatchProgress(run_id=run.id, total=total, done=total - len(job.pending), done_now=0,
                             flagged=run.flagged, errors=0, elapsed_s=0.0, rate=0.0, eta_s=None))
    try:
        with _stop_signals(cancel, local=executor is None):
            return job.execute(on_progress=bar.update, cancel=cancel,  # type: ignore[no-any-return]
                               executor=executor, allow_mixed_builds=allow_mixed_builds)
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
    """A one-line progress bar with rate and ETA on a terminal; periodic lines otherwise.

    A response judged in windows shows them (`item 1/1, window 7/41`): the engine's worker
    thread reports each window, so updates are serialized by a lock.
    """

    WIDTH = 24

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.drawn = False
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def update(self, p: BatchProgress) -> None:
        with self._lock:
            try:
                self._update(p)
            except (OSError, ValueError):
                pass  # stderr gone (closed pipe): progress is not worth failing an item for

    def _update(self, p: BatchProgress) -> None:
        now = time.monotonic()
        window = getattr(p, "window", None)
        final = p.done >= p.total and window is None
        interval = 0.1 if self.tty else 10.0
        # An item's first window is shown at once: the user learns the item is long.
        if not final and now - self.last_draw < interval and window != 1:
            return
        self.last_draw = now
        frac = p.done / p.total if p.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "█" * filled + "░" * (self.WIDTH - filled)
        line = (f"[{bar}] {p.done}/{p.total} {frac:4.0%}  {p.rate:.2f} items/s  ETA {_fmt_duration(p.eta_s)}"
                f"  flagged {p.flagged}  errors {p.errors}")
        if window is not None:
            line += f"  item {min(p.done + 1, p.total)}/{p.total}, window {window}/{p.windows}"
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        with self._lock:
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
             f"{run.errors} failed, {run.skipped} input records skipped, {run.truncated} truncated, "
             f"{run.chunked} chunked"]
    if summary is not None and summary.done_now:
        lines.append(f"  this session: {summary.done_now} items in {_fmt_duration(summary.elapsed_s)} "
                     f"({summary.items_per_s:.2f} items/s)")
    elif summary is None:
        lines.append("  nothing left to check")
    if summary is not None:
        lines.extend(f"  failed: {failure}" for failure in summary.failures)
    for line in lines:
        print(line, file=sys.stderr)


def _write_output(store: Store, run_id: int, output: OutputTarget) -> None:
    if output.path is None:
        store.export(run_id, sys.stdout, format=output.format, bom=output.bom)
        sys.stdout.flush()
        return
    n = store.export(run_id, output.path, format=output.format, bom=output.bom)
    partial = output.partial
    if partial is not None and partial.exists():
        partial.unlink()  # superseded by the complete file
    print(f"  wrote {n} rows to {output.path}", file=sys.stderr)


def _write_partial(store: Store, run_id: int, output: OutputTarget | None) -> None:
    """What an unfinished run has so far, to OUT.partial (never to OUT itself); best effort."""
    if output is None or output.partial is None:
        return
    try:
        n = store.export(run_id, output.partial, format=output.format, bom=output.bom)
    except LibraError as exc:
        print(f"libra-edge: could not write {output.partial}: {exc}", file=sys.stderr)
        return
    except OSError as exc:
        print(f"libra-edge: could not write {output.partial}: {exc.strerror or exc}", file=sys.stderr)
        return
    print(f"  wrote {n} rows so far to {output.partial} (incomplete)", file=sys.stderr)


def _run_record(store: Store, run: RunRow) -> dict[str, Any]:
    """Everything the store holds about a run, JSON-ready, with its remaining items, duration and
    the machines that judged it (node, host, llama.cpp build, items: the audit trail)."""
    import dataclasses
    from datetime import datetime

    record: dict[str, Any] = dataclasses.asdict(run)
    record["nodes"] = [dataclasses.asdict(n) for n in store.run_nodes(run.id)]
    record["remaining"] = run.remaining
    elapsed = None
    if run.started_at and run.finished_at:
        elapsed = (datetime.fromisoformat(run.finished_at) - datetime.fromisoformat(run.started_at)).total_seconds()
    record["elapsed_s"] = elapsed
    return record


def _print_runs_json(store: Store, runs: list[RunRow]) -> None:
    """`batch --runs --json`: every run as one JSON array, newest first."""
    import json

    print(json.dumps([_run_record(store, r) for r in runs], ensure_ascii=False, indent=1))


def _print_run_info(store: Store, run: RunRow, *, as_json: bool) -> None:
    """`batch --run-info RUN`: one run's record, as JSON or as aligned `key: value` lines."""
    import json

    record = _run_record(store, run)
    if as_json:
        print(json.dumps(record, ensure_ascii=False, indent=1))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        print(f"{key:<{width}}  {'-' if text is None else text}")


def _print_runs(store: Store, runs: list[RunRow]) -> None:
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
