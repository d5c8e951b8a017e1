"""Build a Qwen2.5-3B-shaped random checkpoint and its Q4_K_M GGUF in .bench/ (reused between runs).

    .venv/bin/python tests/benchmarks/make_3b_gguf.py      # -> .bench/qwen2.5-3b-random-q4_k_m.gguf

The weights are random bf16 (6.2 GB in two shards, like the real release) with the real
Qwen2.5 tokenizer: the shape, size and file layout of Libra-Guard-Qwen2.5-3B-Instruct, for
speed and memory benchmarks of the converter, the runtime and batch runs. Says nothing
about accuracy.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / ".bench"
CHECKPOINT = BENCH / "qwen2.5-3b-random"
Q4_K_M = BENCH / "qwen2.5-3b-random-q4_k_m.gguf"

# Qwen2.5-3B-Instruct's config.json as published (transformers 4.x key names).
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 70,
    "model_type": "qwen2",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a tied Qwen2 model with this config."""
    h, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn),
        })
    return shapes


def write_shard(path: Path, shapes: dict[str, tuple[int, ...]], pool: np.ndarray, rng: np.random.Generator) -> None:
    """Stream one safetensors file of random bf16 tensors (slices of a random pool: fast, flat memory)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            left = int(np.prod(shape))
            while left:
                start = int(rng.integers(0, pool.size // 2))
                n = min(left, pool.size - start)
                f.write(pool[start:start + n].tobytes())
                left -= n


def build_checkpoint(dest: Path = CHECKPOINT) -> Path:
    """The 3B-shaped checkpoint (two shards + index, config, tokenizer); skipped when already built."""
    if (dest / ".complete").is_file():
        return dest
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.models import QWEN25_GENERATION_CONFIG, build_qwen_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rng = np.random.default_rng(0)
    # Normal(0, 0.02) as bf16 bit patterns: float32 >> 16 (truncation is fine for random data).
    pool = (rng.standard_normal(48 * 2**20, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    pool = pool.astype(np.uint16)
    shapes = tensor_shapes(CONFIG)
    names = list(shapes)
    split = names.index("model.layers.24.input_layernorm.weight")  # ~4 GB + ~2.2 GB, like the release
    shards = {"model-00001-of-00002.safetensors": names[:split], "model-00002-of-00002.safetensors": names[split:]}
    weight_map = {}
    for file, members in shards.items():
        write_shard(dest / file, {n: shapes[n] for n in members}, pool, rng)
        weight_map.update({n: file for n in members})
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (dest / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (dest / "generation_config.json").write_text(json.dumps(QWEN25_GENERATION_CONFIG, indent=2))
    import importlib.util

    spec = importlib.util.find_spec("dashscope")  # its data file only; its code is never run
    assert spec is not None and spec.submodule_search_locations, "run ./install.sh --dev"
    tiktoken = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    build_qwen_tokenizer(dest, tiktoken)
    (dest / ".complete").write_text("ok")
    print(f"built {dest} ({total / 1e9:.2f} GB) in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return dest


def main() -> int:
    src = build_checkpoint()
    if Q4_K_M.is_file():
        print(f"{Q4_K_M} already exists")
        return 0
    from libra_edge.convert import convert_checkpoint

    result = convert_checkpoint(src, Q4_K_M, outtype="q4_k_m", name="qwen2.5-3b-random")
    print(f"wrote {result.path} ({result.file_size / 1e9:.2f} GB) in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
