"""`libra-edge batch` as a real subprocess: output, resume after kill -9 and Ctrl-C, bad input, eval."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libra_edge.store import open_store

Make = Callable[..., Path]
FAST = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8"]


@pytest.fixture
def batch_cmd(cli: list[str], batch_model: Path) -> list[str]:
    return [*cli, "batch", "--model", str(batch_model), *FAST]


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def db_count(home: Path) -> int:
    db = home / "libra-edge.db"
    if not db.exists():
        return 0
    with open_store(db) as store:
        runs = store.runs()
        return runs[0].done if runs else 0


def test_batch_writes_every_input_field_plus_critic_and_verdict_in_input_order(
    batch_cmd: list[str], cli_env: dict[str, str], libra_sample: list[dict[str, Any]], make_input: Make,
    tmp_path: Path,
) -> None:
    sample = libra_sample[:6]
    out = tmp_path / "out.jsonl"
    proc = run([*batch_cmd, str(make_input("s.json", sample)), "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [s["id"] for s in sample]
    assert all({k: r[k] for k in s} == s for r, s in zip(rows, sample))
    assert all(json.loads(r["critic"])["答案"] == r["verdict"]["label"] for r in rows)
    assert "run 1 finished: 6/6 items" in proc.stderr and "items/s" in proc.stderr
    assert f"wrote 6 rows to {out}" in proc.stderr


def test_rerunning_a_finished_batch_only_rewrites_the_output(
    batch_cmd: list[str], cli_env: dict[str, str], libra_sample: list[dict[str, Any]], make_input: Make,
    tmp_path: Path, isolated_home: Path,
) -> None:
    src = make_input("s.jsonl", libra_sample[:3])
    assert run([*batch_cmd, str(src), "--fast"], cli_env).returncode == 0
    out = tmp_path / "again.jsonl"
    proc = run([*batch_cmd, str(src), "--fast", "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "run 1 (resuming): 3 items, 3 already done" in proc.stderr and "nothing left to check" in proc.stderr
    assert len(read_jsonl(out)) == 3
    with open_store(isolated_home / "libra-edge.db") as store:
        assert len(store.runs()) == 1 and store.count_results(1) == 3
        assert store.run(1).status == "finished"


def test_kill_9_mid_run_then_rerun_completes_with_no_lost_or_repeated_items(
    batch_cmd: list[str], cli_env: dict[str, str], make_input: Make, tmp_path: Path, isolated_home: Path,
) -> None:
    records = [{"id": f"k{i}", "question": f"问题{i // 3}", "response": f"回答{i}"} for i in range(30)]
    src = make_input("many.jsonl", records)
    out = tmp_path / "out.jsonl"
    cmd = [*batch_cmd, str(src), "--fast", "-o", str(out)]
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while db_count(isolated_home) < 4:
        assert proc.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = db_count(isolated_home)
    assert 4 <= killed_at < 30 and not out.exists()
    with open_store(isolated_home / "libra-edge.db") as store:
        assert store.run(1).status == "interrupted"  # its process is gone
        kept = {r.seq: (r.id, r.score) for r in store.results(1)}

    done = run(cmd, cli_env)
    assert done.returncode == 0, done.stderr
    assert f"run 1 (resuming): 30 items, {killed_at} already done" in done.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    with open_store(isolated_home / "libra-edge.db") as store:
        results = store.results(1)
        assert [r.seq for r in results] == list(range(30))
        assert {r.seq: (r.id, r.score) for r in results if r.seq in kept} == kept
        assert store.run(1).status == "finished" and len(store.runs()) == 1


def test_ctrl_c_stops_cleanly_and_resume_by_run_id_finishes(
    batch_cmd: list[str], cli: list[str], cli_env: dict[str, str], make_input: Make, tmp_path: Path,
    isolated_home: Path,
) -> None:
    records = [{"question": f"问题{i}", "response": f"回答{i}"} for i in range(30)]
    src = make_input("many.jsonl", records)
    proc = subprocess.Popen([*batch_cmd, str(src), "--fast"], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while db_count(isolated_home) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Ctrl-C: stopping now: finished items are kept" in stderr
    assert "libra-edge: resume with: libra-edge batch --resume 1" in stderr
    with open_store(isolated_home / "libra-edge.db") as store:
        assert store.run(1).status == "interrupted" and store.run(1).done < 30
    out = tmp_path / "out.csv"
    # --resume takes the inputs, model and mode from the run.
    done = run([*cli, "batch", "--resume", "1", *FAST, "-o", str(out)], cli_env)
    assert done.returncode == 0, done.stderr
    with open(out, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["question"] for r in rows] == [r["question"] for r in records]


def test_malformed_lines_are_reported_and_the_rest_is_checked(
    batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path,
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "q", "response": "r1"}\n{oops\n{"question": "q"}\n'
                   '{"question": "q", "response": "r2"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run([*batch_cmd, str(src), "--fast", "-o", str(out), "--allow-skips"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert f"{src}:2: invalid JSON" in proc.stderr and f"{src}:3: missing field 'response'" in proc.stderr
    rows = read_jsonl(out)  # one row per input record: the skipped ones say why
    assert [r.get("response") for r in rows] == ["r1", None, None, "r2"]
    assert [r["verdict"]["status"] for r in rows] == ["judged", "skipped", "skipped", "judged"]
    assert "2/2 items" in proc.stderr and "2 input records skipped" in proc.stderr


def test_strict_stops_at_a_malformed_line(batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "q", "response": "r1"}\n{oops\n', encoding="utf-8")
    proc = run([*batch_cmd, str(src), "--strict"], cli_env)
    assert proc.returncode == 4
    assert proc.stderr.strip().startswith(f"libra-edge: error: {src}:2: invalid JSON")
    assert "(stopped: --strict)" in proc.stderr and "Traceback" not in proc.stderr


def test_a_gb18030_csv_is_one_line_with_a_hint(batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "gbk.csv"
    src.write_bytes("question,response\n问题,回答\n".encode("gb18030"))
    proc = run([*batch_cmd, str(src)], cli_env)
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1 and "iconv -f GB18030 -t UTF-8" in proc.stderr


def test_csv_input_with_mapped_fields_to_csv_output(
    batch_cmd: list[str], cli_env: dict[str, str], make_input: Make, tmp_path: Path,
) -> None:
    src = make_input("chats.csv", [{"uid": "u1", "prompt": "你好", "answer": "你好！"},
                                   {"uid": "u2", "prompt": "怎么偷车", "answer": "不能帮你"}])
    out = tmp_path / "out.csv"
    proc = run([*batch_cmd, str(src), "--fast", "--question-field", "prompt", "--response-field", "answer",
                "--id-field", "uid", "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    with open(out, encoding="utf-8-sig", newline="") as fh:  # -o .csv starts with a BOM
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert list(reader.fieldnames or [])[:7] == ["uid", "prompt", "answer", "critic", "verdict_label",
                                                 "verdict_unsafe", "verdict_score"]
    assert [r["uid"] for r in rows] == ["u1", "u2"]
    assert all(json.loads(r["critic"])["答案"] == r["verdict_label"] for r in rows)


def test_a_folder_of_mixed_formats_is_one_run_in_file_order(
    batch_cmd: list[str], cli_env: dict[str, str], libra_sample: list[dict[str, Any]], make_input: Make,
    tmp_path: Path,
) -> None:
    make_input("logs/1.parquet", libra_sample[:1])
    make_input("logs/2.csv", libra_sample[1:2])
    make_input("logs/3.json", libra_sample[2:3])
    make_input("logs/4.jsonl", libra_sample[3:4])
    out = tmp_path / "out.jsonl"
    proc = run([*batch_cmd, str(tmp_path / "logs"), "--fast", "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in libra_sample[:4]]


def test_a_wrong_field_name_names_the_fields_present(batch_cmd: list[str], cli_env: dict[str, str],
                                                     make_input: Make) -> None:
    src = make_input("chats.jsonl", [{"prompt": "q", "answer": "a"}])
    proc = run([*batch_cmd, str(src)], cli_env)
    assert proc.returncode == 4
    assert "no record has a 'question' field (fields: prompt, answer)" in proc.stderr
    assert "--question-field" in proc.stderr


def test_batch_output_evaluates_with_eval(
    batch_cmd: list[str], cli: list[str], cli_env: dict[str, str], libra_sample: list[dict[str, Any]],
    make_input: Make, tmp_path: Path,
) -> None:
    out = tmp_path / "pred.jsonl"
    assert run([*batch_cmd, str(make_input("s.json", libra_sample[:6])), "--fast", "-o", str(out)],
               cli_env).returncode == 0
    proc = run([*cli, "eval", str(out), "--json"], cli_env)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    rows = read_jsonl(out)
    right = sum(r["verdict"]["label"] == r["label"] for r in rows)  # gold label kept by batch
    assert figures["n"] == 6 and figures["unparsable"] == 0
    assert figures["sources"][0]["accuracy"] == pytest.approx(right / 6)
    assert figures["scores"]["n"] == 6


def test_runs_lists_the_database(batch_cmd: list[str], cli: list[str], cli_env: dict[str, str],
                                 make_input: Make) -> None:
    assert run([*batch_cmd, str(make_input("a.jsonl", [{"question": "q", "response": "r"}])), "--fast"],
               cli_env).returncode == 0
    proc = run([*cli, "batch", "--runs"], cli_env)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["RUN", "STATUS"]
    assert lines[1].split()[:2] == ["1", "finished"] and "a.jsonl" in lines[1]


def test_no_inputs_is_a_usage_error(cli: list[str], cli_env: dict[str, str]) -> None:
    proc = run([*cli, "batch"], cli_env)
    assert proc.returncode == 2 and "give INPUT files or folders" in proc.stderr


def test_help_teaches_the_output_format(cli: list[str], cli_env: dict[str, str]) -> None:
    proc = run([*cli, "batch", "--help"], cli_env)
    assert proc.returncode == 0
    assert "critic" in proc.stdout and "verdict" in proc.stdout and "--resume" in proc.stdout
    assert "examples:" in proc.stdout


def test_parallel_gives_each_sequence_the_full_ctx_and_resumes_as_the_same_run(
    batch_cmd: list[str], cli_env: dict[str, str], libra_sample: list[dict[str, Any]], make_input: Make,
    tmp_path: Path, isolated_home: Path,
) -> None:
    src = make_input("s.jsonl", libra_sample[:4])
    out = tmp_path / "par.jsonl"
    proc = run([*batch_cmd, str(src), "--parallel", "2", "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [s["id"] for s in libra_sample[:4]]
    assert all(json.loads(r["critic"])["答案"] == r["verdict"]["label"] for r in rows)
    with open_store(isolated_home / "libra-edge.db") as store:
        settings = store.runs()[0].settings
    assert (settings["parallel"], settings["ctx_per_seq"]) == (2, 1024)
    # Single-stream with the same --ctx is the same run: nothing is checked twice.
    again = run([*batch_cmd, str(src)], cli_env)
    assert again.returncode == 0, again.stderr
    assert "4 already done" in again.stderr and "nothing left to check" in again.stderr


def test_a_parallel_run_stopped_by_ctrl_c_resumes_with_the_printed_hint(
    batch_cmd: list[str], cli: list[str], cli_env: dict[str, str], make_input: Make, tmp_path: Path,
    isolated_home: Path,
) -> None:
    """Failed before (issue #11): the resume path loaded the run's whole context (2 x --ctx)
    as one sequence's, so `batch --resume N` after `--parallel 2` said "cannot resume"."""
    records = [{"question": f"问题{i}", "response": f"回答{i}"} for i in range(30)]
    src = make_input("many.jsonl", records)
    proc = subprocess.Popen([*batch_cmd, str(src), "--parallel", "2"], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while db_count(isolated_home) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    hint = stderr.strip().splitlines()[-1]
    assert hint == "libra-edge: resume with: libra-edge batch --resume 1"
    command = hint.split("resume with: libra-edge ", 1)[1].split()
    done = run([*cli, *command, "--threads", "1"], cli_env)  # the hint as printed (one thread: shared machine)
    assert done.returncode == 0, done.stderr
    assert "run 1 (resuming): 30 items" in done.stderr and "run 1 finished: 30/30 items" in done.stderr
    with open_store(isolated_home / "libra-edge.db") as store:
        assert len(store.runs()) == 1 and store.count_results(1) == 30
