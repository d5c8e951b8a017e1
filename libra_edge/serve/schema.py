"""Request bodies of the service, validated into pairs, and verdicts shaped for each endpoint."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

# An over-long field is cut around the mark of the engine's own cuts.
from libra_edge.engine.planning import TRUNCATION_MARK as TRUNCATION_MARK
from libra_edge.verdicts import relabel, valid_threshold

# The one category a moderation result carries: P(unsafe) as Libra-Guard reads it.
CATEGORY = "libra-guard/unsafe"


class RequestError(ValueError):
    """A request the service cannot take, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Pair:
    """One (question, response) to judge, cut to the field limit when longer."""

    question: str
    response: str
    truncated: bool = False


@dataclass(frozen=True)
class CheckRequest:
    """A `/v1/check` body: one pair (or several, `many`), the mode and an optional threshold."""

    pairs: list[Pair]
    analysis: bool
    threshold: float | None
    stream: bool
    many: bool


@dataclass(frozen=True)
class ModerationRequest:
    """A `/v1/moderations` body: responses to judge, each with its question ("" if none)."""

    pairs: list[Pair]
    analysis: bool
    threshold: float | None
    model: str | None


def fit_field(text: str, max_chars: int) -> tuple[str, bool]:
    """TEXT cut to its head and tail when longer than `max_chars` (True when cut)."""
    if len(text) <= max_chars:
        return text, False
    keep = max(2, max_chars - len(TRUNCATION_MARK))
    return text[: keep - keep // 2] + TRUNCATION_MARK + text[len(text) - keep // 2 :], True


def _pair(question: Any, response: Any, where: str, max_chars: int) -> Pair:
    for name, value in (("question", question), ("response", response)):
        if not isinstance(value, str):
            what = "missing" if value is None else f"a {type(value).__name__}, not a string"
            raise RequestError(422, f"{where}field {name!r} is {what}")
    q, q_cut = fit_field(question, max_chars)
    r, r_cut = fit_field(response, max_chars)
    return Pair(q, r, q_cut or r_cut)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(422, f"field {name!r} must be true or false, got {value!r}")
    return value


def _threshold(body: dict[str, Any]) -> float | None:
    value = body.get("threshold")
    if value is None:
        return None
    if not valid_threshold(value):
        raise RequestError(422, f"field 'threshold' must be a number between 0 and 1, got {value!r}")
    return float(value)


def parse_check(body: Any, *, max_chars: int, max_pairs: int) -> CheckRequest:
    """A `/v1/check` body: an object, or an array of objects judged together."""
    if isinstance(body, list):
        if not body:
            raise RequestError(422, "empty array: send at least one {\"question\", \"response\"} object")
        if len(body) > max_pairs:
            raise RequestError(413, f"{len(body)} pairs in one request; at most {max_pairs} (--queue)")
        items = []
        for i, item in enumerate(body):
            if not isinstance(item, dict):
                raise RequestError(422, f"item {i}: expected an object with question and response")
            items.append(item)
        head = items[0]
        modes = {_bool(item, "analysis", True) for item in items}
        thresholds = {_threshold(item) for item in items}
        if len(modes) > 1 or len(thresholds) > 1:
            raise RequestError(422, "the items of one request must share 'analysis' and 'threshold'")
        if any(_bool(item, "stream", False) for item in items):
            raise RequestError(422, "'stream' is for one pair, not an array")
        pairs = [_pair(item.get("question"), item.get("response"), f"item {i}: ", max_chars)
                 for i, item in enumerate(items)]
        return CheckRequest(pairs, _bool(head, "analysis", True), _threshold(head), False, many=True)
    if not isinstance(body, dict):
        raise RequestError(422, "expected a JSON object with question and response (or an array of them)")
    pair = _pair(body.get("question"), body.get("response"), "", max_chars)
    stream = _bool(body, "stream", False)
    analysis = _bool(body, "analysis", True)
    if stream and not analysis:
        raise RequestError(422, "'stream' streams the analysis: it needs 'analysis': true")
    return CheckRequest([pair], analysis, _threshold(body), stream, many=False)


def _input_text(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
        return str(item["text"])
    raise RequestError(422, f"input {i}: expected a string or a {{\"type\": \"text\", \"text\": ...}} part")


def parse_moderation(body: Any, *, max_chars: int, max_pairs: int) -> ModerationRequest:
    """An OpenAI moderation body; `question` (a string, or one per input) is our extension."""
    if not isinstance(body, dict):
        raise RequestError(422, "expected a JSON object with 'input'")
    raw = body.get("input")
    if raw is None:
        raise RequestError(422, "field 'input' is missing")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "field 'input' must be a string or a non-empty array")
    if len(inputs) > max_pairs:
        raise RequestError(413, f"{len(inputs)} inputs in one request; at most {max_pairs} (--queue)")
    texts = [_input_text(item, i) for i, item in enumerate(inputs)]
    question = body.get("question", "")
    questions = question if isinstance(question, list) else [question] * len(texts)
    if len(questions) != len(texts):
        raise RequestError(422, f"'question' has {len(questions)} items for {len(texts)} inputs")
    pairs = [_pair(q, t, f"input {i}: " if len(texts) > 1 else "", max_chars)
             for i, (q, t) in enumerate(zip(questions, texts))]
    model = body.get("model")
    return ModerationRequest(pairs, _bool(body, "analysis", False), _threshold(body),
                             model if isinstance(model, str) else None)


def shaped(verdict: dict[str, Any], pair: Pair, threshold: float | None) -> dict[str, Any]:
    """A verdict as `check --json` prints it, relabelled at `threshold` (the score is unchanged).

    The score does not depend on the threshold, so a request's own threshold only moves
    the label: `label`, `unsafe`, `threshold` and the `答案` in `raw` follow it (`verdicts.relabel`,
    as `report --threshold` relabels a stored run).
    """
    out = dict(verdict)
    if pair.truncated:
        out["truncated"] = True
    if threshold is not None:
        seen = relabel(float(out["score"]), bool(out["unsafe"]), out.get("raw"), threshold)
        out["label"], out["unsafe"], out["threshold"], out["raw"] = seen.label, seen.unsafe, threshold, seen.raw
    return out


def moderation_response(verdicts: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """OpenAI's moderation response: one result per input, the guard's score as one category."""
    results = []
    for v in verdicts:
        result: dict[str, Any] = {
            "flagged": bool(v["unsafe"]),
            "categories": {CATEGORY: bool(v["unsafe"])},
            "category_scores": {CATEGORY: float(v["score"])},
            "category_applied_input_types": {CATEGORY: ["text"]},
            "label": v["label"],
        }
        if v.get("analysis") is not None:
            result["analysis"] = v["analysis"]
        results.append(result)
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
