"""What portability costs: the portable llama.cpp build against a build for this CPU only, same machine.

    python tests/benchmarks/bench_portable.py MODEL.gguf --native A/bin/python --portable B/bin/python

Runs llama.cpp's own `Llama` (through `engine/llama.bare_loop`: 200 tokens of prefill, 16
of decoding) in each interpreter (one venv with `./install.sh --native`'s wheel, one with
the default portable wheel) alternately, round after round, so that a VM's drifting speed
falls on both; prints prefill and decode tokens/s per round and their medians, and which
CPU kernels each build ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


# Run in each interpreter: llama.cpp's own `Llama` prefilling 200 tokens and decoding 16
# (no libra-edge code in the timed part), and the CPU kernels it ran.
PROBE = """
import json, sys
from libra_edge.engine import llama
tokens = list(range(1000, 1200))
prefill, decode = llama.bare_loop(sys.argv[1], tokens, steps=16, threads=int(sys.argv[2]), n_ctx=1024)
print(json.dumps({"prefill_tok_s": prefill, "decode_tok_s": decode, "cpu_variant": llama.cpu_variant() or "built in"}))
"""


def bench(python: str, model: str, threads: int) -> dict[str, object]:
    out = subprocess.run([python, "-c", PROBE, model, str(threads)], capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--native", required=True, help="python of a venv with the --native wheel")
    ap.add_argument("--portable", required=True, help="python of a venv with the portable wheel")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    figures: dict[str, dict[str, list[float]]] = {"native": {"prefill": [], "decode": []},
                                                   "portable": {"prefill": [], "decode": []}}
    kernels = {}
    for rnd in range(args.rounds):
        for name, python in (("native", args.native), ("portable", args.portable)):
            r = bench(python, args.model, args.threads)
            prefill = float(r["prefill_tok_s"])  # type: ignore[arg-type]
            decode = float(r["decode_tok_s"])  # type: ignore[arg-type]
            figures[name]["prefill"].append(prefill)
            figures[name]["decode"].append(decode)
            kernels[name] = r["cpu_variant"]
            print(f"round {rnd + 1} {name:<8} ({kernels[name]}): prefill {prefill:.1f} tok/s, "
                  f"decode {decode:.2f} tok/s", flush=True)
    print(f"\n| build | CPU kernels | prefill tok/s (median of {args.rounds}) | decode tok/s |")
    print("|---|---|---|---|")
    for name in ("native", "portable"):
        f = figures[name]
        print(f"| {name} | {kernels[name]} | {statistics.median(f['prefill']):.1f} | {statistics.median(f['decode']):.2f} |")
    ratio = statistics.median(figures["portable"]["prefill"]) / statistics.median(figures["native"]["prefill"])
    print(f"\nportable / native prefill: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
