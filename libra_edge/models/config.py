"""The user's config file (JSON): which installed model is the default."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from libra_edge import paths
from libra_edge.errors import LibraError

DEFAULT_MODEL_KEY = "default_model"


def read_config() -> dict[str, Any]:
    """The config as a dict ({} when there is no config file yet)."""
    path = paths.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LibraError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LibraError(
            f"{path}: line {exc.lineno}: config is not valid JSON ({exc.msg})",
            hint="fix or delete the file",
        ) from None
    if not isinstance(data, dict):
        raise LibraError(f"{path}: config must be a JSON object", hint="fix or delete the file")
    return data


def write_config(data: dict[str, Any]) -> None:
    """Replace the config atomically (a crash never leaves a half-written file)."""
    path = paths.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_config(**changes: Any) -> dict[str, Any]:
    """Set keys (a value of None removes the key); returns the new config."""
    data = read_config()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    write_config(data)
    return data


def default_model_name() -> str | None:
    """Name of the configured default model, if one is set."""
    value = read_config().get(DEFAULT_MODEL_KEY)
    if value is not None and not isinstance(value, str):
        raise LibraError(
            f"{paths.config_path()}: field {DEFAULT_MODEL_KEY!r} must be a model name (a string)"
        )
    return value or None


def set_default_model_name(name: str | None) -> None:
    """Record NAME as the default model (None clears it)."""
    update_config(**{DEFAULT_MODEL_KEY: name})


def config_file() -> Path:
    """Where the config lives (for messages)."""
    return paths.config_path()
