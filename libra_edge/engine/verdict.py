"""What a check returns: the Verdict of one (question, response) pair and its Timings.

A verdict is decided by the engine (engine/checker.py) as `verdicts.label_at(score,
threshold)`; every later view of it at another threshold goes through `verdicts.relabel`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timings:
    """Where one check spent its tokens and time."""

    prompt_tokens: int  # tokens in the full prompt (the deciding window's, when chunked)
    reused_tokens: int  # prompt tokens whose KV state was kept from an earlier check
    evaluated_tokens: int  # prompt tokens actually run through the model
    generated_tokens: int  # output tokens (forced and drafted ones included)
    prefill_s: float
    decode_s: float
    total_s: float


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one (question, response) pair."""

    label: str  # "安全" or "不安全"
    unsafe: bool
    score: float  # P(unsafe) in [0, 1], from the raw logits at the verdict position
    analysis: str | None  # None in fast mode
    raw: str  # the model's JSON text; always parses
    truncated: bool  # an input was cut (head and tail kept) to fit the context
    timings: Timings = field(compare=False)
    analysis_cut: bool = False  # the analysis was stopped by the token cap or the context
    windows: int = 1  # windows the response was judged in (1 unless chunked)
    window: int = 0  # the window whose score decided (the highest)
    span: tuple[int, int] | None = None  # that window's characters in the response as given
    normalized: bool = False  # normalization changed the judged text
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `libra-edge check --json` prints it."""
        return {
            "label": self.label,
            "unsafe": self.unsafe,
            "score": self.score,
            "analysis": self.analysis,
            "truncated": self.truncated,
            "analysis_cut": self.analysis_cut,
            "windows": self.windows,
            "window": self.window,
            "span": list(self.span) if self.span is not None else None,
            "normalized": self.normalized,
            "raw": self.raw,
            "timings": asdict(self.timings),
            **self.provenance,
        }
