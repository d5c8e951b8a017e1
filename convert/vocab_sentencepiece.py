"""SentencePiece vocabulary (`tokenizer.model`, as Llama and Yi ship it) read without the sentencepiece package.

`tokenizer.model` is a protocol-buffer `ModelProto`; the few fields llama.cpp needs (pieces
with their scores and types, the model type, byte fallback and the normalizer flags) are
read here with a small wire-format decoder, so converting needs no extra package. Added
tokens, special ids, `add_bos` and the chat template come from `tokenizer_config.json`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .checkpoint import Checkpoint
from .vocab import VocabSummary, chat_template_of, looks_special
from libra_edge.errors import ConversionError

# sentencepiece_model.proto: ModelProto.pieces = 1, trainer_spec = 2, normalizer_spec = 3;
# SentencePiece.piece = 1, score = 2, type = 3; TrainerSpec.model_type = 3, byte_fallback = 35;
# NormalizerSpec.name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3, remove_extra_whitespaces = 4.
_BPE = 2
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
# SentencePiece piece types share llama.cpp's numbering (gguf.TokenType).
_PIECE_TYPES = {t.value: t for t in gguf.TokenType}
ADDED_TOKEN_SCORE = -1000.0  # what llama.cpp's own converter gives tokens added on top


@dataclass
class SentencePieceModel:
    """The parts of a `tokenizer.model` that decide how llama.cpp tokenizes."""

    pieces: list[tuple[str, float, gguf.TokenType]] = field(default_factory=list)
    model_type: int = 1
    byte_fallback: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def parse_sentencepiece(data: bytes) -> SentencePieceModel:
    """Decode a serialized `ModelProto`; ValueError when it is not one."""
    model = SentencePieceModel()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            piece, score, kind = "", 0.0, 1
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    (score,) = struct.unpack("<f", v)
                elif n == 3 and w == 0:
                    kind = v
            if kind not in _PIECE_TYPES:
                raise ValueError(f"piece {piece!r} has unknown type {kind}")
            model.pieces.append((piece, score, _PIECE_TYPES[kind]))
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    model.model_type = v
                elif n == 35 and w == 0:
                    model.byte_fallback = bool(v)
        elif number == 3 and wire == 2:
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    model.normalizer_name = v.decode("utf-8")
                elif n == 2 and w == 2:
                    model.precompiled_charsmap = bytes(v)
                elif n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    model.remove_extra_whitespaces = bool(v)
    if not model.pieces:
        raise ValueError("no pieces")
    return model


def read_sentencepiece(path: Path) -> SentencePieceModel:
    """`tokenizer.model`, checked to be one llama.cpp's SentencePiece tokenizer reproduces exactly."""
    try:
        model = parse_sentencepiece(path.read_bytes())
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ConversionError(f"{path}: not a SentencePiece model ({exc})") from None
    if model.model_type != _BPE:
        kind = _MODEL_TYPES.get(model.model_type, str(model.model_type))
        raise ConversionError(f"{path}: SentencePiece model type {kind!r} is not supported (only BPE, as Llama and Yi use)")
    if not model.byte_fallback:
        raise ConversionError(
            f"{path}: SentencePiece model without byte fallback: llama.cpp cannot tokenize characters outside its vocabulary"
        )
    if model.precompiled_charsmap:
        raise ConversionError(
            f"{path}: SentencePiece normalizer {model.normalizer_name!r} rewrites text before tokenizing, "
            "which llama.cpp does not reproduce (only 'identity' is supported)"
        )
    # `remove_extra_whitespaces` is left alone on purpose: transformers' Llama tokenizer (what
    # the guards were evaluated with) keeps repeated spaces whatever the model says, and so
    # does llama.cpp; only the sentencepiece library itself would collapse them.
    return model


def _token_content(value: Any) -> str | None:
    """`"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json spells a special token."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _added_tokens(checkpoint: Checkpoint, tokenizer_config: dict[str, Any]) -> list[tuple[int, str, bool]]:
    """(id, content, special) of every added token: tokenizer_config.json, then added_tokens.json."""
    found: dict[int, tuple[str, bool]] = {}
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    for key, data in decoder.items():
        if not isinstance(data, dict) or not isinstance(data.get("content"), str) or not str(key).isdigit():
            raise ConversionError(f"{checkpoint.path / 'tokenizer_config.json'}: malformed added token {key!r}")
        found[int(key)] = (data["content"], bool(data.get("special")))
    if (checkpoint.path / "added_tokens.json").is_file():
        for content, token_id in checkpoint.read_json("added_tokens.json").items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise ConversionError(f"{checkpoint.path / 'added_tokens.json'}: malformed id for {content!r}")
            found.setdefault(token_id, (str(content), False))
    return [(i, content, special) for i, (content, special) in sorted(found.items())]


def _special_ids(
    tokens: list[str], types: list[gguf.TokenType], tokenizer_config: dict[str, Any], model_config: dict[str, Any]
) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json's tokens by content, else config.json's ids."""
    ids = {tok: i for i, tok in enumerate(tokens) if types[i] != gguf.TokenType.UNUSED}
    found: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        content = _token_content(tokenizer_config.get(f"{role}_token"))
        token_id = ids.get(content) if content is not None else None
        if token_id is None and isinstance(model_config.get(f"{role}_token_id"), int):
            token_id = int(model_config[f"{role}_token_id"])
        if token_id is None and role == "unk":
            token_id = next((i for i, t in enumerate(types) if t == gguf.TokenType.UNKNOWN), None)
        if token_id is not None and 0 <= token_id < len(tokens):
            found[role] = token_id
    return found


def add_sentencepiece_vocab(writer: gguf.GGUFWriter, checkpoint: Checkpoint, vocab_size: int) -> VocabSummary:
    """Write the SentencePiece vocabulary of `checkpoint` (tokens, scores, types, specials, template)."""
    sp_path = checkpoint.path / "tokenizer.model"
    config_path = checkpoint.path / "tokenizer_config.json"
    sp = read_sentencepiece(sp_path)
    if len(sp.pieces) > vocab_size:
        raise ConversionError(
            f"{sp_path}: {len(sp.pieces)} pieces do not fit config.json vocab_size {vocab_size}"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [ADDED_TOKEN_SCORE] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for i, (piece, score, kind) in enumerate(sp.pieces):
        tokens[i], scores[i], types[i] = piece, score, kind

    tokenizer_config = checkpoint.read_json("tokenizer_config.json")
    for token_id, content, special in _added_tokens(checkpoint, tokenizer_config):
        if token_id >= vocab_size:
            continue  # no embedding row: the model can neither read nor write it
        if types[token_id] in (gguf.TokenType.UNKNOWN, gguf.TokenType.BYTE) and tokens[token_id] == content:
            continue  # <unk> and byte pieces keep their own type
        if special or looks_special(content):
            types[token_id] = gguf.TokenType.CONTROL
        else:
            types[token_id] = gguf.TokenType.USER_DEFINED
            content = content.replace("\u2581", " ")  # llama.cpp matches user-defined text literally
        if token_id >= len(sp.pieces):
            scores[token_id] = ADDED_TOKEN_SCORE
        tokens[token_id] = content

    template = chat_template_of(tokenizer_config)
    if template is None:
        raise ConversionError(f"{config_path}: no chat_template (the guard prompt needs it)")

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(sp.add_dummy_prefix)

    special_ids = _special_ids(tokens, types, tokenizer_config, checkpoint.config)
    adders = {
        "bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id,
    }
    for role, special_id in special_ids.items():
        adders[role](special_id)
    # LlamaTokenizer's defaults when tokenizer_config.json does not say: BOS yes, EOS no.
    writer.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", True)))
    writer.add_add_eos_token(bool(tokenizer_config.get("add_eos_token", False)))
    writer.add_chat_template(template)
    return VocabSummary.of(
        tokens, types, n_merges=0, pre_tokenizer="default", special_ids=special_ids,
        tokenizer_model="llama", chat_template_source="tokenizer_config.json",
    )

