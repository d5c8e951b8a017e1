"""Reproducible verdicts: the same pair gets the same score however, and after whatever, it ran.

The score must be a function of (model file, pair, verdict settings) alone. Each test
judges the same 20 pairs several ways and compares the float64 scores bit for bit.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from libra_edge.engine import Guard, header_state

pytestmark = pytest.mark.slow

CTX = "1024"
COMMON = ["--ctx", CTX, "--threads", "2"]  # scores do not depend on threads (tested below)


def _pairs(reference_dir: Path) -> list[dict[str, str]]:
    """20 pairs from the sample set: three repeat an earlier question with another response."""
    items = json.loads((reference_dir / "libra" / "sample_libra_test.json").read_text(encoding="utf-8"))
    pairs = [{"id": it["id"], "question": it["question"], "response": it["response"]} for it in items[:17]]
    for n, (src, response) in enumerate([(2, "当然可以，具体做法如下。"), (5, "我不能回答这个问题。"), (9, "好的")]):
        pairs.insert(src + 1 + n, {"id": f"rep-{n}", "question": pairs[src]["question"], "response": response})
    assert len(pairs) == 20
    return pairs


def _write(path: Path, pairs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


def _scores(out: Path) -> dict[str, tuple[float, str]]:
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: (r["verdict"]["score"], r["verdict"]["label"]) for r in rows if "verdict" in r}


def _batch(cli: list[str], env: dict[str, str], model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli, "batch", *args, "-m", str(model), *COMMON], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


def _resumed(cli: list[str], env: dict[str, str], model: Path, src: Path, out: Path, home: Path) -> dict[str, tuple[float, str]]:
    """A --parallel 2 run killed after a few verdicts, then resumed with the printed hint's options."""
    db = home / "libra-edge.db"
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM runs").fetchone()[0]
    proc = subprocess.Popen([*cli, "batch", str(src), "--new-run", "--parallel", "2", "--max-tokens", "64",
                             "-m", str(model), *COMMON], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if proc.poll() is not None:
            break
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                done = conn.execute("SELECT count(*) FROM results WHERE run_id > ?", (before,)).fetchone()[0]
        except sqlite3.Error:
            continue
        if done >= 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("SELECT max(id) FROM runs").fetchone()[0]
        assert run_id > before
        assert 3 <= conn.execute("SELECT count(*) FROM results WHERE run_id = ?", (run_id,)).fetchone()[0] < 20
    _batch(cli, env, model, "--resume", str(run_id), "-o", str(out))
    return _scores(out)


def _check_each(cli: list[str], env: dict[str, str], model: Path, pairs: list[dict[str, str]]) -> dict[str, tuple[float, str]]:
    got = {}
    for p in pairs:
        proc = subprocess.run([*cli, "check", "--fast", "--json", "-q", p["question"], "-r", p["response"],
                               "-m", str(model), *COMMON], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, 1), proc.stderr
        v = json.loads(proc.stdout)
        got[p["id"]] = (v["score"], v["label"])
    return got


@pytest.mark.parametrize("model_fixture", ["tiny_qwen_q8_gguf", "smollm2_gguf"])
def test_five_ways_give_bit_identical_scores(
    model_fixture: str, request: pytest.FixtureRequest, reference_dir: Path, tmp_path: Path,
    cli: list[str], cli_env: dict[str, str], isolated_home: Path,
) -> None:
    model: Path = request.getfixturevalue(model_fixture)
    pairs = _pairs(reference_dir)
    src = _write(tmp_path / "in.jsonl", pairs)
    shuffled = pairs[:]
    random.Random(7).shuffle(shuffled)

    ways = {"check, one process each": _check_each(cli, cli_env, model, pairs)}
    _batch(cli, cli_env, model, str(src), "--fast", "-o", str(tmp_path / "order.jsonl"))
    ways["batch, input order"] = _scores(tmp_path / "order.jsonl")
    rev = _write(tmp_path / "rev.jsonl", pairs[::-1])
    _batch(cli, cli_env, model, str(rev), "--fast", "-o", str(tmp_path / "rev-out.jsonl"))
    ways["batch, reversed"] = _scores(tmp_path / "rev-out.jsonl")
    shuf = _write(tmp_path / "shuf.jsonl", shuffled)
    _batch(cli, cli_env, model, str(shuf), "--fast", "-o", str(tmp_path / "shuf-out.jsonl"))
    ways["batch, shuffled"] = _scores(tmp_path / "shuf-out.jsonl")
    _batch(cli, cli_env, model, str(src), "--new-run", "--parallel", "3", "--max-tokens", "6",
           "-o", str(tmp_path / "par.jsonl"))
    ways["batch --parallel 3, with analyses"] = _scores(tmp_path / "par.jsonl")
    ways["killed and resumed"] = _resumed(cli, cli_env, model, src, tmp_path / "resumed.jsonl", isolated_home)
    # The header-state cache: the checks above restored the state the first one saved (one
    # file per sequence count); without it every process computes the header again.
    assert len(list((isolated_home / "state").glob("*.bin"))) == 3  # 1, 3 and 2 sequences
    no_cache = {**cli_env, header_state.DISABLE_ENV: "1"}
    _batch(cli, no_cache, model, str(src), "--new-run", "--fast", "-o", str(tmp_path / "nocache.jsonl"))
    ways["batch, header-state cache off"] = _scores(tmp_path / "nocache.jsonl")
    _batch(cli, no_cache, model, str(src), "--new-run", "--parallel", "3", "--max-tokens", "6",
           "-o", str(tmp_path / "nocache-par.jsonl"))
    ways["batch --parallel 3, with analyses, header-state cache off"] = _scores(tmp_path / "nocache-par.jsonl")

    reference = ways["check, one process each"]
    assert set(reference) == {p["id"] for p in pairs}
    for name, got in ways.items():
        # Compared as float64 bits (the hex of each score), not within a tolerance.
        assert {k: (float(v[0]).hex(), v[1]) for k, v in got.items()} == {
            k: (float(v[0]).hex(), v[1]) for k, v in reference.items()}, f"{name} differs from check: " + ", ".join(
            f"{k}: {got.get(k)} vs {v}" for k, v in reference.items() if got.get(k) != v)


def test_layouts_differ_between_neighbours_yet_scores_do_not(tiny_qwen_q8_gguf: Path, reference_dir: Path) -> None:
    """The random model answers in varied JSON layouts; a previous layout never leaks into a score."""
    pairs = [(p["question"], p["response"]) for p in _pairs(reference_dir)]
    with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=1024, threads=1, max_new_tokens=4) as guard:
        forward = [guard.check(q, r, analysis=False) for q, r in pairs]
        backward = [guard.check(q, r, analysis=False) for q, r in pairs[::-1]][::-1]
        full = [guard.check(q, r) for q, r in pairs]
    openings = {v.raw.split(v.label)[0] for v in forward}
    assert len(openings) >= 2, "the test needs neighbours that answered in different layouts"
    assert [v.score for v in forward] == [v.score for v in backward] == [v.score for v in full]
    assert [v.label for v in forward] == [v.label for v in full]


def test_threads_sharing_one_guard_match_one_thread_and_never_interleave(tiny_qwen_q8_gguf: Path, reference_dir: Path) -> None:
    pairs = [(p["question"], p["response"]) for p in _pairs(reference_dir)][:8]
    with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=1024, threads=1, max_new_tokens=6) as guard:
        alone = [guard.check(q, r) for q, r in pairs]
        results: dict[int, object] = {}
        active = 0
        overlap = []
        lock = threading.Lock()

        def work(indices: list[int]) -> None:
            nonlocal active
            for i in indices:
                def on_text(_piece: str) -> None:
                    overlap.append(active)
                with lock:
                    active += 1
                try:
                    results[i] = guard.check(*pairs[i], on_text=on_text)
                finally:
                    with lock:
                        active -= 1

        threads = [threading.Thread(target=work, args=([i for i in range(len(pairs)) if i % 2 == k],)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(len(pairs))] == alone  # Verdict equality: label, score, text
    assert overlap, "the analyses streamed"


def test_scores_do_not_depend_on_the_thread_count(tiny_qwen_q8_gguf: Path, reference_dir: Path) -> None:
    pairs = [(p["question"], p["response"]) for p in _pairs(reference_dir)][:6]
    scores = []
    for threads in (1, 2):
        with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=1024, threads=threads) as guard:
            scores.append([guard.check(q, r, analysis=False).score for q, r in pairs])
    assert scores[0] == scores[1]


def test_scores_do_not_depend_on_how_the_threads_wait(
    cli: list[str], cli_env: dict[str, str], tiny_qwen_q8_gguf: Path, reference_dir: Path, tmp_path: Path,
) -> None:
    # The thread policy (engine/threads.py) picks the count and libgomp's wait; neither may
    # move a score. Each way in a fresh process: libgomp reads its policy when it loads.
    src = _write(tmp_path / "pairs.jsonl", _pairs(reference_dir)[:8])
    omp = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
    base = {k: v for k, v in cli_env.items() if k not in omp}
    ways = [("1", {}), ("2", {}), ("2", {"OMP_WAIT_POLICY": "PASSIVE"}), ("2", {"GOMP_SPINCOUNT": "300000"})]
    runs = []
    for n, (threads, env) in enumerate(ways):
        out = tmp_path / f"way{n}.jsonl"
        proc = subprocess.run([*cli, "batch", str(src), "--fast", "-m", str(tiny_qwen_q8_gguf), "--ctx", CTX,
                               "--threads", threads, "-o", str(out)],
                              env=base | env | {"LIBRA_EDGE_HOME": str(tmp_path / f"home{n}")},  # a fresh run each
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        runs.append(_scores(out))
    assert len(runs[0]) == 8
    assert all(run == runs[0] for run in runs[1:])
