"""A two-node Ray cluster on loopback, and `libra-edge batch --cluster` runs against it.

Run by tests/test_cluster.py (and tests/benchmarks/bench_cluster.py) as

    unshare -n python tests/cluster_harness.py PLAN.json

inside a network namespace that has only loopback, so Ray (which otherwise binds the
machine's interface address) keeps every byte on 127.0.0.1 and the runs prove they need
nothing beyond the cluster. PLAN.json says which nodes to start (`head_cpus`, `worker`, `worker_cpus`, each node's
environment) and which steps to run; the harness runs them,
records what happened (exit codes, stderr, which node judged what) in PLAN.json's
"out" file, and takes the cluster down. It asserts nothing: the test does.

Steps (in the plan's order), each a `libra-edge batch` subprocess of the plan's argv:
  run          run to the end
  kill_node    start; once the worker node has stored `after` items, SIGTERM the worker
               node's `ray start --block` (its node goes down); run to the end
  kill_driver  start; once `after` items are stored, SIGKILL the driver
  interrupt    start; once `after` items are stored (on any node), freeze the driver
               (SIGSTOP), count what it stored, send it SIGINT (Ctrl-C) and let it go on
               (SIGCONT): the interrupt lands at a known count however busy the machine
               is (only the driver stores items, and a frozen driver stores none), and
               the items left are many more than it can still take in hand
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PYTHON = Path(sys.executable)
RAY = PYTHON.parent / "ray"
CLI = PYTHON.parent / "libra-edge"


def sh(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


def node_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"})
    env.update(extra)
    return env


def last_run(db: Path) -> int:
    """The newest run's id (0 when there is none yet)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def stored(db: Path, after_run: int) -> list[tuple[int, str | None]]:
    """(seq, node) of every judged row of runs newer than `after_run` (empty while there is none)."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [(r[0], r[1]) for r in conn.execute(
                "SELECT seq, node FROM results WHERE status = 'judged' AND run_id > ?", (after_run,))]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not migrated yet, or busy
        return []


def wait_nodes(address: str, n: int, timeout: float = 120) -> dict[str, str]:
    """Wait until N nodes are alive; {'head': id, 'worker': id}."""
    code = (
        "import json, ray, time\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        "t = time.time()\n"
        f"while len([x for x in ray.nodes() if x['Alive']]) < {n} and time.time() - t < {timeout}:\n"
        "    time.sleep(0.5)\n"
        "nodes = [x for x in ray.nodes() if x['Alive']]\n"
        "head = [x['NodeID'] for x in nodes if 'node:__internal_head__' in x['Resources']]\n"
        "other = [x['NodeID'] for x in nodes if 'node:__internal_head__' not in x['Resources']]\n"
        "print(json.dumps({'head': head[0] if head else None, 'worker': other[0] if other else None,"
        " 'alive': len(nodes), 'ips': sorted({x['NodeManagerAddress'] for x in nodes})}))\n"
    )
    out = sh(str(PYTHON), "-c", code, env=node_env({}), timeout=timeout + 60)
    if out.returncode != 0:
        raise RuntimeError(f"could not list the cluster's nodes: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out_path = Path(plan["out"])
    report: dict[str, Any] = {"steps": []}
    # Only loopback exists in this namespace: bring it up.
    up = sh("ip", "link", "set", "lo", "up")
    report["lo_up"] = up.returncode
    report["interfaces"] = sh("ip", "-o", "link").stdout.split("\n")
    port = int(plan.get("port", 6399))
    address = f"127.0.0.1:{port}"
    temp = Path(tempfile.mkdtemp(prefix="lr-", dir="/tmp"))  # short: Ray's socket paths are limited
    common = ["--object-store-memory", "100000000", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
              "--block"]
    n_nodes = 2 if plan.get("worker", True) else 1
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--port", str(port), "--include-dashboard", "false",
         "--temp-dir", str(temp), "--num-cpus", str(plan.get("head_cpus", 1)), *common],
        env=node_env(plan.get("head_env", {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    worker: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(3)
        if n_nodes == 2:
            worker = subprocess.Popen(
                [str(RAY), "start", "--address", address, "--num-cpus", str(plan.get("worker_cpus", 1)), *common],
                env=node_env(plan.get("worker_env", {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        nodes = wait_nodes(address, n_nodes)
        report["nodes"] = nodes
        for step in plan["steps"]:
            report["steps"].append(run_step(step, address, nodes, worker, Path(plan["db"])))
    finally:
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (worker, head):
            if proc is not None:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        sh(str(RAY), "stop", "--force", timeout=120)
        out_path.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def run_step(step: dict[str, Any], address: str, nodes: dict[str, str], worker: subprocess.Popen[bytes] | None,
             db: Path) -> dict[str, Any]:
    argv = [str(CLI), *[a.replace("{address}", address) for a in step["argv"]]]
    env = node_env(step.get("env", {}))
    before = last_run(db)  # the step's run is the one made after this
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict[str, Any] = {"name": step.get("name"), "argv": argv[1:]}
    kind = step.get("kind", "run")
    if kind in ("kill_node", "kill_driver", "interrupt"):
        after = int(step["after"])
        deadline = time.monotonic() + float(step.get("timeout", 600))
        while proc.poll() is None and time.monotonic() < deadline:
            rows = stored(db, before)
            mine = [r for r in rows if kind != "kill_node" or r[1] == nodes["worker"]]
            if len(mine) >= after:
                if kind == "interrupt":
                    proc.send_signal(signal.SIGSTOP)  # frozen: it stores nothing until SIGCONT
                    rows = stored(db, before)
                result["stored_at_kill"] = len(rows)
                result["by_node_at_kill"] = count_nodes(rows)
                if kind == "kill_node" and worker is not None:
                    worker.terminate()  # `ray start --block` takes its node down on SIGTERM
                    worker.wait(timeout=120)
                elif kind == "interrupt":
                    proc.send_signal(signal.SIGINT)  # Ctrl-C, pending until the driver runs again
                    proc.send_signal(signal.SIGCONT)
                else:
                    proc.kill()
                result["killed_after_s"] = round(time.monotonic() - t0, 1)
                break
            time.sleep(0.05)
    try:
        stdout, stderr = proc.communicate(timeout=float(step.get("timeout", 600)))
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        result["timed_out"] = True
    result.update(rc=proc.returncode, stdout=stdout[-4000:], stderr=stderr[-6000:],
                  elapsed_s=round(time.monotonic() - t0, 2), by_node=count_nodes(stored(db, before)))
    return result


def count_nodes(rows: list[tuple[int, str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _seq, node in rows:
        counts[node or "-"] = counts.get(node or "-", 0) + 1
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
