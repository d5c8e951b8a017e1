"""Input and `-o` problems are found before the model loads: one line, exit 4, in well under a second.

Every command here names a model file that is not a GGUF: had the command opened it, it
would exit 3 saying so. Exit 4 with the input's message proves the model was never
touched; the child's CPU time proves nothing slow ran (wall time on a shared machine
says more about the other processes than about this one).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge.errors import ExitCode
from libra_edge.store import open_store

Make = Callable[..., Path]


@pytest.fixture
def bogus_model(tmp_path: Path) -> Path:
    """A file named like a model that is not one: opening it is a model error (exit 3)."""
    path = tmp_path / "not-a-model.gguf"
    path.write_bytes(b"this is not a GGUF file\n" * 1000)
    return path


def timed(cmd: list[str], env: dict[str, str], *, stdin: int | None = subprocess.DEVNULL,
          cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run `cmd`; (result, wall seconds, the child's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=stdin, timeout=60, cwd=cwd)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def one_input_error(proc: subprocess.CompletedProcess[str], wall: float, cpu: float) -> str:
    """The single `libra-edge: error:` line of an input problem found before any work."""
    assert proc.returncode == ExitCode.INPUT, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("libra-edge: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not-a-model.gguf" not in proc.stderr  # the model was never looked at
    assert cpu < 1.0, f"{cpu:.2f} CPU seconds before an input error"
    assert wall < 10.0
    return lines[0]


def runs_in(home: Path) -> int:
    db = home / "libra-edge.db"
    if not db.exists():
        return 0
    with open_store(db) as store:
        return len(store.runs())


@pytest.mark.parametrize("case", ["empty", "blank lines", "no records", "unreadable", "missing",
                                  "unknown format", "wrong format", "empty folder"])
def test_batch_reports_an_input_problem_before_the_model_loads_with_exit_4(
    case: str, cli: list[str], cli_env: dict[str, str], bogus_model: Path, tmp_path: Path, isolated_home: Path,
) -> None:
    # Was: an empty file loaded the model (28.8 s with the 0.5B), then "no items to check", exit 2.
    src = {
        "empty": tmp_path / "empty.jsonl",
        "blank lines": tmp_path / "blank.jsonl",
        "no records": tmp_path / "none.json",
        "unreadable": tmp_path / "gbk.jsonl",
        "missing": tmp_path / "nowhere.jsonl",
        "unknown format": tmp_path / "notes.txt",
        "wrong format": tmp_path / "pairs.jsonl",
        "empty folder": tmp_path / "logs",
    }[case]
    extra: list[str] = []
    if case == "empty":
        src.write_bytes(b"")
    elif case == "blank lines":
        src.write_text("\n\n  \n", encoding="utf-8")
    elif case == "no records":
        src.write_text("[]", encoding="utf-8")
    elif case == "unreadable":
        src.write_bytes(json.dumps({"question": "问题", "response": "回答"}, ensure_ascii=False).encode("gb18030"))
    elif case == "unknown format":
        src.write_text("question: hello\nresponse: hi\n", encoding="utf-8")
    elif case == "wrong format":
        src.write_text('{"question": "q", "response": "r"}\n', encoding="utf-8")
        extra = ["--format", "messages"]
    elif case == "empty folder":
        src.mkdir()
        (src / "README").write_text("nothing here", encoding="utf-8")
    proc, wall, cpu = timed([*cli, "batch", "--model", str(bogus_model), str(src), *extra], cli_env)
    line = one_input_error(proc, wall, cpu)
    assert str(src) in line or "no items to check" in line, line
    assert runs_in(isolated_home) == 0


@pytest.mark.parametrize("where", ["missing folder", "unwritable folder", "a folder"])
def test_batch_refuses_a_bad_output_before_the_model_loads_with_exit_4(
    where: str, cli: list[str], cli_env: dict[str, str], bogus_model: Path, tmp_path: Path, isolated_home: Path,
) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"question": "q", "response": "r"}\n', encoding="utf-8")
    (tmp_path / "dir.jsonl").mkdir()
    out = {"missing folder": "nope/out.jsonl", "unwritable folder": "/proc/out.jsonl",
           "a folder": "dir.jsonl"}[where]
    proc, wall, cpu = timed([*cli, "batch", "--model", str(bogus_model), str(src), "-o", out], cli_env,
                            cwd=tmp_path)
    line = one_input_error(proc, wall, cpu)
    assert line.startswith(f"libra-edge: error: -o {out}: ")
    assert runs_in(isolated_home) == 0


def test_output_into_a_missing_folder_is_refused_unless_mkdir(
    cli: list[str], cli_env: dict[str, str], batch_model: Path, bogus_model: Path, tmp_path: Path,
    isolated_home: Path,
) -> None:
    # Was: `-o nope/out.jsonl` silently made the folder `nope` and ran the whole batch.
    src = tmp_path / "a.jsonl"
    src.write_text('{"question": "q", "response": "r"}\n', encoding="utf-8")
    proc, wall, cpu = timed([*cli, "batch", "--model", str(bogus_model), str(src), "-o", "nope/out.jsonl"],
                            cli_env, cwd=tmp_path)
    line = one_input_error(proc, wall, cpu)
    assert line == ("libra-edge: error: -o nope/out.jsonl: no such folder (pass --mkdir to create it)")
    assert not (tmp_path / "nope").exists() and runs_in(isolated_home) == 0
    # The same rule as `models export`: --mkdir creates it.
    made = subprocess.run([*cli, "batch", "--model", str(batch_model), "--threads", "1", "--ctx", "1024",
                           "--max-tokens", "8", "--fast", str(src), "-o", "nope/deeper/out.jsonl", "--mkdir"],
                          capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr
    rows = (tmp_path / "nope" / "deeper" / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["response"] for r in rows] == ["r"]


@pytest.mark.parametrize("stdin", ["", "   \n", "not json", "[1, 2]", '{"question": "q"}'])
def test_check_reports_bad_stdin_before_the_model_loads_with_exit_4(
    stdin: str, cli: list[str], cli_env: dict[str, str], bogus_model: Path, tmp_path: Path,
) -> None:
    feed = tmp_path / "stdin.txt"
    feed.write_text(stdin, encoding="utf-8")
    with open(feed, "rb") as fh:
        proc, wall, cpu = timed([*cli, "check", "--model", str(bogus_model), "--json"], cli_env, stdin=fh.fileno())
    line = one_input_error(proc, wall, cpu)
    assert line.startswith("libra-edge: error: stdin: ")
    if not stdin.strip():
        assert "stdin: empty: nothing to check" in line
    assert proc.stdout == ""
