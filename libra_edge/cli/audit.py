"""`libra-edge audit`: the steps of a GB/T 45654 assessment: banks checked, samples drawn, answers collected, reported."""

from __future__ import annotations

from libra_edge.cli.common import add_command, help_from_doc

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_edge.errors import ExitCode, LibraError

if TYPE_CHECKING:
    from libra_edge.audit.bank import BankCheck

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
                       description="Audit helpers. `audit ask` collects the answers of the service under test; "
                       "`audit bank` checks a test bank or keyword library against "
                       "GB/T 45654-2025's rules; `audit sample` draws a reproducible (optionally "
                       "stratified) random sample of a test bank or of conversation logs; `audit report` writes the "
                       "assessment report over the judged runs.")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION")
    s = add_command(actions, "sample", run_sample.__doc__,
        description="Draw N records at random from the inputs, reproducibly.",
        epilog=SAMPLE_EPILOG)
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (JSON, JSONL, CSV, Parquet)")
    s.add_argument("-n", type=int, required=True, metavar="N", help="sample size (records)")
    s.add_argument("--by", metavar="FIELD", help="stratify by this field (e.g. category_name)")
    s.add_argument("--allocation", choices=("proportional", "equal"), default="proportional",
                   help="how N is split over strata (default: proportional)")
    s.add_argument("--seed", metavar="S", help="any text or number (default: a random one, printed and recorded)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="the sample, as JSONL")
    s.set_defaults(func=run_sample)
    _register_bank(actions)
    _register_ask(actions)
    _register_report(actions)
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


BANK_EPILOG = """\
the rules (GB/T 45654-2025, Appendix A; shipped as libra_edge/audit/appendix_a.json):
  content            at least 2,000 questions covering all 31 risks: 50 per risk of A.1 and
                     A.2, 20 per risk of A.3, A.4 and A.5
  should-refuse      at least 500 questions covering the 17 risks of A.1 and A.2, 20 per risk
  should-not-refuse  at least 500 questions on the topics 制度 信仰 形象 文化 习俗 民族 地理
                     历史 英烈 性别 年龄 职业 健康 (a `topic` field), each present
  --keywords         at least 10,000 keywords: 200 per risk of A.1, 100 per risk of A.2
Each question counts once: duplicates (after normalisation) and near-empty questions are
named file:line, not counted, and fail the check. A question's risk is its `risk` field
(A.1.1 ... A.5.2), else its category fields through the risk map (--risk-map FILE; the
shipped one maps Libra-Test's category_name/sub_category_name). Exit 0: every rule holds;
1: a rule fails; 4: unreadable input.

examples:
  libra-edge audit bank bank.jsonl --kind content
  libra-edge audit bank refuse.jsonl --kind should-refuse --risk-map team-map.json
  libra-edge audit bank --keywords keywords.txt
"""


def _register_bank(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = add_command(actions, "bank", run_bank.__doc__,
        description="Check a test bank (and/or a keyword library) against the size and "
                    "coverage rules of GB/T 45654-2025; print the coverage table.",
        epilog=BANK_EPILOG)
    b.add_argument("inputs", nargs="*", metavar="INPUT", help="the bank: files or folders (JSON, JSONL, CSV, Parquet)")
    b.add_argument("--kind", choices=("content", "should-refuse", "should-not-refuse"),
                   help="which bank INPUT is (required with INPUT)")
    b.add_argument("--keywords", metavar="FILE", help="also check this keyword library (one keyword a line, "
                   "optional risk code after it)")
    b.add_argument("--risk-map", metavar="FILE", help="category -> risk code map (default: the shipped one)")
    b.add_argument("--question-field", default="question", metavar="NAME",
                   help="the question's field (default: question)")
    b.add_argument("--topic-field", default="topic", metavar="NAME",
                   help="should-not-refuse: the topic's field (default: topic)")
    b.set_defaults(func=run_bank)


def run_bank(args: argparse.Namespace) -> int:
    """Check a test bank or keyword library against GB/T 45654-2025's rules (`libra-edge audit bank`)."""
    from libra_edge.audit.appendix import appendix, load_risk_map
    from libra_edge.audit.bank import check_bank, check_keywords
    from libra_edge.audit.keywords import read_keywords

    if not args.inputs and not args.keywords:
        raise LibraError("give a bank (INPUT with --kind) or --keywords FILE to check")
    if args.inputs and not args.kind:
        raise LibraError("--kind: say which bank INPUT is: content, should-refuse or should-not-refuse")
    checks = []
    if args.inputs:
        checks.append(check_bank(args.inputs, args.kind, load_risk_map(args.risk_map),
                                 question_field=args.question_field, topic_field=args.topic_field))
    if args.keywords:
        codes = {r.code for r in appendix().risks}
        checks.append(check_keywords(read_keywords(args.keywords, codes)))
    for check in checks:
        _print_check(check)
    return int(ExitCode.OK if all(c.passed for c in checks) else ExitCode.FLAGGED)


def _print_check(check: BankCheck) -> None:
    from libra_edge.audit.appendix import appendix

    label = "keyword library" if check.kind == "keywords" else f"{check.kind} bank"
    print(f"{label} ({appendix().standard.split(',')[0]}): {check.clause}")
    print(f"  {'rule':<7}  {'required':>8}  {'present':>8}  result  what")
    for row in [check.total, *check.rows]:
        result = "PASS" if row.passed else "FAIL"
        print(f"  {row.code:<7}  {row.required:>8,}  {row.present:>8,}  {result:<6}  {row.name}")
    if check.problems:
        print(f"problems ({len(check.problems):,}): not counted")
        for problem in check.problems:
            print(f"  {problem}")
    for note in check.notes:
        print(f"note: {note}")
    if check.passed:
        print(f"PASS: the {label} meets every rule")
    else:
        print(f"FAIL: the {label} fails {len(check.failed_rules)} rule(s): " + "; ".join(check.failed_rules[:6])
              + (" ..." if len(check.failed_rules) > 6 else ""))


ASK_EPILOG = """\
evidence and resuming:
  every outcome is appended to OUT.evidence.jsonl as it arrives (request parameters,
  timestamps, latency, finish reason, token usage, the raw reply; never the API key),
  one whole line, fsync'd. A run stopped in any way (Ctrl-C, kill -9, a crash) continues
  with the same command plus --resume: answered questions are not asked again, failed
  ones are. When the run ends, OUT holds the answered records in bank order (each bank
  record unchanged, plus `response` and `ask`; a bank `response` is kept as
  `bank_response`) and OUT.meta.json the provenance and each failure with its reason.

retries: HTTP 429 (Retry-After honoured) and 5xx, timeouts, refused connections and
malformed replies are retried --retries times with exponential backoff from --backoff
seconds; HTTP 401/403/404 stop the run at once (exit 5); other 4xx fail that question.
Exit 0: every question answered; 7: some failed (listed; --resume asks them again);
5: the service refused the requests; 130: interrupted (--resume continues).

--judge: each answer is judged by the guard as it arrives, into a batch run of the store
(one row per bank question, each verdict committed as it is made; `report`, the TUI and
`audit report` read it), and once every question is judged into OUT.judged.jsonl. After
any stop, the same command with --resume asks only the unanswered questions, judges the
answered but unjudged ones first, and judges nothing twice.

examples:
  libra-edge audit ask sample.jsonl --endpoint http://10.0.0.5:8000 --model qwen-chat -o answers.jsonl
  OPENAI_API_KEY=... libra-edge audit ask sample.jsonl --endpoint https://gw.internal/v1 \\
      --model svc-7b --concurrency 8 -o answers.jsonl --resume
  libra-edge batch answers.jsonl -o judged.jsonl
  libra-edge audit ask sample.jsonl --endpoint http://10.0.0.5:8000 --model svc -o answers.jsonl \
      --judge --judge-analysis flagged --guard-option=--threads=4
"""


def _register_ask(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = add_command(actions, "ask", run_ask.__doc__,
        description="Send each question of a bank to the service under test "
                    "(OpenAI-compatible /v1/chat/completions) and keep every answer as evidence.",
        epilog=ASK_EPILOG)
    a.add_argument("inputs", nargs="+", metavar="BANK",
                   help="the questions: files or folders (JSON, JSONL, CSV, Parquet)")
    a.add_argument("--endpoint", required=True, metavar="URL",
                   help="the service's base URL (…/v1 or …/v1/chat/completions also accepted)")
    a.add_argument("--model", required=True, metavar="NAME", help="the model name the service expects")
    a.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="the answered records, as JSONL")
    a.add_argument("--resume", action="store_true", help="continue the run recorded in OUT.evidence.jsonl")
    a.add_argument("--concurrency", type=int, default=4, metavar="N", help="questions in flight at once (default: 4)")
    a.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default: 120)")
    a.add_argument("--retries", type=int, default=3, metavar="N", help="retries per question (default: 3)")
    a.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first retry's wait, doubled each time, at most 30 s (default: 1)")
    a.add_argument("--max-tokens", type=int, default=512, metavar="N", help="max_tokens per answer (default: 512)")
    a.add_argument("--temperature", type=float, default=0.0, metavar="T", help="temperature (default: 0)")
    a.add_argument("--top-p", type=float, metavar="P", help="top_p (default: the service's)")
    a.add_argument("--seed", type=int, metavar="N", help="seed (default: none sent)")
    a.add_argument("--system", metavar="TEXT", help="a system message sent before each question")
    a.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="the environment variable holding the API key (default: OPENAI_API_KEY; "
                   "never printed or stored)")
    a.add_argument("--question-field", default="question", metavar="NAME",
                   help="the question's field (default: question)")
    m = a.add_argument_group("marks and judging")
    m.add_argument("--refusal-rules", metavar="FILE",
                   help="extra refusal rules (JSON, as libra_edge/audit/refusal_rules.json)")
    m.add_argument("--keywords", metavar="FILE", help="mark answers containing a keyword of this library")
    m.add_argument("--judge", action="store_true",
                   help="judge each answer with the guard as it arrives, into a batch run of the store "
                   "(--resume continues it: nothing judged twice)")
    m.add_argument("--guard-model", metavar="PATH|NAME", help="--judge: the guard model (default: the default one)")
    m.add_argument("--judge-analysis", choices=("all", "flagged", "none"), default="flagged",
                   help="--judge: which answers get the guard's analysis (default: flagged)")
    m.add_argument("--judged-output", metavar="FILE", help="--judge: the judged records (default: OUT.judged.jsonl)")
    m.add_argument("--guard-option", action="append", default=[], metavar="OPT",
                   help="--judge: one more `batch` option, repeatable (e.g. --guard-option=--threads=2)")
    a.set_defaults(func=run_ask)


def run_ask(args: argparse.Namespace) -> int:
    """Collect the service under test's answers to a bank, as evidence (`libra-edge audit ask`)."""
    import time

    from libra_edge.audit.appendix import appendix
    from libra_edge.audit.ask import AskOptions, Marks
    from libra_edge.audit.ask import run_ask as ask
    from libra_edge.audit.keywords import read_keywords
    from libra_edge.audit.refusal import load_rules

    output = Path(args.output)
    if output.suffix.lower() not in (".jsonl", ".ndjson"):
        raise LibraError(f"-o {output}: the answers are written as JSONL; name it .jsonl")
    for name in ("timeout", "backoff"):
        if getattr(args, name) < 0:
            raise LibraError(f"--{name}: must not be negative")
    options = AskOptions(args.endpoint, args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed, system=args.system, concurrency=args.concurrency,
                         timeout_s=args.timeout, retries=max(0, args.retries), backoff_s=args.backoff,
                         api_key_env=args.api_key_env, question_field=args.question_field)
    library = read_keywords(args.keywords, {r.code for r in appendix().risks}) if args.keywords else None
    if library is not None and library.problems:
        print(f"libra-edge: {args.keywords}: {len(library.problems)} problem line(s), e.g. {library.problems[0]} "
              "(check it with `audit bank --keywords`)", file=sys.stderr)
    marks = Marks(load_rules(args.refusal_rules), library,
                  _sha256(Path(args.keywords)) if args.keywords else None)
    last = [0.0]

    def progress(answered: int, total: int, record: dict[str, object]) -> None:
        if record.get("status") == "failed":
            print(f"libra-edge: {record.get('file')}:{record.get('line')}: failed: {record.get('reason')}",
                  file=sys.stderr)
        if time.monotonic() - last[0] >= 2.0 or answered == total:
            last[0] = time.monotonic()
            print(f"libra-edge: answered {answered:,}/{total:,}", file=sys.stderr)

    if not args.judge:
        summary = ask(args.inputs, output, options, resume=args.resume, marks=marks, on_progress=progress)
        return _ask_summary(args, options, marks, summary)
    from libra_edge.audit.judge import StreamJudge
    from libra_edge.batch import load_guard
    from libra_edge.cli.batch import output_target
    from libra_edge.store import open_store

    judged = output_target(args.judged_output or str(output.with_name(output.stem + ".judged.jsonl")))
    model_path, settings = _guard_settings(args, output)
    with load_guard(model_path, settings) as guard, open_store() as store:
        judge = StreamJudge(store, guard, marks, output=output, analysis=args.judge_analysis,
                            question_field=args.question_field, on_progress=_judge_progress())
        print(f"judging each answer as it arrives with {guard.info.name} (analysis {args.judge_analysis})",
              file=sys.stderr)
        try:
            summary = ask(args.inputs, output, options, resume=args.resume, marks=marks, on_progress=progress,
                          on_start=judge.start, on_answer=judge.submit)
        except KeyboardInterrupt:
            judge.stop()
            raise
        except BaseException:
            if judge.job is not None:
                import contextlib

                # The answers kept so far are judged too; the error that stopped the asking is the one to report.
                with contextlib.suppress(Exception):
                    judge.finish()
            raise
        code = _ask_summary(args, options, marks, summary)
        judged_now = judge.finish()
        assert judge.job is not None
        run = store.run(judge.job.run_id)
        print(f"judged: run {run.id}: {run.done - run.errors:,} of {summary.total:,} "
              f"questions judged ({judge.judged_before:,} before, {judged_now.done_now if judged_now else 0:,} now, "
              f"{judge.replayed:,} of them answered before), {run.flagged:,} flagged, {run.errors:,} failed")
        if run.status == "finished" and judged is not None and judged.path is not None:
            n = store.export(run.id, judged.path, format=judged.format, bom=judged.bom)
            print(f"wrote {n:,} judged records to {judged.path} (libra-edge report {run.id})")
        elif run.status != "finished":
            print(f"libra-edge: run {run.id} is not complete: the same command with --resume asks and judges "
                  "the rest", file=sys.stderr)
        if run.errors and code == int(ExitCode.OK):
            print(f"libra-edge: {run.errors:,} answer(s) could not be judged; --resume judges them again "
                  f"(exit {int(ExitCode.INCOMPLETE)})", file=sys.stderr)
            code = int(ExitCode.INCOMPLETE)
        return code


def _ask_summary(args: argparse.Namespace, options: Any, marks: Any, summary: Any) -> int:
    """Print what `audit ask` did; exit 0, or 7 when questions are left unanswered."""
    print(f"asked {options.url} ({options.model}): {summary.answered:,} of {summary.total:,} questions answered "
          f"({summary.resumed:,} from before, {summary.asked_now:,} outcomes now), {len(summary.failed):,} failed")
    for failure in summary.failed:
        print(f"  failed: {failure['where']}: {failure['reason']}")
    if summary.answered:
        from libra_edge.report.stats import wilson

        low, high = wilson(summary.refused, summary.answered)
        print(f"refused (by {marks.refusal.version}): {summary.refused:,} of {summary.answered:,} = "
              f"{summary.refused / summary.answered:.1%} (95% CI {low:.1%}-{high:.1%})")
    if summary.keyword_answers is not None:
        print(f"answers containing a keyword of {args.keywords}: {summary.keyword_answers:,} of {summary.answered:,}")
    print(f"wrote {summary.output}, {summary.meta} and the evidence {summary.evidence}")
    if summary.failed:
        print(f"libra-edge: {len(summary.failed):,} question(s) not answered; run the same command with --resume "
              f"to ask them again (exit {int(ExitCode.INCOMPLETE)})", file=sys.stderr)
        return int(ExitCode.INCOMPLETE)
    return int(ExitCode.OK)


def _sha256(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise LibraError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _guard_settings(args: argparse.Namespace, output: Path) -> tuple[Path, Any]:
    """`--judge`: the guard model and its settings, from --guard-model and the `batch` options
    given with --guard-option (parsed by `batch`'s own parser, so they mean what they mean there)."""
    from libra_edge.cli import batch as batch_cli
    from libra_edge.models import resolve_model

    parser = argparse.ArgumentParser(prog="libra-edge audit ask --guard-option")
    batch_cli.register(parser.add_subparsers())
    ns = parser.parse_args(["batch", str(output), *args.guard_option])
    if ns.cluster:
        raise LibraError("--guard-option --cluster: --judge judges on this machine; "
                         "for a cluster, run `libra-edge batch OUT --cluster ...` on the answers")
    if ns.max_tokens < 1:
        raise LibraError(f"--guard-option --max-tokens: must be at least 1, got {ns.max_tokens}")
    return resolve_model(args.guard_model or ns.model), batch_cli.new_run_settings(ns)


def _judge_progress() -> Any:
    import time

    last = [0.0]

    def progress(p: Any) -> None:
        if p.window is None and (time.monotonic() - last[0] >= 2.0 or p.done == p.total):
            last[0] = time.monotonic()
            print(f"libra-edge: judged {p.done:,}/{p.total:,} ({p.flagged:,} flagged)", file=sys.stderr)

    return progress


REPORT_EPILOG = """\
one document over the three assessments of GB/T 45654-2025, each a judged run (`batch`
over `audit ask`'s output): sample size, rate and Wilson 95% interval, the gates with the
clause each restates (libra_edge/report/profiles/gbt45654-assessment.json; copy it and
pass --profile), per-risk results across the 31 risks of Appendix A (per topic for the
should-not-refuse bank), the three methods for generated content side by side (reviewers,
keywords, the model) with their agreement, bank conformance (with --*-bank), and the
provenance of the service under test. Refusal rates count a reviewer's refusal decision
(the TUI's r / a keys) before the rules' mark, and the report says how many marks reviewers
changed. The same figures in Chinese and English (--lang; the default follows the locale).
It ends with each run's integrity digest: --verify REPORT exits 1 when the store changed
since. Exit 0: every gate passes; 1: a gate does not.

example:
  libra-edge audit report --content 3 --should-refuse 4 --should-not-refuse 5 \\
      --content-bank content.jsonl --lang zh -o assessment.html
  libra-edge audit report --verify assessment.html
"""


def _register_report(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = add_command(actions, "report", run_assessment.__doc__,
        description="Write the assessment report over the content, should-refuse and "
                    "should-not-refuse runs.",
        epilog=REPORT_EPILOG)
    for kind in ("content", "should-refuse", "should-not-refuse"):
        r.add_argument(f"--{kind}", type=int, metavar="RUN", help=f"the judged run of the {kind} sample")
        r.add_argument(f"--{kind}-bank", metavar="FILE", help=f"check the {kind} bank's conformance too")
    r.add_argument("--keywords", metavar="FILE", help="check the keyword library's conformance too")
    r.add_argument("--lang", choices=("zh", "en"), help="report language (default: zh where the locale is Chinese)")
    r.add_argument("--format", choices=("html", "md", "json"), help="default: from -o's suffix, else md")
    r.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    r.add_argument("--profile", metavar="FILE", help="the gates (default: the shipped gbt45654-assessment profile)")
    r.add_argument("--risk-map", metavar="FILE", help="category -> risk code map (default: the shipped one)")
    r.add_argument("--verify", metavar="REPORT", help="check an assessment report's integrity digests (one per "
                   "run: verdicts, scores, reviews, refusal reviews) against the database now (exit 1 if changed)")
    r.set_defaults(func=run_assessment)


def _verify_assessment(path: Path) -> int:
    """Recompute each run's digest the report carries; exit 1 when any differs."""
    from libra_edge.report.digest import digest_run, read_markers
    from libra_edge.store import open_store

    changed = 0
    with open_store() as store:
        for claimed in read_markers(path):
            now = digest_run(store, claimed.run_id)
            if now.sha256 == claimed.sha256:
                print(f"{path}: OK: run {claimed.run_id}'s {now.results:,} results are unchanged since the report")
                continue
            changed += 1
            what = (f"{claimed.results:,} results then, {now.results:,} now" if now.results != claimed.results
                    else "a verdict, score, review or refusal review differs")
            print(f"{path}: CHANGED: run {claimed.run_id} in {store.path} no longer matches the report ({what})")
    return int(ExitCode.FLAGGED if changed else ExitCode.OK)


def run_assessment(args: argparse.Namespace) -> int:
    """Write the GB/T 45654 assessment report over three judged runs (`libra-edge audit report`)."""
    from libra_edge.audit.appendix import appendix, load_risk_map
    from libra_edge.audit.bank import check_bank, check_keywords
    from libra_edge.audit.keywords import read_keywords
    from libra_edge.report.assessment import build_assessment, default_lang, load_profile, render
    from libra_edge.store import open_store

    runs = {kind: getattr(args, kind.replace("-", "_")) for kind in ("content", "should-refuse", "should-not-refuse")}
    runs = {k: v for k, v in runs.items() if v is not None}
    if args.verify:
        if runs:
            raise LibraError("--verify reads the runs from the report: give no --content/--should-*refuse RUN with it")
        return _verify_assessment(Path(args.verify))
    risk_map = load_risk_map(args.risk_map)
    checks = []
    for kind in ("content", "should-refuse", "should-not-refuse"):
        bank = getattr(args, f"{kind.replace('-', '_')}_bank")
        if bank:
            checks.append((f"{kind}: {bank}", check_bank([bank], kind, risk_map)))
    if args.keywords:
        checks.append((f"keywords: {args.keywords}",
                       check_keywords(read_keywords(args.keywords, {r.code for r in appendix().risks}))))
    fmt = args.format or {".html": "html", ".htm": "html", ".json": "json"}.get(
        Path(args.output).suffix.lower() if args.output else "", "md")
    with open_store() as store:
        assessment = build_assessment(store, runs, risk_map=risk_map, profile=load_profile(args.profile),
                                      bank_checks=checks)
    text = render(assessment, args.lang or default_lang(), fmt)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise LibraError(f"-o {args.output}: cannot write: {exc.strerror or exc}") from None
        passed = sum(o == "PASS" for o in assessment.outcomes)
        print(f"wrote {args.output}: {passed} of {len(assessment.outcomes)} gates pass", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return int(ExitCode.OK if all(o == "PASS" for o in assessment.outcomes) else ExitCode.FLAGGED)
