"""Where a fast check's time goes, by function: a loop for `perf record` to attach to.

    .venv/bin/python tests/benchmarks/profile_fast_check.py .bench/qwen2.5-3b-random-q4_k_m.gguf engine &
    # once /tmp/libra-profile-ready exists:
    perf record -F 499 -p $(pgrep -f profile_fast_check.py) -o engine.data -- sleep 20
    perf report -i engine.data --sort dso,symbol --stdio | head -40

`engine` runs fast checks in use (the header's KV state kept) over the built-in Libra-style
pairs for SECONDS; `llama` runs llama-cpp-python's own `Llama` on the first pair's prompt
(the header, then the check's new tokens in one batch), for the same breakdown of one
batch. Each prints how many it ran.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from libra_edge.bench import BENCH_PAIRS  # noqa: E402
from libra_edge.engine import Guard  # noqa: E402
from libra_edge.engine import llama as seam  # noqa: E402

READY = Path("/tmp/libra-profile-ready")


def main() -> int:
    path, mode = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 25.0
    READY.unlink(missing_ok=True)
    guard = Guard.load(path, threads=2)
    if mode == "engine":
        guard.check(*BENCH_PAIRS[0], analysis=False)
        READY.write_text("ready")
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            for q, r in BENCH_PAIRS:
                guard.check(q, r, analysis=False)
                n += 1
        print(f"fast checks: {n} in {time.perf_counter() - t:.1f} s")
        guard.close()
        return 0
    prep = guard._checker.prompt_blocks(*BENCH_PAIRS[0])
    tokens = [t for b in prep.blocks for t in b.tokens] + list(prep.rest) + list(guard._checker.opening_draft)
    header = prep.blocks[0].end
    guard.close()
    ll = seam.lib()
    llm = seam.on_compute_thread(lambda: ll.Llama(path, n_ctx=4096, n_threads=2, n_threads_batch=2, verbose=False))

    def loop() -> int:
        READY.write_text("ready")
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            llm.reset()
            llm.eval(tokens[:header])
            llm.eval(tokens[header:])
            n += 1
        print(f"Llama evals (header, then {len(tokens) - header} tokens): {n} in {time.perf_counter() - t:.1f} s")
        return 0

    return int(seam.on_compute_thread(loop))


if __name__ == "__main__":
    raise SystemExit(main())
