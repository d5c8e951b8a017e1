"""Shared fixtures. Every test runs with its own LIBRA_EDGE_HOME; models are built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "data"

# Fixture modules, one per area, so that each area's fixtures live beside each other.
pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.data",
    "tests.fixtures.hub",
    "tests.fixtures.tui",
]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LIBRA_EDGE_HOME per test: no test sees the user's models, database or config."""
    home = tmp_path / "libra-home"
    monkeypatch.setenv("LIBRA_EDGE_HOME", str(home))
    # No test may reach the network: huggingface-hub must not try either.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference material the tests read, kept in the repository (`tests/data/`).

    `libra/prompt_golden.json` (the authors' template, byte-exact, for three pairs) and
    `libra/sample_libra_test.json` (24 hand-written Libra-Test-format items): a clone
    anywhere needs nothing outside itself to run its tests.
    """
    return REFERENCE


@pytest.fixture
def cli_env(isolated_home: Path) -> dict[str, str]:
    """Environment for running `libra-edge` as a real subprocess (this test's home)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def cli() -> list[str]:
    """argv prefix that runs the CLI of this checkout in a subprocess."""
    return [sys.executable, "-m", "libra_edge"]
