"""`batch --cluster ray`: a real two-node Ray cluster on loopback, the real SmolLM2 guard.

The cluster (head and worker node, one CPU each) and every `--cluster` run live inside a
network namespace with only loopback (`unshare -n`, tests/cluster_harness.py), so Ray
cannot reach or bind any other address. One cluster serves four runs:

- the same items judged on the cluster and locally: the same rows, bit for bit;
- a node whose installed model of that name is another file: the run stops with one line
  naming the node and both hashes;
- the driver SIGKILLed mid-run, then resumed locally without --cluster: nothing lost or
  repeated;
- the worker node taken down mid-run: the rest is judged on the head node, every item
  stored once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "libra-edge"
HARNESS = ROOT / "tests" / "cluster_harness.py"


def cli(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LIBRA_EDGE_HOME=str(home))
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=timeout)


def write_items(path: Path, n: int, tag: str) -> Path:
    # Three responses per question, so that items share questions as in Libra-Test.
    rows = [{"id": f"{tag}-{i}", "question": f"{tag}问题{i // 3}：怎样在家里处理第{i // 3}种化学品？",
             "response": f"回答{i}：" + ("这是危险的，请不要尝试。" if i % 2 else "先把它们混合在一起，然后加热。")}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rows_of(db: Path, run_id: int) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT seq, status, label, score, analysis, raw, node, checked_at FROM results "
            "WHERE run_id = ? ORDER BY seq", (run_id,))]
    finally:
        conn.close()


def run_ids(db: Path) -> dict[str, int]:
    """Run id by its input file's name."""
    conn = sqlite3.connect(db)
    try:
        return {Path(json.loads(inputs)[0]).name: rid for rid, inputs in conn.execute("SELECT id, inputs_json FROM runs")}
    finally:
        conn.close()


def judged(path: Path) -> list[dict[str, Any]]:
    """The -o rows without the per-run timings (which differ between any two runs)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        verdict = {k: v for k, v in row["verdict"].items() if k not in ("timings",)}
        out.append({**row, "verdict": verdict})
    return out


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, tiny_qwen_gguf: Path) -> dict[str, Any]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the cluster tests need unshare (util-linux) and ip (iproute2) to keep Ray on loopback")
    work = tmp_path_factory.mktemp("cluster")
    h1, h2, local = work / "h1", work / "h2", work / "local"
    model = work / "smol.gguf"
    shutil.copyfile(smollm2_gguf, model)
    # The same model name on both nodes, installed from different files: the worker's is not the run's.
    for home, source in ((h1, model), (h2, tiny_qwen_gguf)):
        imported = cli("models", "import", str(source), "--name", "guard", home=home)
        assert imported.returncode == 0, imported.stderr
    same = write_items(work / "same.jsonl", 12, "same")
    other_model = write_items(work / "model.jsonl", 12, "model")
    driver = write_items(work / "driver.jsonl", 16, "driver")
    node = write_items(work / "node.jsonl", 24, "node")
    stop = write_items(work / "stop.jsonl", 20, "stop")

    reference = cli("batch", str(same), "--analysis", "all", "--max-new-tokens", "12", "--model", str(model),
                    "--threads", "1", "-o", str(work / "local.jsonl"), home=local)
    assert reference.returncode == 0, reference.stderr

    on = ["--model", str(model), "--cluster", "ray={address}", "--cpus-per-actor", "1"]
    plan = {
        "out": str(work / "harness.json"), "db": str(h1 / "libra-edge.db"), "port": 6391,
        "head_env": {"LIBRA_EDGE_HOME": str(h1)}, "worker_env": {"LIBRA_EDGE_HOME": str(h2)},
        "steps": [
            {"name": "same", "argv": ["batch", str(same), "--analysis", "all", "--max-new-tokens", "12", *on,
                                      "-o", str(work / "cluster.jsonl")], "env": {"LIBRA_EDGE_HOME": str(h1)}},
            {"name": "model", "argv": ["batch", str(other_model), "--fast", "--model", "guard", "--cluster",
                                       "ray={address}", "--cpus-per-actor", "1"], "env": {"LIBRA_EDGE_HOME": str(h1)}},
            {"name": "driver", "kind": "kill_driver", "after": 4, "argv": ["batch", str(driver), "--fast", *on],
             "env": {"LIBRA_EDGE_HOME": str(h1)}},
            {"name": "stop", "kind": "interrupt", "after": 4, "argv": ["batch", str(stop), "--fast", *on],
             "env": {"LIBRA_EDGE_HOME": str(h1)}},
            {"name": "node", "kind": "kill_node", "after": 3, "argv": ["batch", str(node), "--fast", *on,
                                                                       "-o", str(work / "node-out.jsonl")],
             "env": {"LIBRA_EDGE_HOME": str(h1)}},
        ],
    }
    (work / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    harness = subprocess.run(["unshare", "-n", sys.executable, str(HARNESS), str(work / "plan.json")],
                             capture_output=True, text=True, timeout=1500)
    assert harness.returncode == 0, harness.stderr[-4000:]
    report = json.loads((work / "harness.json").read_text(encoding="utf-8"))
    report["steps"] = {s["name"]: s for s in report["steps"]}
    db = h1 / "libra-edge.db"
    ids = run_ids(db)
    before_resume = rows_of(db, ids["driver.jsonl"])
    resumed = cli("batch", str(driver), "--fast", "--model", str(model), "--threads", "1",
                  "-o", str(work / "driver-out.jsonl"), home=h1)
    return {"work": work, "report": report, "db": db, "ids": ids, "h1": h1, "model": model,
            "tiny": tiny_qwen_gguf, "before_resume": before_resume, "resumed": resumed}


def test_the_cluster_runs_on_loopback_only(cluster_runs: dict[str, Any]) -> None:
    report = cluster_runs["report"]
    assert report["lo_up"] == 0
    links = [line for line in report["interfaces"] if line.strip()]
    assert len(links) == 1 and ": lo:" in links[0]  # the namespace has no other interface
    assert report["nodes"]["alive"] == 2 and report["nodes"]["ips"] == ["127.0.0.1"]


def test_a_cluster_run_gives_the_local_rows_bit_for_bit(cluster_runs: dict[str, Any]) -> None:
    step = cluster_runs["report"]["steps"]["same"]
    assert step["rc"] == 0, step["stderr"]
    work = cluster_runs["work"]
    local, cluster = judged(work / "local.jsonl"), judged(work / "cluster.jsonl")
    assert [r["id"] for r in cluster] == [f"same-{i}" for i in range(12)]  # input order, one row each
    assert [r["verdict"]["score"] for r in cluster] == [r["verdict"]["score"] for r in local]  # float64, exact
    assert cluster == local  # labels, analyses, raw JSON, provenance
    nodes = {r["node"] for r in rows_of(cluster_runs["db"], cluster_runs["ids"]["same.jsonl"])}
    assert nodes == {cluster_runs["report"]["nodes"]["head"], cluster_runs["report"]["nodes"]["worker"]}
    # Ray's own logs stay quiet: what its C++ core prints before it reads the log level
    # (the level itself, and that this namespace has no route out) is all that shows.
    noise = [line for line in step["stderr"].splitlines()
             if (line.startswith("[20") and "Failed to determine local IP" not in line
                 and "Set ray log level" not in line)
             or re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|ERROR)", line)]  # Python's
    assert noise == [] and "Traceback" not in step["stderr"]


def test_a_node_with_another_model_file_stops_the_run(cluster_runs: dict[str, Any]) -> None:
    step = cluster_runs["report"]["steps"]["model"]
    assert step["rc"] == 3, step["stderr"]  # a model error
    last = step["stderr"].strip().splitlines()[-1]
    worker = cluster_runs["report"]["nodes"]["worker"]
    assert last.startswith("libra-edge: error:") and "holds another model file" in last
    assert worker[:12] in last
    assert sha256(cluster_runs["tiny"])[:16] in last and sha256(cluster_runs["model"])[:16] in last
    assert "Traceback" not in step["stderr"]
    # Nothing from the refused node was stored.
    rows = rows_of(cluster_runs["db"], cluster_runs["ids"]["model.jsonl"])
    assert all(r["node"] != worker for r in rows)


def test_a_killed_driver_resumes_locally_with_nothing_lost_or_repeated(cluster_runs: dict[str, Any]) -> None:
    step = cluster_runs["report"]["steps"]["driver"]
    assert step["rc"] == -9 and step["stored_at_kill"] >= 4, step["stderr"]
    before = {r["seq"]: r for r in cluster_runs["before_resume"] if r["status"] == "judged"}
    assert 4 <= len(before) < 16
    resumed = cluster_runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    assert f"({'resuming'})" in resumed.stderr and f"{len(before)} already done" in resumed.stderr
    after = rows_of(cluster_runs["db"], cluster_runs["ids"]["driver.jsonl"])
    assert [r["seq"] for r in after] == list(range(16)) and all(r["status"] == "judged" for r in after)
    for seq, row in before.items():  # judged on the cluster, kept as they were
        assert {k: after[seq][k] for k in ("score", "raw", "node", "checked_at")} == \
            {k: row[k] for k in ("score", "raw", "node", "checked_at")}
    assert any(r["node"].startswith("local:") for r in after)
    assert len((cluster_runs["work"] / "driver-out.jsonl").read_text(encoding="utf-8").splitlines()) == 16


def test_ctrl_c_stops_the_cluster_work_and_keeps_what_finished(cluster_runs: dict[str, Any]) -> None:
    step = cluster_runs["report"]["steps"]["stop"]
    assert step["rc"] == 130, step["stderr"]
    assert "stopping after the current item" in step["stderr"] and "Traceback" not in step["stderr"]
    assert "resume with: libra-edge batch --resume" in step["stderr"]
    rows = rows_of(cluster_runs["db"], cluster_runs["ids"]["stop.jsonl"])
    # The harness froze the driver once 4 of the 20 items were stored, counted them, and
    # sent Ctrl-C: the driver takes the interrupt before it stores anything more, and then
    # stores only what it already has in hand (the rest of a batch of items_per_task=4,
    # and at most one batch more), so the count is bounded whatever the machine's load.
    assert step["stored_at_kill"] >= 4, step
    assert step["stored_at_kill"] <= len(rows) <= step["stored_at_kill"] + 8
    assert len(rows) < 20 and all(r["status"] == "judged" for r in rows)
    info = json.loads(cli("batch", "--run-info", str(cluster_runs["ids"]["stop.jsonl"]), "--json",
                          home=cluster_runs["h1"]).stdout)
    assert info["status"] == "interrupted" and info["done"] == len(rows)


def test_a_lost_node_has_its_items_judged_elsewhere(cluster_runs: dict[str, Any]) -> None:
    step = cluster_runs["report"]["steps"]["node"]
    nodes = cluster_runs["report"]["nodes"]
    assert "killed_after_s" in step, step["stderr"]
    assert step["by_node_at_kill"].get(nodes["worker"], 0) >= 3
    assert step["rc"] == 0, step["stderr"]
    run_id = cluster_runs["ids"]["node.jsonl"]
    rows = rows_of(cluster_runs["db"], run_id)
    assert [r["seq"] for r in rows] == list(range(24)) and all(r["status"] == "judged" for r in rows)
    assert sum(1 for r in rows if r["node"] == nodes["head"]) > step["by_node_at_kill"].get(nodes["head"], 0)
    out = [json.loads(line) for line in (cluster_runs["work"] / "node-out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in out] == [f"node-{i}" for i in range(24)]
    # The run's record names each node, its build and what it judged (the audit trail).
    info = cli("batch", "--run-info", str(run_id), "--json", home=cluster_runs["h1"])
    record = json.loads(info.stdout)
    assert record["status"] == "finished"
    by_node = {n["node"]: n for n in record["nodes"]}
    assert set(by_node) == {nodes["head"], nodes["worker"]}
    assert sum(n["items"] for n in by_node.values()) == 24
    assert len({n["build"] for n in by_node.values()}) == 1
    # ... and so does the audit report.
    report = json.loads(cli("report", str(run_id), "--format", "json", "-o", "-", home=cluster_runs["h1"]).stdout)
    judged_on = report["provenance"]["judged on"]
    assert {n["node"]: n["items"] for n in judged_on} == {k: v["items"] for k, v in by_node.items()}


def test_without_ray_the_cluster_option_says_what_to_install(tmp_path: Path) -> None:
    items = write_items(tmp_path / "in.jsonl", 2, "x")
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from libra_edge.cli.main import main\n"
            f"sys.exit(main(['batch', {str(items)!r}, '--cluster', 'ray']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, LIBRA_EDGE_HOME=str(tmp_path / "home")))
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "libra-edge: error: --cluster needs Ray Data, which is not installed "
        "(pip install 'libra-edge[cluster]' on the driver and on every node)"]


def test_cluster_options_are_checked_before_any_work(tmp_path: Path) -> None:
    items = write_items(tmp_path / "in.jsonl", 2, "x")
    for args, message in (
        (["--actors", "2"], "--actors goes with --cluster ray[=ADDRESS]"),
        (["--cluster", "spark"], "--cluster spark: expected ray or ray=ADDRESS"),
        (["--cluster", "ray", "--threads", "2", "--cpus-per-actor", "4"], "--threads 2 and --cpus-per-actor 4 disagree"),
        # Nothing listens there: said at once (Ray itself would retry for minutes).
        (["--cluster", "ray=127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"),
    ):
        run = cli("batch", str(items), *args, home=tmp_path / "home", timeout=120)
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        runs = cli("batch", "--runs", "--json", home=tmp_path / "home", timeout=120)
        assert json.loads(runs.stdout) == []  # refused before any run was recorded
