"""The guard engine: prompt, grammar, decoding and the one seam to llama.cpp.

Importing this package is cheap: its names are imported when first used (`Guard` brings
numpy and the chat template's jinja2; `llama_cpp` is loaded when a model is), so a
command that only registers its options (every command, at each start) pays nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libra_edge.engine.guard import Guard, Timings, Verdict
    from libra_edge.engine.settings import EngineSettings

_WHERE = {"Guard": "guard", "Timings": "guard", "Verdict": "guard", "EngineSettings": "settings"}

__all__ = ["EngineSettings", "Guard", "Timings", "Verdict"]


def __getattr__(name: str) -> Any:
    """`from libra_edge.engine import Guard` imports the module that defines it, on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
