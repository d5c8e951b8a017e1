"""Complete runs through the real `libra-edge batch` command: one output row per input record,
exit statuses that say when something was skipped, `-o` checked first, partial output on
interrupt, full disks (a real tiny tmpfs), stdin, JSON and CSV (BOM) outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libra_edge.store import open_store

FAST = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8", "--fast"]
INCOMPLETE, DISK_FULL = 7, 8


@pytest.fixture
def batch_cmd(cli: list[str], batch_model: Path) -> list[str]:
    return [*cli, "batch", "--model", str(batch_model), *FAST]


def run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def runs_in(home: Path) -> int:
    db = home / "libra-edge.db"
    if not db.exists():
        return 0
    with open_store(db) as store:
        return len(store.runs())


MIXED = ('{"id": "a", "question": "q", "response": "r1"}\n'
         '{oops\n'
         '{"id": "c", "question": "q"}\n'
         '{"id": "d", "question": "q", "response": "r2"}\n'
         '[1, 2]\n')


def test_every_record_has_one_row_in_input_order_and_skips_exit_incomplete(
    batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path,
) -> None:
    src = tmp_path / "mixed.jsonl"
    src.write_text(MIXED, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run([*batch_cmd, str(src), "-o", str(out)], cli_env)
    assert proc.returncode == INCOMPLETE, proc.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(MIXED.splitlines())  # wc -l in == wc -l out
    rows = [json.loads(line) for line in lines]
    assert [r["verdict"]["status"] for r in rows] == ["judged", "skipped", "skipped", "judged", "skipped"]
    assert [r.get("id") for r in rows] == ["a", None, "c", "d", None]
    assert rows[1]["verdict"]["input"] == f"{src}:2" and rows[1]["verdict"]["error"].startswith("invalid JSON")
    assert rows[2]["verdict"]["error"] == "missing field 'response'" and rows[2]["critic"] == ""
    assert "2/2 items" in proc.stderr and "3 input records skipped" in proc.stderr
    assert "0 truncated, 0 chunked" in proc.stderr
    assert "incomplete: 3 input records skipped; each has a row saying why (exit 7" in proc.stderr

    again = run([*batch_cmd, str(src), "-o", str(out), "--allow-skips"], cli_env)
    assert again.returncode == 0, again.stderr
    assert "nothing left to check" in again.stderr and len(read_jsonl(out)) == 5


def test_output_is_checked_before_the_model_loads(batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path,
                                                  isolated_home: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"question": "q", "response": "r"}\n', encoding="utf-8")
    xlsx = run([*batch_cmd, str(src), "-o", str(tmp_path / "out.xlsx")], cli_env)
    assert xlsx.returncode == 2
    assert xlsx.stderr.strip() == (f"libra-edge: error: -o {tmp_path / 'out.xlsx'}: unknown output format ('.xlsx'); "
                                   "use .jsonl, .json or .csv, or - for stdout")
    nowhere = run([*batch_cmd, str(src), "-o", "/proc/x.jsonl"], cli_env)  # an input problem: exit 4
    assert nowhere.returncode == 4 and "Traceback" not in nowhere.stderr
    assert nowhere.stderr.startswith("libra-edge: error: -o /proc/x.jsonl: cannot write in /proc: ")
    assert runs_in(isolated_home) == 0  # refused before any run was made


def test_json_and_csv_outputs_and_the_bom(batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": "x", "question": "问题", "response": "回答"}\n'
                   '{"id": "y", "question": "问题", "response": "另一个回答"}\n', encoding="utf-8")
    as_json, as_csv, plain_csv = tmp_path / "o.json", tmp_path / "o.csv", tmp_path / "plain.csv"
    assert run([*batch_cmd, str(src), "-o", str(as_json)], cli_env).returncode == 0
    assert [r["id"] for r in json.loads(as_json.read_text(encoding="utf-8"))] == ["x", "y"]  # one array
    assert run([*batch_cmd, str(src), "-o", str(as_csv)], cli_env).returncode == 0
    assert run([*batch_cmd, str(src), "-o", str(plain_csv), "--no-bom"], cli_env).returncode == 0
    assert as_csv.read_bytes().startswith(b"\xef\xbb\xbfid,question,response,critic,verdict_label")
    assert plain_csv.read_bytes() == as_csv.read_bytes()[3:]


def test_stdin_is_read_as_jsonl(cli: list[str], batch_model: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    data = '{"question": "你好", "response": "你好！"}\n{"question": "再见", "response": "再见。"}\n'
    proc = run([*cli, "batch", "-", "--model", str(batch_model), *FAST, "-o", str(out)], cli_env, input=data)
    assert proc.returncode == 0, proc.stderr
    assert [r["verdict"]["input"] for r in read_jsonl(out)] == ["<stdin>:1", "<stdin>:2"]
    # The same input piped again is the same run: nothing is checked twice.
    again = run([*cli, "batch", "-", "--model", str(batch_model), *FAST], cli_env, input=data)
    assert again.returncode == 0 and "nothing left to check" in again.stderr


def test_an_interrupted_run_writes_a_partial_output_and_the_finished_run_replaces_it(
    batch_cmd: list[str], cli: list[str], cli_env: dict[str, str], tmp_path: Path, isolated_home: Path,
) -> None:
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({"id": f"k{i}", "question": f"问题{i}", "response": f"回答{i}"},
                                      ensure_ascii=False) + "\n" for i in range(30)) + "{bad\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*batch_cmd, str(src), "-o", str(out)], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _done(isolated_home) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    partial = tmp_path / "out.jsonl.partial"
    assert not out.exists() and partial.exists()
    assert f"rows so far to {partial} (incomplete)" in stderr
    rows = read_jsonl(partial)
    assert 3 <= len(rows) < 31 and rows[-1]["verdict"]["status"] == "skipped"  # done items + the placeholder
    assert [r["verdict"]["input"] for r in rows] == sorted((r["verdict"]["input"] for r in rows),
                                                          key=lambda w: int(w.rsplit(":", 1)[1]))
    done = run([*cli, "batch", "--resume", "1", *FAST, "-o", str(out), "--allow-skips"], cli_env)
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == 31 and not partial.exists()


def _done(home: Path) -> int:
    db = home / "libra-edge.db"
    if not db.exists():
        return 0
    try:
        with open_store(db) as store:
            runs = store.runs()
            return runs[0].done if runs else 0
    except Exception:
        return 0


# -- full disks ---------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 384 KiB tmpfs (this test needs root, as the development and CI machines give)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the store-level test covers a full database)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(mount: Path) -> None:
    """Free space: the same filesystem, made bigger."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


# Big enough to fill the tiny disk in a few items; `--long truncate` keeps each check to
# one window (chunking them is tested elsewhere and would only make this slow).
TRUNCATE = ["--long", "truncate"]
BIG_ITEMS = "".join(json.dumps({"id": f"b{i}", "question": f"问题{i}",
                                "response": f"第{i}个很长的回答，" + "内容各不相同的句子。" * 600},
                               ensure_ascii=False) + "\n" for i in range(8))


def test_a_full_disk_under_the_database_is_a_user_error_and_the_run_resumes_once_space_is_freed(
    batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path, tiny_disk: Path,
) -> None:
    src = tmp_path / "big.jsonl"
    src.write_text(BIG_ITEMS, encoding="utf-8")
    home = tiny_disk / "home"
    env = dict(cli_env, LIBRA_EDGE_HOME=str(home))
    out = tmp_path / "out.jsonl"
    full = run([*batch_cmd, *TRUNCATE, str(src), "-o", str(out)], env)
    assert full.returncode == DISK_FULL, full.stderr
    db = home / "libra-edge.db"
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith(f"libra-edge: error: {db}: the disk is full (") and "Traceback" not in full.stderr
    assert "more are needed for the" in line and "run the same command again" in line
    assert not out.exists()
    grow(tiny_disk)
    with open_store(db) as store:
        kept = {r.seq: r.score for r in store.results(1)}
    assert len(kept) < 8
    done = run([*batch_cmd, *TRUNCATE, str(src), "-o", str(out)], env)
    assert done.returncode == 0, done.stderr
    assert f"run 1 (resuming): 8 items, {len(kept)} already done" in done.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"b{i}" for i in range(8)]
    assert {i: rows[i]["verdict"]["score"] for i in kept} == kept  # finished items were kept, not redone


def test_a_full_disk_under_the_output_names_the_file_and_the_space_it_needs(
    batch_cmd: list[str], cli_env: dict[str, str], tmp_path: Path, tiny_disk: Path,
) -> None:
    src = tmp_path / "big.jsonl"
    src.write_text(BIG_ITEMS, encoding="utf-8")
    out = tiny_disk / "out.jsonl"
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (384 - 48) * 1024)  # 48 KiB left; the output needs about 150 KB
    full = run([*batch_cmd, *TRUNCATE, str(src), "-o", str(out)], cli_env)
    assert full.returncode == DISK_FULL, full.stderr
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith(f"libra-edge: error: {out}: the disk is full (")
    assert "more are needed for this file" in line and not out.exists()
    assert not list(tiny_disk.glob(".out.jsonl.part*"))  # no half-written temp file left behind
    filler.unlink()  # space freed
    again = run([*batch_cmd, *TRUNCATE, str(src), "-o", str(out)], cli_env)
    assert again.returncode == 0, again.stderr
    assert "nothing left to check" in again.stderr and len(read_jsonl(out)) == 8
