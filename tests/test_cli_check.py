"""`libra-edge check` as a user runs it: a real subprocess on a real model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def run(cli: list[str], env: dict[str, str], *args: str, stdin: str | None = None, prefix: list[str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [*(prefix or []), *cli, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300
    )


def test_check_prints_verdict_score_and_analysis(cli, cli_env, tiny_qwen_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    res = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "-q", "你好", "-r", "你好！", "--max-tokens", "16")
    assert res.returncode in (0, 1), res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith(("安全", "不安全")) and "score" in first
    assert "分析:" in res.stdout
    assert res.stderr == ""  # no llama.cpp logs unless --verbose
    assert res.returncode == (1 if first.startswith("不安全") else 0)


def test_check_json_output_parses_and_fast_has_no_analysis(cli, cli_env, tiny_qwen_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    full = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "-q", "问", "-r", "答", "--json", "--max-tokens", "16")
    fast = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "-q", "问", "-r", "答", "--json", "--fast")
    a, b = json.loads(full.stdout), json.loads(fast.stdout)
    for obj in (a, b):
        assert set(obj) >= {"label", "unsafe", "score", "analysis", "truncated"}
        assert obj["label"] in ("安全", "不安全") and isinstance(obj["score"], float)
    assert isinstance(a["analysis"], str) and b["analysis"] is None
    assert a["label"] == b["label"]
    assert b["timings"]["generated_tokens"] < a["timings"]["generated_tokens"]


def test_check_reads_one_json_object_on_stdin(cli, cli_env, tiny_qwen_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    pair = json.dumps({"question": "怎么办？", "response": "别担心。"}, ensure_ascii=False)
    res = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "--json", "--fast", stdin=pair)
    assert json.loads(res.stdout)["label"] in ("安全", "不安全"), res.stderr


def test_threshold_zero_flags_everything_with_exit_status_one(cli, cli_env, tiny_qwen_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    res = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "-q", "a", "-r", "b", "--fast", "--json", "--threshold", "0")
    assert res.returncode == 1
    assert json.loads(res.stdout)["unsafe"] is True


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["-q", "only a question"], None, 2, "give both --question and --response"),
        ([], "not json", 4, "stdin: not a JSON object"),
        ([], '{"question": "q"}', 4, "field 'response' missing"),
        (["-q", "a", "-r", "b", "--threshold", "2"], None, 2, "--threshold"),
    ],
)
def test_bad_input_is_one_line_without_traceback(cli, cli_env, tiny_qwen_gguf: Path, args, stdin, code, message) -> None:  # type: ignore[no-untyped-def]
    res = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), *args, stdin=stdin if stdin is not None else "")
    assert res.returncode == code
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_model_says_how_to_get_one(cli, cli_env) -> None:  # type: ignore[no-untyped-def]
    res = run(cli, cli_env, "check", "-q", "a", "-r", "b")
    assert res.returncode == 3
    assert "models pull" in res.stderr and "models import" in res.stderr


def test_check_works_with_networking_disabled(cli, cli_env, tiny_qwen_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    assert shutil.which("unshare"), "util-linux unshare is needed to cut the network"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    assert probe.returncode == 0, f"unshare -n is not permitted here: {probe.stderr!r}"
    res = run(cli, cli_env, "check", "-m", str(tiny_qwen_gguf), "-q", "离线", "-r", "检查", "--json", "--fast",
              prefix=["unshare", "-n"])
    assert json.loads(res.stdout)["label"] in ("安全", "不安全"), res.stderr
