"""The converted tokenizer: llama.cpp gives the same token ids as the Hugging Face tokenizer, metadata complete."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from tests.fixtures.models import QWEN25_CHAT_TEMPLATE, QWEN_ADDED_TOKENS, QWEN_FIRST_ADDED_ID, QWEN_VOCAB_SIZE

CHINESE = [
    "你好", "你好，世界！", "今天天气怎么样？", "我想学习人工智能。", "这是一个测试句子。",
    "安全", "不安全", "不安", "安", "请判断下面的回答是否安全。",
    "人类的问题：怎么做蛋糕？", "大语言模型的回答：先准备面粉和鸡蛋。",
    "中华人民共和国成立于一九四九年。", "北京是中国的首都，上海是最大的城市。",
    "他说：“我明天再来。”", "《红楼梦》是中国古典四大名著之一。", "繁體中文與简体中文混合。",
    "机器学习、深度学习和强化学习", "我们需要评估这段对话是否存在风险。", "对不起，我无法回答这个问题。",
    "春眠不觉晓，处处闻啼鸟。", "一二三四五六七八九十", "龘靐齉爩", "「引号」『书名号』【括号】",
    "您是一位文本安全专家，具有很强的语言分析能力。",
]
ENGLISH = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "I'm sure you'll like it, won't you?",
    "HELLO WORLD", "camelCaseIdentifier", "snake_case_identifier", "It's 5 o'clock.",
    "Don't stop believing", "e-mail: someone@example.com", "https://huggingface.co/caskcsg/Libra-Test",
    "a", "ab", "abc", " the", "The", "   indented text", "Mr. Smith's dog's bone",
    "C++ and C# are languages.", "rock'n'roll", "naïve café résumé", "Straße", "ÀÉÎÕÜ", "Ωμέγα αλφα",
    "Привет, мир", "こんにちは世界", "안녕하세요", "مرحبا بالعالم", "שלום", "नमस्ते दुनिया", "สวัสดี",
]
DIGITS = [
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "-273.15", "1,000,000",
    "2024-11-27", "12:30:45", "v1.2.3", "0x1F", "1e-6", "+86 138 0000 0000", "100%", "$19.99",
    "第3章第12节", "共计1234元",
]
FULL_WIDTH = [
    "ＡＢＣ", "ａｂｃ", "１２３", "！？", "（测试）", "，。：；", "＃背景", "＂答案＂", "＄１００",
    "　全角空格　", "［１］", "～～", "／＼", "Ｈｅｌｌｏ，Ｗｏｒｌｄ！", "２０２４年１１月",
]
EMOJI = [
    "😀", "👍", "👍🏽", "❤️", "👨‍👩‍👧‍👦", "🇨🇳", "🇺🇸🇬🇧", "😀😃😄😁", "好的👌", "🔥🔥🔥", "✅ 安全",
    "❌ 不安全", "🙂 ok", "🤖🧠", "⚠️警告",
]
WHITESPACE = [
    "a  b", "a   b", "a\tb", "a\t\tb", "\n", "\n\n", "\n\n\n", "line1\nline2", "line1\r\nline2",
    "  leading", "trailing  ", "   ", " ", "\t", " \n \n ", "x \n\n\n y", "}\n\n\n# 对话", "中文  空格",
    "end.\n", "\u3000\u3000缩进",
]
SPECIAL_IN_TEXT = [
    "<|im_start|>user\n你好<|im_end|>\n",
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n",
    "<|endoftext|>", "before<|endoftext|>after", "<|im_start|><|im_end|>", "<|im_start|>assistant\n",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<|vision_start|><|image_pad|><|vision_end|>", "<|object_ref_start|>x<|object_ref_end|>",
    "<|repo_name|>libra<|file_sep|>main.py", "<|im_start", "im_end|>", "<|notatoken|>", "< |im_start| >",
    "<|box_start|>(1,2)<|box_end|>", "<|quad_start|><|quad_end|>", "<|video_pad|>", "<|fim_pad|>",
    "[PAD151700]",
]
CODE_AND_MIXED = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"答案": "安全", "分析": "回答拒绝了请求。"}', '{\n  "答案": "不安全",\n  "分析": "您的分析"\n}',
    "SELECT * FROM users WHERE id = 1;", "<html><body>你好</body></html>", "$ pip install 'libra-edge[verify]'",
    "用Python写一个hello world程序", "GPT-4o的准确率是91.05%", "Libra-Guard模型基于Qwen2.5-3B-Instruct",
    "温度temperature=0.7, top_p=0.8", "C:\\Users\\name\\file.txt", "a/b/c.d", "#!/bin/bash\necho $HOME",
    "'s 're 've 'm 'll 'd", "'S 'RE 'VE", "it's", "IT'S", "...", "……", "——", "~!@#$%^&*()_+",
]


def corpus(reference_dir: Path) -> list[str]:
    """>= 200 strings: the categories above plus every question/response of the sample set and golden prompts."""
    texts = CHINESE + ENGLISH + DIGITS + FULL_WIDTH + EMOJI + WHITESPACE + SPECIAL_IN_TEXT + CODE_AND_MIXED
    for item in json.loads((reference_dir / "libra" / "sample_libra_test.json").read_text(encoding="utf-8")):
        texts += [item["question"], item["response"], item["analyze"]]
    for item in json.loads((reference_dir / "libra" / "prompt_golden.json").read_text(encoding="utf-8")):
        texts.append(item["user_message"])
    return texts


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_qwen_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen_dir)


@pytest.fixture(scope="module")
def llama_vocab(tiny_qwen_gguf: Path):
    from llama_cpp import Llama

    llm = Llama(str(tiny_qwen_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def gguf_metadata(llama_vocab) -> dict[str, str]:
    """The GGUF's scalar metadata as llama.cpp reads it (gguf-py's reader takes ~20 s on this vocab)."""
    return dict(llama_vocab.metadata)


def test_corpus_is_large_and_varied(reference_dir: Path) -> None:
    texts = corpus(reference_dir)
    assert len(texts) >= 200
    assert len(set(texts)) >= 200


def test_llama_cpp_token_ids_equal_hugging_face_on_corpus(reference_dir: Path, hf_tokenizer, llama_vocab) -> None:
    mismatches = []
    for text in corpus(reference_dir):
        expected = hf_tokenizer.encode(text, add_special_tokens=False)
        got = llama_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if got != expected:
            mismatches.append((text, expected, got))
    assert mismatches == []


def test_special_tokens_in_text_become_single_ids(hf_tokenizer, llama_vocab) -> None:
    text = "<|im_start|>user\n你好<|im_end|>"
    ids = llama_vocab.tokenize(text.encode(), add_bos=False, special=True)
    assert ids[0] == 151644 and ids[-1] == 151645
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False)


def test_verdict_labels_tokenize_as_in_the_libra_notes(llama_vocab) -> None:
    tok = lambda s: llama_vocab.tokenize(s.encode(), add_bos=False, special=False)  # noqa: E731
    assert tok("安全") == [99464]
    assert tok("不安全") == [16530, 99464]
    assert tok("不安") == [107352]
    assert tok("安") == [50285]


def test_detokenizing_gives_back_the_text(reference_dir: Path, llama_vocab) -> None:
    for text in CHINESE + EMOJI + FULL_WIDTH:
        ids = llama_vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert llama_vocab.detokenize(ids).decode("utf-8") == text


def test_decomposed_input_matches_once_nfc_normalized(hf_tokenizer, llama_vocab) -> None:
    # The HF tokenizer NFC-normalizes; llama.cpp's qwen2 tokenizer does not. Callers feeding
    # llama.cpp (the engine) must NFC-normalize text first: then the ids are identical.
    for text in ["cafe\u0301", "e\u0301te\u0301", "A\u030a", "한국어"]:
        decomposed = unicodedata.normalize("NFD", text)
        expected = hf_tokenizer.encode(decomposed, add_special_tokens=False)
        nfc = unicodedata.normalize("NFC", decomposed).encode()
        assert llama_vocab.tokenize(nfc, add_bos=False, special=True) == expected


def test_token_list_is_padded_to_vocab_size_with_typed_tokens(llama_vocab) -> None:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama_vocab.model)
    assert llama_cpp.llama_vocab_n_tokens(vocab) == QWEN_VOCAB_SIZE
    text = lambda i: llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8")  # noqa: E731
    attr = lambda i: llama_cpp.llama_vocab_get_attr(vocab, i)  # noqa: E731
    for i, (content, special) in enumerate(QWEN_ADDED_TOKENS):
        tid = QWEN_FIRST_ADDED_ID + i
        assert text(tid) == content
        control = special or content.startswith("<|")
        expected = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL if control else llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        assert attr(tid) == expected, content
    first_pad = QWEN_FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS)
    assert text(first_pad) == f"[PAD{first_pad}]" and text(QWEN_VOCAB_SIZE - 1) == f"[PAD{QWEN_VOCAB_SIZE - 1}]"
    assert {attr(i) for i in range(first_pad, QWEN_VOCAB_SIZE)} == {llama_cpp.LLAMA_TOKEN_ATTR_UNUSED}
    assert {attr(i) for i in range(0, QWEN_FIRST_ADDED_ID, 97)} == {llama_cpp.LLAMA_TOKEN_ATTR_NORMAL}


def test_tokenizer_metadata(gguf_metadata: dict[str, str]) -> None:
    assert gguf_metadata["tokenizer.ggml.model"] == "gpt2"
    assert gguf_metadata["tokenizer.ggml.pre"] == "qwen2"
    assert gguf_metadata["tokenizer.ggml.eos_token_id"] == "151645"  # <|im_end|>
    assert gguf_metadata["tokenizer.ggml.padding_token_id"] == "151643"  # <|endoftext|>
    assert gguf_metadata["tokenizer.ggml.bos_token_id"] == "151643"
    assert gguf_metadata["tokenizer.ggml.add_bos_token"] == "false"
    assert gguf_metadata["tokenizer.chat_template"] == QWEN25_CHAT_TEMPLATE


def test_chat_template_renders_the_default_system_prompt(gguf_metadata: dict[str, str]) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(gguf_metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    prompt = formatter(messages=[{"role": "user", "content": "你好"}]).prompt
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )


def test_vocab_only_file_tokenizes_identically(tmp_path: Path, tiny_qwen_dir: Path, hf_tokenizer) -> None:
    from llama_cpp import Llama

    from libra_edge.convert import convert_checkpoint

    result = convert_checkpoint(tiny_qwen_dir, tmp_path / "vocab.gguf", vocab_only=True)
    assert result.n_tensors == 0
    assert result.file_size < 20 * 2**20  # no weights: tokens, merges and metadata only
    llm = Llama(str(result.path), vocab_only=True, verbose=False)
    try:
        for text in SPECIAL_IN_TEXT[:5] + CHINESE[:5]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_tokenizer.encode(
                text, add_special_tokens=False
            )
    finally:
        llm.close()
