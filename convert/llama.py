"""`LlamaForCausalLM` (Libra-Guard-Yi-1.5-9B-Chat): GQA, no biases, SwiGLU, RMSNorm, SentencePiece vocabulary."""

from __future__ import annotations

import gguf
import numpy as np

from .architectures import DecoderSpec, Transform, register
from .vocab import VocabSummary
from .vocab_sentencepiece import add_sentencepiece_vocab


def rope_interleave(n_head: int) -> Transform:
    """Reorder q/k rows from transformers' half-split RoPE layout to llama.cpp's interleaved one.

    transformers rotates (x[i], x[i + d/2]) pairs within each head; llama.cpp's `llama`
    architecture rotates (x[2i], x[2i + 1]). Permuting the rows of the q and k projections
    makes the two compute the same attention (llama.cpp's own converter does the same).
    """

    def permute(w: np.ndarray) -> np.ndarray:
        rows = w.shape[0]
        out: np.ndarray = w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return out

    return permute


@register
class LlamaSpec(DecoderSpec):
    """Llama decoder as Yi-1.5 uses it; the vocabulary is SentencePiece `tokenizer.model`."""

    hf_architecture = "LlamaForCausalLM"
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    required_files = {
        "tokenizer.model": "Llama/Yi checkpoints carry their SentencePiece vocabulary in this file; "
        "copy it from the model's repository",
        "tokenizer_config.json": "it holds the chat template and special tokens",
    }

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        for key in ("attention_bias", "mlp_bias"):
            if self.config.get(key):
                raise self.refuse(f"{key}=true is not supported")
        self.add_common_hparams(writer)
        writer.add_rope_dimension_count(self.dims()["head_dim"])
        scaling = self.rope_scaling()
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "linear":
                raise self.refuse(f"RoPE scaling type {kind!r} is not supported (only linear)")
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))

    def transform_for(self, gguf_name: str) -> Transform | None:
        d = self.dims()
        if gguf_name.endswith("attn_q.weight"):
            return rope_interleave(d["heads"])
        if gguf_name.endswith("attn_k.weight"):
            return rope_interleave(d["kv"])
        return None

    def add_vocab(self, writer: gguf.GGUFWriter) -> VocabSummary:
        return add_sentencepiece_vocab(writer, self.checkpoint, self.vocab_size)
