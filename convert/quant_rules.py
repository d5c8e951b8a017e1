"""llama.cpp's per-tensor type rules for a quantization mix, in Python.

A "Q4_K_M" file is not Q4_K throughout: llama.cpp keeps some tensors at Q6_K (the
attention values and FFN down-projections of some layers, the output matrix or, when the
embeddings are tied, the token embeddings), leaves norms and biases in F32, and falls
back to another type when a row length does not divide into the type's blocks. This
module is a line-by-line translation of that logic as it stands in the llama.cpp that
llama-cpp-python 0.3.36 vendors (`src/llama-quant.cpp`: `tensor_allows_quantization`,
`llama_tensor_get_type` and `llama_tensor_get_type_impl`, `tensor_type_fallback`,
`llama_ftype_get_default_type`, `tensor_requires_imatrix`, the loader's tensor order), so
that `convert.quantize` picks exactly the types `llama_model_quantize` picks (checked by
tests/test_quantize_rules.py against llama.cpp itself, tensor for tensor).

Pure Python and import-cheap: no numpy, gguf or llama.cpp. The enum values are ggml's and
llama.cpp's own (`ggml.h` `enum ggml_type`, `llama.h` `enum llama_ftype`) and are written
into GGUF files as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum


class GGMLType(IntEnum):
    """`enum ggml_type` (ggml.h of the vendored llama.cpp)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41
    Q2_0 = 42


class FileType(IntEnum):
    """`enum llama_ftype` (llama.h): the mix a whole file is quantized to (`general.file_type`)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    MOSTLY_MXFP4_MOE = 38
    MOSTLY_NVFP4 = 39
    MOSTLY_Q1_0 = 40
    MOSTLY_Q2_0 = 41


T = GGMLType
F = FileType

# ggml_blck_size: elements per block (the row length must be a multiple of it).
BLOCK_SIZE: dict[GGMLType, int] = {
    T.F32: 1, T.F16: 1, T.BF16: 1, T.F64: 1, T.I8: 1, T.I16: 1, T.I32: 1, T.I64: 1,
    T.Q4_0: 32, T.Q4_1: 32, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.Q8_1: 32, T.IQ4_NL: 32, T.MXFP4: 32,
    T.Q2_K: 256, T.Q3_K: 256, T.Q4_K: 256, T.Q5_K: 256, T.Q6_K: 256, T.Q8_K: 256,
    T.IQ2_XXS: 256, T.IQ2_XS: 256, T.IQ3_XXS: 256, T.IQ1_S: 256, T.IQ3_S: 256, T.IQ2_S: 256,
    T.IQ4_XS: 256, T.IQ1_M: 256, T.TQ1_0: 256, T.TQ2_0: 256, T.NVFP4: 64, T.Q1_0: 128, T.Q2_0: 64,
}
_NOT_QUANTIZED = {T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64}

# llama_ftype_get_default_type: the type most tensors of a mix get.
DEFAULT_TYPE: dict[FileType, GGMLType] = {
    F.MOSTLY_Q4_0: T.Q4_0, F.MOSTLY_Q4_1: T.Q4_1, F.MOSTLY_Q5_0: T.Q5_0, F.MOSTLY_Q5_1: T.Q5_1,
    F.MOSTLY_Q8_0: T.Q8_0, F.MOSTLY_F16: T.F16, F.MOSTLY_BF16: T.BF16, F.ALL_F32: T.F32,
    F.MOSTLY_Q1_0: T.Q1_0, F.MOSTLY_Q2_0: T.Q2_0, F.MOSTLY_MXFP4_MOE: T.MXFP4,
    F.MOSTLY_Q2_K_S: T.Q2_K, F.MOSTLY_Q2_K: T.Q2_K, F.MOSTLY_IQ3_XS: T.IQ3_S,
    F.MOSTLY_Q3_K_S: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q3_K, F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q4_K, F.MOSTLY_Q5_K_S: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q5_K,
    F.MOSTLY_Q6_K: T.Q6_K, F.MOSTLY_TQ1_0: T.TQ1_0, F.MOSTLY_TQ2_0: T.TQ2_0,
    F.MOSTLY_IQ2_XXS: T.IQ2_XXS, F.MOSTLY_IQ2_XS: T.IQ2_XS, F.MOSTLY_IQ2_S: T.IQ2_XS, F.MOSTLY_IQ2_M: T.IQ2_S,
    F.MOSTLY_IQ3_XXS: T.IQ3_XXS, F.MOSTLY_IQ1_S: T.IQ1_S, F.MOSTLY_IQ1_M: T.IQ1_M,
    F.MOSTLY_IQ4_NL: T.IQ4_NL, F.MOSTLY_IQ4_XS: T.IQ4_XS, F.MOSTLY_IQ3_S: T.IQ3_S, F.MOSTLY_IQ3_M: T.IQ3_S,
}

GGML_QNT_VERSION = 2  # ggml.h: written as general.quantization_version
GGUF_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: the quantizer always pads to it


def is_quantized(t: GGMLType) -> bool:
    """ggml_is_quantized."""
    return t not in _NOT_QUANTIZED


class Category(IntEnum):
    """llama-quant.cpp's `tensor_category`: broad roles, by name, whatever the architecture."""

    TOKEN_EMBD = 0
    ATTENTION_Q = 1
    ATTENTION_V = 2
    ATTENTION_K = 3
    ATTENTION_QKV = 4
    ATTENTION_KV_B = 5
    ATTENTION_OUTPUT = 6
    FFN_UP = 7
    FFN_GATE = 8
    FFN_DOWN = 9
    OUTPUT = 10
    OTHER = 11


C = Category


def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def category(name: str) -> Category:
    """tensor_get_category (first match wins, in llama.cpp's order)."""
    if name == "output.weight":
        return C.OUTPUT
    if _is_token_embd(name):
        return C.TOKEN_EMBD
    for needle, cat in (
        ("attn_qkv.weight", C.ATTENTION_QKV), ("attn_kv_b.weight", C.ATTENTION_KV_B),
        ("attn_v.weight", C.ATTENTION_V), ("attn_k.weight", C.ATTENTION_K), ("attn_q.weight", C.ATTENTION_Q),
        ("attn_output.weight", C.ATTENTION_OUTPUT), ("ffn_up", C.FFN_UP), ("ffn_gate", C.FFN_GATE),
        ("ffn_down", C.FFN_DOWN),
    ):
        if needle in name:
            return cat
    return C.OTHER


def _is_attn_v(cat: Category) -> bool:
    return cat in (C.ATTENTION_V, C.ATTENTION_QKV, C.ATTENTION_KV_B)


_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims of a tensor whose GGUF shape (ne0 first) is `shape`: trailing 1s dropped."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def allows_quantization(name: str, shape: Sequence[int], arch: str) -> bool:
    """tensor_allows_quantization with the default parameters (output tensor quantized)."""
    if n_dims(shape) < 2:
        return False
    if not name.endswith("weight"):
        return False
    if any(needle in name for needle in _NEVER_QUANTIZED):
        return False
    if name in ("position_embd.weight", "token_types.weight"):  # LLM_TN POS_EMBD / TOKEN_TYPES
        return False
    if arch == "glm5-next" and any(needle in name for needle in _NEVER_QUANTIZED_GLM5_NEXT):
        return False
    return True


def requires_imatrix(name: str, target: GGMLType, ftype: FileType) -> bool:
    """tensor_requires_imatrix: the very low-bit types that are garbage without one."""
    if _is_token_embd(name) or name == "output.weight":
        return False
    if target in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return target == T.Q2_K and ftype == F.MOSTLY_Q2_K_S


_LAYER_RE = re.compile(r"^blk\.(-?\d+)\.")


def _layer_of(name: str) -> int:
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


def loader_order(names: Iterable[str]) -> list[str]:
    """The order llama.cpp's loader holds (and its quantizer writes) tensors in.

    `weights_map` is a std::map with `weight_name_comparer`: by the block number of
    `blk.N.` (tensors outside a block count as -1, so they come first), then by name.
    """
    return sorted(names, key=lambda n: (_layer_of(n), n.encode("utf-8")))


@dataclass(frozen=True)
class ModelFacts:
    """What the rules read of the model's hyper-parameters (llama_model / llama_hparams)."""

    arch: str
    n_layer: int  # hparams.n_layer_all (block_count)
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        """hparams.n_gqa(): query heads per key/value head (0 without kv heads)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """Whether llama.cpp's loader sets LLM_TYPE_70B (the only size class the rules read)."""
        if self.arch == "llama":
            return self.n_layer == 80 and self.n_head != self.n_head_kv
        return (self.arch, self.n_layer) in {("qwen2", 80), ("deci", 80), ("olmo", 80), ("jais2", 68)}


class RuleError(ValueError):
    """A tensor the rules cannot place (llama.cpp throws a runtime_error there)."""


@dataclass
class _State:
    """quantize_state_impl: counters that advance as tensors are typed, in loader order."""

    facts: ModelFacts
    ftype: FileType
    has_imatrix: bool
    has_tied_embeddings: bool = True
    n_attention_wv: int = 0
    n_ffn_down: int = 0
    n_ffn_gate: int = 0
    n_ffn_up: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    fallbacks: list[tuple[str, GGMLType, GGMLType]] = field(default_factory=list)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # C++ integer division and modulo truncate toward zero; Python's floor. The operands
    # here are non-negative except (i_layer - n_layers/8), handled with math on ints below.
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or _cmod(i_layer - n_layers // 8, 3) == 2


def _cmod(a: int, b: int) -> int:
    """C's `a % b` (sign of the dividend)."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _layer_info(qs: _State, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    if max(1, qs.facts.n_expert) > 1:
        m = re.match(r"blk\.(\d+)\.", name)
        if not m:
            raise RuleError(f"Failed to determine layer for tensor {name}")
        i_layer = int(m.group(1))
        if i_layer < 0 or i_layer >= n_layer:
            raise RuleError(f"Bad layer {i_layer} for tensor {name}. Must be in [0, {n_layer})")
    return i_layer, n_layer


def _get_type_impl(qs: _State, new_type: GGMLType, name: str, shape: Sequence[int], cat: Category) -> GGMLType:
    """llama_tensor_get_type_impl, branch for branch."""
    ftype, hp, arch = qs.ftype, qs.facts, qs.facts.arch

    if arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name):
        if new_type not in (T.F32, T.BF16, T.F16):
            return T.Q8_0

    if cat == C.OUTPUT or (qs.has_tied_embeddings and cat == C.TOKEN_EMBD):
        nx = shape[0]
        qk_k = BLOCK_SIZE[new_type]
        if ftype == F.MOSTLY_MXFP4_MOE:
            new_type = T.Q8_0
        elif arch == "falcon" or nx % qk_k != 0:
            new_type = T.Q8_0
        elif ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S,
                       F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M):
            new_type = T.Q5_K
        elif new_type != T.Q8_0:
            new_type = T.Q6_K
    elif ftype == F.MOSTLY_MXFP4_MOE:
        is_bailing_expert = arch == "bailingmoe3" and cat in (C.FFN_UP, C.FFN_GATE, C.FFN_DOWN)
        ne2 = shape[2] if len(shape) > 2 else 1
        new_type = T.MXFP4 if ne2 > 1 and (arch != "bailingmoe3" or is_bailing_expert) else T.Q8_0
    elif cat == C.TOKEN_EMBD:
        if ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
            new_type = T.Q2_K
        elif ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M):
            new_type = T.IQ3_S
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.IQ3_S
        elif ftype in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0, F.MOSTLY_Q2_0):
            new_type = T.Q4_K
    elif ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M,
                   F.MOSTLY_IQ1_M):
        if _is_attn_v(cat):
            if hp.n_gqa >= 4 or hp.n_expert >= 4:
                new_type = T.Q4_K
            else:
                new_type = T.IQ3_S if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M) else T.Q2_K
            qs.i_attention_wv += 1
        elif hp.n_expert == 8 and cat == C.ATTENTION_K:
            new_type = T.Q4_K
        elif cat == C.FFN_DOWN:
            if qs.i_ffn_down < qs.n_ffn_down // 8:
                new_type = T.IQ3_S if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M) else T.Q2_K
            qs.i_ffn_down += 1
        elif cat == C.ATTENTION_OUTPUT:
            if hp.n_expert == 8:
                new_type = T.Q5_K
            elif ftype in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                new_type = T.IQ2_XXS
            elif ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M):
                new_type = T.IQ3_S
    elif _is_attn_v(cat):
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q4_K if hp.n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q2_K_S and hp.n_gqa >= 4:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.Q4_K if hp.n_gqa >= 4 else (T.IQ3_S if not qs.has_imatrix else T.IQ3_XXS)
        elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and hp.n_gqa >= 4:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_M:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = T.Q5_K if qs.i_attention_wv < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and hp.n_gqa >= 4:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and qs.i_attention_wv < 4:
            new_type = T.Q5_K
        if hp.is_70b and new_type in (T.Q3_K, T.Q4_K):
            new_type = T.Q5_K
        if hp.n_expert == 8:
            new_type = T.Q8_0
        qs.i_attention_wv += 1
    elif cat == C.ATTENTION_K:
        if hp.n_expert == 8:
            new_type = T.Q8_0
        elif ftype == F.MOSTLY_IQ3_XS:
            new_type = T.IQ3_XXS
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.IQ2_S
    elif cat == C.ATTENTION_Q:
        if ftype == F.MOSTLY_IQ3_XS:
            new_type = T.IQ3_XXS
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.IQ2_S
    elif cat == C.FFN_DOWN:
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q2_K_S:
            if i_layer < n_layer // 8:
                new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_XXS and not qs.has_imatrix:
            new_type = T.Q4_K if i_layer < n_layer // 8 else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            if i_layer < n_layer // 16:
                new_type = T.Q5_K
            elif arch != "falcon" or _use_more_bits(i_layer, n_layer):
                new_type = T.Q4_K
            else:
                new_type = T.Q3_K
        elif ftype == F.MOSTLY_IQ3_M and (i_layer < n_layer // 8
                                          or (hp.n_expert == 8 and _use_more_bits(i_layer, n_layer))):
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K if arch == "falcon" else T.Q5_K
        elif ftype == F.MOSTLY_Q4_K_M:
            if arch == "falcon":
                new_type = (T.Q6_K if i_layer < n_layer // 16
                            else T.Q5_K if _use_more_bits(i_layer, n_layer) else T.Q4_K)
            elif _use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif i_layer < n_layer // 8 and ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not qs.has_imatrix:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and arch != "falcon" and i_layer < n_layer // 8:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and qs.has_imatrix and i_layer < n_layer // 8:
            # llama.cpp guards the first ffn_down layers of Q4_0/Q5_0, with an imatrix only
            new_type = T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
        qs.i_ffn_down += 1
    elif cat == C.ATTENTION_OUTPUT:
        if arch != "falcon":
            if hp.n_expert == 8:
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M,
                             F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M,
                             F.MOSTLY_IQ4_XS):
                    new_type = T.Q5_K
            else:
                if ftype == F.MOSTLY_Q2_K:
                    new_type = T.Q3_K
                elif ftype == F.MOSTLY_IQ3_XXS:
                    new_type = T.IQ3_S
                elif ftype == F.MOSTLY_Q3_K_M:
                    new_type = T.Q4_K
                elif ftype == F.MOSTLY_Q3_K_L:
                    new_type = T.Q5_K
                elif ftype == F.MOSTLY_IQ3_M:
                    new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K
    elif cat == C.ATTENTION_QKV:
        if ftype in (F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L, F.MOSTLY_IQ3_M):
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q4_K_M:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M:
            new_type = T.Q6_K
    elif cat == C.FFN_GATE:
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_gate, qs.n_ffn_gate, name)
        if ftype == F.MOSTLY_IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = T.IQ3_XXS
        qs.i_ffn_gate += 1
    elif cat == C.FFN_UP:
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_up, qs.n_ffn_up, name)
        if ftype == F.MOSTLY_IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = T.IQ3_XXS
        qs.i_ffn_up += 1
    return new_type


_FALLBACK: dict[GGMLType, GGMLType] = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_0: T.Q4_0, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}


def _fallback(qs: _State, name: str, shape: Sequence[int], target: GGMLType) -> GGMLType:
    """tensor_type_fallback: a row length the target's blocks do not divide."""
    ncols = shape[0]
    qk_k = BLOCK_SIZE[target]
    if ncols % qk_k == 0:
        return target
    if target in _FALLBACK:
        chosen = _FALLBACK[target]
    elif qk_k <= 32:
        chosen = target
    else:
        raise RuleError(f"no tensor type fallback is defined for type {target.name}")
    if ncols % BLOCK_SIZE[chosen] != 0:
        chosen = T.F16  # "must use F16 due to unusual shape"
    qs.fallbacks.append((name, target, chosen))
    return chosen


@dataclass(frozen=True)
class TensorPlan:
    """One tensor's decision: the type it is written in, and whether an imatrix is required."""

    name: str
    shape: tuple[int, ...]  # GGUF order, ne0 first
    source_type: GGMLType
    target_type: GGMLType
    requires_imatrix: bool

    @property
    def quantize(self) -> bool:
        """Whether the data change (llama.cpp copies a tensor already in its target type)."""
        return self.source_type != self.target_type


@dataclass(frozen=True)
class MixPlan:
    """Every tensor of a file, in the order they are written, with the types chosen."""

    ftype: FileType
    tensors: tuple[TensorPlan, ...]
    fallbacks: tuple[tuple[str, GGMLType, GGMLType], ...]


def plan_mix(
    facts: ModelFacts,
    tensors: Iterable[tuple[str, Sequence[int], GGMLType]],
    ftype: FileType,
    *,
    has_imatrix: bool = False,
) -> MixPlan:
    """The type of every tensor (name, GGUF shape, current type) for `ftype`, in loader order.

    What `llama_model_quantize` decides in its preliminary pass, with default parameters
    (no --pure, no --tensor-type overrides, output tensor quantized); `has_imatrix` as when
    an importance matrix is passed (it changes a few choices: IQ4_XS, Q4_0, IQ3_XXS).
    """
    if ftype not in DEFAULT_TYPE:
        raise RuleError(f"invalid output file type {int(ftype)}")
    default = DEFAULT_TYPE[ftype]
    by_name = {name: (tuple(int(d) for d in shape), GGMLType(t)) for name, shape, t in tensors}
    order = loader_order(by_name)
    qs = _State(facts, ftype, has_imatrix)
    # init_quantize_state_counters
    for name in order:
        cat = category(name)
        if _is_attn_v(cat):
            qs.n_attention_wv += 1
        if cat == C.OUTPUT:
            qs.has_tied_embeddings = False
    qs.n_ffn_down = qs.n_ffn_gate = qs.n_ffn_up = facts.n_layer
    planned = []
    for name in order:
        shape, current = by_name[name]
        target = current
        if allows_quantization(name, shape, facts.arch):
            target = default
            if is_quantized(default):
                target = _get_type_impl(qs, default, name, shape, category(name))
                target = _fallback(qs, name, shape, target)
        planned.append(TensorPlan(name, shape, current, target, requires_imatrix(name, target, ftype)))
    return MixPlan(ftype, tuple(planned), tuple(qs.fallbacks))
