"""Prompt planning without a model: budgets, windows, cuts and blocks with a toy tokenizer.

The tokenizer spells characters (one token per code point), except that it merges "：" with
the character after it into one token, as a BPE vocabulary may merge a header's last
punctuation with a question's first letter: the header block must stop before such a merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from libra_edge.engine.decoding import Block
from libra_edge.engine.planning import (
    TRUNCATION_MARK,
    budget,
    header_tokens,
    overhead,
    plan,
    prompt_blocks,
)
from libra_edge.engine.prompt import build_user_message
from libra_edge.errors import LibraError

BOS = 1
MERGED = 2_000_000  # token ids above this are "：" merged with the next character


class ToyTokenizer:
    opening = "<user>"
    closing = "</user><assistant>"

    def plain(self, text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            if text[i] == "：" and i + 1 < len(text):
                out.append(MERGED + ord(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join("：" + chr(t - MERGED) if t >= MERGED else chr(t) for t in tokens if t != BOS)

    def before(self) -> list[int]:
        return [BOS, *map(ord, self.opening)]

    def prompt(self, user_message: str) -> list[int]:
        return self.before() + self.plain(user_message) + [*map(ord, self.closing)]


TOK = ToyTokenizer()


def test_header_block_is_the_same_for_every_pair_and_stops_before_a_merge() -> None:
    header = header_tokens(TOK)
    for question in ["你好", "abc", "1+1", "，嗯"]:
        prompt = TOK.prompt(build_user_message(question, "回答"))
        assert prompt[: len(header)] == header
    text = TOK.detokenize(header)
    # The question's prefix ends with "：", which merges with the question's first letter,
    # so the header stops just before it.
    assert text.endswith("人类的问题")
    assert not text.endswith("：")


def test_budget_is_the_context_less_overhead_and_reserve_and_names_the_fix() -> None:
    over = overhead(TOK)
    assert budget(over + 500, over, 100) == 400
    with pytest.raises(LibraError, match=r"context of 120 tokens per sequence \(4 parallel\).*raise --ctx"):
        budget(120, over, 100, parallel=4)


def test_a_pair_that_fits_is_one_window_of_the_whole_response() -> None:
    p = plan("问题", "一个短的回答。", 200, "chunk", TOK)
    assert p.question == "问题" and not p.truncated
    assert [(w.text, w.span) for w in p.windows] == [("一个短的回答。", (0, 7))]


def test_a_long_response_is_judged_in_overlapping_windows_that_cover_it() -> None:
    response = "".join(f"第{i}句话说了一些事情。" for i in range(60))
    room = 120
    p = plan("问题", response, room, "chunk", TOK)
    assert len(p.windows) > 1 and not p.truncated
    assert p.windows[0].span[0] == 0 and p.windows[-1].span[1] == len(response)
    for a, b in zip(p.windows, p.windows[1:]):
        assert b.span[0] <= a.span[1], "consecutive windows overlap or touch"
        assert b.span[0] > a.span[0]
    for w in p.windows:
        assert w.text == response[w.span[0] : w.span[1]]
        assert len(TOK.plain(w.text)) <= room - len(TOK.plain("问题")) - 4


def test_truncate_keeps_head_and_tail_around_the_mark() -> None:
    response = "开头" + "中" * 500 + "结尾"
    p = plan("问题", response, 100, "truncate", TOK)
    (w,) = p.windows
    assert p.truncated and w.span == (0, len(response))
    head, tail = w.text.split(TRUNCATION_MARK)
    assert head.startswith("开头") and tail.endswith("结尾")
    assert len(TOK.plain(w.text)) <= 100 - len(TOK.plain("问题"))


def test_a_question_longer_than_half_the_budget_is_cut() -> None:
    question = "问" * 300
    p = plan(question, "答", 100, "chunk", TOK)
    assert p.truncated and TRUNCATION_MARK in p.question
    assert len(TOK.plain(p.question)) <= 50


def test_blocks_are_header_then_question_then_the_rest() -> None:
    header = header_tokens(TOK)
    pb = prompt_blocks("今天天气如何", "很好", header, TOK)
    assert pb.blocks[0] == Block(0, tuple(header))
    assert len(pb.blocks) == 2 and pb.blocks[1].start == len(header)
    joined = [t for b in pb.blocks for t in b.tokens] + pb.rest
    assert joined == pb.prompt
    assert "今天天气如何" in TOK.detokenize(pb.blocks[1].tokens)
    assert "很好" in TOK.detokenize(pb.rest)
    # The same question gives the same blocks whatever the response: they can be reused.
    assert prompt_blocks("今天天气如何", "不好", header, TOK).blocks == pb.blocks
