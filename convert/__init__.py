"""Hugging Face checkpoint -> GGUF conversion for Libra-Guard (Qwen2.5) models, without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convert.outtypes import OUTTYPES

__all__ = [
    "OUTTYPES",
    "ConversionPlan",
    "ConversionResult",
    "convert_checkpoint",
    "plan_conversion",
    "quantize_gguf",
]

if TYPE_CHECKING:  # pragma: no cover
    from convert.pipeline import ConversionPlan, ConversionResult, convert_checkpoint, plan_conversion
    from convert.quantize import quantize_gguf


def __getattr__(name: str) -> Any:
    # Lazy: `libra-edge --help` registers the convert command without importing numpy/gguf.
    if name in ("ConversionPlan", "ConversionResult", "convert_checkpoint", "plan_conversion"):
        from convert import pipeline

        return getattr(pipeline, name)
    if name == "quantize_gguf":
        from convert.quantize import quantize_gguf

        return quantize_gguf
    raise AttributeError(f"module 'convert' has no attribute {name!r}")
