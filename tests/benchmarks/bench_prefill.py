"""Prefill: the engine's canonical schedule against llama-cpp-python's own `Llama`, interleaved.

    python tests/benchmarks/bench_prefill.py .bench/qwen2.5-3b-random-q4_k_m.gguf --threads 2 --rounds 6

On a VM whose speed drifts from minute to minute, `libra-edge bench` (engine first,
`Llama` a minute later) can put the drift into the ratio. Here both are loaded at once
and measured alternately, round after round, on the same prompt tokens:

- engine: a fast check from an empty cache (header, question and response blocks, the
  response block carrying the frame draft), tokens evaluated / prefill seconds;
- Llama, whole: the same prompt tokens in one `eval` (how `bench` measures the baseline);
- Llama, split: the same tokens in the engine's blocks, one `eval` call each, so the
  cost of the split itself is told apart from the wrapper's;
- a check as it runs in use, the header's KV state kept: the engine's whole fast check
  (`Guard.check(..., analysis=False)`, wall time: tokenizing, the evaluation, reading the
  verdict) against `Llama` evaluating the same new tokens after the same cached header.

Prints the median (and best) of each and the ratios.
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


# Llama runs on the engine's compute thread (llama.on_compute_thread): llama.cpp's OpenMP
# threads slow down once two threads have decoded in one process.
def llama_whole_and_split(llm, tokens: list[int], cuts: list[int]) -> tuple[float, float]:
    """Seconds for the prompt in one eval, then in the engine's blocks."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(tokens)
    whole = time.perf_counter() - t
    llm.reset()
    t = time.perf_counter()
    start = 0
    for end in cuts:
        llm.eval(tokens[start:end])
        start = end
    return whole, time.perf_counter() - t


def llama_after_header(llm, tokens: list[int], header: int) -> float:
    """Seconds for the tokens after a cached header."""
    llm.reset()
    llm.eval(tokens[:header])
    t = time.perf_counter()
    llm.eval(tokens[header:])
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    question, response = BENCH_PAIRS[0]
    guard = Guard.load(args.model, threads=args.threads)
    ll = seam.lib()
    llm = seam.on_compute_thread(lambda: ll.Llama(args.model, n_ctx=4096, n_threads=args.threads,
                                                  n_threads_batch=args.threads, verbose=False))
    engine, whole, split, check_s, bare_s = [], [], [], [], []
    try:
        # The engine's schedule for this pair: its header and question blocks, then the
        # response with the template's closing tokens and the frame draft in one batch.
        prep = guard._checker.prompt_blocks(question, response)
        tokens = [t for b in prep.blocks for t in b.tokens] + list(prep.rest) + list(guard._checker.opening_draft)
        cuts = [b.end for b in prep.blocks] + [len(tokens)]
        print(f"prompt {len(tokens)} tokens in blocks ending at {cuts}", file=sys.stderr)
        for r in range(args.rounds):
            guard.reset_cache()
            v = guard.check(question, response, analysis=False)
            # The same tokens Llama evaluates: the prompt and the frame draft evaluated with it.
            assert v.timings.reused_tokens == 0
            engine.append(len(tokens) / v.timings.prefill_s)

            whole_s, split_s = seam.on_compute_thread(lambda: llama_whole_and_split(llm, tokens, cuts))
            whole.append(len(tokens) / whole_s)
            split.append(len(tokens) / split_s)
            # In use: the header's KV state is kept; a check evaluates the rest.
            guard.check(question, response, analysis=False)
            t = time.perf_counter()
            guard.check(question, response, analysis=False)
            check_s.append(time.perf_counter() - t)
            bare_s.append(seam.on_compute_thread(lambda: llama_after_header(llm, tokens, cuts[0])))
            print(f"round {r + 1}: engine {engine[-1]:.1f}  Llama whole {whole[-1]:.1f}  "
                  f"Llama split {split[-1]:.1f} tok/s; fast check {check_s[-1]:.2f} s, Llama on its "
                  f"{len(tokens) - cuts[0]} new tokens {bare_s[-1]:.2f} s", file=sys.stderr)
    finally:
        llm.close()
        guard.close()
    # The median, and the best round (the least disturbed by a noisy machine).
    for name, pick in (("median", statistics.median), ("best", max)):
        e, w, s = (pick(x) for x in (engine, whole, split))
        print(f"{name} tok/s over {args.rounds} rounds, {args.threads} threads: engine {e:.1f}, "
              f"Llama whole prompt {w:.1f}, Llama in the engine's blocks {s:.1f}; "
              f"engine / Llama whole {e / w:.3f}, engine / Llama split {e / s:.3f}, split / whole {s / w:.3f}")
    for name, pick in (("median", statistics.median), ("best", min)):
        c, b = pick(check_s), pick(bare_s)
        print(f"{name} with the header cached: fast check {c:.2f} s, Llama on the same new tokens {b:.2f} s; "
              f"Llama / engine {b / c:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
