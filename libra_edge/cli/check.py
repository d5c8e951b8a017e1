"""`libra-edge check`: judge one (question, response) pair."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from libra_edge.cli.common import add_command, add_model_options, engine_settings
from libra_edge.errors import ExitCode, InputError, LibraError

if TYPE_CHECKING:
    from libra_edge.engine import Verdict

EPILOG = """\
examples:
  libra-edge check -q "怎么制作炸弹？" -r "我不能帮助你。"
  libra-edge check --fast --json -q "..." -r "..."        verdict and score only, as JSON
  echo '{"question": "...", "response": "..."}' | libra-edge check --json

output (--json): one object with label (安全/不安全), unsafe (bool), score (P(unsafe)),
analysis (null with --fast), analysis_cut (stopped by --max-tokens), truncated (an input
cut head+tail to fit --ctx), windows/window/span (a response too long for the context is
judged in overlapping windows; the highest-scoring window decides, span = its characters),
normalized (the judged text differed from the given one), raw (the model's JSON text),
timings, and provenance: model, model_sha256, threshold, version.

timings: what the command waited for, in parts: start_s (Python and libra-edge starting,
before the command ran), load_s (the engine's imports, reading and loading the model,
its sha256), judge_s (the check itself), wall_s (all of it, as `time` would say); and
the check's own tokens and seconds (prompt_tokens, reused_tokens, prefill_s, decode_s,
total_s). The text output ends with the same: (71.5 s: start 0.3 s, load 25.1 s, judge 46.1 s).

The score is reproducible: the same model file, pair and verdict settings (--ctx,
--threshold, --max-tokens, --long, --no-normalize, --gpu-layers) give the same score,
bit for bit, whatever ran before and whether or not --fast is given.

exit status: 0 safe, 1 unsafe, 2 usage, 3 model problem, 4 bad input.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "check", __doc__,
        description="Judge whether an LLM's response to a question is safe (安全) or unsafe (不安全).",
        epilog=EPILOG)
    p.add_argument("-q", "--question", metavar="TEXT", help="the human's question")
    p.add_argument("-r", "--response", metavar="TEXT", help="the LLM's response to judge")
    p.add_argument("--fast", action="store_true", help="stop after the verdict: no analysis, much faster")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_model_options(p)
    p.set_defaults(func=run)


def read_pair(args: argparse.Namespace) -> tuple[str, str]:
    """Question and response from the flags, or one JSON object on stdin."""
    if args.question is not None or args.response is not None:
        if args.question is None or args.response is None:
            raise LibraError("give both --question and --response (or a JSON object on stdin)")
        return args.question, args.response
    if sys.stdin is None or sys.stdin.isatty():
        raise LibraError("nothing to check: give --question and --response, or pipe "
                         '{"question": ..., "response": ...} on stdin')
    text = sys.stdin.read()
    if not text.strip():
        raise InputError('stdin: empty: nothing to check (pipe one JSON object: {"question": ..., "response": ...})')
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(f"stdin: not a JSON object ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError("stdin: expected a JSON object with question and response")
    for key in ("question", "response"):
        if not isinstance(obj.get(key), str):
            raise InputError(f"stdin: field {key!r} missing or not a string")
    return obj["question"], obj["response"]


def run(args: argparse.Namespace) -> int:
    t_run = time.perf_counter()
    started = _process_age()
    question, response = read_pair(args)  # before anything slow: bad input costs no model load
    settings = engine_settings(args)
    t_load = time.perf_counter()
    from libra_edge.engine import Guard

    with Guard.load(args.model, settings) as guard:
        guard.model_sha256  # part of the load: hashed once per file (then cached), not per check
        t_judge = time.perf_counter()
        verdict = guard.check(question, response, analysis=not args.fast)
        t_end = time.perf_counter()
    waited = {
        "start_s": round(started, 3) if started is not None else None,
        "load_s": round(t_judge - t_load, 3),
        "judge_s": round(t_end - t_judge, 3),
        "wall_s": round((started or 0.0) + (t_end - t_run), 3),  # as `time` would say, less the exit
    }
    if args.json:
        record = verdict.to_dict()
        record["timings"] = {**waited, **record["timings"]}
        print(json.dumps(record, ensure_ascii=False))
    else:
        print(format_verdict(verdict, guard.threshold, waited=waited))
    return ExitCode.FLAGGED if verdict.unsafe else ExitCode.OK


def _process_age() -> float | None:
    """Seconds since this process started (Python's own start-up and imports), where Linux says."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        started_at = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks since boot
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_at)


def format_verdict(verdict: Verdict, threshold: float, *, waited: dict[str, Any] | None = None) -> str:
    """The human-readable report of one verdict (and what the command waited for, when given)."""
    word = "UNSAFE" if verdict.unsafe else "safe"
    lines = [f"{verdict.label} ({word})  score {verdict.score:.3f}  (P(unsafe); threshold {threshold:g})"]
    if verdict.truncated:
        lines.append("note: the inputs were too long and were cut (head and tail kept)")
    if verdict.windows > 1 and verdict.span is not None:
        a, b = verdict.span
        lines.append(f"note: the response was judged in {verdict.windows} windows; window {verdict.window + 1} "
                     f"(characters {a}-{b}) decided")
    if verdict.analysis_cut:
        lines.append("note: the analysis was cut at --max-tokens")
    if verdict.analysis is not None:
        lines.append(f"分析: {verdict.analysis}")
    t = verdict.timings
    tokens = f"{t.prompt_tokens} prompt tokens, {t.reused_tokens} reused"
    if waited is None:
        lines.append(f"({t.total_s:.2f} s; {tokens})")
    else:
        start = f"start {waited['start_s']:.1f} s, " if waited.get("start_s") is not None else ""
        lines.append(f"({waited['wall_s']:.1f} s: {start}load {waited['load_s']:.1f} s, "
                     f"judge {waited['judge_s']:.1f} s; {tokens})")
    return "\n".join(lines)
