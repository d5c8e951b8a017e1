"""Help and output that say what the code does: `models pull --help` names every guard the
registry knows, and `bench` says which side is faster instead of printing a bare ratio."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from libra_edge.bench import speed_words
from libra_edge.models.registry import PUBLISHED_GUARDS


def test_models_pull_help_names_every_known_guard(cli: list[str], cli_env: dict[str, str]) -> None:
    done = subprocess.run([*cli, "models", "pull", "--help"], capture_output=True, text=True, env=cli_env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    listed = dict(re.findall(r"^  (libra-guard-\S+)\s+(\S+/\S+)$", done.stdout, flags=re.M))
    assert listed == {g.name: g.repo_id for g in PUBLISHED_GUARDS}
    assert len(listed) == 7 and {"libra-guard-yi-9b", "libra-guard-qwen-14b"} <= set(listed)
    assert "Known names (7):" in done.stdout


@pytest.mark.parametrize("ours, bare, words", [
    (100.0, 179.0, "libra-edge 1.79x slower"),
    (179.0, 100.0, "libra-edge 1.79x faster"),
    (100.0, 100.2, "libra-edge as fast"),
    (0.0, 100.0, "not comparable"),
])
def test_speed_words_say_which_side_is_faster(ours: float, bare: float, words: str) -> None:
    assert speed_words(ours, bare) == words


@pytest.mark.slow
def test_bench_says_which_side_is_faster(cli: list[str], cli_env: dict[str, str], tiny_qwen_gguf: Path) -> None:
    done = subprocess.run([*cli, "bench", "--model", str(tiny_qwen_gguf), "--pairs", "1", "--full-pairs", "1",
                           "--max-tokens", "4", "--short-cap", "2", "--threads", "1"],
                          capture_output=True, text=True, env=cli_env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ratio" not in done.stdout
    for phase in ("prefill", "decode"):
        line = next(line for line in done.stdout.splitlines() if line.startswith(phase))
        found = re.search(r"([\d.]+) tok/s\s+\(llama-cpp-python's Llama ([\d.]+) tok/s: "
                          r"(libra-edge (?:[\d.]+x slower|[\d.]+x faster|as fast))\)$", line)
        assert found, line
        ours, bare = float(found[1]), float(found[2])
        # The words follow the two figures printed beside them (rounded as printed).
        ratio = bare / ours
        if "slower" in found[3]:
            assert ratio > 1 and float(found[3].split()[1][:-1]) == pytest.approx(ratio, abs=0.02)
        elif "faster" in found[3]:
            assert ratio < 1 and float(found[3].split()[1][:-1]) == pytest.approx(1 / ratio, abs=0.02)
        else:
            assert ratio == pytest.approx(1.0, abs=0.01)
