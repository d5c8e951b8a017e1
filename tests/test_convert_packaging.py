"""The converter ships as `libra_edge.convert` (sources in the top-level `convert/`), never as a package `convert`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_pyproject_installs_convert_under_libra_edge_only() -> None:
    config = _setuptools_config()
    assert config["package-dir"] == {"libra_edge.convert": "convert"}
    assert "libra_edge.convert" in config["packages"]
    assert not [p for p in config["packages"] if p == "convert" or p.startswith("convert.")]


def test_pyproject_lists_every_package_of_the_tree() -> None:
    # `packages` is an explicit list (a find-directive cannot add the mapped package), so a
    # new folder under libra_edge/ must be added there or it is left out of the wheel.
    found = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "libra_edge").rglob("__init__.py")
    }
    assert found | {"libra_edge.convert"} == set(_setuptools_config()["packages"])


def test_converter_modules_import_each_other_relatively() -> None:
    absolute = re.compile(r"^\s*(from convert[.\s]|import convert\b)", re.M)
    offenders = [p.name for p in sorted((ROOT / "convert").glob("*.py")) if absolute.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_installed_package_is_libra_edge_convert_and_there_is_no_top_level_convert(tmp_path: Path) -> None:
    code = (
        "import importlib.util, pathlib, libra_edge.convert as c; "
        "print(pathlib.Path(c.__file__).parent.name); print(importlib.util.find_spec('convert'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["convert", "None"]


def test_libra_edge_cli_does_not_import_the_converter_until_it_runs(tmp_path: Path) -> None:
    code = "import sys, libra_edge.cli.main; print(sorted(m for m in sys.modules if 'convert.' in m))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pipeline" not in proc.stdout and "gguf" not in proc.stdout


def test_script_entry_points_work(tmp_path: Path) -> None:
    from_root = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    installed = subprocess.run([sys.executable, "-m", "libra_edge.convert", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    as_file = subprocess.run([sys.executable, str(ROOT / "convert" / "__main__.py"), "--help"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert from_root.returncode == installed.returncode == as_file.returncode == 0
    assert from_root.stdout.startswith("usage: python -m convert ")
    assert installed.stdout.startswith("usage: python -m libra_edge.convert ")
    assert "QWenLMHeadModel" in installed.stdout and "LlamaForCausalLM" in installed.stdout
