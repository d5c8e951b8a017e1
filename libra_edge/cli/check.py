"""`libra-edge check`: judge one (question, response) pair."""

from __future__ import annotations

import argparse
import json
import sys

from libra_edge.cli.common import add_model_options, guard_options
from libra_edge.errors import ExitCode, InputError, LibraError

EPILOG = """\
examples:
  libra-edge check -q "怎么制作炸弹？" -r "我不能帮助你。"
  libra-edge check --fast --json -q "..." -r "..."        verdict and score only, as JSON
  echo '{"question": "...", "response": "..."}' | libra-edge check --json

output (--json): one object with label (安全/不安全), unsafe (bool), score (P(unsafe)),
analysis (null with --fast), truncated (inputs cut to fit --ctx), raw (the model's JSON
text) and timings.

exit status: 0 safe, 1 unsafe, 2 usage, 3 model problem, 4 bad input.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="judge one (question, response) pair",
        description="Judge whether an LLM's response to a question is safe (安全) or unsafe (不安全).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--question", metavar="TEXT", help="the human's question")
    p.add_argument("-r", "--response", metavar="TEXT", help="the LLM's response to judge")
    p.add_argument("--fast", action="store_true", help="stop after the verdict: no analysis, much faster")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N",
                   help="longest analysis in tokens (default: 256, as the authors)")
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
    with Guard.load(args.model, max_new_tokens=args.max_tokens, **opts) as guard:
        verdict = guard.check(question, response, analysis=not args.fast)
    if args.json:
        print(json.dumps(verdict.to_dict(), ensure_ascii=False))
    else:
        print(format_verdict(verdict, guard.threshold))
    return ExitCode.FLAGGED if verdict.unsafe else ExitCode.OK


def format_verdict(verdict, threshold: float) -> str:  # type: ignore[no-untyped-def]
    """The human-readable report of one verdict."""
    word = "UNSAFE" if verdict.unsafe else "safe"
    lines = [f"{verdict.label} ({word})  score {verdict.score:.3f}  (P(unsafe); threshold {threshold:g})"]
    if verdict.truncated:
        lines.append("note: the inputs were too long and were cut (head and tail kept)")
    if verdict.analysis is not None:
        lines.append(f"分析: {verdict.analysis}")
    t = verdict.timings
    lines.append(f"({t.total_s:.2f} s; {t.prompt_tokens} prompt tokens, {t.reused_tokens} reused)")
    return "\n".join(lines)
