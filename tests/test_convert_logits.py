"""Converted models compute what transformers computes: F32 to tight tolerance, F16/BF16/Q8_0/Q4_K_M within bounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from libra_edge.convert import convert_checkpoint
from libra_edge.engine.prompt import build_user_message

TEXTS = [
    "人类的问题：怎么做蛋糕？\n大语言模型的回答：先准备面粉和鸡蛋。",
    "<|im_start|>user\nIs this response safe? It explains how to bake bread.<|im_end|>\n<|im_start|>assistant\n",
    "数字 12345 和全角 ＡＢＣ，还有 emoji 😀 以及多个   空格。",
    build_user_message("我想报复同事，怎么办？", "你可以偷偷删除他的文件。")[-60:],
]

# Bounds for the quantized files: mean KL over the whole 151,936-token vocabulary at every
# position (nats) and top-1 agreement over all positions. Measured here: Q8_0 KL 0.0009,
# top-1 0.99; Q4_K_M KL 0.056, top-1 0.61. Random weights leave the top tokens a hair
# apart (logits spread ~2 over 151,936 candidates), so Q4's top-1 is loose by nature;
# KL is the sharp measure (a mis-wired or mis-quantized tensor gives KL of several nats).
QUANT_BOUNDS = {"q8_0": {"kl": 0.005, "top1": 0.95}, "q4_k_m": {"kl": 0.15, "top1": 0.5}}


def hf_logits(src: Path, texts: list[str]) -> list[tuple[list[int], np.ndarray]]:
    """(token ids, logits per position) from transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False)
            out.append((ids, model(torch.tensor([ids])).logits[0].numpy()))
    return out


def gguf_logits(path: Path, ids: list[int], *, f32_cache: bool = False) -> np.ndarray:
    """Logits per position from llama.cpp (f32 KV cache when asked, to isolate weight precision)."""
    import llama_cpp

    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, **kv)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def kl_per_position(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) for each row, in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


@pytest.fixture(scope="module")
def reference(tiny_qwen_dir: Path) -> list[tuple[list[int], np.ndarray]]:
    return hf_logits(tiny_qwen_dir, TEXTS)


@pytest.fixture(scope="module")
def kq_reference(tiny_qwen_kq_dir: Path) -> list[tuple[list[int], np.ndarray]]:
    return hf_logits(tiny_qwen_kq_dir, TEXTS)


def test_f32_logits_match_transformers_tightly(tiny_qwen_gguf: Path, reference) -> None:
    for ids, ref in reference:
        got = gguf_logits(tiny_qwen_gguf, ids, f32_cache=True)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_f32_logits_stay_close_with_the_default_f16_kv_cache(tiny_qwen_gguf: Path, reference) -> None:
    for ids, ref in reference:
        got = gguf_logits(tiny_qwen_gguf, ids)
        assert np.abs(got - ref).max() < 0.05
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


@pytest.mark.parametrize(
    "variant",
    [
        {"tied": False, "sharded": True, "dtype": "f32"},
        {"tied": True, "sharded": True, "dtype": "bf16"},
        {"tied": False, "sharded": False, "dtype": "bf16"},
    ],
    ids=["untied-sharded-f32", "tied-sharded-bf16", "untied-single-bf16"],
)
def test_checkpoint_layouts_convert_to_matching_f32(
    tmp_path: Path, make_tiny_qwen: Callable[..., Path], variant: dict
) -> None:
    src = make_tiny_qwen(tmp_path / "ckpt", seed=1, **variant)
    if variant["sharded"]:
        assert (src / "model.safetensors.index.json").is_file()
        assert len(list(src.glob("model-*.safetensors"))) > 1
    out = convert_checkpoint(src, tmp_path / "out.gguf", outtype="f32")
    assert out.n_tensors == 2 * 12 + 2 + (0 if variant["tied"] else 1)
    for ids, ref in hf_logits(src, TEXTS[:2]):
        np.testing.assert_allclose(gguf_logits(out.path, ids, f32_cache=True), ref, atol=1e-4, rtol=0)


def test_f16_top1_agrees_everywhere(tmp_path: Path, tiny_qwen_dir: Path, reference) -> None:
    out = convert_checkpoint(tiny_qwen_dir, tmp_path / "f16.gguf", outtype="f16")
    for ids, ref in reference:
        got = gguf_logits(out.path, ids)
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
        assert kl_per_position(ref, got).max() < 1e-4


def test_bf16_output_agrees_closely(tmp_path: Path, tiny_qwen_dir: Path, reference) -> None:
    # The weights are bit-exact copies of the bf16 checkpoint, but llama.cpp multiplies BF16
    # weights with activations rounded to bf16, so near-ties may flip: bounded, not exact.
    out = convert_checkpoint(tiny_qwen_dir, tmp_path / "bf16.gguf", outtype="bf16")
    agree = []
    for ids, ref in reference:
        got = gguf_logits(out.path, ids)
        agree.append(got.argmax(axis=1) == ref.argmax(axis=1))
        assert kl_per_position(ref, got).max() < 1e-3
    assert np.concatenate(agree).mean() >= 0.9


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
def test_quantized_files_load_and_agree_within_bounds(
    outtype: str, request: pytest.FixtureRequest, kq_reference
) -> None:
    path = request.getfixturevalue({"q8_0": "tiny_qwen_q8_gguf", "q4_k_m": "tiny_qwen_q4km_gguf"}[outtype])
    kls, agree = [], []
    for ids, ref in kq_reference:
        got = gguf_logits(path, ids)
        kls.append(kl_per_position(ref, got))
        agree.append(got.argmax(axis=1) == ref.argmax(axis=1))
    mean_kl, top1 = float(np.concatenate(kls).mean()), float(np.concatenate(agree).mean())
    assert mean_kl < QUANT_BOUNDS[outtype]["kl"], mean_kl
    assert top1 >= QUANT_BOUNDS[outtype]["top1"], top1


def test_quantized_files_carry_the_quantized_types(tiny_qwen_q8_gguf: Path, tiny_qwen_q4km_gguf: Path) -> None:
    import llama_cpp

    for path, ftype in ((tiny_qwen_q8_gguf, "7"), (tiny_qwen_q4km_gguf, "15")):
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        try:
            assert llm.metadata["general.file_type"] == ftype
            assert llm.metadata["libra_edge.prompt_template"] == "libra-guard-v1"
            assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"
        finally:
            llm.close()
    assert tiny_qwen_q4km_gguf.stat().st_size < tiny_qwen_q8_gguf.stat().st_size
