"""The verdict rules, in one place: the labels, where a score becomes 不安全, and relabelling.

A verdict is decided once, by the engine (`Guard`), as `label_at(score, threshold)`. Every
later view of a stored verdict at another threshold (`check --threshold`, `report
--threshold` and its `--export`, the report's reading of the authors' metric, a `serve`
request's own `threshold`) goes through `relabel`: the score and the analysis stay as
judged, `unsafe`, the label and the `答案` of the raw reply follow the new threshold, and
the raw reply is otherwise kept byte for byte. The defaults every face shows (threshold,
analysis length, the smallest context) are declared here and read by `EngineSettings`.

Headless and cheap to import: nothing here loads the engine.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TypeGuard

from libra_edge.errors import LibraError

SAFE = "安全"
UNSAFE = "不安全"
LABELS: tuple[str, str] = (SAFE, UNSAFE)

DEFAULT_THRESHOLD = 0.5
"""P(unsafe) at or above which a verdict is 不安全, unless a run or a request says otherwise."""
DEFAULT_MAX_NEW_TOKENS = 256
"""The longest analysis, in tokens (the authors' `max_new_tokens`)."""
MIN_CTX_PER_SEQ = 512
"""The smallest context per sequence any setting accepts (`--ctx`, `EngineSettings`). A check
needs the prompt (152 tokens with Qwen2.5's tokenizer, chat template included), room for the
JSON frame (98 tokens, `grammar.FRAME_RESERVE_TOKENS`), for the analysis (`--max-tokens`) and
for at least 32 tokens of question and response: 256 never fits, 512 fits an analysis of
up to 230 tokens. Whether a given context fits a model's prompt and `--max-tokens` is the
engine's own check (a one-line error naming --ctx)."""

# The first `"答案": "..."` of a reply: the key, the label, the closing quote.
_ANSWER = re.compile(r'("答案"\s*:\s*")(不安全|安全)(")')


def is_unsafe(score: float, threshold: float) -> bool:
    """The one rule: unsafe when P(unsafe) is at or above the threshold."""
    return score >= threshold


def label_of(unsafe: bool) -> str:
    """不安全 for an unsafe verdict, 安全 otherwise."""
    return UNSAFE if unsafe else SAFE


def label_at(score: float, threshold: float) -> str:
    """The label a score gets at a threshold."""
    return label_of(is_unsafe(score, threshold))


def valid_threshold(value: object) -> TypeGuard[float]:
    """Whether VALUE is a threshold: a number (not a bool) from 0 to 1, both included."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


THRESHOLD_RANGE = "must be between 0 and 1"
"""What an invalid threshold is told (after the name of the flag or field that gave it)."""


def check_threshold(value: object, name: str = "threshold") -> float:
    """VALUE as a float when it is a threshold, else a LibraError naming `name` (a flag, a field)."""
    if not valid_threshold(value):
        raise LibraError(f"{name}: {THRESHOLD_RANGE}, got {value!r}")
    return float(value)


def relabel_raw(raw: str | None, label: str) -> str:
    """The raw reply with its `答案` set to LABEL, everything else kept as written.

    A reply without a readable `答案` (an older store's, a damaged one) becomes the
    JSON object it held with `答案` set, or `{"答案": LABEL}` when it held none.
    """
    if raw is not None:
        found = _ANSWER.search(raw)
        if found is not None:
            return raw[: found.start(2)] + label + raw[found.end(2):]
    try:
        reply = json.loads(raw or "")
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        reply = {}
    reply["答案"] = label
    return json.dumps(reply, ensure_ascii=False)


@dataclass(frozen=True)
class Relabelled:
    """A judged verdict seen at a threshold."""

    unsafe: bool
    label: str
    raw: str | None
    changed: bool
    """The threshold moved the verdict to the other label."""


def relabel(score: float, unsafe: bool, raw: str | None, threshold: float) -> Relabelled:
    """A stored verdict (its score, its `unsafe`, its raw reply) at THRESHOLD.

    The raw reply changes only when the label does (then through `relabel_raw`), so a
    verdict that keeps its label keeps its raw text exactly.
    """
    now = is_unsafe(score, threshold)
    if now == bool(unsafe):
        return Relabelled(now, label_of(now), raw, changed=False)
    label = label_of(now)
    return Relabelled(now, label, relabel_raw(raw, label), changed=True)
