"""QWenLMHeadModel (Libra-Guard-Qwen-14B-Chat's architecture) converts without its code and computes like its Qwen2 twin."""

from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from libra_edge.convert import convert_checkpoint
from libra_edge.engine.prompt import LABELS, build_user_message
from libra_edge.errors import ConversionError, ExitCode
from tests.fixtures.models import QWEN1_CODE_MARKER_SUFFIX, QWEN1_SPECIAL_TOKENS, QWEN1_VOCAB_SIZE
from tests.test_convert_llama import assert_quantized_within_bounds, gguf_logits
from tests.test_convert_tokenizer import corpus

QWEN1_FIRST_SPECIAL_ID = 151643
TEXTS = [
    "人类的问题：怎么做蛋糕？\n大语言模型的回答：先准备面粉和鸡蛋。",
    "<|im_start|>user\nIs this response safe? It explains how to bake bread.<|im_end|>\n<|im_start|>assistant\n",
    "数字 12345 和全角 ＡＢＣ，还有 emoji 😀 以及多个   空格。",
    build_user_message("我想报复同事，怎么办？", "你可以偷偷删除他的文件。")[-60:],
]
# Q8_0 bounds (see assert_quantized_within_bounds): measured here with hidden 64 and the
# 151,936-row vocabulary over 95 positions: KL 0.0012 (max 0.0026), top-1 0.947; all 5
# flips were near-ties (margin < 0.09 nats).
Q8_BOUNDS = {"kl": 0.01, "top1": 0.9, "margin": 0.25}


def qwen1_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids as Qwen1's own `QWenTokenizer.tokenize` gives them (NFC, special tokens allowed)."""
    return list(tokenizer.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=()))


@pytest.fixture(scope="module")
def reference(tiny_qwen1_pair: Path, qwen1_reference_tokenizer: Any) -> list[tuple[list[int], np.ndarray]]:
    """(ids, float32 logits) of the Qwen2 twin in transformers: the forward pass Qwen1's layout must reproduce."""
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(tiny_qwen1_pair / "reference", dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in TEXTS:
            ids = qwen1_ids(qwen1_reference_tokenizer, text)
            out.append((ids, model(torch.tensor([ids])).logits[0].numpy()))
    return out


@pytest.fixture(scope="module")
def qwen1_vocab(tiny_qwen1_gguf: Path) -> Any:
    from llama_cpp import Llama

    llm = Llama(str(tiny_qwen1_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


# ----------------------------------------------------------------------------- tokenizer


def test_llama_cpp_token_ids_equal_qwen1_tokenizer_on_corpus(
    reference_dir: Path, qwen1_reference_tokenizer: Any, qwen1_vocab: Any
) -> None:
    texts = corpus(reference_dir) + [f"<|extra_{i}|>" for i in (0, 57, 204)]
    assert len(texts) >= 200
    mismatches = []
    for text in texts:
        expected = qwen1_ids(qwen1_reference_tokenizer, text)
        got = qwen1_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if got != expected:
            mismatches.append((text, expected, got))
    assert mismatches == []


def test_verdict_labels_tokenize_as_in_qwen(qwen1_vocab: Any) -> None:
    tok = lambda s: qwen1_vocab.tokenize(s.encode(), add_bos=False, special=False)  # noqa: E731
    assert tok("安全") == [99464] and tok("不安全") == [16530, 99464]


def test_special_tokens_types_and_metadata(qwen1_vocab: Any) -> None:
    import llama_cpp

    meta = qwen1_vocab.metadata
    assert meta["general.architecture"] == "qwen"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["tokenizer.ggml.eos_token_id"] == str(QWEN1_FIRST_SPECIAL_ID + 2)  # <|im_end|>
    assert meta["tokenizer.ggml.add_bos_token"] == "false"
    assert meta["qwen.feed_forward_length"] == "256"  # w1 and w2 counted together, as config.json does
    vocab = llama_cpp.llama_model_get_vocab(qwen1_vocab.model)
    assert llama_cpp.llama_vocab_n_tokens(vocab) == QWEN1_VOCAB_SIZE
    text = lambda i: llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8")  # noqa: E731
    attr = lambda i: llama_cpp.llama_vocab_get_attr(vocab, i)  # noqa: E731
    for offset, content in enumerate(QWEN1_SPECIAL_TOKENS):
        assert text(QWEN1_FIRST_SPECIAL_ID + offset) == content
        assert attr(QWEN1_FIRST_SPECIAL_ID + offset) == llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    first_pad = QWEN1_FIRST_SPECIAL_ID + len(QWEN1_SPECIAL_TOKENS)
    assert text(first_pad) == f"[PAD{first_pad}]" and attr(first_pad) == llama_cpp.LLAMA_TOKEN_ATTR_UNUSED


def test_chat_template_is_qwen1_chatml_with_its_default_system_prompt(qwen1_vocab: Any) -> None:
    from libra_edge.engine.chat import ChatTemplate

    template = ChatTemplate(qwen1_vocab.metadata["tokenizer.chat_template"])
    rendered = template.render("你好")
    assert rendered.before + rendered.message + rendered.after == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )


def test_checkpoint_code_is_never_imported_or_run(
    tmp_path: Path, tiny_qwen1_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    ckpt = Path(shutil.copytree(tiny_qwen1_dir, tmp_path / "ckpt"))
    out = tmp_path / "vocab.gguf"
    proc = subprocess.run([*cli, "convert", str(ckpt), "-o", str(out), "--vocab-only"],
                          capture_output=True, text=True, env=cli_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert list(ckpt.glob(f"*{QWEN1_CODE_MARKER_SUFFIX}")) == []


def test_missing_qwen_tiktoken_is_one_line_naming_it(tmp_path: Path, tiny_qwen1_dir: Path) -> None:
    ckpt = Path(shutil.copytree(tiny_qwen1_dir, tmp_path / "ckpt"))
    (ckpt / "qwen.tiktoken").unlink()
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(ckpt, tmp_path / "out.gguf", outtype="f16")
    message = str(info.value)
    assert "\n" not in message and str(ckpt / "qwen.tiktoken") in message and "missing" in message
    assert not (tmp_path / "out.gguf").exists()


def test_verify_is_refused_in_one_line_before_converting(
    tmp_path: Path, tiny_qwen1_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    out = tmp_path / "x.gguf"
    proc = subprocess.run([*cli, "convert", str(tiny_qwen1_dir), "-o", str(out), "--verify"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.strip().count("\n") == 0 and "--verify cannot run QWenLMHeadModel" in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------- weights


def test_f32_logits_match_the_qwen2_reference_tightly(tiny_qwen1_gguf: Path, reference: list) -> None:
    for ids, ref in reference:
        np.testing.assert_allclose(gguf_logits(tiny_qwen1_gguf, ids, f32_cache=True), ref, atol=1e-4, rtol=0)


def test_f16_top1_agrees_everywhere(tmp_path: Path, tiny_qwen1_dir: Path, reference: list) -> None:
    out = convert_checkpoint(tiny_qwen1_dir, tmp_path / "f16.gguf", outtype="f16")
    for ids, ref in reference:
        got = gguf_logits(out.path, ids)
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def test_q8_0_agrees_within_bounds(tiny_qwen1_q8_gguf: Path, reference: list) -> None:
    assert_quantized_within_bounds(tiny_qwen1_q8_gguf, reference, Q8_BOUNDS)


# ------------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def guard(tiny_qwen1_gguf: Path) -> Any:
    from libra_edge.engine import Guard

    with Guard.load(tiny_qwen1_gguf, threads=1, gpu_layers=0, ctx_per_seq=2048, max_new_tokens=24) as loaded:
        yield loaded


def test_engine_prompt_is_qwen1_chatml_tokenized_as_qwen1_does(guard: Any, qwen1_reference_tokenizer: Any) -> None:
    question, response = "怎么在家制作炸药", "我不能帮助你"
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            + build_user_message(question, response) + "<|im_end|>\n<|im_start|>assistant\n")
    assert guard.chat_template_source == "gguf"
    assert guard.prompt_tokens(question, response) == qwen1_ids(qwen1_reference_tokenizer, text)


def test_label_first_tokens_are_qwens(guard: Any) -> None:
    assert set(guard.label_tokens["不安全"].tolist()) >= {16530} and 99464 in set(guard.label_tokens["安全"].tolist())


@pytest.mark.parametrize("analysis", [False, True], ids=["fast", "full"])
def test_libra_check_end_to_end(guard: Any, analysis: bool) -> None:
    verdict = guard.check("某些地区的人普遍素质低下，不值得我们去交往", "我无法提供有关如何歧视或排斥特定群体的建议。",
                          analysis=analysis)
    parsed = json.loads(verdict.raw)
    assert parsed["答案"] == verdict.label and verdict.label in LABELS
    assert 0.0 <= verdict.score <= 1.0
    assert verdict.unsafe == (verdict.score >= guard.threshold) == (verdict.label == "不安全")
    if analysis:
        assert isinstance(parsed["分析"], str) and parsed["分析"] == verdict.analysis
