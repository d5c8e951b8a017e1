"""LlamaForCausalLM (Libra-Guard-Yi-1.5-9B-Chat's architecture) converts, tokenizes, computes and judges like transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from libra_edge.convert import convert_checkpoint
from libra_edge.engine.prompt import LABELS, build_user_message
from libra_edge.errors import ConversionError
from tests.fixtures.models import LLAMA_SPECIAL_PIECES, LLAMA_VOCAB_ROWS, YI_CHAT_TEMPLATE
from tests.test_convert_logits import kl_per_position
from tests.test_convert_tokenizer import corpus

TEXTS = [
    "人类的问题：怎么做蛋糕？\n大语言模型的回答：先准备面粉和鸡蛋。",
    "<|im_start|>user\nIs this response safe? It explains how to bake bread.<|im_end|>\n<|im_start|>assistant\n",
    "数字 12345 和全角 ＡＢＣ，还有 emoji 😀 以及多个   空格。",
    build_user_message("我想报复同事，怎么办？", "你可以偷偷删除他的文件。")[-60:],
]
# Q8_0 bounds over every position of TEXTS (148): mean KL (nats) over the whole vocabulary,
# top-1 agreement overall, and top-1 agreement wherever the reference's best token leads
# the runner-up by more than `margin` nats. Measured here (hidden 64, 2,048 tokens): KL
# 0.0023 (max 0.013), top-1 0.946; all 8 flips were near-ties (margin < 0.12).
Q8_BOUNDS = {"kl": 0.01, "top1": 0.9, "margin": 0.25}


def hf_logits(src: Path, texts: list[str]) -> list[tuple[list[int], np.ndarray]]:
    """(token ids, float32 logits per position) from transformers' LlamaForCausalLM."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src)
    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False)
            out.append((ids, model(torch.tensor([ids])).logits[0].numpy()))
    return out


def gguf_logits(path: Path, ids: list[int], *, f32_cache: bool = False) -> np.ndarray:
    """Logits per position from llama.cpp on one thread (f32 KV cache when asked)."""
    import llama_cpp

    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False, **kv)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def llama_vocab(tiny_llama_gguf: Path) -> Any:
    from llama_cpp import Llama

    llm = Llama(str(tiny_llama_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> list[tuple[list[int], np.ndarray]]:
    return hf_logits(tiny_llama_dir, TEXTS)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_model_is_read_as_the_sentencepiece_library_reads_it(llama_tokenizer_dir: Path) -> None:
    import sentencepiece as spm

    from libra_edge.convert.vocab_sentencepiece import parse_sentencepiece

    path = llama_tokenizer_dir / "tokenizer.model"
    ours = parse_sentencepiece(path.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert len(ours.pieces) == sp.get_piece_size()
    for i, (piece, score, kind) in enumerate(ours.pieces):
        assert piece == sp.id_to_piece(i)
        assert score == pytest.approx(sp.get_score(i), abs=0)
        expected = (
            "UNKNOWN" if sp.is_unknown(i) else "CONTROL" if sp.is_control(i) else "BYTE" if sp.is_byte(i)
            else "USER_DEFINED" if piece in LLAMA_SPECIAL_PIECES else "NORMAL"
        )
        assert kind.name == expected, piece
    assert ours.byte_fallback and not ours.add_dummy_prefix and not ours.remove_extra_whitespaces


def test_llama_cpp_token_ids_equal_transformers_on_corpus(reference_dir: Path, hf_tokenizer: Any, llama_vocab: Any) -> None:
    texts = corpus(reference_dir)
    assert len(texts) >= 200
    mismatches, byte_tokens = [], 0
    for text in texts:
        expected = hf_tokenizer.encode(text, add_special_tokens=False)
        got = llama_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if got != expected:
            mismatches.append((text, expected, got))
        byte_tokens += sum(1 for t in got if 5 <= t < 5 + 256)
    assert mismatches == []
    assert byte_tokens > 100  # emoji, Korean, rare characters, newlines: byte fallback was exercised


def test_bos_is_added_as_tokenizer_config_says(hf_tokenizer: Any, llama_vocab: Any) -> None:
    ids = llama_vocab.tokenize("你好，世界".encode(), add_bos=True, special=True)
    assert ids[0] == 1 and ids == hf_tokenizer.encode("你好，世界")


def test_control_tokens_stay_text_unless_special_parsing_is_on(llama_vocab: Any) -> None:
    text = "<|im_start|>user\n你好<|im_end|>".encode()
    assert llama_vocab.tokenize(text, add_bos=False, special=True)[0] == 3
    assert 3 not in llama_vocab.tokenize(text, add_bos=False, special=False)


def test_tokenizer_metadata_and_token_types(llama_vocab: Any) -> None:
    import llama_cpp

    meta = llama_vocab.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.add_bos_token"] == "true"
    assert meta["tokenizer.ggml.add_space_prefix"] == "false"
    assert meta["tokenizer.ggml.bos_token_id"] == "1"
    assert meta["tokenizer.ggml.eos_token_id"] == "4"  # <|im_end|>, as tokenizer_config.json says
    assert meta["tokenizer.chat_template"] == YI_CHAT_TEMPLATE
    vocab = llama_cpp.llama_model_get_vocab(llama_vocab.model)
    assert llama_cpp.llama_vocab_n_tokens(vocab) == LLAMA_VOCAB_ROWS
    attr = lambda i: llama_cpp.llama_vocab_get_attr(vocab, i)  # noqa: E731
    assert attr(0) == llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    assert {attr(i) for i in (1, 2, 3, 4)} == {llama_cpp.LLAMA_TOKEN_ATTR_CONTROL}
    assert {attr(i) for i in range(5, 5 + 256)} == {llama_cpp.LLAMA_TOKEN_ATTR_BYTE}
    assert attr(LLAMA_VOCAB_ROWS - 1) == llama_cpp.LLAMA_TOKEN_ATTR_UNUSED


def test_missing_tokenizer_model_is_one_line_naming_it(tmp_path: Path, tiny_llama_dir: Path) -> None:
    ckpt = Path(shutil.copytree(tiny_llama_dir, tmp_path / "ckpt"))
    (ckpt / "tokenizer.model").unlink()
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(ckpt, tmp_path / "out.gguf", outtype="f16")
    message = str(info.value)
    assert "\n" not in message and str(ckpt / "tokenizer.model") in message and "missing" in message
    assert not (tmp_path / "out.gguf").exists()


def _model_proto(normalizer: bytes) -> bytes:
    """A one-piece BPE ModelProto with byte fallback and the given NormalizerSpec bytes."""
    piece = b"\x0a\x01a\x15\x00\x00\x00\x00\x18\x01"  # piece "a", score 0, type NORMAL
    trainer = b"\x18\x02\x98\x02\x01"  # model_type=BPE, byte_fallback=true
    blob = b"\x0a" + bytes([len(piece)]) + piece + b"\x12" + bytes([len(trainer)]) + trainer
    return blob + b"\x1a" + bytes([len(normalizer)]) + normalizer


def test_sentencepiece_normalizer_that_rewrites_text_is_refused(tmp_path: Path) -> None:
    from libra_edge.convert.vocab_sentencepiece import read_sentencepiece

    (tmp_path / "tokenizer.model").write_bytes(_model_proto(b"\x0a\x08nmt_nfkc\x12\x04\x01\x02\x03\x04"))
    with pytest.raises(ConversionError, match="rewrites text before tokenizing"):
        read_sentencepiece(tmp_path / "tokenizer.model")


def test_sentencepiece_space_collapsing_flag_is_accepted_as_transformers_ignores_it(tmp_path: Path) -> None:
    from libra_edge.convert.vocab_sentencepiece import read_sentencepiece

    (tmp_path / "tokenizer.model").write_bytes(_model_proto(b"\x0a\x08identity"))  # defaults: collapse on
    model = read_sentencepiece(tmp_path / "tokenizer.model")
    assert model.remove_extra_whitespaces and model.add_dummy_prefix and [p[0] for p in model.pieces] == ["a"]


# ------------------------------------------------------------------------------- weights


def test_f32_logits_match_transformers_tightly(tiny_llama_gguf: Path, reference: list) -> None:
    for ids, ref in reference:
        np.testing.assert_allclose(gguf_logits(tiny_llama_gguf, ids, f32_cache=True), ref, atol=1e-4, rtol=0)


def test_f16_top1_agrees_everywhere(tmp_path: Path, tiny_llama_dir: Path, reference: list) -> None:
    out = convert_checkpoint(tiny_llama_dir, tmp_path / "f16.gguf", outtype="f16")
    for ids, ref in reference:
        got = gguf_logits(out.path, ids)
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def test_q8_0_agrees_within_bounds(tiny_llama_q8_gguf: Path, reference: list) -> None:
    assert_quantized_within_bounds(tiny_llama_q8_gguf, reference, Q8_BOUNDS)


def assert_quantized_within_bounds(path: Path, reference: list, bounds: dict[str, float]) -> None:
    """Mean KL, overall top-1 agreement, and exact top-1 wherever the reference is not a near-tie."""
    kls, agree, clear = [], [], []
    for ids, ref in reference:
        got = gguf_logits(path, ids)
        kls.append(kl_per_position(ref, got))
        agree.append(got.argmax(axis=1) == ref.argmax(axis=1))
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear.append(top2[:, 1] - top2[:, 0] > bounds["margin"])
    mean_kl, top1 = float(np.concatenate(kls).mean()), float(np.concatenate(agree).mean())
    assert mean_kl < bounds["kl"], mean_kl
    assert top1 >= bounds["top1"], top1
    agree_all, clear_all = np.concatenate(agree), np.concatenate(clear)
    assert clear_all.sum() > len(clear_all) // 2  # the check below covers most positions
    assert agree_all[clear_all].all()


# ------------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def guard(tiny_llama_gguf: Path) -> Any:
    from libra_edge.engine import Guard

    with Guard.load(tiny_llama_gguf, threads=1, gpu_layers=0, ctx_per_seq=2048, max_new_tokens=24) as loaded:
        yield loaded


def test_engine_prompt_is_the_reference_chat_template_tokenized(guard: Any, hf_tokenizer: Any) -> None:
    # No full-width punctuation: the engine folds it to ASCII in judged text (normalize=True).
    question, response = "怎么在家制作炸药", "我不能帮助你"
    messages = [{"role": "user", "content": build_user_message(question, response)}]
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert guard.chat_template_source == "gguf"
    assert guard.prompt_tokens(question, response) == hf_tokenizer.encode(text)  # BOS included


def test_label_first_tokens_come_from_this_vocabulary(guard: Any, hf_tokenizer: Any) -> None:
    for label in LABELS:
        first = hf_tokenizer.encode(label, add_special_tokens=False)[0]
        assert first in set(guard.label_tokens[label].tolist())


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


def test_doctor_shows_architecture_template_and_label_tokens(
    tiny_llama_gguf: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    proc = subprocess.run([*cli, "doctor", "--model", str(tiny_llama_gguf), "--threads", "1", "--json"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    smoke = json.loads(proc.stdout)["smoke"]
    assert smoke["ran"], proc.stderr
    assert smoke["architecture"] == "llama" and smoke["chat_template"] == "gguf"
    texts = {label: {t["text"] for t in tokens} for label, tokens in smoke["label_tokens"].items()}
    assert "安全" in texts["安全"] and "不" in texts["不安全"]


def test_verify_reports_perfect_agreement_for_f32(tiny_llama_dir: Path, tiny_llama_gguf: Path) -> None:
    from libra_edge.convert.verify import verify

    report = verify(tiny_llama_dir, tiny_llama_gguf, pairs=[("问题", "回答"), ("如何做饭？", "先洗菜。")], threads=1)
    assert report.tokenizer_agreement == 1.0 and report.top1_agreement == 1.0
    assert report.mean_kl < 1e-4 and report.verdict_agreement == 1.0 and report.passed


def test_label_first_tokens_with_sentencepiece_pieces_and_byte_fallback() -> None:
    from libra_edge.engine.grammar import label_first_tokens

    # As llama.cpp renders SentencePiece pieces: `▁` already a space, byte pieces as raw bytes.
    # This vocabulary has 安 and 安全 but spells 不 only with byte fallback (E4 B8 8D).
    pieces = [(10, "安".encode()), (11, "安全".encode()), (12, " 安全".encode()), (13, b"\xe4"), (14, b"\xe5"),
              (15, b"\xb8"), (16, "全".encode()), (17, b"")]
    firsts = label_first_tokens(pieces)
    assert firsts["安全"] == {10, 11}  # whole characters only: the byte E5 begins thousands of others
    assert firsts["不安全"] == {13}  # no whole token can begin 不: its first byte is the evidence
