"""`--ctx` help says what the default does to a longer response: windows (`--long chunk`), not a cut."""

from __future__ import annotations

import os
import re
import subprocess

import pytest


@pytest.mark.parametrize("command", ["check", "batch", "bench"])
def test_ctx_help_describes_the_default_long_mode(cli: list[str], command: str) -> None:
    # Was: "longer inputs keep their head and tail and are marked truncated", while the
    # default (--long chunk) judges the whole response in windows.
    proc = subprocess.run([*cli, command, "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "1000"})
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("--ctx"))
    text = re.sub(r"\s+", " ", line)
    assert "(default: 4096)" in text and "overlapping windows, the highest score deciding" in text, text
    assert "marked truncated" not in text
    if command in ("check", "batch"):  # the commands that have --long name both modes
        assert "(--long chunk, the default)" in text and "head and tail (--long truncate)" in text, text
