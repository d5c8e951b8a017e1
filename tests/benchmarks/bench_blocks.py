"""A fast check's blocks under llama.cpp's options: flash attention, n_ubatch, threads.

    .venv/bin/python tests/benchmarks/bench_blocks.py .bench/qwen2.5-3b-random-q4_k_m.gguf [--rounds 5]

The engine evaluates a fast check in use as two blocks after the cached header: the
question block, then the response block with the frame draft. This times exactly those
tokens (the first built-in Libra-style pair's, from the engine's own planning) with
llama-cpp-python's `Llama` after the same cached header, under each option, interleaved
round after round, and prints tokens/s for the two blocks and for the same tokens in one
batch. The engine itself runs with flash attention off and n_ubatch 512 (engine/llama.py);
an option that won here would be a change of the canonical evaluation, so of every score.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from libra_edge.bench import BENCH_PAIRS  # noqa: E402
from libra_edge.engine import Guard  # noqa: E402
from libra_edge.engine import llama as seam  # noqa: E402

OPTIONS = {
    "engine's (fa off, ubatch 512, 2 threads)": {"flash_attn": False, "n_ubatch": 512, "n_threads": 2},
    "flash attention on": {"flash_attn": True, "n_ubatch": 512, "n_threads": 2},
    "n_ubatch 32": {"flash_attn": False, "n_ubatch": 32, "n_threads": 2},
    "1 thread": {"flash_attn": False, "n_ubatch": 512, "n_threads": 1},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with Guard.load(args.model, threads=2) as guard:
        prep = guard._checker.prompt_blocks(*BENCH_PAIRS[0])
        draft = list(guard._checker.opening_draft)
    tokens = [t for b in prep.blocks for t in b.tokens] + list(prep.rest) + draft
    cuts = [b.end for b in prep.blocks] + [len(tokens)]
    header = cuts[0]
    new = len(tokens) - header
    print(f"header {header} tokens cached; a fast check's {new} new tokens in blocks ending at {cuts[1:]}",
          file=sys.stderr)
    ll = seam.lib()
    llms = {name: seam.on_compute_thread(lambda o=o: ll.Llama(args.model, n_ctx=2048, n_batch=512,
                                                               n_threads_batch=o["n_threads"], verbose=False, **o))
            for name, o in OPTIONS.items()}
    blocks: dict[str, list[float]] = {n: [] for n in OPTIONS}
    whole: dict[str, list[float]] = {n: [] for n in OPTIONS}

    def timed(llm: object, parts: list[list[int]]) -> float:
        llm.reset()  # type: ignore[attr-defined]
        llm.eval(tokens[:header])  # type: ignore[attr-defined]
        t = time.perf_counter()
        for part in parts:
            llm.eval(part)  # type: ignore[attr-defined]
        return time.perf_counter() - t

    try:
        for r in range(args.rounds):
            for name, llm in llms.items():
                split = [tokens[a:b] for a, b in zip(cuts, cuts[1:])]
                blocks[name].append(new / seam.on_compute_thread(lambda: timed(llm, split)))
                whole[name].append(new / seam.on_compute_thread(lambda: timed(llm, [tokens[header:]])))
            print(f"round {r + 1}: " + "; ".join(f"{n}: {blocks[n][-1]:.1f}/{whole[n][-1]:.1f}" for n in OPTIONS),
                  file=sys.stderr)
    finally:
        for llm in llms.values():
            llm.close()
    print(f"| {new} new tokens after the cached header, median of {args.rounds} | in the engine's blocks, tok/s "
          "| in one batch, tok/s | blocks / one batch |")
    print("|---|---|---|---|")
    for name in OPTIONS:
        b, w = statistics.median(blocks[name]), statistics.median(whole[name])
        print(f"| {name} | {b:.1f} | {w:.1f} | {b / w:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
