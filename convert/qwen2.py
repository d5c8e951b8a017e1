"""`Qwen2ForCausalLM` (every Libra-Guard Qwen2.5 size): GQA, q/k/v biases, SwiGLU, RMSNorm, byte-level BPE."""

from __future__ import annotations

import gguf

from .architectures import DecoderSpec, register
from .vocab import VocabSummary, add_bpe_vocab

_TOKENIZER_NEEDED = "the tokenizer must be converted with the weights"


@register
class Qwen2Spec(DecoderSpec):
    """Qwen2 / Qwen2.5 decoder; the vocabulary comes from `tokenizer.json` (byte-level BPE)."""

    hf_architecture = "Qwen2ForCausalLM"
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    required_files = {"tokenizer.json": _TOKENIZER_NEEDED, "tokenizer_config.json": _TOKENIZER_NEEDED}

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        if self.config.get("use_sliding_window"):
            raise self.refuse("use_sliding_window=true is not supported by llama.cpp's qwen2")
        self.add_common_hparams(writer)
        scaling = self.rope_scaling()
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "yarn":
                raise self.refuse(f"RoPE scaling type {kind!r} is not supported (only yarn)")
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))

    def expected_shapes(self, *, qkv_bias: bool = True) -> dict[str, tuple[int, ...]]:
        return super().expected_shapes(qkv_bias=qkv_bias)

    def add_vocab(self, writer: gguf.GGUFWriter) -> VocabSummary:
        return add_bpe_vocab(writer, self.checkpoint, self.vocab_size)
