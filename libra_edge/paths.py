"""Where libra-edge keeps user data: models, the results database and the config file.

Everything lives under one folder so that an air-gapped install can be backed up or moved
as a whole. `LIBRA_EDGE_HOME` relocates it (tests use this to isolate themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "libra-edge"
HOME_ENV = "LIBRA_EDGE_HOME"


def home() -> Path:
    """The root of all user data: `$LIBRA_EDGE_HOME`, else the platform's user data dir."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def models_dir() -> Path:
    """Folder holding installed GGUF models and their manifests."""
    return home() / "models"


def database_path() -> Path:
    """The SQLite database of batch runs, results and reviews."""
    return home() / "libra-edge.db"


def config_path() -> Path:
    """The JSON config file (default model, preferences)."""
    return home() / "config.json"


def state_dir() -> Path:
    """Saved llama.cpp KV states of models' prompt headers (`engine/header_state.py`): a cache."""
    return home() / "state"
