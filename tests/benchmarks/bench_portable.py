"""What portability costs: the portable llama.cpp build against a build for this CPU only, same machine.

    python tests/benchmarks/bench_portable.py MODEL.gguf --native A/bin/python --portable B/bin/python

Runs `libra-edge bench --json` with each interpreter (one venv with `./install.sh
--native`'s wheel, one with the default portable wheel) alternately, round after round,
so that a VM's drifting speed falls on both; prints prefill tokens/s and fast checks/s
per round and their medians, and which CPU kernels each build ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def bench(python: str, model: str, threads: int, pairs: int) -> dict[str, object]:
    out = subprocess.run(
        [python, "-m", "libra_edge", "bench", "--json", "-m", model, "--threads", str(threads),
         "--pairs", str(pairs), "--full-pairs", "0"],
        capture_output=True, text=True, check=True,
    ).stdout
    doctor = subprocess.run([python, "-m", "libra_edge", "doctor", "--no-smoke", "--json"],
                            capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out)
    result["cpu_variant"] = json.loads(doctor)["build"].get("cpu_variant") or "built in"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--native", required=True, help="python of a venv with the --native wheel")
    ap.add_argument("--portable", required=True, help="python of a venv with the portable wheel")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    figures: dict[str, dict[str, list[float]]] = {"native": {"prefill": [], "fast": []},
                                                   "portable": {"prefill": [], "fast": []}}
    kernels = {}
    for rnd in range(args.rounds):
        for name, python in (("native", args.native), ("portable", args.portable)):
            r = bench(python, args.model, args.threads, args.pairs)
            prefill = float(r["prefill_tok_s"])  # type: ignore[arg-type]
            fast = float(r["fast_checks_per_s"])  # type: ignore[arg-type]
            figures[name]["prefill"].append(prefill)
            figures[name]["fast"].append(fast)
            kernels[name] = r["cpu_variant"]
            print(f"round {rnd + 1} {name:<8} ({kernels[name]}): prefill {prefill:.1f} tok/s, "
                  f"fast {fast:.3f} checks/s", flush=True)
    print(f"\n| build | CPU kernels | prefill tok/s (median of {args.rounds}) | fast checks/s |")
    print("|---|---|---|---|")
    for name in ("native", "portable"):
        f = figures[name]
        print(f"| {name} | {kernels[name]} | {statistics.median(f['prefill']):.1f} | {statistics.median(f['fast']):.3f} |")
    ratio = statistics.median(figures["portable"]["prefill"]) / statistics.median(figures["native"]["prefill"])
    print(f"\nportable / native prefill: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
