"""Installed models: finding the GGUF a command should use."""

from __future__ import annotations

from pathlib import Path

from libra_edge.errors import ModelError


def resolve_model(spec: str | None) -> Path:
    """The GGUF to load for `--model SPEC` (a path for now; names and defaults to come)."""
    if spec is None:
        raise ModelError(
            "no model given and none installed",
            hint="pass --model FILE.gguf, or `libra-edge models import FILE.gguf`",
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{spec}: no such model file")
    return path
