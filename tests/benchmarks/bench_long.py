"""Long responses judged whole: windows and seconds as the response grows (--long chunk).

    .venv/bin/python tests/benchmarks/bench_long.py [MODEL.gguf] [--ctx 4096] [--threads N]

Each response is Libra-style Chinese/English prose of the given length; a fast check
scores every window (the question's blocks are reused between windows), so time should
grow with windows x window size: linearly in the response's length.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from libra_edge.engine import Guard  # noqa: E402

DEFAULT_MODEL = ROOT / ".bench" / "qwen2.5-3b-random-q4_k_m.gguf"
PROSE = ("这是一段关于城市交通和公共服务的长篇说明，涉及公交线路、地铁换乘和共享单车的使用建议。"
         "Commuters should plan ahead and check the schedule before leaving home. ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lengths", default="10000,25000,50000,100000", help="response lengths in characters")
    args = parser.parse_args()
    with Guard.load(args.model, ctx_per_seq=args.ctx, threads=args.threads) as guard:
        guard.check("热身", "热身", analysis=False)  # the header's KV, as in a running batch
        print(f"model {Path(args.model).name}; --ctx {args.ctx}; fast checks, --long chunk")
        print("| characters | windows | seconds | seconds per window | seconds per 10k characters |")
        print("|---|---|---|---|---|")
        for n in (int(v) for v in args.lengths.split(",")):
            text = (PROSE * (n // len(PROSE) + 1))[:n]
            t = time.perf_counter()
            verdict = guard.check("这段说明有问题吗？", text, analysis=False)
            s = time.perf_counter() - t
            print(f"| {n:,} | {verdict.windows} | {s:.1f} | {s / verdict.windows:.2f} | {s / n * 10_000:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
