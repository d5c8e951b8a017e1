"""The guard engine: prompt, grammar, decoding and the one seam to llama.cpp.

Importing this package is cheap: its names are imported when first used (`Guard` brings
numpy and the chat template's jinja2; `llama_cpp` is loaded when a model is), so a
command that only registers its options (every command, at each start) pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libra_edge.lazy import module_getattr

if TYPE_CHECKING:
    from libra_edge.engine.guard import Guard
    from libra_edge.engine.verdict import Timings, Verdict
    from libra_edge.engine.settings import EngineSettings

_WHERE = {"Guard": "guard", "Timings": "verdict", "Verdict": "verdict", "EngineSettings": "settings"}

__all__ = ["EngineSettings", "Guard", "Timings", "Verdict"]


# `from libra_edge.engine import Guard` imports the module that defines it, on first use.
__getattr__ = module_getattr(__name__, _WHERE)
