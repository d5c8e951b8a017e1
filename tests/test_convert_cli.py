"""`libra-edge convert` and `python -m convert` as real subprocesses; --dry-run, metadata, --verify."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from libra_edge.convert import plan_conversion
from libra_edge.convert.verify import verify

# Text llama.cpp prints when its logs are not silenced.
C_LOG_MARKERS = ("llama_model_loader", "llama_model_quantize", "print_info", "load_tensors", "ggml_")


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_converts_to_q8_0_quietly(
    tmp_path: Path, tiny_qwen_kq_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    out = tmp_path / "guard-q8_0.gguf"
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(out), "--outtype", "q8_0"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out} (Q8_0,")
    assert not any(marker in proc.stderr for marker in C_LOG_MARKERS), proc.stderr
    assert not list(tmp_path.glob("*.part"))
    import llama_cpp

    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    try:
        assert llm.metadata["general.file_type"] == "7"
        llm.eval(llm.tokenize("你好".encode(), add_bos=False))
    finally:
        llm.close()


def test_verbose_shows_the_quantizer_s_per_tensor_log(
    tmp_path: Path, tiny_qwen_kq_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    # The quantizer is the project's own (ggml's kernels through ctypes): with --verbose it
    # logs each tensor as llama-quantize does; llama.cpp itself never loads the model here.
    out = tmp_path / "q4.gguf"
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(out), "--outtype", "q4_0", "--verbose"], cli_env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert any("blk.0.ffn_down.weight" in line and "converting to q4_0" in line for line in lines), proc.stderr
    assert any("blk.0.attn_norm.weight" in line and "type =    f32" in line for line in lines), proc.stderr
    quiet = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(tmp_path / "q.gguf"), "--outtype", "q4_0"], cli_env)
    assert quiet.returncode == 0 and "converting to" not in quiet.stderr


def test_dry_run_lists_tensors_and_metadata_and_writes_nothing(
    tmp_path: Path, tiny_qwen_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    before = sorted(p.name for p in tiny_qwen_dir.parent.iterdir())
    proc = run([*cli, "convert", str(tiny_qwen_dir), "--dry-run", "--outtype", "q4_k_m"], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "token_embd.weight" in proc.stdout and "{64, 151936}" in proc.stdout
    assert "blk.1.attn_q.bias" in proc.stdout
    assert "libra_edge.prompt_template = 'libra-guard-v1'" in proc.stdout
    assert "tokenizer.ggml.pre = 'qwen2'" in proc.stdout
    assert "then quantized from BF16 to Q4_K_M with llama.cpp's per-tensor type rules" in proc.stdout
    assert sorted(p.name for p in tiny_qwen_dir.parent.iterdir()) == before


def test_outfile_is_required_without_dry_run(tiny_qwen_dir: Path, cli: list[str], cli_env: dict[str, str]) -> None:
    proc = run([*cli, "convert", str(tiny_qwen_dir)], cli_env)
    assert proc.returncode == 2 and "-o/--outfile is required" in proc.stderr


def test_standalone_script_help_teaches_by_example(cli_env: dict[str, str]) -> None:
    proc = run([sys.executable, "-m", "convert", "--help"], cli_env)
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "--outtype q4_k_m" in proc.stdout and "--verify" in proc.stdout


def test_provenance_from_source_file_and_flags(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    src = Path(shutil.copytree(tiny_qwen_dir, tmp_path / "Libra-Guard-Qwen2.5-3B-Instruct"))
    (src / "libra_edge_source.json").write_text(
        json.dumps({"repo": "caskcsg/Libra-Guard-Qwen2.5-3B-Instruct", "revision": "abc123"})
    )
    (src / "README.md").write_text("---\nlicense: apache-2.0\ntags: [safety]\n---\n# card\n")
    meta = dict(plan_conversion(src, outtype="f16").metadata())
    assert meta["general.name"] == "Libra-Guard-Qwen2.5-3B-Instruct"
    assert meta["general.source.repo_url"] == "https://huggingface.co/caskcsg/Libra-Guard-Qwen2.5-3B-Instruct"
    assert meta["libra_edge.source.repo"] == "caskcsg/Libra-Guard-Qwen2.5-3B-Instruct"
    assert meta["libra_edge.source.revision"] == "abc123"
    assert meta["general.license"] == "apache-2.0"
    assert meta["general.size_label"] == "10M"
    flagged = dict(plan_conversion(src, outtype="f16", source_revision="def456", name="guard").metadata())
    assert flagged["libra_edge.source.revision"] == "def456" and flagged["general.name"] == "guard"


def test_verify_reports_perfect_agreement_for_f32(tiny_qwen_dir: Path, tiny_qwen_gguf: Path) -> None:
    report = verify(tiny_qwen_dir, tiny_qwen_gguf)
    assert len(report.rows) == 8 and all(r.tokens > 150 for r in report.rows)
    assert report.tokenizer_agreement == 1.0
    assert report.top1_agreement == 1.0
    assert report.mean_kl < 1e-4
    assert report.max_p_unsafe_diff < 0.01
    assert report.verdict_agreement == 1.0 and report.passed


def test_verify_measures_quantization_error(tiny_qwen_kq_dir: Path, tiny_qwen_q4km_gguf: Path,
                                            tiny_qwen_q8_gguf: Path) -> None:
    q8 = verify(tiny_qwen_kq_dir, tiny_qwen_q8_gguf, pairs=[("问题", "回答"), ("如何做饭？", "先洗菜。")])
    q4 = verify(tiny_qwen_kq_dir, tiny_qwen_q4km_gguf, pairs=[("问题", "回答"), ("如何做饭？", "先洗菜。")])
    assert q8.tokenizer_agreement == q4.tokenizer_agreement == 1.0
    assert 0 < q8.mean_kl < q4.mean_kl < 0.15  # coarser quantization, larger divergence
    assert "verdict agreement" in "\n".join(q4.lines())


def test_cli_verify_prints_the_report(
    tmp_path: Path, tiny_qwen_dir: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    out = tmp_path / "f16.gguf"
    proc = run([*cli, "convert", str(tiny_qwen_dir), "-o", str(out), "--outtype", "f16", "--verify"], cli_env)
    assert proc.returncode == 0, proc.stderr
    for line in ("tokenizer agreement   100.0%", "top-1 agreement", "KL at verdict", "|dP(unsafe)|",
                 "verdict agreement     100.0%", "PASS"):
        assert line in proc.stdout
    assert not any(marker in proc.stderr for marker in C_LOG_MARKERS), proc.stderr


@pytest.mark.parametrize("flag", ["--vocab-only"])
def test_verify_refuses_vocab_only(flag: str, tmp_path: Path, tiny_qwen_dir: Path, cli: list[str],
                                   cli_env: dict[str, str]) -> None:
    proc = run([*cli, "convert", str(tiny_qwen_dir), "-o", str(tmp_path / "v.gguf"), flag, "--verify"], cli_env)
    assert proc.returncode == 2 and "--verify needs weights" in proc.stderr
