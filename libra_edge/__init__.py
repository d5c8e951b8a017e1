"""libra-edge: run the Libra-Guard safety guard offline through llama.cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["EngineSettings", "Guard", "Verdict", "Timings", "LibraError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine import EngineSettings, Guard, Timings, Verdict
    from .errors import LibraError


def __getattr__(name: str) -> Any:
    # Lazy: `import libra_edge` must stay cheap (the CLI's --help, the TUI start-up),
    # and must not load llama.cpp's shared library until a model is actually used.
    if name in ("Guard", "Verdict", "Timings", "EngineSettings"):
        from . import engine

        return getattr(engine, name)
    if name == "LibraError":
        from .errors import LibraError

        return LibraError
    raise AttributeError(f"module 'libra_edge' has no attribute {name!r}")
