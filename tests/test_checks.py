"""The project's static checks, run as tests so that the README's test command runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mypy_strict_passes_on_the_package_and_the_converter() -> None:
    # Configuration (strict, third-party overrides) lives in pyproject.toml's [tool.mypy].
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "libra_edge", "convert"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert "No module named mypy" not in run.stderr, "mypy is missing: ./install.sh --dev installs it"
    errors = [line for line in (run.stdout + run.stderr).splitlines() if ": note:" not in line]
    assert run.returncode == 0, "\n".join(errors[-80:])
