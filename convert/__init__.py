"""Hugging Face checkpoint -> GGUF conversion for the Libra-Guard models, without torch.

Installed as `libra_edge.convert`; the repository keeps the sources in `convert/` at its top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .outtypes import OUTTYPES

__all__ = [
    "OUTTYPES",
    "ConversionPlan",
    "ConversionResult",
    "convert_checkpoint",
    "plan_conversion",
    "quantize_gguf",
]

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import ConversionPlan, ConversionResult, convert_checkpoint, plan_conversion
    from .quantize import quantize_gguf


def __getattr__(name: str) -> Any:
    # Lazy: `libra-edge --help` registers the convert command without importing numpy/gguf.
    if name in ("ConversionPlan", "ConversionResult", "convert_checkpoint", "plan_conversion"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "quantize_gguf":
        from .quantize import quantize_gguf

        return quantize_gguf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
