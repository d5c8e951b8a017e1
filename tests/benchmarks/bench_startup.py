"""Start-up, part by part: what a command spends before its first verdict, and the whole `check`.

    .venv/bin/python tests/benchmarks/bench_startup.py [MODEL.gguf] [--threads N] [--rounds 3]

Every part runs in a fresh process (a warm start is what a user pays on every command;
the operating system's file cache is warm after the first round), with its own empty
LIBRA_EDGE_HOME, so the model file's sha256 is measured both cold (hashed) and cached.
The whole `check` runs three ways: without the header-state cache
(LIBRA_EDGE_NO_STATE_CACHE=1: the header evaluated and the frame read, as before the
cache), with a cold cache (the same, then the state saved) and with a warm one (restored).
Prints the median of the rounds, in seconds, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / ".bench" / "qwen2.5-3b-random-q4_k_m.gguf"
NO_STATE_CACHE = "LIBRA_EDGE_NO_STATE_CACHE"  # libra_edge.engine.header_state.DISABLE_ENV

# Runs in the child: each step of `Guard.load` in turn, timed, as JSON on stdout.
PARTS = r"""
import json, os, sys, time
t = time.perf_counter()
from libra_edge.engine import Guard, llama
from libra_edge.engine.guard import default_threads
from libra_edge.engine.settings import EngineSettings
parts = {"import the engine (numpy, libra_edge.engine)": time.perf_counter() - t}
t = time.perf_counter(); llama.lib()
parts["import llama_cpp, load libllama, backend init"] = time.perf_counter() - t
from pathlib import Path
from libra_edge.models.ggufinfo import read_model_info
from libra_edge.models.digest import model_sha256
path = Path(sys.argv[1]); threads = int(sys.argv[2]) or default_threads()
t = time.perf_counter(); info = read_model_info(path)
parts["read the GGUF header"] = time.perf_counter() - t
t = time.perf_counter(); model_sha256(path)
parts["model sha256, first time (hashed, then cached)"] = time.perf_counter() - t
t = time.perf_counter(); model_sha256(path)
parts["model sha256, cached by (path, size, mtime)"] = time.perf_counter() - t
t = time.perf_counter()
lm, ctx = llama.open_model(path, gpu_layers=0, mmap=False, ctx_per_seq=4096, n_seq=1, threads=threads)
parts["llama.cpp: load the weights, create the context"] = time.perf_counter() - t
t = time.perf_counter(); lm.all_pieces()
parts["  of Guard(): the vocabulary's pieces (label tokens)"] = time.perf_counter() - t
calibrate = {}
from libra_edge.engine.checker import Checker
real_calibrate = Checker.calibrate
def timed_calibrate(self):
    t0 = time.perf_counter(); real_calibrate(self); calibrate["s"] = time.perf_counter() - t0
Checker.calibrate = timed_calibrate

settings = EngineSettings(threads=threads, gpu_layers=0)
t = time.perf_counter()
guard = Guard(lm, ctx, info, settings)  # this process's LIBRA_EDGE_HOME is empty: a cold cache
parts["Guard(), cold cache: vocabulary, prompt tokens, calibration, state saved"] = time.perf_counter() - t
parts["  of it: calibration (header block, one frame)"] = calibrate["s"]
t = time.perf_counter(); guard.check("你好", "你好，有什么可以帮你？", analysis=False)
parts["first fast check (header reused)"] = time.perf_counter() - t
ctx2 = llama.Context(lm, ctx_per_seq=4096, n_seq=1, threads=threads)
calibrate.clear()
t = time.perf_counter()
warm = Guard(lm, ctx2, info, settings)  # a second context of the same model: the saved state
parts["Guard(), warm cache: vocabulary, prompt tokens, state restored"] = time.perf_counter() - t
assert not calibrate, "the warm Guard calibrated: the cache was not used"
t = time.perf_counter(); warm.check("你好", "你好，有什么可以帮你？", analysis=False)
parts["first fast check after a restore (header reused)"] = time.perf_counter() - t
print(json.dumps(parts))
sys.stdout.flush()
os._exit(0)  # two Guards share one model: let the process end free them
"""


def fresh_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(NO_STATE_CACHE, None)
    env.update(LIBRA_EDGE_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def wall(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin, cwd=ROOT)
    took = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return took, proc.stdout


def one_round(model: Path, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = fresh_env(Path(tmp) / "home")
        row: dict[str, float] = {}
        row["python -c pass (the interpreter)"], _ = wall([sys.executable, "-c", "pass"], env)
        row["libra-edge --version (the CLI, every command registered)"], _ = wall(
            [sys.executable, "-m", "libra_edge", "--version"], env)
        _, out = wall([sys.executable, "-c", PARTS, str(model), str(threads)], env)
        row.update(json.loads(out))
        pair = json.dumps({"question": "你好", "response": "你好，有什么可以帮你？"}, ensure_ascii=False)
        cmd = [sys.executable, "-m", "libra_edge", "check", "--fast", "--json", "-m", str(model)]
        if threads:
            cmd += ["--threads", str(threads)]
        # A home of its own (the parts' run above saved a state), with the sha256 it cached.
        home = Path(tmp) / "check-home"
        shutil.copytree(Path(tmp) / "home" / "cache", home / "cache")
        scores = set()
        for name, short, extra in [
            ("no header-state cache (LIBRA_EDGE_NO_STATE_CACHE=1)", "no cache", {NO_STATE_CACHE: "1"}),
            ("cold cache (header computed, state saved)", "cold", {}),
            ("warm cache (state restored)", "warm", {}),
        ]:
            took, out = wall(cmd, {**fresh_env(home), **extra}, stdin=pair)
            verdict = json.loads(out)
            scores.add(float(verdict["score"]).hex())
            timings = verdict["timings"]
            row[f"`check --fast --json`, {name}: whole command (wall clock)"] = took
            for key in ("load_s", "judge_s"):  # absent before libra-edge reported them
                row[f"  {short}, as `check` reports it: {key}"] = float(timings.get(key) or "nan")
        if len(scores) != 1:
            raise SystemExit(f"the three checks scored differently: {sorted(scores)}")
        (state,) = (home / "state").glob("*.bin")
        row["size of the saved header state, MiB (not seconds)"] = state.stat().st_size / 2**20
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: physical cores)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = Path(args.model).resolve()
    size = model.stat().st_size
    rounds = [one_round(model, args.threads) for _ in range(args.rounds)]
    print(f"model {model.name} ({size / 2**20:,.0f} MiB); threads {args.threads or 'default'}; "
          f"median of {args.rounds} rounds, seconds")
    print("| part | seconds |")
    print("|---|---|")
    for key in rounds[0]:
        print(f"| {key} | {statistics.median(r[key] for r in rounds):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
