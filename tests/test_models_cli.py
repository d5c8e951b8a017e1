"""`libra-edge models import|export|verify|list|info|rm|default`, run as a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge.errors import ExitCode

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def models(cli: list[str], cli_env: dict[str, str]) -> Run:
    """Run `libra-edge models ARGS...` in this test's home (env overrides as keywords)."""

    def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, "models", *map(str, args)], env={**cli_env, **env},
            capture_output=True, text=True, timeout=120,
        )

    return run


def listed(models: Run, **env: str) -> dict[str, dict]:
    result = models("list", "--json", **env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def one_line_error(result: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("libra-edge: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_import_a_real_model_registers_it(models: Run, tiny_qwen_gguf: Path, isolated_home: Path) -> None:
    result = models("import", tiny_qwen_gguf)
    assert result.returncode == 0, result.stderr
    installed = isolated_home / "models" / f"{tiny_qwen_gguf.stem}.gguf"
    assert result.stdout.strip() == str(installed)
    assert installed.read_bytes() == tiny_qwen_gguf.read_bytes()
    row = listed(models)[tiny_qwen_gguf.stem]
    assert row["default"] is True  # the first model installed becomes the default
    assert row["sha256"] == sha256(tiny_qwen_gguf)
    assert row["size"] == tiny_qwen_gguf.stat().st_size
    assert (row["architecture"], row["quant"], row["origin"]) == ("qwen2", "F32", "import")
    assert row["imported_from"] == str(tiny_qwen_gguf.resolve())
    assert row["prompt_template_version"] == "libra-guard-v1"
    assert sorted(p.name for p in installed.parent.iterdir()) == [
        f"{tiny_qwen_gguf.stem}.gguf", f"{tiny_qwen_gguf.stem}.manifest.json"]


def test_imported_model_is_loadable_by_name(models: Run, tiny_qwen_gguf: Path) -> None:
    from libra_edge.engine import Guard
    from libra_edge.models import resolve_model

    assert models("import", tiny_qwen_gguf, "--name", "guard").returncode == 0
    with Guard.load(resolve_model("guard"), ctx_per_seq=512) as guard:
        assert guard.info.architecture == "qwen2"


def test_info_shows_metadata_and_manifest(models: Run, make_gguf: Callable[..., Path]) -> None:
    assert models("import", make_gguf(), "--name", "syn").returncode == 0
    result = models("info", "syn")
    assert result.returncode == 0, result.stderr
    assert "architecture       qwen2" in result.stdout
    assert "quantization       F32" in result.stdout
    assert "context (trained)  2048" in result.stdout
    assert "origin             import from" in result.stdout
    data = json.loads(models("info", "syn", "--json").stdout)
    assert (data["vocab_size"], data["manifest"]["name"], data["default"]) == (32, "syn", True)


def test_import_truncated_file_is_refused(models: Run, tiny_qwen_gguf: Path, tmp_path: Path,
                                          isolated_home: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_qwen_gguf.read_bytes()[:-4096])
    line = one_line_error(models("import", cut), ExitCode.MODEL)
    assert "cut.gguf: truncated GGUF" in line
    assert not any((isolated_home / "models").glob("*"))  # no half-copied file left behind


def test_import_non_gguf_is_refused(models: Run, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("just some text\n")
    line = one_line_error(models("import", bogus), ExitCode.MODEL)
    assert "notes.gguf: not a GGUF model file" in line
    assert listed(models) == {}


def test_import_unsupported_architecture_needs_force(models: Run, make_gguf: Callable[..., Path]) -> None:
    other = make_gguf("gemma.gguf", architecture="gemma")
    line = one_line_error(models("import", other), ExitCode.MODEL)
    assert "architecture gemma is not supported" in line and "--force" in line
    assert listed(models) == {}
    result = models("import", other, "--force", "--name", "other")
    assert result.returncode == 0, result.stderr
    assert listed(models)["other"]["architecture"] == "gemma"


def test_a_llama_architecture_guard_imports_without_force(models: Run, smollm2_gguf: Path) -> None:
    # The Yi-1.5 guards are llama models; a real trained llama GGUF stands in for one.
    result = models("import", smollm2_gguf, "--name", "smol")
    assert result.returncode == 0, result.stderr
    assert listed(models)["smol"]["architecture"] == "llama"


def test_import_without_chat_template_is_refused(models: Run, make_gguf: Callable[..., Path]) -> None:
    line = one_line_error(models("import", make_gguf(chat_template=False)), ExitCode.MODEL)
    assert "no chat template in the file" in line


def test_names_are_never_silently_replaced(models: Run, make_gguf: Callable[..., Path]) -> None:
    first = make_gguf("a.gguf")
    assert models("import", first, "--name", "m").returncode == 0
    again = models("import", first, "--name", "m")
    assert again.returncode == 0 and "already installed (identical file)" in again.stderr
    other = make_gguf("b.gguf", n_embd=32)
    line = one_line_error(models("import", other, "--name", "m"), ExitCode.MODEL)
    assert "a model named 'm' is already installed" in line
    assert listed(models)["m"]["sha256"] == sha256(first)


def test_export_then_import_elsewhere(models: Run, make_gguf: Callable[..., Path], tmp_path: Path) -> None:
    src = make_gguf()
    assert models("import", src, "--name", "guard").returncode == 0
    usb = tmp_path / "usb"
    usb.mkdir()  # the mounted drive
    result = models("export", "guard", usb)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in usb.iterdir()) == ["guard.gguf", "guard.manifest.json"]
    offline_home = str(tmp_path / "offline-machine")
    result = models("import", usb / "guard.gguf", LIBRA_EDGE_HOME=offline_home)
    assert result.returncode == 0, result.stderr
    row = listed(models, LIBRA_EDGE_HOME=offline_home)["guard"]
    assert row["sha256"] == sha256(src)
    assert row["imported_from"] == str((usb / "guard.gguf").resolve())


def test_import_of_a_corrupted_export_is_refused(models: Run, make_gguf: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    assert models("import", make_gguf(), "--name", "guard").returncode == 0
    usb = tmp_path / "usb"
    assert models("export", "guard", usb, "--mkdir").returncode == 0
    flip_byte(usb / "guard.gguf", (usb / "guard.gguf").stat().st_size - 10)  # inside tensor data
    offline_home = str(tmp_path / "offline-machine")
    line = one_line_error(models("import", usb / "guard.gguf", LIBRA_EDGE_HOME=offline_home),
                          ExitCode.MODEL)
    assert "guard.gguf: corrupt copy: sha256" in line and "guard.manifest.json" in line
    assert listed(models, LIBRA_EDGE_HOME=offline_home) == {}
    assert not any((tmp_path / "offline-machine" / "models").glob("*.partial"))


def test_verify_catches_a_flipped_byte(models: Run, make_gguf: Callable[..., Path],
                                       isolated_home: Path) -> None:
    assert models("import", make_gguf("a.gguf"), "--name", "good").returncode == 0
    assert models("import", make_gguf("b.gguf", n_embd=32), "--name", "bad").returncode == 0
    result = models("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    installed = isolated_home / "models" / "bad.gguf"
    flip_byte(installed, installed.stat().st_size // 2)
    result = models("verify")
    assert result.returncode == ExitCode.MODEL
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CORRUPT  bad  sha256")
    assert lines[1].startswith("OK       good  sha256")
    assert "1 of 2 model(s) failed verification" in result.stderr
    assert models("verify", "good").returncode == 0
    assert models("verify", "bad").returncode == ExitCode.MODEL


def test_verify_reports_a_missing_file(models: Run, make_gguf: Callable[..., Path],
                                       isolated_home: Path) -> None:
    assert models("import", make_gguf(), "--name", "gone").returncode == 0
    (isolated_home / "models" / "gone.gguf").unlink()
    result = models("verify")
    assert result.returncode == ExitCode.MODEL
    assert result.stdout.startswith("MISSING  gone")


def test_rm_and_default(models: Run, make_gguf: Callable[..., Path], isolated_home: Path) -> None:
    assert models("import", make_gguf("a.gguf"), "--name", "a").returncode == 0
    assert models("import", make_gguf("b.gguf"), "--name", "b").returncode == 0
    assert models("default").stdout.strip() == "a"
    assert models("default", "b").returncode == 0
    assert models("default").stdout.strip() == "b"
    assert listed(models)["b"]["default"] is True
    line = one_line_error(models("default", "zzz"), ExitCode.MODEL)
    assert "no installed model named 'zzz' (installed: a, b)" in line
    assert models("rm", "b").returncode == 0
    assert not (isolated_home / "models" / "b.gguf").exists()
    assert list(listed(models)) == ["a"]
    assert models("default").stdout == ""  # the default went with the model


def test_list_when_empty_says_how_to_get_a_model(models: Run) -> None:
    result = models("list")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "libra-edge models pull libra-guard-3b" in result.stderr
    assert "libra-edge models import FILE.gguf" in result.stderr


def test_list_table(models: Run, make_gguf: Callable[..., Path]) -> None:
    assert models("import", make_gguf(), "--name", "guard").returncode == 0
    lines = models("list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "ARCH", "SOURCE"]
    assert lines[1].split()[:5] == ["*", "guard", "F32", "9.3", "KB"]


@pytest.mark.parametrize("sub", ["", "pull", "import", "export", "verify", "list", "info"])
def test_help_teaches_with_examples(models: Run, sub: str) -> None:
    result = models(*([sub] if sub else []), "--help")
    assert result.returncode == 0
    assert "libra-edge models" in result.stdout
    assert "Example" in result.stdout or "online$" in result.stdout


def test_export_to_a_folder_that_does_not_exist_is_refused(
    models: Run, make_gguf: Callable[..., Path], tmp_path: Path,
) -> None:
    # Was: the folder was created on the local disk and the export "succeeded" (exit 0)
    # while the USB drive it was meant for was not even mounted.
    assert models("import", make_gguf(), "--name", "guard").returncode == 0
    usb = tmp_path / "media" / "usb"
    line = one_line_error(models("export", "guard", usb), ExitCode.INPUT)  # batch -o's rule
    assert f"{usb}: no such folder (is the drive mounted?)" in line and "--mkdir" in line
    assert not (tmp_path / "media").exists()
    result = models("export", "guard", usb, "--mkdir")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in usb.iterdir()) == ["guard.gguf", "guard.manifest.json"]


def test_export_of_an_unknown_model_creates_no_folder(models: Run, tmp_path: Path) -> None:
    line = one_line_error(models("export", "nope", tmp_path / "new", "--mkdir"), ExitCode.MODEL)
    assert "no installed model named 'nope'" in line
    assert not (tmp_path / "new").exists()


def test_a_model_verify_found_corrupt_is_not_loaded_until_replaced(
    models: Run, cli: list[str], cli_env: dict[str, str], tiny_qwen_gguf: Path, isolated_home: Path,
) -> None:
    # Was: `check` loaded and ran the corrupt model without a word.
    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, "check", "--fast", "-q", "问题", "-r", "回答", *extra],
                              env=cli_env, capture_output=True, text=True, timeout=300)

    assert models("import", tiny_qwen_gguf, "--name", "guard").returncode == 0
    installed = isolated_home / "models" / "guard.gguf"
    flip_byte(installed, installed.stat().st_size - 10)  # inside the weights: still loads
    assert models("verify").returncode == ExitCode.MODEL
    for extra in ((), ("-m", "guard"), ("-m", str(installed))):
        line = one_line_error(check(*extra), ExitCode.MODEL)
        assert "model 'guard' failed `libra-edge models verify` (CORRUPT: sha256" in line
        assert "`libra-edge models rm guard`" in line and "`libra-edge models verify guard`" in line
    assert models("rm", "guard").returncode == 0
    assert models("import", tiny_qwen_gguf, "--name", "guard").returncode == 0
    assert models("verify", "guard").returncode == 0
    assert check("-m", "guard").returncode in (ExitCode.OK, ExitCode.FLAGGED)

