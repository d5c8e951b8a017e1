"""The importance matrix: computed through llama.cpp's evaluation callback, checked against an
independent forward pass, saved in llama.cpp's formats, used by the quantizer, and worth it
on real weights (the SmolLM2 stand-in: see tests/standin_model.py)."""

from __future__ import annotations

import hashlib
import json
import struct
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from libra_edge.convert.imatrix import (
    CALIBRATION_FILE,
    OPENING,
    Imatrix,
    compute_imatrix,
    default_calibration,
    load_calibration,
    prompt_token_lists,
)
from libra_edge.errors import ConversionError
from tests.fixtures.models import cached_artifact

ROOT = Path(__file__).resolve().parents[1]
# llama.cpp's GGUF names of a Llama/Qwen2 block's matrices and their transformers modules.
HF_MODULES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _some_pairs(n: int) -> list[tuple[str, str]]:
    pairs, _ = default_calibration()
    return pairs[:: max(1, len(pairs) // n)][:n]


# ------------------------------------------------------------------ calibration set
def test_calibration_set_ships_varied_pairs_and_no_test_items(reference_dir: Path) -> None:
    rows = [json.loads(line) for line in CALIBRATION_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs, sha = default_calibration()
    assert len(pairs) == len(rows) >= 64
    assert sha == hashlib.sha256(CALIBRATION_FILE.read_bytes()).hexdigest()
    assert {r["lang"] for r in rows} == {"zh", "en"} and {r["label"] for r in rows} == {"安全", "不安全"}
    assert len({r["category"] for r in rows}) >= 6
    lengths = sorted(len(r["response"]) for r in rows)
    assert lengths[0] < 40 and lengths[-1] > 300  # short and long
    test_items = json.loads((reference_dir / "libra" / "sample_libra_test.json").read_text(encoding="utf-8"))
    assert not {i["question"] for i in test_items} & {q for q, _ in pairs}
    assert not {i["response"] for i in test_items} & {r for _, r in pairs}
    # shipped in the wheel beside the converter
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert "calibration/*.jsonl" in data["libra_edge.convert"]
    assert CALIBRATION_FILE.parent.parent == ROOT / "convert"


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q", "response": "r"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
    ('{"question": "q"}\n', "bad.jsonl:1: field 'response' is missing"),
    ('["q", "r"]\n', "bad.jsonl:1: expected a JSON object"),
    ('{"question": "", "response": "r"}\n', "bad.jsonl:1: field 'question'"),
    ("\n\n", "bad.jsonl: no calibration pairs"),
])
def test_a_bad_calibration_file_is_one_line_naming_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(ConversionError) as err:
        load_calibration(path)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------- against a plain forward pass
def _reference_imatrix(hf_dir: Path, token_lists: list[list[int]], model_cls: str) -> dict[str, tuple[np.ndarray, int]]:
    """Sum of squared inputs per column of every block's nn.Linear, from transformers (torch hooks)."""
    import torch
    import transformers

    model: Any = getattr(transformers, model_cls).from_pretrained(hf_dir, dtype=torch.float32).eval()
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    by_module = {f"model.layers.{i}.{hf}": f"blk.{i}.{gg}.weight"
                 for i in range(model.config.num_hidden_layers) for gg, hf in HF_MODULES.items()}

    def hook(name: str) -> Any:
        def record(module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1]).numpy()
            sums[name] = sums.get(name, 0) + np.square(x).sum(axis=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [m.register_forward_pre_hook(hook(by_module[n])) for n, m in model.named_modules() if n in by_module]
    try:
        with torch.no_grad():
            for ids in token_lists:
                model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name], counts[name]) for name in sums}


def test_imatrix_matches_an_independent_forward_pass_tensor_for_tensor(
    tiny_qwen_gguf: Path, tiny_qwen_dir: Path
) -> None:
    import transformers

    from libra_edge.convert.verify import VERDICT_PREFIX
    from libra_edge.engine.prompt import build_user_message

    pairs = _some_pairs(4)
    imatrix = compute_imatrix(tiny_qwen_gguf, pairs, threads=2)
    # The reference's tokens come from the HF tokenizer and chat template (as --verify's do),
    # and must be the very tokens the matrix was computed on.
    tok = transformers.AutoTokenizer.from_pretrained(tiny_qwen_dir)
    token_lists = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": build_user_message(q, r)}],
                                           tokenize=False, add_generation_prompt=True) + VERDICT_PREFIX,
                   add_special_tokens=False)
        for q, r in pairs
    ]
    assert imatrix.n_tokens == sum(len(t) for t in token_lists) and imatrix.chunks == len(pairs)
    reference = _reference_imatrix(tiny_qwen_dir, token_lists, "Qwen2ForCausalLM")
    layers = 2
    assert set(imatrix.data) == set(reference) and len(reference) == 7 * layers  # no output/token_embd
    for name, (expected, count) in reference.items():
        assert imatrix.counts[name] == count == imatrix.n_tokens, name
        got = imatrix.data[name]
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        # llama.cpp keeps K and V in F16 (its default KV type): what follows attention
        # differs from float32 torch by ~1e-4 relative; before it, by float32 rounding.
        first = name.startswith("blk.0.attn_") and not name.endswith("attn_output.weight")
        np.testing.assert_allclose(got, expected, rtol=2e-5 if first else 2e-3, atol=1e-8, err_msg=name)
    # the matrix is not trivially uniform: columns differ
    assert all(float(v.std()) > 0.01 * float(v.mean()) for v in imatrix.data.values())


def test_calibration_prompts_are_the_engines_fast_check_tokens(tiny_qwen_gguf: Path) -> None:
    from libra_edge.engine import Guard
    from libra_edge.engine import llama as llama_seam

    pairs = _some_pairs(3)
    model = llama_seam.Model(tiny_qwen_gguf, gpu_layers=0, mmap=True)
    try:
        lists = prompt_token_lists(model, pairs)
        opening = model.tokenize(OPENING.encode("utf-8"), add_special=False, parse_special=False)
    finally:
        model.close()
    with Guard.load(tiny_qwen_gguf, threads=1, ctx_per_seq=1024) as guard:
        expected = [guard.prompt_tokens(q, r) + opening for q, r in pairs]
    assert lists == expected


# ------------------------------------------------------------------------ file formats
@pytest.fixture(scope="module")
def small_imatrix(tiny_qwen_gguf: Path) -> Imatrix:
    return compute_imatrix(tiny_qwen_gguf, _some_pairs(2), threads=2)


def test_gguf_format_is_llama_cpps_and_round_trips(tmp_path: Path, small_imatrix: Imatrix) -> None:
    import gguf

    path = small_imatrix.save(tmp_path / "m.imatrix.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    # the keys common/imatrix-loader.cpp reads; llama-quantize refuses a file without all three
    assert fields["general.type"] == "imatrix" and "general.architecture" not in fields
    assert fields["imatrix.datasets"] == [small_imatrix.dataset]
    assert fields["imatrix.chunk_count"] == small_imatrix.chunks == 2
    assert fields["imatrix.chunk_size"] == round(small_imatrix.n_tokens / 2)
    names = [t.name for t in reader.tensors]
    assert names == [f"{n}.{s}" for n in sorted(small_imatrix.data) for s in ("in_sum2", "counts")]
    for t in reader.tensors:
        base = t.name.rsplit(".", 1)[0]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        if t.name.endswith(".counts"):
            assert list(t.shape) == [1, 1] and float(t.data.reshape(-1)[0]) == small_imatrix.counts[base]
        else:  # ne = [n_per_row, n_mat]; the raw sums, as the imatrix tool writes them
            assert list(t.shape) == [small_imatrix.data[base].size, 1]
            np.testing.assert_allclose(np.asarray(t.data).reshape(-1) / small_imatrix.counts[base],
                                       small_imatrix.data[base], rtol=1e-6)
    back = Imatrix.load(path)
    assert (back.calibration_sha256, back.n_tokens, back.chunks, back.counts) == (
        small_imatrix.calibration_sha256, small_imatrix.n_tokens, small_imatrix.chunks, small_imatrix.counts)
    for name, values in small_imatrix.data.items():
        np.testing.assert_allclose(back.data[name], values, rtol=1e-6)


def test_dat_format_is_llama_cpps_legacy_layout_and_round_trips(tmp_path: Path, small_imatrix: Imatrix) -> None:
    path = small_imatrix.save(tmp_path / "m.imatrix.dat")
    raw = path.read_bytes()
    # read the first entry as common/imatrix-loader.cpp's legacy reader does
    (n_entries, length), pos = struct.unpack_from("<ii", raw), 8
    name = raw[pos:pos + length].decode()
    ncall, nval = struct.unpack_from("<ii", raw, pos + length)
    values = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos + length + 8)
    assert n_entries == len(small_imatrix.data) and name == sorted(small_imatrix.data)[0]
    assert ncall == -(-small_imatrix.counts[name] // small_imatrix.chunk_size)  # ceiling, as imatrix.cpp
    np.testing.assert_allclose(values / ncall, small_imatrix.data[name], rtol=1e-6)  # llama-quantize's reading
    back = Imatrix.load(path)
    assert (back.calibration_sha256, back.n_tokens, back.chunks) == (
        small_imatrix.calibration_sha256, small_imatrix.n_tokens, small_imatrix.chunks)
    for key, v in small_imatrix.data.items():
        np.testing.assert_allclose(back.data[key], v, rtol=1e-6)


def test_unreadable_imatrix_files_are_one_line_errors(
    tmp_path: Path, small_imatrix: Imatrix, tiny_qwen_gguf: Path, tiny_qwen_q8_gguf: Path
) -> None:
    good = small_imatrix.save(tmp_path / "m.imatrix.gguf").read_bytes()
    dat = small_imatrix.save(tmp_path / "m.imatrix.dat").read_bytes()
    cases = {
        "cut.gguf": good[: len(good) // 2],
        "cut.dat": dat[: len(dat) // 3],
        "noise.dat": b"\x07\x00\x00\x00garbage",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    checks = [(tmp_path / n, n) for n in cases] + [
        (tmp_path / "absent.gguf", "no such imatrix file"),
        (tiny_qwen_gguf, "not an importance matrix"),
    ]
    for path, expected in checks:
        with pytest.raises(ConversionError) as err:
            Imatrix.load(path)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ConversionError) as err:  # a quantized file is no source for a matrix
        compute_imatrix(tiny_qwen_q8_gguf, _some_pairs(1), threads=1)
    assert "F32/F16/BF16" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------- the quantizer
@pytest.fixture(scope="module")
def kq_f32_gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                tiny_qwen_kq_dir: Path) -> Path:
    def build(folder: Path) -> None:
        from libra_edge.convert import convert_checkpoint

        convert_checkpoint(tiny_qwen_kq_dir, folder / "kq-f32.gguf", outtype="f32")

    return cached_artifact(request, tmp_path_factory, "tiny-qwen-kq-f32", build) / "kq-f32.gguf"


def _tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    import gguf

    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes()))
            for t in gguf.GGUFReader(str(path)).tensors}


def test_the_quantizer_uses_the_matrix_and_a_saved_one_gives_the_same_file(tmp_path: Path, kq_f32_gguf: Path) -> None:
    from libra_edge.convert.quantize import quantize_gguf

    imatrix = compute_imatrix(kq_f32_gguf, _some_pairs(3), threads=2)
    plain, weighted, reloaded = tmp_path / "plain.gguf", tmp_path / "imatrix.gguf", tmp_path / "reloaded.gguf"
    quantize_gguf(kq_f32_gguf, plain, "q4_k_m", threads=2)
    quantize_gguf(kq_f32_gguf, weighted, "q4_k_m", threads=2, imatrix=imatrix.data)
    loaded = Imatrix.load(imatrix.save(tmp_path / "kq.imatrix.gguf"))
    quantize_gguf(kq_f32_gguf, reloaded, "q4_k_m", threads=2, imatrix=loaded.data)
    a, b = _tensor_bytes(plain), _tensor_bytes(weighted)
    assert list(a) == list(b)
    changed = {n for n in a if a[n][1] != b[n][1]}
    quantized_blk = {n for n in a if n in imatrix.data and a[n][0] not in ("F32", "F16")}
    assert quantized_blk and changed >= quantized_blk  # every blk matrix the matrix covers changed
    assert not changed - set(imatrix.data)  # the rest (embeddings, norms) did not
    assert all(a[n][0] == b[n][0] for n in a)  # same types: Q4_K_M's mix has no imatrix-only rule here
    # the file format loses nothing the quantizer uses: the same bytes from the reloaded matrix
    assert reloaded.read_bytes() == weighted.read_bytes()


# ------------------------------------------------------------- fidelity (real weights)
@pytest.fixture(scope="module")
def standin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            smollm2_gguf: Path) -> tuple[Path, Path]:
    from tests.standin_model import STANDIN_GGUF, build_standin

    folder = cached_artifact(request, tmp_path_factory, "smollm2-standin",
                             lambda d: build_standin(smollm2_gguf, d) and None)
    return folder / STANDIN_GGUF, folder / "hf"


@pytest.mark.slow
def test_q4_k_m_with_the_matrix_is_closer_to_the_reference_on_held_out_pairs(
    tmp_path: Path, standin: tuple[Path, Path], reference_dir: Path
) -> None:
    from libra_edge.convert.quantize import quantize_gguf
    from tests.standin_model import Reference, held_out_pairs

    f32, hf_dir = standin
    held_out = held_out_pairs(reference_dir, 12)  # raises if any is in the calibration set
    reference = Reference(hf_dir, f32, held_out)
    # the F32 GGUF itself agrees with transformers: what follows measures quantization alone
    exact = reference.compare(f32, threads=1)
    assert exact["agree"] == exact["n"] and exact["max_dp"] < 1e-3, exact
    imatrix = compute_imatrix(f32, _some_pairs(8), threads=1)
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "imatrix.gguf"
    quantize_gguf(f32, plain, "q4_k_m", threads=2)
    quantize_gguf(f32, weighted, "q4_k_m", threads=2, imatrix=imatrix.data)
    without, with_ = reference.compare(plain, threads=1), reference.compare(weighted, threads=1)
    print(f"\nQ4_K_M on the stand-in, {len(held_out)} held-out pairs: mean |dP| without the matrix "
          f"{without['mean_dp']:.5f}, with {with_['mean_dp']:.5f} (F32: {exact['mean_dp']:.6f})")
    assert with_["mean_dp"] < without["mean_dp"], (with_, without)
