"""`convert --imatrix auto|FILE`, `models pull` with its importance matrix, the manifest and doctor.

Real subprocesses of the CLI on the tiny K-quant-shaped Qwen (real vocabulary); the matrix
is computed by llama.cpp's evaluation callback over the shipped calibration set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge.convert.imatrix import Imatrix, default_calibration
from libra_edge.models.ggufinfo import read_model_info
from tests.fixtures.hub import FakeHub

REPO = "caskcsg/Libra-Guard-Qwen2.5-0.5B-Instruct"


def run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def auto_run(tiny_qwen_kq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `convert --outtype q4_k_m --imatrix auto` (the calibration pass is the slow part): (output, stdout)."""
    import sys

    folder = tmp_path_factory.mktemp("imatrix-auto")
    out = folder / "guard-q4_k_m.gguf"
    proc = run([sys.executable, "-m", "libra_edge", "convert", str(tiny_qwen_kq_dir), "-o", str(out),
                "--outtype", "q4_k_m", "--imatrix", "auto", "--threads", "2"], dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_auto_computes_the_matrix_saves_it_beside_the_model_and_records_it(auto_run: tuple[Path, str]) -> None:
    out, stdout = auto_run
    saved = out.with_name("guard-q4_k_m.imatrix.gguf")
    assert saved.is_file()
    matrix = Imatrix.load(saved)
    _, calibration_sha = default_calibration()
    assert matrix.calibration_sha256 == calibration_sha
    assert matrix.chunks >= 64 and len(matrix.data) == 2 * 7  # every blk.* matrix of both layers
    # The matrix records the sha256 of the BF16 file it was computed from (for reuse).
    assert len(matrix.source_sha256) == 64
    assert f"computed in" in stdout and f"saved to {saved}" in stdout and calibration_sha[:12] in stdout
    info = read_model_info(out)
    assert info.quant == "Q4_K_M" and info.imatrix is not None
    assert (info.imatrix.file, info.imatrix.dataset) == (saved.name, "libra_calibration.jsonl")
    assert info.imatrix.calibration_sha256 == calibration_sha
    assert info.imatrix.entries == len(matrix.data) and info.imatrix.chunks == matrix.chunks


def test_a_requantization_reuses_the_saved_matrix_and_a_file_gives_the_same_bytes(
    auto_run: tuple[Path, str], tiny_qwen_kq_dir: Path, tmp_path: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    out, _ = auto_run
    folder = tmp_path / "again"
    folder.mkdir()
    again = folder / out.name
    shutil.copy2(out.with_name("guard-q4_k_m.imatrix.gguf"), folder / "guard-q4_k_m.imatrix.gguf")
    saved = folder / "guard-q4_k_m.imatrix.gguf"
    before = saved.stat().st_mtime_ns
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(again), "--outtype", "q4_k_m",
                "--imatrix", "auto"], cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reused {saved}" in proc.stdout
    assert saved.stat().st_mtime_ns == before
    assert again.read_bytes() == out.read_bytes()
    # The same matrix given as a FILE (as llama.cpp's llama-imatrix output would be).
    given = tmp_path / "given.gguf"
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(given), "--outtype", "q4_k_m",
                "--imatrix", str(saved)], cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = tmp_path / "plain.gguf"
    assert run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(plain), "--outtype", "q4_k_m"],
               cli_env).returncode == 0
    from tests.test_quantize_rules import _tensor_bytes

    a, b, c = _tensor_bytes(out), _tensor_bytes(given), _tensor_bytes(plain)
    assert a == b  # same matrix, same tensors (only the recorded file name differs)
    assert a["blk.0.ffn_down.weight"] != c["blk.0.ffn_down.weight"]
    assert read_model_info(plain).imatrix is None


def test_a_matrix_from_another_source_or_a_damaged_one_is_computed_again(
    auto_run: tuple[Path, str], make_tiny_qwen: Callable[..., Path], tmp_path: Path, cli: list[str],
    cli_env: dict[str, str],
) -> None:
    out, _ = auto_run
    other_src = make_tiny_qwen(tmp_path / "other", hidden=256, intermediate=512, heads=4, kv_heads=2, seed=7)
    target = tmp_path / out.name
    saved = tmp_path / "guard-q4_k_m.imatrix.gguf"
    shutil.copy2(out.with_name(saved.name), saved)
    proc = run([*cli, "convert", str(other_src), "-o", str(target), "--outtype", "q4_k_m", "--imatrix", "auto"],
               cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "computed in" in proc.stdout  # another source: the saved matrix was not trusted
    first = Imatrix.load(saved).source_sha256
    assert first != Imatrix.load(out.with_name(saved.name)).source_sha256
    saved.write_bytes(saved.read_bytes()[:100])  # truncated
    proc = run([*cli, "convert", str(other_src), "-o", str(target), "--outtype", "q4_k_m", "--imatrix", "auto"],
               cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "computed in" in proc.stdout and Imatrix.load(saved).source_sha256 == first


@pytest.mark.parametrize("args, message", [
    (["--outtype", "f16", "--imatrix", "auto"], "--imatrix: only for quantized types (--outtype f16 is not quantized)"),
    (["--outtype", "q4_k_m", "--imatrix", "nowhere.dat"], "--imatrix: nowhere.dat: no such file"),
    (["--outtype", "q8_0", "--imatrix", "auto"], "--imatrix: Q8_0 does not use an importance matrix"),
])
def test_imatrix_usage_errors_are_one_line(
    args: list[str], message: str, tiny_qwen_kq_dir: Path, tmp_path: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(tmp_path / "x.gguf"), *args], cli_env)
    assert message in one_line_error(proc, 2)
    assert not list(tmp_path.glob("x.gguf*"))


def test_a_file_that_is_no_imatrix_is_refused_before_converting(
    tiny_qwen_kq_dir: Path, tmp_path: Path, cli: list[str], cli_env: dict[str, str]
) -> None:
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"\x01\x02")
    proc = run([*cli, "convert", str(tiny_qwen_kq_dir), "-o", str(tmp_path / "x.gguf"), "--outtype", "q4_k_m",
                "--imatrix", str(bogus)], cli_env)
    line = one_line_error(proc, 6)
    assert "bogus.dat" in line
    assert not list(tmp_path.glob("x.gguf*"))


def test_help_teaches_the_imatrix(cli: list[str], cli_env: dict[str, str]) -> None:
    proc = run([*cli, "convert", "--help"], cli_env)
    assert proc.returncode == 0
    assert "--imatrix auto|FILE" in proc.stdout and "--imatrix auto" in proc.stdout.split("examples:")[1]
    assert "calibration set" in proc.stdout
    pull = run([*cli, "models", "pull", "--help"], cli_env)
    assert "--no-imatrix" in pull.stdout and "importance matrix" in pull.stdout


# ------------------------------------------------------------------------ models pull
@pytest.fixture
def served(fake_hub: FakeHub, tiny_qwen_kq_dir: Path, hub_env: dict[str, str]) -> dict[str, str]:
    fake_hub.add_repo(REPO, {p.name: p.read_bytes() for p in tiny_qwen_kq_dir.iterdir() if p.is_file()})
    return {**hub_env, "HF_ENDPOINT": fake_hub.url}


def test_pull_of_a_k_quant_uses_the_imatrix_by_default_and_the_manifest_and_doctor_say_so(
    served: dict[str, str], cli: list[str], isolated_home: Path
) -> None:
    proc = run([*cli, "models", "pull", "libra-guard-0.5b", "--quant", "q4_k_m", "--name", "guard"], served)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with an importance matrix from the shipped calibration set" in proc.stderr
    models = isolated_home / "models"
    assert (models / "guard.imatrix.gguf").is_file()
    manifest = json.loads((models / "guard.manifest.json").read_text())
    _, calibration_sha = default_calibration()
    assert manifest["quant"] == "Q4_K_M"
    assert manifest["imatrix_calibration_sha256"] == calibration_sha
    assert manifest["imatrix_dataset"] == "libra_calibration.jsonl" and manifest["imatrix_entries"] == 14
    assert manifest["sha256"] == hashlib.sha256((models / "guard.gguf").read_bytes()).hexdigest()

    doctor = run([*cli, "doctor", "--model", "guard", "--threads", "1"], served, timeout=600)
    assert doctor.returncode in (0, 3), doctor.stderr[-2000:]  # a random model may judge the pairs wrongly
    chunks = Imatrix.load(models / "guard.imatrix.gguf").chunks
    line = [x for x in doctor.stdout.splitlines() if "importance matrix" in x]
    assert line == [f"  quantized with an importance matrix from libra_calibration.jsonl "
                    f"(sha256 {calibration_sha[:12]}…), 14 tensors, {chunks} prompts"]
    as_json = json.loads(run([*cli, "doctor", "--model", "guard", "--json", "--threads", "1"], served).stdout)
    assert as_json["smoke"]["imatrix_calibration_sha256"] == calibration_sha

    removed = run([*cli, "models", "rm", "guard"], served)
    assert removed.returncode == 0, removed.stderr
    assert not (models / "guard.imatrix.gguf").exists()


def test_pull_no_imatrix_and_the_default_q8_0_quantize_without_one(
    served: dict[str, str], cli: list[str], isolated_home: Path
) -> None:
    for args, name in ((["--quant", "q4_k_m", "--no-imatrix"], "plain"), ([], "eight")):
        proc = run([*cli, "models", "pull", "libra-guard-0.5b", "--name", name, *args], served)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "importance matrix" not in proc.stderr
        manifest = json.loads((isolated_home / "models" / f"{name}.manifest.json").read_text())
        assert manifest["imatrix_calibration_sha256"] is None
        assert manifest["quant"] == ("Q8_0" if name == "eight" else "Q4_K_M")
        assert not (isolated_home / "models" / f"{name}.imatrix.gguf").exists()
    doctor = run([*cli, "doctor", "--model", "plain", "--threads", "1"], served, timeout=600)
    assert "  quantized without an importance matrix" in doctor.stdout
