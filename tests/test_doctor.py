"""`libra-edge doctor`: its exit status says whether the smoke test passed (scripts gate on it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from libra_edge.errors import ExitCode


def doctor(cli: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, "doctor", "--threads", "1", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_smoke_test_that_cannot_run_exits_3(cli: list[str], cli_env: dict[str, str]) -> None:
    # Was exit 0: "smoke test: not run: no model installed" and a success status.
    result = doctor(cli, cli_env)
    assert result.returncode == ExitCode.MODEL, result.stdout + result.stderr
    assert "smoke test: not run: no model installed" in result.stdout
    result = doctor(cli, cli_env, "--json")
    assert result.returncode == ExitCode.MODEL
    smoke = json.loads(result.stdout)["smoke"]
    assert smoke["ran"] is False and "no model installed" in smoke["error"]


def test_skipping_the_smoke_test_exits_0(cli: list[str], cli_env: dict[str, str]) -> None:
    result = doctor(cli, cli_env, "--no-smoke")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "smoke test: skipped" in result.stdout


def test_the_exit_status_follows_the_smoke_verdicts(
    cli: list[str], cli_env: dict[str, str], tiny_qwen_gguf: Path,
) -> None:
    # A tiny random model: whatever it answers, exit 0 only if both built-in pairs came out right.
    result = doctor(cli, cli_env, "--model", str(tiny_qwen_gguf), "--json")
    smoke = json.loads(result.stdout)["smoke"]
    assert smoke["ran"], result.stderr
    passed = all(r["parsed"] and r["label"] == r["expected"] for r in smoke["results"])
    assert result.returncode == (ExitCode.OK if passed else ExitCode.MODEL)


def test_the_last_line_says_whether_the_smoke_test_passed(
    cli: list[str], cli_env: dict[str, str], tiny_qwen_gguf: Path,
) -> None:
    # Was: exit 3 with no closing word; the reader had to compare the rows themselves.
    cannot = doctor(cli, cli_env)
    assert cannot.stdout.strip().splitlines()[-1] == "smoke test FAILED: it could not run (exit 3; --no-smoke skips it)"
    ran = doctor(cli, cli_env, "--model", str(tiny_qwen_gguf))
    rows = [line for line in ran.stdout.splitlines() if line.startswith("  expected ")]
    wrong = sum(1 for row in rows if row.split()[1] != row.split()[3] or "UNPARSABLE" in row)
    last = ran.stdout.strip().splitlines()[-1]
    if ran.returncode == ExitCode.MODEL:
        assert last.startswith(f"smoke test FAILED: {wrong} of {len(rows)} built-in pairs judged wrongly")
    else:
        assert ran.returncode == ExitCode.OK and wrong == 0 and last == "smoke test passed"
