"""`models pull` of the Yi-1.5 and Qwen1 guards by their known names, from a fake hub on loopback, down to a check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.hub import FakeHub


@pytest.mark.parametrize(
    ("name", "repo", "checkpoint", "architecture"),
    [
        ("libra-guard-yi-9b", "caskcsg/Libra-Guard-Yi-1.5-9B-Chat", "tiny_llama_dir", "llama"),
        ("libra-guard-qwen-14b", "caskcsg/Libra-Guard-Qwen-14B-Chat", "tiny_qwen1_dir", "qwen"),
    ],
    ids=["yi", "qwen1"],
)
def test_pull_by_known_name_installs_a_model_that_judges(
    name: str, repo: str, checkpoint: str, architecture: str, request: pytest.FixtureRequest,
    fake_hub: FakeHub, hub_env: dict[str, str], cli: list[str], isolated_home: Path,
) -> None:
    src: Path = request.getfixturevalue(checkpoint)
    fake_hub.add_repo(repo, {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()})
    env = {**hub_env, "HF_ENDPOINT": fake_hub.url}
    # The default quant (Q8_0): installed under the known name, without a suffix.
    pulled = subprocess.run([*cli, "models", "pull", name], env=env,
                            capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    fetched = {r.path.rsplit("/", 1)[1] for r in fake_hub.requests if "/resolve/" in r.path}
    assert not [f for f in fetched if f.endswith(".py")]  # the checkpoint's code is never downloaded

    checked = subprocess.run([*cli, "check", "--model", name, "--fast", "--json", "--threads", "1",
                              "-q", "你好", "-r", "你好！有什么可以帮你？"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert checked.returncode in (0, 1), checked.stderr[-2000:]
    verdict = json.loads(checked.stdout)
    assert verdict["label"] in ("安全", "不安全") and json.loads(verdict["raw"])["答案"] == verdict["label"]
    listed = subprocess.run([*cli, "models", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    row = {r["name"]: r for r in json.loads(listed.stdout)}[name]
    assert (row["architecture"], row["source_repo"]) == (architecture, repo)
