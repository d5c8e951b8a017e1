"""Which model a command uses: --model path or name > configured default > the only model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from libra_edge import paths
from libra_edge.errors import LibraError, ModelError
from libra_edge.models import config, registry, resolve_model


@pytest.fixture
def install(make_gguf: Callable[..., Path]) -> Callable[[str], Path]:
    """Install a synthetic qwen2 GGUF under NAME; returns its installed path."""

    def do(name: str) -> Path:
        model, _ = registry.import_model(make_gguf(f"{name}-src.gguf"), name=name)
        return model.path

    return do


def test_no_model_says_how_to_get_one() -> None:
    with pytest.raises(ModelError) as err:
        resolve_model(None)
    message = str(err.value)
    assert "no model installed" in message
    assert "libra-edge models pull libra-guard-3b" in message
    assert "libra-edge models import FILE.gguf" in message
    assert "\n" not in message


def test_an_existing_file_path_wins(make_gguf: Callable[..., Path], install: Callable[[str], Path]) -> None:
    install("installed")
    loose = make_gguf("loose.gguf")
    assert resolve_model(str(loose)) == loose


def test_an_installed_name(install: Callable[[str], Path]) -> None:
    first = install("first")
    second = install("second")
    assert resolve_model("first") == first
    assert resolve_model("second") == second == paths.models_dir() / "second.gguf"


def test_the_only_installed_model_is_used(install: Callable[[str], Path]) -> None:
    only = install("only")
    config.set_default_model_name(None)  # even without a configured default
    assert resolve_model(None) == only


def test_the_first_installed_model_becomes_the_default(install: Callable[[str], Path]) -> None:
    first = install("first")
    install("second")
    assert config.default_model_name() == "first"
    assert resolve_model(None) == first


def test_configured_default_wins_over_others(install: Callable[[str], Path]) -> None:
    install("first")
    second = install("second")
    config.set_default_model_name("second")
    assert resolve_model(None) == second


def test_several_models_and_no_default(install: Callable[[str], Path]) -> None:
    install("alpha")
    install("beta")
    config.set_default_model_name(None)
    with pytest.raises(ModelError, match=r"several models are installed \(alpha, beta\).*"
                       r"libra-edge models default NAME"):
        resolve_model(None)


def test_default_that_was_removed(install: Callable[[str], Path]) -> None:
    install("alpha")
    config.set_default_model_name("ghost")
    with pytest.raises(ModelError, match="the default model 'ghost' is not installed"):
        resolve_model(None)


def test_unknown_name_lists_installed(install: Callable[[str], Path]) -> None:
    install("alpha")
    with pytest.raises(ModelError, match=r"beta: neither a file nor an installed model name \(installed: alpha\)"):
        resolve_model("beta")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_registered_model_whose_file_vanished(install: Callable[[str], Path]) -> None:
    install("alpha").unlink()
    with pytest.raises(ModelError, match="registered but its file .* is missing.*models rm alpha"):
        resolve_model("alpha")


def test_broken_config_file_is_one_line_naming_the_line() -> None:
    paths.config_path().parent.mkdir(parents=True, exist_ok=True)
    paths.config_path().write_text('{\n  "default_model": "x",,\n}\n')
    with pytest.raises(LibraError, match=r"config.json: line 2: config is not valid JSON"):
        resolve_model(None)


def test_a_model_verify_found_corrupt_is_refused_by_name_default_and_path(
    install: Callable[[str], Path],
) -> None:
    from libra_edge.models import integrity

    path = install("guard")
    result = registry.verify_model(registry.get_model("guard"))
    integrity.remember("guard", path, "CORRUPT", "sha256 0123… != manifest 4567…")
    for spec in ("guard", None, str(path)):
        with pytest.raises(ModelError) as err:
            resolve_model(spec)
        message = str(err.value)
        assert "model 'guard' failed `libra-edge models verify` (CORRUPT: sha256 0123…" in message
        assert "libra-edge models rm guard" in message and "libra-edge models verify guard" in message
        assert "\n" not in message
    integrity.remember("guard", path, result.status, result.detail)  # verified again: OK
    assert resolve_model("guard") == path


def test_a_corrupt_verdict_stops_applying_once_the_file_is_replaced(
    install: Callable[[str], Path], make_gguf: Callable[..., Path],
) -> None:
    from libra_edge.models import integrity

    path = install("guard")
    integrity.remember("guard", path, "CORRUPT", "size differs")
    registry.remove_model("guard")
    integrity.forget("guard")
    registry.import_model(make_gguf("fresh.gguf"), name="guard")
    assert resolve_model("guard") == path
    integrity.remember("guard", path, "CORRUPT", "size differs")
    path.write_bytes(make_gguf("other.gguf").read_bytes() + b"\0")  # replaced behind our back
    assert resolve_model("guard") == path  # not the file that was found corrupt
