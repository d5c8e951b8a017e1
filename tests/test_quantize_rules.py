"""The project's per-tensor quantizer against llama.cpp's own (`llama_model_quantize`).

- The type rules (convert/quant_rules.py) choose, tensor for tensor, what llama.cpp's
  `llama_quant_compute_types` chooses, on the real shapes of the published guards' bases
  and a few others, for every quantization mix.
- Without an importance matrix, `convert.quantize.quantize_gguf` writes files byte-identical
  to llama.cpp's for Q4_K_M, Q5_K_M, Q6_K and Q8_0 (and Q4_0, IQ4_XS) on the tiny models:
  F32, F16 and BF16 sources, tied and untied embeddings, K-quant and fallback shapes.
- With one, the file is byte-identical to llama.cpp's given the same matrix, and the
  quantized tensors differ from those of a quantization without it; a tensor the matrix
  lacks is quantized without one, as llama.cpp does.
- Bad input: one line, no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from libra_edge.convert import quant_rules as qr
from libra_edge.convert.outtypes import QUANT_FTYPES
from libra_edge.convert.quantize import file_type_for, quantize_gguf
from libra_edge.engine import llama as llama_seam
from libra_edge.errors import ConversionError

ROOT = Path(__file__).resolve().parents[1]
BYTE_IDENTICAL = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "iq4_xs")


# ------------------------------------------------------------------------ type rules
def _tensors(arch: str, n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int, vocab: int,
             tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor a model of this shape holds, by llama.cpp's names (GGUF shapes, ne0 first)."""
    kv = n_embd // n_head * n_head_kv
    out = [("token_embd.weight", (n_embd, vocab)), ("output_norm.weight", (n_embd,))]
    if not tied:
        out.append(("output.weight", (n_embd, vocab)))
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (n_embd,)), (b + "ffn_norm.weight", (n_embd,)),
                (b + "attn_output.weight", (n_embd, n_embd)), (b + "ffn_gate.weight", (n_embd, n_ff)),
                (b + "ffn_up.weight", (n_embd, n_ff)), (b + "ffn_down.weight", (n_ff, n_embd))]
        if arch == "qwen":  # Qwen1: fused QKV
            out += [(b + "attn_qkv.weight", (n_embd, 3 * n_embd)), (b + "attn_qkv.bias", (3 * n_embd,))]
        else:
            out += [(b + "attn_q.weight", (n_embd, n_embd)), (b + "attn_k.weight", (n_embd, kv)),
                    (b + "attn_v.weight", (n_embd, kv))]
            if arch == "qwen2":
                out += [(b + "attn_q.bias", (n_embd,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
    return out


# (arch, n_embd, n_ff, n_layer, n_head, n_head_kv, vocab, tied): the published guards'
# bases, SmolLM2-135M (576-wide rows: K-quant fallbacks), and a 70B Llama (its own rule).
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": ("qwen2", 2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b": ("qwen2", 5120, 13824, 48, 40, 8, 152064, False),
    "yi-1.5-9b": ("llama", 4096, 11008, 48, 32, 4, 64000, False),
    "qwen-14b": ("qwen", 5120, 13696, 40, 40, 40, 152064, False),
    "smollm2-135m": ("llama", 576, 1536, 30, 9, 3, 49152, True),
    "llama-70b": ("llama", 8192, 28672, 80, 64, 8, 128256, False),
}
ALL_MIXES = [f for f in qr.DEFAULT_TYPE if qr.is_quantized(qr.DEFAULT_TYPE[f])]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_type_rules_choose_what_llama_cpp_chooses(shape: str) -> None:
    arch, n_embd, n_ff, n_layer, n_head, n_head_kv, vocab, tied = SHAPES[shape]
    tensors = _tensors(arch, n_embd, n_ff, n_layer, n_head, n_head_kv, vocab, tied)
    facts = qr.ModelFacts(arch, n_layer, n_head, n_head_kv, 0)
    order = qr.loader_order(name for name, _ in tensors)
    shapes = dict(tensors)
    differences = []
    kinds = set()
    for ftype in ALL_MIXES:
        try:
            ours = qr.plan_mix(facts, [(n, s, qr.GGMLType.F32) for n, s in tensors], ftype)
        except qr.RuleError as exc:
            # llama.cpp throws here too (and a C++ exception cannot cross ctypes): a type
            # with no fallback for these rows. Only Q1_0 is like that, on rows not of 128.
            assert ftype == qr.FileType.MOSTLY_Q1_0 and "no tensor type fallback" in str(exc)
            continue
        theirs = llama_seam.reference_tensor_types(
            arch, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_expert=0,
            tensors=[(n, shapes[n]) for n in order], ftype=int(ftype),
        )
        assert [t.name for t in ours.tensors] == order
        for plan, ref in zip(ours.tensors, theirs):
            kinds.add(plan.target_type)
            if int(plan.target_type) != ref:
                differences.append(f"{ftype.name} {plan.name}: ours {plan.target_type.name}, llama.cpp {ref}")
    assert differences == []
    # The comparison covered mixed files, not one type throughout.
    assert {qr.GGMLType.Q4_K, qr.GGMLType.Q6_K, qr.GGMLType.Q5_K, qr.GGMLType.F32} <= kinds


def test_q4_k_m_of_the_3b_keeps_llama_cpp_s_mix() -> None:
    """What the rules give the 3B guard, spelled out: the tensors Q4_K_M keeps at Q6_K."""
    arch, n_embd, n_ff, n_layer, n_head, n_head_kv, vocab, tied = SHAPES["qwen2.5-3b"]
    tensors = _tensors(arch, n_embd, n_ff, n_layer, n_head, n_head_kv, vocab, tied)
    mix = qr.plan_mix(qr.ModelFacts(arch, n_layer, n_head, n_head_kv), [(n, s, qr.GGMLType.F16) for n, s in tensors],
                      qr.FileType.MOSTLY_Q4_K_M)
    types = {t.name: t.target_type for t in mix.tensors}
    assert types["token_embd.weight"] == qr.GGMLType.Q6_K  # tied: the output's treatment
    assert types["blk.0.attn_norm.weight"] == qr.GGMLType.F16  # 1-D: left as it is
    six = sorted(int(n.split(".")[1]) for n, t in types.items() if n.endswith("ffn_down.weight") and t == qr.GGMLType.Q6_K)
    # use_more_bits: the first and last eighth of the layers, and every third one between.
    assert six == [i for i in range(36) if i < 4 or i >= 31 or (i - 4) % 3 == 2]


def test_enum_values_are_ggml_s_and_llama_cpp_s() -> None:
    names = {t: llama_seam.ggml_type_name(int(t)) for t in qr.GGMLType}
    assert names[qr.GGMLType.Q4_K] == "q4_K" and names[qr.GGMLType.IQ4_XS] == "iq4_xs"
    for t, name in names.items():
        assert name.lower() == t.name.lower(), t
        if qr.is_quantized(t) or t in (qr.GGMLType.F16, qr.GGMLType.BF16, qr.GGMLType.F32):
            assert llama_seam.ggml_block_size(int(t)) == qr.BLOCK_SIZE[t], t
    ll = llama_seam.lib()
    for outtype, constant in QUANT_FTYPES.items():
        assert int(file_type_for(outtype)) == int(getattr(ll, constant)), outtype


def test_loader_order_is_by_block_then_name() -> None:
    names = ["blk.10.attn_q.weight", "output.weight", "blk.2.ffn_up.weight", "blk.2.attn_k.weight", "token_embd.weight"]
    assert qr.loader_order(names) == ["output.weight", "token_embd.weight", "blk.2.attn_k.weight",
                                      "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


# ----------------------------------------------------------------- byte identity
def _llama_cpp_quantize(src: Path, dst: Path, outtype: str, imatrix: dict[str, np.ndarray] | None = None) -> bytes:
    rc = llama_seam.quantize(src, dst, QUANT_FTYPES[outtype], threads=2, imatrix=imatrix)
    assert rc == 0
    return dst.read_bytes()


@pytest.fixture(scope="module")
def sources(
    tiny_qwen_gguf: Path, tiny_llama_gguf: Path, tiny_qwen_kq_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """F32 Qwen (64-wide: fallbacks), F16 and BF16 K-quant-shaped Qwen (tied), F32 Llama (untied)."""
    from libra_edge.convert.pipeline import convert_checkpoint

    folder = tmp_path_factory.mktemp("quant-sources")
    out = {"qwen-f32": tiny_qwen_gguf, "llama-f32": tiny_llama_gguf}
    for kind in ("f16", "bf16"):
        out[f"qwen-kq-{kind}"] = convert_checkpoint(tiny_qwen_kq_dir, folder / f"kq-{kind}.gguf", outtype=kind).path
    return out


@pytest.mark.parametrize("outtype", BYTE_IDENTICAL)
def test_without_an_imatrix_the_file_is_byte_identical_to_llama_cpp_s(
    outtype: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    for kind, src in sources.items():
        ours = tmp_path / f"{kind}-ours.gguf"
        result = quantize_gguf(src, ours, outtype, threads=2)
        theirs = _llama_cpp_quantize(src, tmp_path / f"{kind}-llama.gguf", outtype)
        assert ours.read_bytes() == theirs, f"{kind} {outtype}: differs from llama_model_quantize's file"
        assert result.with_imatrix == ()
        if kind == "qwen-kq-f16" and outtype == "q4_k_m":
            # A real mix: Q4_K, Q6_K kept by the rules, F32 norms and biases.
            assert {"Q4_K", "Q6_K", "F32"} <= set(result.type_counts())


def test_the_quantized_file_loads_and_its_metadata_ends_like_llama_cpp_s(sources: dict[str, Path], tmp_path: Path) -> None:
    from libra_edge.models.gguf_header import read_header

    out = tmp_path / "q.gguf"
    quantize_gguf(sources["qwen-kq-f16"], out, "q4_k_m", threads=2, metadata={"quantize.imatrix.file": "x.gguf"})
    header = read_header(out)
    assert list(header.metadata)[-3:] == ["general.quantization_version", "general.file_type",
                                          "quantize.imatrix.file"]
    assert header.metadata["general.file_type"] == int(qr.FileType.MOSTLY_Q4_K_M)
    assert header.metadata["quantize.imatrix.file"] == "x.gguf"
    model = llama_seam.Model(out, gpu_layers=0, mmap=True)
    try:
        assert model.n_vocab > 150000
    finally:
        model.close()


# ------------------------------------------------------------ with an importance matrix
def _tensors_of(path: Path) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, GGUF shape, ggml type, absolute data offset) of every tensor (the project's header reader:
    gguf-py's GGUFReader takes minutes on a 151k-token vocabulary on a loaded machine)."""
    from libra_edge.models.gguf_header import read_header

    header = read_header(path)
    return [(t.name, t.shape, t.ggml_type, header.data_offset + t.offset) for t in header.tensors]


def _synthetic_imatrix(src: Path, *, seed: int = 1, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A positive importance per column for every blk.* weight matrix (what the imatrix tool covers)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, _, _ in _tensors_of(src):
        if name.startswith("blk.") and name.endswith(".weight") and len(shape) == 2 and name not in skip:
            out[name] = rng.gamma(0.5, 2.0, size=int(shape[0])).astype(np.float32) + 1e-3
    return out


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    """Each tensor's data bytes, by name."""
    data = path.read_bytes()
    out = {}
    for name, shape, ggml_type, start in _tensors_of(path):
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        out[name] = data[start: start + llama_seam.ggml_row_size(ggml_type, shape[0]) * rows]
    return out


@pytest.mark.parametrize("outtype", ["q4_k_m", "iq4_xs", "q4_0"])
def test_with_an_imatrix_the_file_is_llama_cpp_s_and_the_tensors_change(
    outtype: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    src = sources["qwen-kq-f16"]
    imatrix = _synthetic_imatrix(src)
    with_m = tmp_path / "with.gguf"
    result = quantize_gguf(src, with_m, outtype, threads=2, imatrix=imatrix)
    quantize_gguf(src, tmp_path / "without.gguf", outtype, threads=2)
    assert with_m.read_bytes() == _llama_cpp_quantize(src, tmp_path / "llama.gguf", outtype, imatrix)
    a, b = _tensor_bytes(with_m), _tensor_bytes(tmp_path / "without.gguf")
    used = set(result.with_imatrix)
    assert used == set(imatrix)
    assert [n for n in used if a[n] == b[n]] == []  # every tensor it covers came out differently
    assert a["token_embd.weight"] == b["token_embd.weight"]  # not in the matrix: as without one
    assert a["blk.0.attn_norm.weight"] == b["blk.0.attn_norm.weight"]


def test_a_tensor_missing_from_the_imatrix_is_quantized_without_one(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["qwen-kq-f16"]
    missing = "blk.1.ffn_down.weight"
    imatrix = _synthetic_imatrix(src, skip=(missing,))
    out = tmp_path / "partial.gguf"
    result = quantize_gguf(src, out, "q4_k_m", threads=2, imatrix=imatrix)
    quantize_gguf(src, tmp_path / "none.gguf", "q4_k_m", threads=2)
    assert missing in result.without_imatrix and missing not in result.with_imatrix
    a, b = _tensor_bytes(out), _tensor_bytes(tmp_path / "none.gguf")
    assert a[missing] == b[missing]
    assert a["blk.1.ffn_up.weight"] != b["blk.1.ffn_up.weight"]
    assert out.read_bytes() == _llama_cpp_quantize(src, tmp_path / "llama.gguf", "q4_k_m", imatrix)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("problem, message", [
    ("short", "blk.0.attn_q.weight has 10 values, the tensor needs 256"),
    ("nan", "entry 'blk.0.attn_q.weight' is not all finite numbers"),
])
def test_a_bad_imatrix_is_one_line_naming_the_tensor(
    problem: str, message: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    src = sources["qwen-kq-f16"]
    imatrix = _synthetic_imatrix(src)
    imatrix["blk.0.attn_q.weight"] = (np.ones(10, np.float32) if problem == "short"
                                      else np.full(256, np.nan, np.float32))
    with pytest.raises(ConversionError) as err:
        quantize_gguf(src, tmp_path / "x.gguf", "q4_k_m", threads=2, imatrix=imatrix)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_already_quantized_source_is_refused(tiny_qwen_q8_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"is already Q8_0: quantize from the F32/F16/BF16 file"):
        quantize_gguf(tiny_qwen_q8_gguf, tmp_path / "x.gguf", "q4_k_m")


def test_a_truncated_source_is_one_line_and_leaves_no_output(sources: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(sources["qwen-kq-f16"].read_bytes()[:-4096])  # the header is whole, the last tensor is not
    with pytest.raises(ConversionError, match=r"cut.gguf: truncated: \S+'s data ends past the end of the file"):
        quantize_gguf(cut, tmp_path / "out.gguf", "q4_k_m", threads=2)
    assert not (tmp_path / "out.gguf").exists()


def test_a_file_that_is_not_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ConversionError, match=r"bad.gguf: not a readable GGUF file"):
        quantize_gguf(bad, tmp_path / "x.gguf", "q4_k_m")


def test_the_quantizer_runs_on_libllama_s_own_libggml_base() -> None:
    code = (
        "from pathlib import Path; from libra_edge.engine import llama as L; L.ggml_base();"
        "maps=[l.split()[-1] for l in open('/proc/self/maps') if 'libggml-base' in l];"
        "print(len({Path(m).resolve() for m in maps}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"  # one copy mapped: the quantizer did not load a second
