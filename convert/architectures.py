"""Architecture registry keyed by `config.json` `architectures[0]`: hyper-parameters and tensor plans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gguf

from convert.checkpoint import Checkpoint
from convert.safetensors_reader import TensorRef
from libra_edge.errors import ConversionError


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: its GGUF name and where its data comes from."""

    gguf_name: str
    source: TensorRef

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape in the checkpoint's (row-major) order; GGUF stores it reversed."""
        return self.source.shape


class ModelSpec:
    """Per-architecture hooks: hyper-parameters to write and the tensor rename/validation plan."""

    hf_architecture: ClassVar[str]
    gguf_arch: ClassVar[gguf.MODEL_ARCH]

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.config = checkpoint.config

    @property
    def arch_name(self) -> str:
        """The llama.cpp architecture string (`general.architecture`)."""
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix: the token list is padded to this length."""
        return self.int_param("vocab_size")

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        """Write the architecture's hyper-parameters."""
        raise NotImplementedError

    def plan_tensors(self) -> list[PlannedTensor]:
        """Every tensor to write, renamed to GGUF names and checked against the config."""
        raise NotImplementedError

    def int_param(self, key: str) -> int:
        """An integer from config.json, or a one-line error naming the key."""
        value = self.config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(
                f"{self.checkpoint.path / 'config.json'}: `{key}` must be a positive integer, got {value!r}"
            )
        return value


ARCHITECTURES: dict[str, type[ModelSpec]] = {}


def register(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator adding an architecture to the registry under its HF class name."""
    ARCHITECTURES[cls.hf_architecture] = cls
    return cls


def spec_for(checkpoint: Checkpoint) -> ModelSpec:
    """The spec for this checkpoint's architecture; refuses anything not registered."""
    arch = checkpoint.architecture
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ConversionError(
            f"{checkpoint.path / 'config.json'}: unsupported architecture {arch!r} (supported: {supported})"
        )
    return cls(checkpoint)


@register
class Qwen2Spec(ModelSpec):
    """Qwen2 / Qwen2.5 decoder (every Libra-Guard Qwen2.5 size): GQA, q/k/v biases, SwiGLU, RMSNorm."""

    hf_architecture = "Qwen2ForCausalLM"
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    # Old checkpoints carry RoPE caches as buffers; llama.cpp computes them itself.
    IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

    def _dims(self) -> dict[str, int]:
        hidden = self.int_param("hidden_size")
        heads = self.int_param("num_attention_heads")
        kv = self.config.get("num_key_value_heads") or heads
        head_dim = self.config.get("head_dim") or hidden // heads
        return {
            "hidden": hidden, "heads": heads, "kv": int(kv), "head_dim": int(head_dim),
            "ffn": self.int_param("intermediate_size"), "layers": self.int_param("num_hidden_layers"),
            "vocab": self.vocab_size,
        }

    @property
    def tied(self) -> bool:
        """Whether the output projection reuses the token embedding (Qwen2.5 0.5B-3B)."""
        return bool(self.config.get("tie_word_embeddings", False))

    def rope_theta(self) -> float:
        """RoPE base: top-level `rope_theta` (transformers 4) or `rope_parameters` (transformers 5)."""
        params = self.config.get("rope_parameters") or {}
        theta = self.config.get("rope_theta", params.get("rope_theta", 10000.0))
        return float(theta)

    def rope_scaling(self) -> dict[str, Any] | None:
        """The RoPE scaling block, if any (None for the plain RoPE every Qwen2.5 release ships)."""
        scaling = self.config.get("rope_scaling") or self.config.get("rope_parameters") or None
        if not scaling:
            return None
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return None if kind in (None, "default") else scaling

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        cfg_path = self.checkpoint.path / "config.json"
        d = self._dims()
        if self.config.get("hidden_act", "silu") != "silu":
            raise ConversionError(f"{cfg_path}: hidden_act {self.config['hidden_act']!r} is not supported")
        if self.config.get("use_sliding_window"):
            raise ConversionError(f"{cfg_path}: use_sliding_window=true is not supported by llama.cpp's qwen2")
        writer.add_context_length(self.int_param("max_position_embeddings"))
        writer.add_embedding_length(d["hidden"])
        writer.add_feed_forward_length(d["ffn"])
        writer.add_block_count(d["layers"])
        writer.add_head_count(d["heads"])
        writer.add_head_count_kv(d["kv"])
        if d["head_dim"] * d["heads"] != d["hidden"]:
            writer.add_key_length(d["head_dim"])
            writer.add_value_length(d["head_dim"])
        writer.add_rope_freq_base(self.rope_theta())
        writer.add_layer_norm_rms_eps(float(self.config.get("rms_norm_eps", 1e-6)))
        scaling = self.rope_scaling()
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "yarn":
                raise ConversionError(f"{cfg_path}: RoPE scaling type {kind!r} is not supported (only yarn)")
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name -> shape (checkpoint order) that the config implies."""
        d = self._dims()
        h, q, kv, ffn = d["hidden"], d["heads"] * d["head_dim"], d["kv"] * d["head_dim"], d["ffn"]
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (d["vocab"], h),
            "output_norm.weight": (h,),
        }
        if not self.tied:
            shapes["output.weight"] = (d["vocab"], h)
        for i in range(d["layers"]):
            b = f"blk.{i}."
            shapes.update({
                b + "attn_norm.weight": (h,),
                b + "attn_q.weight": (q, h), b + "attn_q.bias": (q,),
                b + "attn_k.weight": (kv, h), b + "attn_k.bias": (kv,),
                b + "attn_v.weight": (kv, h), b + "attn_v.bias": (kv,),
                b + "attn_output.weight": (h, q),
                b + "ffn_norm.weight": (h,),
                b + "ffn_gate.weight": (ffn, h),
                b + "ffn_up.weight": (ffn, h),
                b + "ffn_down.weight": (h, ffn),
            })
        return shapes

    def plan_tensors(self) -> list[PlannedTensor]:
        expected = self.expected_shapes()
        name_map = gguf.get_tensor_name_map(self.gguf_arch, self._dims()["layers"])
        planned: dict[str, PlannedTensor] = {}
        for hf_name, ref in self.checkpoint.tensors.items():
            if hf_name.endswith(self.IGNORED_SUFFIXES):
                continue
            if self.tied and hf_name == "lm_head.weight":
                continue  # a copy of the embedding some exports keep; llama.cpp reuses token_embd
            new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None or new_name not in expected:
                raise ConversionError(f"{ref.file}: unexpected tensor {hf_name!r} for {self.hf_architecture}")
            if ref.shape != expected[new_name]:
                raise ConversionError(
                    f"{ref.file}: tensor {hf_name!r} has shape {list(ref.shape)}, "
                    f"config.json implies {list(expected[new_name])}"
                )
            planned[new_name] = PlannedTensor(new_name, ref)
        missing = [n for n in expected if n not in planned]
        if missing:
            raise ConversionError(
                f"{self.checkpoint.path}: {len(missing)} tensor(s) missing from the weights, "
                f"first {missing[0]!r} (a shard missing or a different model?)"
            )
        position = {n: i for i, n in enumerate(expected)}
        return [planned[n] for n in sorted(planned, key=lambda n: (_block_of(n), position[n]))]


def _block_of(gguf_name: str) -> int:
    """Write order: embeddings first, then blocks in order, then the output head."""
    if gguf_name.startswith("blk."):
        return int(gguf_name.split(".")[1])
    return -1 if gguf_name.startswith("token_embd") else 1 << 30
