"""`QWenLMHeadModel` (the first Qwen generation; Libra-Guard-Qwen-14B-Chat), converted without its custom code.

Layout of a Qwen1 block: `ln_1` (RMSNorm), `attn.c_attn` (q, k and v fused, with bias),
`attn.c_proj` (no bias), `ln_2`, then `mlp.c_proj(mlp.w1(x) * silu(mlp.w2(x)))`: **w2 is the
gate** and w1 the up projection. `config.json` `intermediate_size` counts both halves
(the real FFN width is half of it), and so does llama.cpp's `qwen.feed_forward_length`. llama.cpp's `qwen` architecture takes the fused
c_attn as is and applies the same (half-split) RoPE as the checkpoint. Qwen1's own code
also applies dynamic NTK scaling and log-n attention scaling past `seq_length` tokens
(2048), which llama.cpp does not: judge pairs that fit in that many tokens.
"""

from __future__ import annotations

import gguf

from .architectures import ModelSpec, register
from .vocab import VocabSummary, chat_template_of
from .vocab_tiktoken import add_tiktoken_vocab


@register
class QwenSpec(ModelSpec):
    """Qwen-7B/14B-Chat; vocabulary from `qwen.tiktoken`, chat template supplied by the converter."""

    hf_architecture = "QWenLMHeadModel"
    gguf_arch = gguf.MODEL_ARCH.QWEN
    required_files = {
        "qwen.tiktoken": "Qwen1 checkpoints carry their vocabulary in this file; copy it from the model's repository",
    }
    transformers_reference = False  # transformers has no Qwen1 class; its custom code is never run

    def dims(self) -> dict[str, int]:
        """hidden, heads, head_dim, ffn (one half of config's intermediate_size), layers, vocab."""
        hidden = self.int_param("hidden_size")
        heads = self.int_param("num_attention_heads")
        intermediate = self.int_param("intermediate_size")
        if intermediate % 2:
            raise self.refuse(f"intermediate_size {intermediate} is odd (Qwen1 counts w1 and w2 together)")
        head_dim = self.config.get("kv_channels") or hidden // heads
        if head_dim * heads != hidden:
            raise self.refuse(f"kv_channels {head_dim} x {heads} heads != hidden_size {hidden}")
        return {"hidden": hidden, "heads": heads, "head_dim": int(head_dim), "ffn": intermediate // 2,
                "layers": self.n_layers, "vocab": self.vocab_size}

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        d = self.dims()
        if float(self.config.get("rotary_pct", 1.0)) != 1.0:
            raise self.refuse(f"rotary_pct {self.config['rotary_pct']} is not supported (only 1.0)")
        if not self.config.get("no_bias", True):
            raise self.refuse("no_bias=false is not supported (Qwen1 releases have biases on c_attn only)")
        if self.config.get("tie_word_embeddings"):
            raise self.refuse("tie_word_embeddings=true is not supported for Qwen1")
        writer.add_context_length(self.int_param("max_position_embeddings"))
        writer.add_embedding_length(d["hidden"])
        # llama.cpp's `qwen` keeps Qwen1's convention: n_ff counts w1 and w2 together (it halves it).
        writer.add_feed_forward_length(2 * d["ffn"])
        writer.add_block_count(d["layers"])
        writer.add_head_count(d["heads"])
        writer.add_head_count_kv(d["heads"])
        writer.add_rope_dimension_count(d["head_dim"])
        writer.add_rope_freq_base(float(self.config.get("rotary_emb_base", 10000.0)))
        writer.add_layer_norm_rms_eps(float(self.config.get("layer_norm_epsilon", 1e-6)))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.dims()
        h, ffn = d["hidden"], d["ffn"]
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (d["vocab"], h),
            "output_norm.weight": (h,),
            "output.weight": (d["vocab"], h),
        }
        for i in range(d["layers"]):
            b = f"blk.{i}."
            shapes.update({
                b + "attn_norm.weight": (h,),
                b + "attn_qkv.weight": (3 * h, h),
                b + "attn_qkv.bias": (3 * h,),
                b + "attn_output.weight": (h, h),
                b + "ffn_norm.weight": (h,),
                b + "ffn_gate.weight": (ffn, h),  # mlp.w2
                b + "ffn_up.weight": (ffn, h),  # mlp.w1
                b + "ffn_down.weight": (h, ffn),  # mlp.c_proj
            })
        return shapes

    def add_vocab(self, writer: gguf.GGUFWriter) -> VocabSummary:
        template = None
        if (self.checkpoint.path / "tokenizer_config.json").is_file():
            template = chat_template_of(self.checkpoint.read_json("tokenizer_config.json"))
        return add_tiktoken_vocab(writer, self.checkpoint, self.vocab_size, template)
