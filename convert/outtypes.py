"""The `--outtype` names, importable without numpy, gguf or llama.cpp (the CLI's --help stays instant)."""

from __future__ import annotations

# Written directly by the converter.
DIRECT_OUTTYPES: tuple[str, ...] = ("f32", "f16", "bf16")

# Quantized by convert.quantize with llama.cpp's per-tensor type rules and ggml's kernels:
# --outtype name -> llama_ftype constant name (llama.h; the same names in llama_cpp).
QUANT_FTYPES: dict[str, str] = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
}

# The K-quant mixes below Q8 (and the IQ4 ones): where an importance matrix changes the
# result. `models pull` computes one for these by default; Q8_0 and the legacy types
# (Q4_0...) can use one too, but only when asked (`--imatrix`).
IMATRIX_DEFAULT_OUTTYPES: tuple[str, ...] = (
    "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "q2_k", "iq4_xs", "iq4_nl",
)

OUTTYPES: tuple[str, ...] = (*DIRECT_OUTTYPES, *QUANT_FTYPES)
