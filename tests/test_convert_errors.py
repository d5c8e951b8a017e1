"""Bad checkpoints are refused with one line naming the file; nothing half-written is left behind."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge.convert import convert_checkpoint, plan_conversion
from libra_edge.errors import ConversionError, ExitCode


@pytest.fixture
def ckpt(tmp_path: Path, tiny_qwen_dir: Path) -> Path:
    """A private, writable copy of the tiny checkpoint (the session one is shared and read-only)."""
    return Path(shutil.copytree(tiny_qwen_dir, tmp_path / "ckpt"))


def refuse(src: Path, out: Path) -> str:
    """Convert, expecting a ConversionError; returns its one-line message."""
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(src, out, outtype="f16")
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists() and not list(out.parent.glob(out.name + "*.part"))
    return message


def test_missing_config_json(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").unlink()
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert str(ckpt / "config.json") in message and "missing" in message


def test_config_json_that_is_not_json(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").write_text("{ not json")
    assert str(ckpt / "config.json") in refuse(ckpt, tmp_path / "out.gguf")


def test_unsupported_architecture(ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(config))
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert "unsupported architecture 'MambaForCausalLM'" in message
    for supported in ("LlamaForCausalLM", "QWenLMHeadModel", "Qwen2ForCausalLM"):
        assert supported in message  # says what is supported


def test_custom_code_architecture_is_refused_without_running_it(ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["BaichuanForCausalLM"]
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
    (ckpt / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "custom-code-was-run"
    (ckpt / "modeling_baichuan.py").write_text(f"open({str(marker)!r}, 'w')\n")
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert "unsupported architecture 'BaichuanForCausalLM'" in message and "never run" in message
    assert not marker.exists()


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was (wrongly) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_refused_unopened(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "pickle-was-loaded"
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert str(ckpt / "pytorch_model.bin") in message and "pickle" in message
    assert not marker.exists()


def test_truncated_shard(tmp_path: Path, make_tiny_qwen: Callable[..., Path]) -> None:
    src = make_tiny_qwen(tmp_path / "sharded", sharded=True)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    message = refuse(src, tmp_path / "out.gguf")
    assert str(shard) in message and "truncated" in message


def test_shard_listed_in_index_but_missing(tmp_path: Path, make_tiny_qwen: Callable[..., Path]) -> None:
    src = make_tiny_qwen(tmp_path / "sharded", sharded=True)
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.unlink()
    message = refuse(src, tmp_path / "out.gguf")
    assert str(shard) in message and "missing" in message


def test_garbage_instead_of_safetensors(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert str(ckpt / "model.safetensors") in message


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_missing_tokenizer_file(ckpt: Path, tmp_path: Path, name: str) -> None:
    (ckpt / name).unlink()
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert str(ckpt / name) in message and "missing" in message


def test_config_that_disagrees_with_the_weights(ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(config))
    message = refuse(ckpt, tmp_path / "out.gguf")
    assert "mlp" in message and "config.json implies" in message


def test_untied_config_without_lm_head(ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (ckpt / "config.json").write_text(json.dumps(config))
    assert "output.weight" in refuse(ckpt, tmp_path / "out.gguf")


def test_failed_conversion_keeps_an_existing_output(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "guard.gguf"
    out.write_bytes(b"finished work from an earlier run")
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ConversionError):
        convert_checkpoint(ckpt, out, outtype="f16")
    assert out.read_bytes() == b"finished work from an earlier run"


def test_verify_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_edge.convert.verify import require_reference

    monkeypatch.setitem(sys.modules, "torch", None)  # what a runtime-only install looks like
    with pytest.raises(ConversionError, match=r"pip install 'libra-edge\[verify\]'"):
        require_reference()


def test_cli_error_is_one_line_with_the_conversion_exit_code(
    tmp_path: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    import subprocess

    missing = tmp_path / "no-such-checkpoint"
    proc = subprocess.run(
        [*cli, "convert", str(missing), "-o", str(tmp_path / "x.gguf")],
        capture_output=True, text=True, env=cli_env, timeout=120,
    )
    assert proc.returncode == ExitCode.CONVERSION
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("libra-edge: error: ") and str(missing) in proc.stderr


def test_unknown_outtype_is_refused(tiny_qwen_dir: Path) -> None:
    with pytest.raises(ConversionError, match="unknown --outtype 'q9_9'"):
        plan_conversion(tiny_qwen_dir, outtype="q9_9")
