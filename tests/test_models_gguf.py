"""GGUF metadata reader: what `models import`, `info`, `doctor` and the TUI learn from a file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge.errors import ModelError
from libra_edge.models.ggufinfo import quant_name, read_model_info


def test_reads_a_real_llama_model(smollm2_gguf: Path) -> None:
    info = read_model_info(smollm2_gguf)
    assert info.architecture == "llama"
    assert info.quant == "Q4_1"
    assert info.context_length == 8192
    assert info.n_layers == 30
    assert info.vocab_size == 49152
    assert 134_000_000 < info.n_params < 136_000_000  # SmolLM2-135M
    assert info.chat_template and "messages" in info.chat_template
    assert info.file_size == smollm2_gguf.stat().st_size
    assert info.problems() == []  # llama is the Yi-1.5 guards' architecture


def test_reads_a_converted_tiny_qwen(tiny_qwen_gguf: Path) -> None:
    info = read_model_info(tiny_qwen_gguf)
    assert info.architecture == "qwen2"
    assert info.vocab_size == 151936  # the real Qwen2.5 vocabulary, padded as the embedding is
    assert info.tokenizer_model == "gpt2"
    assert "<|im_start|>" in (info.chat_template or "")
    assert info.problems() == []


def test_synthetic_file_metadata(make_gguf: Callable[..., Path]) -> None:
    info = read_model_info(make_gguf())
    assert (info.architecture, info.quant, info.context_length, info.vocab_size) == (
        "qwen2", "F32", 2048, 32)
    assert info.n_params == 32 * 64 + 64
    assert info.n_tensors == 2
    assert info.metadata["general.name"] == "synthetic qwen2"


def test_missing_tokenizer_and_template_are_problems(make_gguf: Callable[..., Path]) -> None:
    info = read_model_info(make_gguf(tokenizer=False, chat_template=False))
    assert info.problems() == [
        "no tokenizer in the file (tokenizer.ggml.tokens is missing)",
        "no chat template in the file (tokenizer.chat_template is missing)",
    ]


def test_truncated_tensor_data_is_detected(make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    data = make_gguf().read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ModelError, match=r"truncated GGUF: tensor data needs 9,344 bytes but the file has 9,244"):
        read_model_info(cut)


@pytest.mark.parametrize("keep", [4, 30, 100, 300])
def test_truncated_header_is_detected(make_gguf: Callable[..., Path], tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(make_gguf().read_bytes()[:keep])
    with pytest.raises(ModelError, match="corrupt or truncated GGUF header"):
        read_model_info(cut)


def test_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelError, match=r"model.gguf: not a GGUF model file \(starts with b'PK"):
        read_model_info(bogus)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(ModelError, match="not a GGUF model file \\(empty file\\)"):
        read_model_info(empty)
    with pytest.raises(ModelError, match="no such file"):
        read_model_info(tmp_path / "absent.gguf")
    with pytest.raises(ModelError, match="not a file"):
        read_model_info(tmp_path)


def test_quant_names() -> None:
    assert quant_name(15) == "Q4_K_M"
    assert quant_name(7) == "Q8_0"
    assert quant_name(0) == "F32"
    assert quant_name(1) == "F16"
    assert quant_name(None) == "unknown"
    assert quant_name(999) == "type-999"
