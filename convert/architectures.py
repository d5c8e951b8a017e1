"""Architecture registry keyed by `config.json` `architectures[0]`: the hooks every architecture module fills in.

One module per architecture (`qwen2.py`, `llama.py`, `qwen1.py`) subclasses `ModelSpec` and
registers itself; each brings its own hyper-parameters, tensor plan and vocabulary hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import gguf
import numpy as np

from .checkpoint import Checkpoint
from .safetensors_reader import TensorRef
from .vocab import VocabSummary
from libra_edge.errors import ConversionError

# A change applied to a whole tensor (float32, checkpoint order) before it is written.
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: its GGUF name, where its data comes from, and any reordering."""

    gguf_name: str
    source: TensorRef
    transform: Transform | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape in the checkpoint's (row-major) order; GGUF stores it reversed."""
        return self.source.shape


class ModelSpec:
    """Per-architecture hooks: required files, hyper-parameters, tensor plan and vocabulary."""

    hf_architecture: ClassVar[str]
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # Tokenizer files the vocabulary hook reads, each with why it is needed (for the error).
    required_files: ClassVar[dict[str, str]] = {}
    # Whether `--verify` can run the checkpoint with transformers (no custom code).
    transformers_reference: ClassVar[bool] = True
    # Checkpoint tensors that carry nothing llama.cpp needs (RoPE caches kept as buffers).
    IGNORED_SUFFIXES: ClassVar[tuple[str, ...]] = (".rotary_emb.inv_freq",)

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

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return self.int_param("num_hidden_layers")

    def check_files(self) -> None:
        """One-line error for the first tokenizer file this architecture needs that is missing."""
        for name, why in self.required_files.items():
            if not (self.checkpoint.path / name).is_file():
                raise ConversionError(f"{self.checkpoint.path / name}: missing ({why})")

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        """Write the architecture's hyper-parameters."""
        raise NotImplementedError

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name -> shape (checkpoint order) that the config implies, in write order."""
        raise NotImplementedError

    def add_vocab(self, writer: gguf.GGUFWriter) -> VocabSummary:
        """Write the complete tokenizer (tokens, types, merges or scores, special ids, chat template)."""
        raise NotImplementedError

    def transform_for(self, gguf_name: str) -> Transform | None:
        """A reordering llama.cpp needs for this tensor (none by default)."""
        return None

    def skip_tensor(self, hf_name: str) -> bool:
        """Checkpoint tensors left out on purpose."""
        return hf_name.endswith(self.IGNORED_SUFFIXES)

    def plan_tensors(self) -> list[PlannedTensor]:
        """Every tensor to write, renamed to GGUF names and checked against the config."""
        expected = self.expected_shapes()
        name_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)
        planned: dict[str, PlannedTensor] = {}
        for hf_name, ref in self.checkpoint.tensors.items():
            if self.skip_tensor(hf_name):
                continue
            new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None or new_name not in expected:
                raise ConversionError(f"{ref.file}: unexpected tensor {hf_name!r} for {self.hf_architecture}")
            if ref.shape != expected[new_name]:
                raise ConversionError(
                    f"{ref.file}: tensor {hf_name!r} has shape {list(ref.shape)}, "
                    f"config.json implies {list(expected[new_name])}"
                )
            planned[new_name] = PlannedTensor(new_name, ref, self.transform_for(new_name))
        missing = [n for n in expected if n not in planned]
        if missing:
            raise ConversionError(
                f"{self.checkpoint.path}: {len(missing)} tensor(s) missing from the weights, "
                f"first {missing[0]!r} (a shard missing or a different model?)"
            )
        position = {n: i for i, n in enumerate(expected)}
        return [planned[n] for n in sorted(planned, key=lambda n: (_block_of(n), position[n]))]

    def int_param(self, key: str) -> int:
        """An integer from config.json, or a one-line error naming the key."""
        value = self.config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(
                f"{self.checkpoint.path / 'config.json'}: `{key}` must be a positive integer, got {value!r}"
            )
        return value

    def refuse(self, message: str) -> ConversionError:
        """A ConversionError about config.json."""
        return ConversionError(f"{self.checkpoint.path / 'config.json'}: {message}")


class DecoderSpec(ModelSpec):
    """Llama-style decoders (Qwen2, Llama): GQA attention, SwiGLU MLP, RMSNorm, RoPE."""

    def dims(self) -> dict[str, int]:
        """hidden, heads, kv, head_dim, ffn, layers, vocab from config.json."""
        hidden = self.int_param("hidden_size")
        heads = self.int_param("num_attention_heads")
        kv = self.config.get("num_key_value_heads") or heads
        head_dim = self.config.get("head_dim") or hidden // heads
        return {
            "hidden": hidden, "heads": heads, "kv": int(kv), "head_dim": int(head_dim),
            "ffn": self.int_param("intermediate_size"), "layers": self.n_layers,
            "vocab": self.vocab_size,
        }

    @property
    def tied(self) -> bool:
        """Whether the output projection reuses the token embedding."""
        return bool(self.config.get("tie_word_embeddings", False))

    def rope_theta(self) -> float:
        """RoPE base: top-level `rope_theta` (transformers 4) or `rope_parameters` (transformers 5)."""
        params = self.config.get("rope_parameters") or {}
        theta = self.config.get("rope_theta", params.get("rope_theta", 10000.0))
        return float(theta)

    def rope_scaling(self) -> dict[str, Any] | None:
        """The RoPE scaling block, if any (None for plain RoPE)."""
        scaling = self.config.get("rope_scaling") or self.config.get("rope_parameters") or None
        if not scaling:
            return None
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return None if kind in (None, "default") else dict(scaling)

    def skip_tensor(self, hf_name: str) -> bool:
        # A tied export may keep a copy of the embedding as lm_head; llama.cpp reuses token_embd.
        return super().skip_tensor(hf_name) or (self.tied and hf_name == "lm_head.weight")

    def add_common_hparams(self, writer: gguf.GGUFWriter) -> None:
        """The hyper-parameters every Llama-style decoder writes."""
        d = self.dims()
        if self.config.get("hidden_act", "silu") != "silu":
            raise self.refuse(f"hidden_act {self.config['hidden_act']!r} is not supported")
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

    def expected_shapes(self, *, qkv_bias: bool = False) -> dict[str, tuple[int, ...]]:
        d = self.dims()
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
                b + "attn_q.weight": (q, h),
                b + "attn_k.weight": (kv, h),
                b + "attn_v.weight": (kv, h),
                b + "attn_output.weight": (h, q),
                b + "ffn_norm.weight": (h,),
                b + "ffn_gate.weight": (ffn, h),
                b + "ffn_up.weight": (ffn, h),
                b + "ffn_down.weight": (h, ffn),
            })
            if qkv_bias:
                shapes.update({b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})
        return shapes


ARCHITECTURES: dict[str, type[ModelSpec]] = {}


def register(cls: type[ModelSpec]) -> type[ModelSpec]:
    """Class decorator adding an architecture to the registry under its HF class name."""
    ARCHITECTURES[cls.hf_architecture] = cls
    return cls


def _load_builtin() -> None:
    """Import the architecture modules shipped with the converter (each registers itself)."""
    from . import llama, qwen1, qwen2  # noqa: F401


def registered() -> dict[str, type[ModelSpec]]:
    """Every architecture the converter handles, by Hugging Face class name."""
    _load_builtin()
    return dict(ARCHITECTURES)


def spec_for(checkpoint: Checkpoint) -> ModelSpec:
    """The spec for this checkpoint's architecture; refuses anything not registered."""
    _load_builtin()
    arch = checkpoint.architecture
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        custom = " (its custom code is never run)" if checkpoint.config.get("auto_map") else ""
        raise ConversionError(
            f"{checkpoint.path / 'config.json'}: unsupported architecture {arch!r}{custom} "
            f"(supported: {supported})"
        )
    spec = cls(checkpoint)
    spec.check_files()
    return spec


def _block_of(gguf_name: str) -> int:
    """Write order: embeddings first, then blocks in order, then the output head."""
    if gguf_name.startswith("blk."):
        return int(gguf_name.split(".")[1])
    return -1 if gguf_name.startswith("token_embd") else 1 << 30
