"""`libra-edge check`: judge one (question, response) pair."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from libra_edge.cli.common import add_model_options, guard_options, help_from_doc
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

The score is reproducible: the same model file, pair and verdict settings (--ctx,
--threshold, --max-tokens, --long, --no-normalize, --gpu-layers) give the same score,
bit for bit, whatever ran before and whether or not --fast is given.

exit status: 0 safe, 1 unsafe, 2 usage, 3 model problem, 4 bad input.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help=help_from_doc(__doc__),
        description="Judge whether an LLM's response to a question is safe (安全) or unsafe (不安全).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--question", metavar="TEXT", help="the human's question")
    p.add_argument("-r", "--response", metavar="TEXT", help="the LLM's response to judge")
    p.add_argument("--fast", action="store_true", help="stop after the verdict: no analysis, much faster")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=256, metavar="N",
                   help="longest analysis in tokens (default: 256, as the authors); a cut analysis "
                   "keeps its verdict and is marked analysis_cut")
    p.add_argument("--long", choices=("chunk", "truncate"), default="chunk",
                   help="a response too long for the context: judge it whole in overlapping windows "
                   "(chunk, default) or keep its head and tail (truncate)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="judge the text exactly as given (default: NFKC, zero-width and bidi "
                   "controls removed, full-width letters folded)")
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
    from libra_edge.engine import Guard

    question, response = read_pair(args)
    if args.max_tokens < 1:
        raise LibraError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    opts = guard_options(args)
    with Guard.load(args.model, max_new_tokens=args.max_tokens, long=args.long, normalize=args.normalize,
                    **opts) as guard:
        verdict = guard.check(question, response, analysis=not args.fast)
    if args.json:
        print(json.dumps(verdict.to_dict(), ensure_ascii=False))
    else:
        print(format_verdict(verdict, guard.threshold))
    return ExitCode.FLAGGED if verdict.unsafe else ExitCode.OK


def format_verdict(verdict: Verdict, threshold: float) -> str:
    """The human-readable report of one verdict."""
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
    lines.append(f"({t.total_s:.2f} s; {t.prompt_tokens} prompt tokens, {t.reused_tokens} reused)")
    return "\n".join(lines)
