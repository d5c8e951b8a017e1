"""Ray's overhead: `batch --fast` locally vs `--cluster` with one actor of the same CPUs.

    .venv/bin/python tests/benchmarks/bench_cluster.py [MODEL.gguf] [-n 24] [--cpus 2]

Both runs judge the same Libra-style items (3 responses per question) with the same
llama.cpp threads: locally, then through a one-node Ray cluster (started here, inside a
loopback-only network namespace by tests/cluster_harness.py) with one actor of `--cpus`
CPUs. Items/s is the steady rate, items committed after the first commit / (last commit -
first commit), so neither
figure counts model loading or Ray's start-up; the wall time of each command is printed
too. Then the driver's side: how many verdicts per second the store commits (one SQLite
transaction each), which bounds how many actors one driver can keep up with.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_batch import DEFAULT_MODEL, libra_style_items  # noqa: E402

CLI = Path(sys.executable).parent / "libra-edge"


def steady_rate(db: Path) -> tuple[float, int]:
    """(items/s between the first and the last commit, items) of the database's newest run.

    Items committed together with the first (a cluster returns a batch at once) were
    judged before the clock starts, so only those committed after it count.
    """
    conn = sqlite3.connect(db)
    try:
        run = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        stamps = sorted(datetime.fromisoformat(r[0]).timestamp() for r in conn.execute(
            "SELECT checked_at FROM results WHERE run_id = ? AND status = 'judged'", (run,)))
    finally:
        conn.close()
    span = stamps[-1] - stamps[0]
    after = sum(1 for t in stamps if t > stamps[0])
    return (after / span if span > 0 else float("nan")), len(stamps)


def commit_rate(n: int = 2000) -> float:
    """Verdicts per second `Store.add_result` commits (the driver's ceiling)."""
    from libra_edge.store import open_store

    verdict = {"label": "安全", "unsafe": False, "score": 0.01234, "analysis": None, "raw": '{"答案": "安全"}',
               "truncated": False, "timings": {"prompt_tokens": 210, "total_s": 1.0}}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "c.db") as store:
        run = store.create_run(fingerprint="x", inputs=["in.jsonl"], model_path="m.gguf", model_name="m",
                               model_sha256="0" * 64, quant=None, settings={}, prompt_template_version="v",
                               options={}, total=n, skipped=0)
        t = time.perf_counter()
        for i in range(n):
            store.add_result(run, seq=i, question="问题" * 20, response="回答" * 60, fields={"id": i},
                             verdict=verdict, node="node-a")
        return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("-n", type=int, default=24, help="items (default: 24)")
    ap.add_argument("--cpus", type=int, default=2, help="llama.cpp threads = the actor's CPUs (default: 2)")
    args = ap.parse_args()
    model = str(Path(args.model).resolve())

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    items = work / "items.jsonl"
    items.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in libra_style_items(args.n)),
                     encoding="utf-8")

    local_home = work / "local"
    t = time.perf_counter()
    local = subprocess.run([str(CLI), "batch", str(items), "--fast", "--model", model, "--threads", str(args.cpus)],
                           capture_output=True, text=True, env=dict(os.environ, LIBRA_EDGE_HOME=str(local_home)))
    local_wall = time.perf_counter() - t
    if local.returncode != 0:
        print(local.stderr, file=sys.stderr)
        return 1
    local_rate, n_local = steady_rate(local_home / "libra-edge.db")

    cluster_home = work / "cluster"
    plan = {"out": str(work / "harness.json"), "db": str(cluster_home / "libra-edge.db"), "port": 6393,
            "head_cpus": args.cpus, "worker": False, "head_env": {"LIBRA_EDGE_HOME": str(cluster_home)},
            "steps": [{"name": "cluster", "env": {"LIBRA_EDGE_HOME": str(cluster_home)},
                       "argv": ["batch", str(items), "--fast", "--model", model, "--cluster", "ray={address}",
                                "--cpus-per-actor", str(args.cpus), "--actors", "1"]}]}
    (work / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    harness = subprocess.run(["unshare", "-n", sys.executable, str(ROOT / "tests" / "cluster_harness.py"),
                              str(work / "plan.json")], capture_output=True, text=True)
    if harness.returncode != 0:
        print(harness.stderr[-3000:], file=sys.stderr)
        return 1
    step = json.loads((work / "harness.json").read_text(encoding="utf-8"))["steps"][0]
    if step["rc"] != 0:
        print(step["stderr"], file=sys.stderr)
        return 1
    cluster_rate, n_cluster = steady_rate(cluster_home / "libra-edge.db")
    commits = commit_rate()

    print(f"model {Path(model).name}, {args.n} items, --fast, {args.cpus} threads")
    print(f"local     {local_rate:.3f} items/s steady ({n_local} items; command {local_wall:.0f} s)")
    print(f"cluster   {cluster_rate:.3f} items/s steady ({n_cluster} items; command {step['elapsed_s']:.0f} s, "
          "one actor, one node)")
    print(f"ratio     {cluster_rate / local_rate:.3f} of local")
    print(f"driver    {commits:.0f} verdicts committed/s (SQLite, one transaction each)")
    print(f"nodes the driver keeps up with at this per-actor rate: about {commits / cluster_rate:.0f} actors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
