"""Vocabulary hooks' shared parts, and the byte-level BPE `tokenizer.json` vocabulary (Qwen2/Qwen2.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from .checkpoint import Checkpoint
from libra_edge.errors import ConversionError

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX). llama.cpp
# implements it as pre-tokenizer "qwen2"; a tokenizer.json splitting any other way would be
# tokenized differently by llama.cpp, so it is refused rather than silently mis-labelled.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {QWEN2_SPLIT_REGEX: "qwen2"}


@dataclass(frozen=True)
class VocabSummary:
    """What was written, for `--dry-run` and the final report."""

    n_tokens: int
    n_normal: int
    n_control: int
    n_user_defined: int
    n_padding: int
    n_merges: int
    pre_tokenizer: str
    special_ids: dict[str, int]
    tokenizer_model: str = "gpt2"  # llama.cpp's tokenizer family: gpt2 (byte-level BPE), llama (SentencePiece)
    n_byte: int = 0  # SentencePiece byte-fallback tokens <0x00>..<0xFF>
    chat_template_source: str = "tokenizer_config.json"

    @classmethod
    def of(
        cls, tokens: list[str], types: list[gguf.TokenType], *, n_merges: int, pre_tokenizer: str,
        special_ids: dict[str, int], tokenizer_model: str, chat_template_source: str,
    ) -> VocabSummary:
        """Count the token types of a finished token list."""
        return cls(
            n_tokens=len(tokens),
            n_normal=types.count(gguf.TokenType.NORMAL),
            n_control=types.count(gguf.TokenType.CONTROL),
            n_user_defined=types.count(gguf.TokenType.USER_DEFINED),
            n_padding=types.count(gguf.TokenType.UNUSED),
            n_merges=n_merges,
            pre_tokenizer=pre_tokenizer,
            special_ids=special_ids,
            tokenizer_model=tokenizer_model,
            n_byte=types.count(gguf.TokenType.BYTE),
            chat_template_source=chat_template_source,
        )


def looks_special(token: str) -> bool:
    """`<|...|>` tokens are control tokens even where a tokenizer forgot to flag them special."""
    return token.startswith("<|") and token.endswith("|>")


def chat_template_of(tokenizer_config: dict[str, Any]) -> str | None:
    """The default chat template of tokenizer_config.json (a string, or the `default` of a named list)."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _split_regex(pre: dict[str, Any] | None) -> str | None:
    """The Split pattern of a (possibly nested) tokenizer.json pre_tokenizer."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "Sequence":
        for item in pre.get("pretokenizers", []):
            found = _split_regex(item)
            if found is not None:
                return found
        return None
    if pre.get("type") == "Split":
        pattern = pre.get("pattern") or {}
        return pattern.get("Regex") or pattern.get("String")
    return None


def build_token_list(
    tokenizer: dict[str, Any], vocab_size: int, where: str
) -> tuple[list[str], list[gguf.TokenType]]:
    """Tokens 0..vocab_size-1 with their llama.cpp types; ids with no token become `[PADi]`."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(f"{where}: only byte-level BPE tokenizers are supported (model.type={model.get('type')!r})")
    by_id: dict[int, tuple[str, gguf.TokenType]] = {
        int(i): (tok, gguf.TokenType.NORMAL) for tok, i in model["vocab"].items()
    }
    for added in tokenizer.get("added_tokens") or []:
        content, special = added["content"], bool(added.get("special"))
        kind = gguf.TokenType.CONTROL if special or looks_special(content) else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (content, kind)
    too_big = [i for i in by_id if i >= vocab_size or i < 0]
    if too_big:
        raise ConversionError(
            f"{where}: token id {max(too_big)} does not fit config.json vocab_size {vocab_size}"
        )
    tokens: list[str] = []
    types: list[gguf.TokenType] = []
    for i in range(vocab_size):
        tok, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(tok)
        types.append(kind)
    return tokens, types


def add_bpe_vocab(writer: gguf.GGUFWriter, checkpoint: Checkpoint, vocab_size: int) -> VocabSummary:
    """Write the complete byte-level BPE tokenizer (`tokenizer.json`) of `checkpoint` into `writer`."""
    where = str(checkpoint.path / "tokenizer.json")
    tokenizer = checkpoint.read_json("tokenizer.json")
    regex = _split_regex(tokenizer.get("pre_tokenizer"))
    pre = PRE_TOKENIZERS.get(regex or "")
    if pre is None:
        raise ConversionError(f"{where}: unrecognised pre-tokenizer split {regex!r} (expected Qwen2's)")
    normalizer = tokenizer.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ConversionError(f"{where}: unsupported normalizer {normalizer.get('type')!r}")
    tokens, types = build_token_list(tokenizer, vocab_size, where)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(checkpoint.path, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ConversionError(f"{where}: no BPE merges")
    if special.chat_template is None:
        raise ConversionError(
            f"{checkpoint.path / 'tokenizer_config.json'}: no chat_template (the guard prompt needs it)"
        )
    # Qwen2 never prepends a BOS token; say so explicitly rather than rely on llama.cpp defaults.
    special.add_special_token["bos"] = False
    special.add_to_gguf(writer, quiet=True)
    return VocabSummary.of(
        tokens, types, n_merges=len(special.merges), pre_tokenizer=pre,
        special_ids=dict(special.special_token_ids), tokenizer_model="gpt2",
        chat_template_source="tokenizer_config.json",
    )
