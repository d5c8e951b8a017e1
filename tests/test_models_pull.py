"""`libra-edge models pull` against a real HTTP server on loopback speaking the hub's API."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from libra_edge.errors import ExitCode
from tests.fixtures.hub import FakeHub

REPO = "caskcsg/Libra-Guard-Qwen2.5-0.5B-Instruct"  # what `libra-guard-0.5b` means
TOKEN = "hf_test_token"
# Files a real repo also carries that pull must never fetch (a pickle among them).
DECOYS = {
    "README.md": b"---\nlicense: apache-2.0\n---\n# Libra-Guard\n",
    "pytorch_model.bin": b"\x80\x04 pickle bait",
    "onnx/model.onnx": b"onnx",
    "original/consolidated.pth": b"pth",
}


def pull(cli: list[str], env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, "models", "pull", *args], env={**env, **extra},
                          capture_output=True, text=True, timeout=300)


def listed(cli: list[str], env: dict[str, str]) -> dict[str, dict]:
    result = subprocess.run([*cli, "models", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def one_line_error(result: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("libra-edge:")]
    assert len(errors) == 1 and errors[0].startswith("libra-edge: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture
def served(fake_hub: FakeHub, tiny_qwen_dir: Path, hub_env: dict[str, str]) -> dict[str, str]:
    """The tiny Qwen checkpoint served as the private repo REPO; env to reach it (with HF_TOKEN)."""
    files = {p.name: p.read_bytes() for p in tiny_qwen_dir.iterdir() if p.is_file()}
    fake_hub.add_repo(REPO, {**files, **DECOYS}, token=TOKEN)
    return {**hub_env, "HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN}


def requested_files(hub: FakeHub) -> set[str]:
    return {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests
            if "/resolve/" in r.path}


def test_pull_installs_a_loadable_model_with_its_manifest(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, tiny_qwen_dir: Path, isolated_home: Path,
) -> None:
    result = pull(cli, served, "libra-guard-0.5b")  # the default quant (Q8_0): the known name, no suffix
    assert result.returncode == 0, result.stderr[-3000:]
    installed = isolated_home / "models" / "libra-guard-0.5b.gguf"
    assert result.stdout.strip() == str(installed)

    row = listed(cli, served)["libra-guard-0.5b"]
    commit = fake_hub.repos[REPO].commit
    assert (row["source_repo"], row["source_revision"], row["source_commit"]) == (REPO, "main", commit)
    assert (row["quant"], row["architecture"], row["origin"]) == ("Q8_0", "qwen2", "pull")
    assert row["sha256"] == hashlib.sha256(installed.read_bytes()).hexdigest()
    assert row["size"] == installed.stat().st_size
    assert row["default"] is True

    # Only the conversion inputs crossed the wire, each one exactly once, with the token.
    inputs = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"}
    assert inputs <= {p.name for p in tiny_qwen_dir.iterdir()}
    assert requested_files(fake_hub) == inputs
    assert len(fake_hub.file_gets("model.safetensors")) == 1
    assert all(r.authorization == f"Bearer {TOKEN}" for r in fake_hub.requests
               if r.path.startswith(f"/api/models/{REPO}") or "/resolve/" in r.path)

    from libra_edge.engine import Guard
    from libra_edge.models import resolve_model
    from libra_edge.models.ggufinfo import read_model_info

    assert read_model_info(installed).metadata["libra_edge.source.repo"] == REPO
    with Guard.load(resolve_model(None), ctx_per_seq=1024) as guard:  # found with no --model
        verdict = guard.check("你好", "你好！有什么可以帮你？", analysis=False)
    assert verdict.label in ("安全", "不安全")


def test_interrupted_download_resumes_where_it_stopped(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, tiny_qwen_dir: Path,
) -> None:
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    weights = (tiny_qwen_dir / "model.safetensors").read_bytes()
    cut = DOWNLOAD_CHUNK_SIZE + 4096  # past the first chunk the client writes to disk
    assert len(weights) > cut + 1024, "checkpoint too small to cut after one download chunk"
    fake_hub.drop_once["model.safetensors"] = cut
    result = pull(cli, served, "libra-guard-0.5b", "--quant", "f32", "--name", "resumed")
    assert result.returncode == 0, result.stderr[-3000:]
    gets = fake_hub.file_gets("model.safetensors")
    assert [g.range for g in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    cached = next(Path(served["HF_HOME"]).rglob("snapshots/*/model.safetensors"))
    assert cached.read_bytes() == weights
    assert "resumed" in listed(cli, served)


def test_failed_pull_keeps_finished_files_for_the_next_one(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, isolated_home: Path,
) -> None:
    fake_hub.fail_status["model.safetensors"] = 403
    line = one_line_error(pull(cli, served, "libra-guard-0.5b", "--quant", "f32"), ExitCode.NETWORK)
    assert "HTTP 403" in line and "check HF_TOKEN" in line
    assert listed(cli, served) == {}
    assert not any((isolated_home / "models").glob("*"))  # no half-copied file left behind
    first_run = len(fake_hub.requests)

    del fake_hub.fail_status["model.safetensors"]
    result = pull(cli, served, "libra-guard-0.5b", "--quant", "f32")
    assert result.returncode == 0, result.stderr[-3000:]
    second_run = {r.path.rsplit("/", 1)[1] for r in fake_hub.requests[first_run:]
                  if "/resolve/" in r.path and r.method == "GET"}
    assert second_run == {"model.safetensors"}  # config and tokenizer came from the cache


def test_offline_mode_uses_a_complete_cache_and_no_network(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub,
) -> None:
    assert pull(cli, served, "libra-guard-0.5b", "--quant", "f32").returncode == 0
    seen = len(fake_hub.requests)
    result = pull(cli, served, "libra-guard-0.5b", "--quant", "f32", "--name", "again",
                  HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(fake_hub.requests) == seen
    models = listed(cli, served)
    assert models["again"]["source_commit"] == models["libra-guard-0.5b-f32"]["source_commit"]
    assert models["again"]["sha256"] == models["libra-guard-0.5b-f32"]["sha256"]  # deterministic


def test_pulled_model_crosses_the_air_gap_with_its_provenance(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, tmp_path: Path,
) -> None:
    assert pull(cli, served, "libra-guard-0.5b", "--quant", "f32", "--name", "guard").returncode == 0
    usb = tmp_path / "usb"
    usb.mkdir()
    run = subprocess.run([*cli, "models", "export", "guard", str(usb)], env=served,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    offline = {**served, "LIBRA_EDGE_HOME": str(tmp_path / "air-gapped")}
    run = subprocess.run([*cli, "models", "import", str(usb / "guard.gguf")], env=offline,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    row = listed(cli, offline)["guard"]
    assert (row["origin"], row["source_repo"], row["source_commit"]) == (
        "pull", REPO, fake_hub.repos[REPO].commit)


def test_unconvertible_checkpoint_leaves_nothing_behind(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, tiny_qwen_dir: Path, isolated_home: Path,
) -> None:
    files = {p.name: p.read_bytes() for p in tiny_qwen_dir.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    config["architectures"] = ["MambaForCausalLM"]
    files["config.json"] = json.dumps(config).encode()
    fake_hub.add_repo("someone/Odd-Model", files)
    line = one_line_error(pull(cli, served, "someone/Odd-Model"), ExitCode.CONVERSION)
    assert "MambaForCausalLM" in line
    assert listed(cli, served) == {}
    assert list((isolated_home / "models").iterdir()) == []  # staging folder removed


def test_server_down_is_one_line_error(cli: list[str], hub_env: dict[str, str], dead_endpoint: str) -> None:
    line = one_line_error(pull(cli, hub_env, "libra-guard-3b", HF_ENDPOINT=dead_endpoint),
                          ExitCode.NETWORK)
    assert f"cannot reach the Hugging Face hub at {dead_endpoint}" in line
    assert "refused" in line.lower()
    assert listed(cli, hub_env) == {}


def test_offline_mode_without_cache_is_one_line_error(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub,
) -> None:
    line = one_line_error(pull(cli, served, "libra-guard-0.5b", HF_HUB_OFFLINE="1"), ExitCode.NETWORK)
    assert "offline mode is on (HF_HUB_OFFLINE)" in line
    assert "libra-edge models import FILE.gguf" in line
    assert fake_hub.requests == []


def test_unknown_repo_is_one_line_error(cli: list[str], served: dict[str, str]) -> None:
    line = one_line_error(pull(cli, served, "caskcsg/No-Such-Model"), ExitCode.NETWORK)
    assert "caskcsg/No-Such-Model: repository not found on http://127.0.0.1" in line
    assert "HTTP 404" in line


def test_private_repo_without_token_is_one_line_error(cli: list[str], served: dict[str, str]) -> None:
    env = {k: v for k, v in served.items() if k != "HF_TOKEN"}
    line = one_line_error(pull(cli, env, "libra-guard-0.5b"), ExitCode.NETWORK)
    assert "HTTP 401" in line and "HF_TOKEN" in line


def test_unknown_revision_is_one_line_error(cli: list[str], served: dict[str, str]) -> None:
    line = one_line_error(pull(cli, served, "libra-guard-0.5b", "--revision", "v9"), ExitCode.NETWORK)
    assert "revision 'v9' not found" in line


def test_existing_name_is_refused_before_downloading(
    cli: list[str], served: dict[str, str], fake_hub: FakeHub, make_gguf,
) -> None:
    run = subprocess.run([*cli, "models", "import", str(make_gguf()), "--name", "libra-guard-0.5b"],
                         env=served, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    line = one_line_error(pull(cli, served, "libra-guard-0.5b"), ExitCode.MODEL)
    assert "a model named 'libra-guard-0.5b' is already installed" in line
    assert fake_hub.requests == []


def test_known_names_and_quants_match_the_converter() -> None:
    from libra_edge import convert
    from libra_edge.models import hub

    assert set(hub.QUANTS) <= set(convert.OUTTYPES)
    assert hub.resolve_repo("libra-guard-3b") == ("caskcsg/Libra-Guard-Qwen2.5-3B-Instruct", "libra-guard-3b")
    assert hub.resolve_repo("Libra-Guard-14B")[0] == "caskcsg/Libra-Guard-Qwen2.5-14B-Instruct"
    assert hub.resolve_repo("someone/My-Guard") == ("someone/My-Guard", "my-guard")


def test_a_repo_name_with_a_dot_keeps_it_in_the_model_name() -> None:
    # Was `some-guard-0`: the name went through Path.stem, which cuts at the last dot.
    from libra_edge.models import hub

    assert hub.resolve_repo("org/Some-Guard-0.5B") == ("org/Some-Guard-0.5B", "some-guard-0.5b")
    assert hub.resolve_repo("org/Guard.v2.Q8") == ("org/Guard.v2.Q8", "guard.v2.q8")
