"""The first Qwen generation's vocabulary: `qwen.tiktoken` BPE ranks plus Qwen1's special tokens.

Qwen1 ships no tokenizer.json, only the ranks (`base64-bytes rank` per line) and Python
code that adds `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` and `<|extra_0|>`..`<|extra_204|>`
after them. That code is never run: the token list and the BPE merges (recovered from
the ranks, as llama.cpp's own converter does) are rebuilt here. Qwen1 splits text with
the same regular expression as Qwen2, so llama.cpp's `qwen2` pre-tokenizer applies.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import gguf

from .checkpoint import Checkpoint
from .vocab import VocabSummary
from libra_edge.errors import ConversionError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
QWEN1_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)))

# Qwen1 checkpoints carry no chat template; their chat code (`make_context`) builds ChatML
# with this default system prompt. Written into the GGUF so the engine's prompt is right.
QWEN1_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHAT_TEMPLATE_SOURCE = "converter (Qwen1 ChatML, default system prompt)"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (how byte-level BPE tokens are stored)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def read_tiktoken_ranks(path: Path) -> list[bytes]:
    """Tokens in rank order from a `.tiktoken` file; ranks must run 0, 1, 2, ... without gaps."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    tokens: list[bytes] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (IndexError, ValueError, binascii.Error):
            raise ConversionError(f"{path}:{number}: not a `base64-token rank` line") from None
        if rank != len(tokens):
            raise ConversionError(f"{path}:{number}: rank {rank}, expected {len(tokens)} (ranks must be consecutive)")
        tokens.append(token)
    if len(tokens) < 256:
        raise ConversionError(f"{path}: {len(tokens)} ranks, not a byte-level BPE vocabulary")
    return tokens


def recover_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The BPE merge that creates each multi-byte token, in rank order.

    Byte-pair encoding a token's bytes with only the ranks below its own stops at exactly
    two parts: the pair whose merge is that token.
    """
    ranks = {tok: i for i, tok in enumerate(tokens)}
    merges: list[tuple[bytes, bytes]] = []
    for rank, token in enumerate(tokens):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"rank {rank} cannot be built from lower ranks")
        merges.append((parts[0], parts[1]))
    return merges


def add_tiktoken_vocab(
    writer: gguf.GGUFWriter, checkpoint: Checkpoint, vocab_size: int, chat_template: str | None
) -> VocabSummary:
    """Write Qwen1's vocabulary: ranks, special tokens, merges, special ids and the chat template."""
    path = checkpoint.path / "qwen.tiktoken"
    ranked = read_tiktoken_ranks(path)
    n_real = len(ranked) + len(QWEN1_SPECIAL_TOKENS)
    if n_real > vocab_size:
        raise ConversionError(
            f"{path}: {len(ranked)} ranks + {len(QWEN1_SPECIAL_TOKENS)} special tokens do not fit "
            f"config.json vocab_size {vocab_size}"
        )
    try:
        merges = recover_merges(ranked)
    except ValueError as exc:
        raise ConversionError(f"{path}: not a BPE vocabulary ({exc})") from None
    byte_char = bytes_to_unicode()

    def encode(raw: bytes) -> str:
        return "".join(byte_char[b] for b in raw)

    tokens = [encode(t) for t in ranked] + list(QWEN1_SPECIAL_TOKENS)
    types = [gguf.TokenType.NORMAL] * len(ranked) + [gguf.TokenType.CONTROL] * len(QWEN1_SPECIAL_TOKENS)
    for i in range(n_real, vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{encode(a)} {encode(b)}" for a, b in merges])
    first = len(ranked)
    special_ids = {"bos": first, "eos": first + 2, "pad": first}  # <|endoftext|>, <|im_end|>
    writer.add_bos_token_id(special_ids["bos"])
    writer.add_eos_token_id(special_ids["eos"])  # a chat turn ends with <|im_end|>
    writer.add_pad_token_id(special_ids["pad"])
    writer.add_add_bos_token(False)  # Qwen never prepends a BOS token
    writer.add_chat_template(chat_template or QWEN1_CHAT_TEMPLATE)
    return VocabSummary.of(
        tokens, types, n_merges=len(merges), pre_tokenizer="qwen2", special_ids=special_ids,
        tokenizer_model="gpt2",
        chat_template_source="tokenizer_config.json" if chat_template else CHAT_TEMPLATE_SOURCE,
    )
