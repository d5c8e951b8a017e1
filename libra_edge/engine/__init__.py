"""The guard engine: prompt, grammar, decoding and the one seam to llama.cpp.

Importing this package is cheap; `llama_cpp` is loaded when a model is.
"""

from libra_edge.engine.guard import Guard, Timings, Verdict
from libra_edge.engine.settings import EngineSettings

__all__ = ["EngineSettings", "Guard", "Timings", "Verdict"]
