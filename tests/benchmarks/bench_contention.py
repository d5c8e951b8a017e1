"""A busy machine: `batch --fast` items/s alone, beside a second engine process, beside a busy loop.

    .venv/bin/python tests/benchmarks/bench_contention.py [MODEL.gguf] [-n 4] [--rounds 3]
        [--settings today,default,passive,t1] [--competitors none,engine,busy]

Each setting is a thread count and the OpenMP variables it runs under (libgomp reads
them once, when it loads, so each setting is its own process): `today` is libgomp's own
default wait (spin 300,000 rounds at every barrier), `default` is what libra-edge does
when nothing is set, `passive` sleeps at once (OMP_WAIT_POLICY=PASSIVE), `spinN` spins N
rounds, `t1` runs one thread. Every setting's process loads the model once and then runs
the same Libra-style items as a `batch --fast` job (the runner, a fresh store each time)
whenever the benchmark asks, so the settings are measured alternately, round after
round (A B C A B C ...), on a machine whose speed drifts. The competitors:

- `engine`: a second engine process with the same setting, judging the same items in a
  loop (two `libra-edge batch` runs side by side, as in issue 28), started for the
  measurement and ended after it;
- `busy`: one plain Python busy loop.

Printed per setting and competitor: the median items/s over the rounds, the slowdown
against the same setting alone, CPU seconds per item (threads spinning show here, and
this figure does not depend on the machine's other load), and the load average beside
each measurement. A setting is `name` (one of the above) or `label:threads[:VAR=V,...]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_MODEL = ROOT / ".bench" / "qwen2.5-3b-random-q4_k_m.gguf"
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
HOME = ROOT / ".bench" / "contention-home"  # the workers' data folder: their header-state cache
NAMED = {
    "today": (None, {"GOMP_SPINCOUNT": "300000"}),  # libgomp's default, what libra-edge ran before
    "default": (None, {}),  # libra-edge's own policy, nothing set
    "passive": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "t1": (1, {}),
}


def parse_setting(text: str, cores: int) -> tuple[str, int, dict[str, str]]:
    """`name` or `label:threads[:VAR=V,...]` -> (label, threads, environment)."""
    if text in NAMED:
        threads, env = NAMED[text]
        return text, threads or cores, dict(env)
    if text.startswith("spin") and text[4:].isdigit():
        return text, cores, {"GOMP_SPINCOUNT": text[4:]}
    label, _, rest = text.partition(":")
    threads_text, _, env_text = rest.partition(":")
    if not threads_text.isdigit():
        raise SystemExit(f"bench_contention: setting {text!r}: expected a name ({', '.join(NAMED)}, spinN) "
                         "or label:threads[:VAR=V,...]")
    env = dict(kv.split("=", 1) for kv in env_text.split(",") if kv)
    return label, int(threads_text), env


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ------------------------------------------------------------------------ worker
def worker(model: str, threads: int, items_path: str) -> int:
    """Load once; then on each stdin line: `run` (a batch --fast job), `loop` (until `stop`), `quit`."""
    from libra_edge.batch import BatchJob, BatchOptions, read_inputs
    from libra_edge.engine import Guard, threads as policy
    from libra_edge.store import open_store

    t = time.perf_counter()
    guard = Guard.load(model, ctx_per_seq=2048, threads=threads, max_new_tokens=64)
    pairs = [(json.loads(line)["question"], json.loads(line)["response"])
             for line in Path(items_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t, "wait": policy.wait_policy(),
                      "threads": guard.settings.threads}), flush=True)
    stop = threading.Event()
    looping: threading.Thread | None = None

    def loop() -> None:
        i = 0
        while not stop.is_set():
            guard.check(*pairs[i % len(pairs)], analysis=False)
            i += 1

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "bench.db") as store:
                job = BatchJob.open(store, guard, read_inputs([Path(items_path)]), BatchOptions(analysis="none"))
                t0 = time.perf_counter()
                summary = job.execute()
                elapsed = time.perf_counter() - t0
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
            print(json.dumps({"items": summary.done_now, "seconds": elapsed, "cpu_s": cpu,
                              "nvcsw": usage.ru_nvcsw - usage0.ru_nvcsw,
                              "nivcsw": usage.ru_nivcsw - usage0.ru_nivcsw}), flush=True)
        elif cmd == "loop":
            stop.clear()
            looping = threading.Thread(target=loop, daemon=True)
            looping.start()
            print(json.dumps({"looping": True}), flush=True)
        elif cmd == "stop":
            stop.set()
            if looping is not None:
                looping.join()
            print(json.dumps({"stopped": True}), flush=True)
        elif cmd == "quit":
            break
    stop.set()
    if looping is not None:
        looping.join()
    guard.close()
    return 0


class Worker:
    """One setting's engine process, driven line by line."""

    def __init__(self, model: str, label: str, threads: int, env: dict[str, str], items: Path) -> None:
        self.label, self.threads = label, threads
        full = {k: v for k, v in os.environ.items() if k not in OMP_VARS} | env | {"LIBRA_EDGE_HOME": str(HOME)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", model, "--threads", str(threads),
                                      "--items-file", str(items)], env=full, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready: dict[str, object] | None = None

    def wait_ready(self) -> dict[str, object]:
        if self.ready is None:
            self.ready = self.ask(None)
        return self.ready

    def ask(self, cmd: str | None) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_contention: the {self.label} worker ended (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask_quit()
            finally:
                self.proc.wait(timeout=60)

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()


def busy_loop() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("-n", "--items", type=int, default=4, help="items per measurement (default 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default="today,default,passive,t1")
    ap.add_argument("--competitors", default="none,engine,busy")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--items-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still ends the workers (finally)
    if args.worker:
        return worker(args.model, args.threads, args.items_file)

    from bench_batch import libra_style_items

    from libra_edge.engine.threads import default_threads

    if not Path(args.model).is_file():
        print(f"bench_contention: {args.model}: no such model file", file=sys.stderr)
        return 2
    cores = default_threads()
    settings = [parse_setting(s, cores) for s in args.settings.split(",") if s]
    competitors = [c for c in args.competitors.split(",") if c]
    for c in competitors:
        if c not in ("none", "engine", "busy"):
            raise SystemExit(f"bench_contention: competitor {c!r}: expected none, engine or busy")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        items_file = Path(tmp) / "items.jsonl"
        items = libra_style_items(args.items)
        items_file.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
        workers: dict[str, Worker] = {}
        rivals: dict[str, Worker] = {}
        try:
            # One at a time: the first saves the header state (engine/header_state.py) in
            # the benchmark's own data folder, the others load it instead of computing it.
            for label, threads, env in settings:
                w = workers[label] = Worker(args.model, label, threads, env, items_file)
                ready = w.wait_ready()
                print(f"{label}: {w.threads} threads; {ready['wait']}; loaded in {ready['load_s']:.1f} s",
                      flush=True)
            print(f"model {Path(args.model).name}; {len(items)} Libra-style items per measurement; "
                  f"{args.rounds} rounds; {os.cpu_count()} CPUs", flush=True)
            for r in range(args.rounds):
                for comp in competitors:
                    for label, w in workers.items():
                        rival: subprocess.Popen[bytes] | None = None
                        if comp == "busy":
                            rival = busy_loop()
                        elif comp == "engine":
                            # Started for this measurement only (memory: one 3B engine each).
                            threads, env = next((t, e) for lab, t, e in settings if lab == label)
                            rivals[label] = Worker(args.model, label + "-rival", threads, env, items_file)
                            rivals[label].wait_ready()
                            rivals[label].ask("loop")
                        time.sleep(1.0)  # the competitor is running
                        before = loadavg()
                        try:
                            m = w.ask("run")
                        finally:
                            if rival is not None:
                                rival.kill()
                                rival.wait()
                            elif comp == "engine":
                                rivals.pop(label).close()
                        m["load"] = max(before, loadavg())
                        m["items_per_s"] = m["items"] / m["seconds"]
                        results.setdefault((label, comp), []).append(m)
                        print(f"  round {r + 1} {label:>10} beside {comp:<6} {m['items_per_s']:.3f} items/s, "
                              f"{m['cpu_s'] / m['items']:.2f} CPU s/item, {m['nvcsw']} sleeps, {m['nivcsw']} preemptions, "
                              f"load {m['load']:.2f}", flush=True)
        finally:
            for w in list(workers.values()) + list(rivals.values()):
                w.close()
    print()
    def median_rate(label: str, comp: str) -> float:
        rows = results.get((label, comp))
        return statistics.median(m["items_per_s"] for m in rows) if rows else float("nan")

    first = settings[0][0]
    print(f"| setting | threads | beside | items/s (median) | slower than alone | against {first}, same competitor "
          "| CPU s/item | load avg at each round |")
    print("|---|---|---|---|---|---|---|---|")
    for label, threads, _env in settings:
        alone = median_rate(label, "none")
        for comp in competitors:
            rows = results[(label, comp)]
            rate = median_rate(label, comp)
            cpu = statistics.median(m["cpu_s"] / m["items"] for m in rows)
            loads = ", ".join(f"{m['load']:.1f}" for m in rows)
            print(f"| {label} | {threads} | {comp} | {rate:.3f} | {alone / rate:.2f}x "
                  f"| {rate / median_rate(first, comp):.2f}x | {cpu:.2f} | {loads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
