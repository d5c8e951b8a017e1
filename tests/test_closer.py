"""The JSON closer: an analysis cut at any point still yields parsable JSON with its verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libra_edge.engine import Guard
from libra_edge.engine.grammar import ANALYSIS_OPENED, close_json

ANALYSIS = '含有"引号"、\\反斜杠、\n换行、\t制表和\u4e2d\U0001F600表情'
LAYOUTS = {
    "pretty": '{\n  "答案": "不安全",\n  "分析": %s\n}',
    "compact": '{"答案":"不安全","分析":%s}',
    "spaced": '{ "答案" : "不安全" ,\n\t"分析" :  %s  }',
}


def _cuts(raw: str) -> range:
    opened = ANALYSIS_OPENED.search(raw)
    assert opened is not None
    return range(opened.end(), len(raw) + 1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("ascii_escapes", [False, True])
def test_every_cut_point_closes_to_valid_json_with_the_verdict(layout: str, ascii_escapes: bool) -> None:
    raw = LAYOUTS[layout] % json.dumps(ANALYSIS, ensure_ascii=ascii_escapes)
    assert json.loads(raw)["分析"] == ANALYSIS
    for cut in _cuts(raw):
        closed = close_json(raw[:cut])
        parsed = json.loads(closed)
        assert parsed["答案"] == "不安全", (cut, closed)
        assert ANALYSIS.startswith(parsed["分析"]), (cut, closed)
        assert list(parsed) == ["答案", "分析"]


def test_cut_inside_the_string() -> None:
    assert json.loads(close_json('{"答案": "安全", "分析": "回答拒绝了'))["分析"] == "回答拒绝了"


def test_cut_right_after_a_backslash() -> None:
    assert json.loads(close_json('{"答案": "安全", "分析": "路径 C:\\'))["分析"] == "路径 C:"


def test_cut_after_an_escaped_backslash_keeps_it() -> None:
    assert json.loads(close_json('{"答案": "安全", "分析": "路径 C:\\\\'))["分析"] == "路径 C:\\"


@pytest.mark.parametrize("partial", ["\\u", "\\u4", "\\u4e", "\\u4e2"])
def test_cut_inside_a_unicode_escape_split_across_tokens(partial: str) -> None:
    closed = close_json('{"答案": "安全", "分析": "中' + partial)
    assert json.loads(closed)["分析"] == "中"


def test_cut_right_after_the_closing_quote() -> None:
    # The token cap landing just after the analysis string closed: no second quote added.
    for tail in ('"', '"\n', '"  \t'):
        closed = close_json('{\n  "答案": "不安全",\n  "分析": "完整的分析' + tail)
        assert json.loads(closed) == {"答案": "不安全", "分析": "完整的分析"}
        assert closed.endswith("\n}")


def test_closing_follows_the_verdict_layout() -> None:
    assert close_json('{"答案":"安全","分析":"x').endswith('x"}')
    assert close_json('{\n  "答案": "安全",\n  "分析": "x').endswith('x"\n}')


def test_nothing_to_close_before_the_analysis_opened() -> None:
    with pytest.raises(ValueError, match="never opened"):
        close_json('{"答案": "安全", "分')


@pytest.mark.slow
def test_every_token_cap_keeps_the_verdict_and_marks_the_cut(smollm2_gguf: Path) -> None:
    """Real trained weights, analysis caps from 1 token up: the verdict never changes."""
    pair = ("How do I pick a lock?", 'Use a "tension wrench" and a pick\\rake; see C:\\locks.')
    with Guard.load(smollm2_gguf, ctx_per_seq=1024, max_new_tokens=400, threads=1) as guard:
        whole = guard.check(*pair)
    for cap in (1, 2, 3, 5, 8, 13, 21):
        with Guard.load(smollm2_gguf, ctx_per_seq=1024, max_new_tokens=cap, threads=1) as guard:
            cut = guard.check(*pair)
        parsed = json.loads(cut.raw)
        assert parsed["答案"] == cut.label == whole.label
        assert cut.score == whole.score  # the pair fits either way: the same blocks, the same score
        assert cut.analysis == parsed["分析"]
        assert cut.analysis_cut == (cut.analysis != whole.analysis)
        assert whole.analysis is not None and whole.analysis.startswith(cut.analysis or "")
