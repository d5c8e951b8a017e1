"""`libra-edge bench`: measure checks/s and tokens/s for a model on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from libra_edge.cli.common import add_command, add_model_options, guard_options
from libra_edge.errors import LibraError

EPILOG = """\
examples:
  libra-edge bench --model guard-q4_k_m.gguf
  libra-edge bench --model guard.gguf --threads 4 --pairs 16 --json

Prints prefill and decode tokens/s, seconds per check (fast; full at --max-tokens and
at --short-cap), peak memory, and the same prompt through llama-cpp-python's own Llama
(no libra-edge code in the loop), so the wrapper's overhead shows: "libra-edge 1.25x
slower" means libra-edge's tokens/s is 1.25 times less than the bare Llama's (the JSON's
prefill_overhead and decode_overhead: bare tokens/s over libra-edge's; above 1 is slower).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "bench", __doc__,
        description="Benchmark a model on a fixed set of Libra-style pairs.",
        epilog=EPILOG)
    p.add_argument("--pairs", type=int, default=8, metavar="N", help="fast checks to time (default: 8)")
    p.add_argument("--full-pairs", type=int, default=3, metavar="N", help="full checks to time (default: 3)")
    p.add_argument("--short-cap", type=int, default=16, metavar="N",
                   help="also time full checks with this small analysis cap (default: 16); "
                   "a small cap must never be slower than a large one")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from libra_edge.bench import run_bench, speed_words

    if args.pairs < 1 or args.full_pairs < 1 or args.short_cap < 1:
        raise LibraError("--pairs, --full-pairs and --short-cap must be at least 1")
    report = run_bench(
        args.model,
        pairs=args.pairs,
        full_pairs=args.full_pairs,
        short_cap=args.short_cap,
        progress=lambda msg: print(f"... {msg}", file=sys.stderr, flush=True),
        **guard_options(args),
    )
    if args.json:
        out = asdict(report) | {"prefill_overhead": report.prefill_overhead, "decode_overhead": report.decode_overhead}
        print(json.dumps(out, indent=2))
        return 0
    print(f"model            {report.model} ({report.quant})")
    print(f"threads          {report.threads_why}")
    print(f"load             {report.load_s:.2f} s")
    prefill_vs = speed_words(report.prefill_tok_s, report.bare_prefill_tok_s)
    decode_vs = speed_words(report.decode_tok_s, report.bare_decode_tok_s)
    print(f"prefill          {report.prefill_tok_s:8.1f} tok/s   "
          f"(llama-cpp-python's Llama {report.bare_prefill_tok_s:.1f} tok/s: {prefill_vs})")
    print(f"decode           {report.decode_tok_s:8.1f} tok/s   "
          f"(llama-cpp-python's Llama {report.bare_decode_tok_s:.1f} tok/s: {decode_vs})")
    print(f"fast check       {report.fast_s_per_check:8.3f} s      ({report.fast_checks_per_s:.2f} checks/s)")
    print(f"full check       {report.full_s_per_check:8.3f} s      (--max-tokens {report.full_cap_tokens})")
    print(f"full check       {report.short_cap_s_per_check:8.3f} s      (--max-tokens {report.short_cap_tokens})")
    print(f"peak RSS         {report.peak_rss_mb:8.0f} MiB")
    return 0
