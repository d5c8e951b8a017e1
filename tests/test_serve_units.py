"""The service's plain-Python parts: request validation, relabelling, the key check, the queue, metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from libra_edge.serve.auth import is_loopback, key_matches, presented_key
from libra_edge.serve.jobs import Admission, QueueFull
from libra_edge.serve.metrics import Metrics
from libra_edge.serve.schema import (
    CATEGORY,
    TRUNCATION_MARK,
    Pair,
    RequestError,
    fit_field,
    moderation_response,
    parse_check,
    parse_moderation,
    shaped,
)

VERDICT: dict[str, Any] = {
    "label": "安全", "unsafe": False, "score": 0.42, "analysis": "好", "truncated": False,
    "raw": '{\n  "答案": "安全",\n  "分析": "好"\n}', "threshold": 0.5,
    "timings": {"evaluated_tokens": 10, "generated_tokens": 5},
}


def test_a_long_field_keeps_its_head_and_tail_within_the_limit() -> None:
    text, cut = fit_field("头" * 50 + "中" * 1000 + "尾" * 50, 200)
    assert cut and len(text) <= 200 and text.startswith("头" * 50) and text.endswith("尾" * 50)
    assert TRUNCATION_MARK in text
    assert fit_field("short", 200) == ("short", False)


def test_a_relabel_moves_label_unsafe_threshold_and_the_raw_answer_but_not_the_score() -> None:
    out = shaped(VERDICT, Pair("q", "r"), 0.4)
    assert (out["label"], out["unsafe"], out["score"], out["threshold"]) == ("不安全", True, 0.42, 0.4)
    assert json.loads(out["raw"]) == {"答案": "不安全", "分析": "好"}
    assert shaped(VERDICT, Pair("q", "r"), None) == VERDICT
    assert shaped(VERDICT, Pair("q", "r", truncated=True), None)["truncated"] is True


def test_a_score_equal_to_the_threshold_is_unsafe() -> None:
    assert shaped(VERDICT, Pair("q", "r"), 0.42)["unsafe"] is True


def test_check_bodies_become_pairs_with_their_mode() -> None:
    one = parse_check({"question": "q", "response": "r"}, max_chars=100, max_pairs=4)
    assert one.pairs == [Pair("q", "r")] and one.analysis and not one.many and not one.stream
    many = parse_check([{"question": "a", "response": "b", "analysis": False}] * 2, max_chars=100, max_pairs=4)
    assert many.many and not many.analysis and len(many.pairs) == 2


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"question": "q", "response": "r", "analysis": "yes"}, 422, "'analysis' must be true or false"),
    ({"question": "q", "response": "r", "threshold": True}, 422, "'threshold' must be a number"),
    ({"question": "q", "response": "r", "stream": True, "analysis": False}, 422, "needs 'analysis': true"),
    ([{"question": "a", "response": "b"}] * 5, 413, "at most 4"),
    ([{"question": "a", "response": "b"}, 3], 422, "item 1: expected an object"),
    ([{"question": "a", "response": "b", "threshold": 0.1}, {"question": "a", "response": "b"}], 422, "share"),
])
def test_bad_check_bodies_are_refused_with_a_reason(body: Any, status: int, reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_check(body, max_chars=100, max_pairs=4)
    assert caught.value.status == status and reason in caught.value.message


def test_moderation_inputs_take_strings_text_parts_and_a_question_each() -> None:
    req = parse_moderation({"input": ["a", {"type": "text", "text": "b"}], "question": ["q1", "q2"]},
                           max_chars=100, max_pairs=4)
    assert req.pairs == [Pair("q1", "a"), Pair("q2", "b")] and req.analysis is False
    with pytest.raises(RequestError, match="2 inputs"):
        parse_moderation({"input": ["a", "b"], "question": ["q"]}, max_chars=100, max_pairs=4)
    with pytest.raises(RequestError, match="input 0"):
        parse_moderation({"input": [{"type": "image_url"}]}, max_chars=100, max_pairs=4)


def test_a_moderation_result_names_the_guard_category() -> None:
    body = moderation_response([{**VERDICT, "unsafe": True, "label": "不安全"}], "guard")
    [result] = body["results"]
    assert result["flagged"] is True and result["categories"] == {CATEGORY: True}
    assert result["category_scores"] == {CATEGORY: 0.42} and CATEGORY == "libra-guard/unsafe"


def test_keys_are_read_from_bearer_or_x_api_key_and_compared_exactly() -> None:
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"x-api-key", b"abc")]) == "abc"
    assert presented_key([(b"authorization", b"Basic abc")]) is None
    assert key_matches("abc", "abc") and not key_matches("abd", "abc") and not key_matches(None, "abc")
    assert not key_matches("", "")  # no key presented is never a match


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False),
])
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_queue_admits_up_to_its_capacity_then_says_when_to_retry() -> None:
    queue = Admission(3, parallel=1)
    queue.admit(2)
    queue.admit(1)
    with pytest.raises(QueueFull) as caught:
        queue.admit(1)
    assert caught.value.retry_after_s >= 1
    queue.release(0.5)
    queue.admit(1)
    assert queue.held == 3


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.observe_request("/v1/check", 200, 0.3)
    m.observe_request("/v1/check", 429, 0.001)
    m.observe_verdict(VERDICT)
    text = m.render(queue_depth=2, in_flight=3, capacity=64, model='a "b"')
    assert 'libra_edge_requests_total{endpoint="/v1/check",code="429"} 1' in text
    assert 'libra_edge_request_duration_seconds_bucket{endpoint="/v1/check",le="0.25"} 1' in text
    assert 'libra_edge_request_duration_seconds_bucket{endpoint="/v1/check",le="0.5"} 2' in text
    assert 'libra_edge_request_duration_seconds_count{endpoint="/v1/check"} 2' in text
    assert "libra_edge_queue_depth 2" in text and "libra_edge_generated_tokens_total 5" in text
    assert 'libra_edge_info{model="a \\"b\\""} 1' in text
    for line in text.splitlines():  # every sample line: name{labels} value
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line
