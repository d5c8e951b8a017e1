"""Prompt planning: which text is judged, and in which blocks its prompt is evaluated.

Pure functions of a tokenizer: nothing here touches llama.cpp, so every rule can be tested
with any function from text to tokens (`tests/test_planning.py` uses one that spells
characters). The engine passes its own tokenizer (`Tokenizer`), built from the model's
vocabulary and chat template.

- **budget**: the tokens the question and response may take together in one sequence:
  the sequence's context less the prompt's fixed overhead and the output's room (the same
  in fast and full mode, so a pair is cut or windowed, and scored, the same whatever the
  mode).
- **plan**: one window holding the whole response when it fits; otherwise overlapping
  windows on sentence boundaries (`long="chunk"`) or the response's head and tail
  (`long="truncate"`); a question longer than half the budget is cut head and tail.
- **blocks**: a prompt is evaluated in canonical blocks — the header (the same for every
  pair), then the question, then the response (evaluated with the frame's draft, never
  reused) — so a block's KV state can be kept for the next pair only when it is
  bit-identical to evaluating it afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from libra_edge.engine.decoding import Block
from libra_edge.engine.prompt import PROMPT_HEADER, QUESTION_PREFIX, build_user_message
from libra_edge.engine.windows import split_windows
from libra_edge.errors import LibraError

# Marks the place where a too-long text was cut to fit the context.
TRUNCATION_MARK = "\n……\n"
# Window overlap for long responses, in tokens of the window budget (a passage cut at a
# window's edge is read whole by the next window).
WINDOW_OVERLAP = 0.15
# Question starts whose first characters could merge with the header's last tokens: the
# header block is the common prefix of the prompts of questions starting with each.
HEADER_PROBES = ("", "a", "A", "1", "你", "，", "“", " ", "\n", "ｂ", "😀", "<")


class Tokenizer(Protocol):
    """What planning needs of a model's tokenizer."""

    def plain(self, text: str) -> list[int]:
        """Tokens of user text (no control tokens)."""

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of tokens."""

    def prompt(self, user_message: str) -> list[int]:
        """The whole prompt of one user message (chat template applied)."""

    def before(self) -> list[int]:
        """The prompt's tokens before the user message (BOS and the template's opening)."""


@dataclass(frozen=True)
class Window:
    """One part of a response judged on its own: its text and its span in the response."""

    text: str
    span: tuple[int, int]


@dataclass(frozen=True)
class Plan:
    """What one pair's check judges: the (fitted) question and the response's windows."""

    question: str
    windows: tuple[Window, ...]
    truncated: bool  # an input was cut (head and tail kept) to fit


@dataclass(frozen=True)
class PromptBlocks:
    """One fitted pair's prompt, in its canonical blocks."""

    prompt: list[int]
    blocks: list[Block]  # header, then the question's block when there is one
    rest: list[int]  # the response block: evaluated with the opening draft, never reused


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n, end = 0, min(len(a), len(b))
    while n < end and a[n] == b[n]:
        n += 1
    return n


def header_tokens(tok: Tokenizer) -> list[int]:
    """The header block: the prompt's tokens up to the question, the same for every pair.

    It runs through "# 对话\\n人类的问题：" except where that text's last tokens can merge
    with a question's first characters: the block is the common prefix of the prompts
    of questions starting with a letter, a digit, a CJK character, punctuation or space.
    """
    prompts = [tok.prompt(build_user_message(q + "x", "y")) for q in HEADER_PROBES]
    n = min(len(p) for p in prompts)
    end = 0
    while end < n and all(p[end] == prompts[0][end] for p in prompts):
        end += 1
    return prompts[0][:end]


def overhead(tok: Tokenizer) -> int:
    """Prompt tokens of an empty pair: what the template and the header cost."""
    return len(tok.prompt(build_user_message("", "")))


def budget(ctx_per_seq: int, overhead_tokens: int, reserve: int, *, parallel: int = 1) -> int:
    """Tokens the question and response may take together in one sequence.

    `reserve` is the output's room (the frame's and the analysis' tokens).
    """
    room = ctx_per_seq - overhead_tokens - reserve
    if room < 32:
        raise LibraError(
            f"context of {ctx_per_seq} tokens"
            + (f" per sequence ({parallel} parallel)" if parallel > 1 else "")
            + f" is too small for the prompt ({overhead_tokens} tokens) and output; raise --ctx"
        )
    return room


def head_tail(text: str, tokens: list[int], keep: int, detokenize: Callable[[Sequence[int]], str]) -> str:
    """`text` cut to about `keep` tokens: its head and tail around TRUNCATION_MARK."""
    if len(tokens) <= keep:
        return text
    keep = max(2, keep - 8)  # room for the mark and boundary merges
    head = detokenize(tokens[: keep - keep // 2])
    tail = detokenize(tokens[len(tokens) - keep // 2 :])
    return head + TRUNCATION_MARK + tail


def fit_question(question: str, room: int, tok: Tokenizer) -> tuple[str, list[int], bool]:
    """The question, cut head+tail to at most half the budget; its tokens; whether cut."""
    q = tok.plain(question)
    if len(q) <= room // 2:
        return question, q, False
    cut = head_tail(question, q, room // 2, tok.detokenize)
    return cut, tok.plain(cut), True


def plan(question: str, response: str, room: int, long: str, tok: Tokenizer) -> Plan:
    """The question to judge and the response's windows, for a budget of `room` tokens.

    `long` is EngineSettings.long: "truncate" keeps the head and tail, else windows.
    """
    whole = (Window(response, (0, len(response))),)
    if len(question.encode()) + len(response.encode()) <= room:  # >= 1 byte per token
        return Plan(question, whole, False)
    question, q_tokens, q_cut = fit_question(question, room, tok)
    left = room - len(q_tokens)
    r_tokens = tok.plain(response)
    if len(r_tokens) <= left:
        return Plan(question, whole, q_cut)
    if long == "truncate":
        return Plan(question, (Window(head_tail(response, r_tokens, left, tok.detokenize), (0, len(response))),), True)
    spans = split_windows(response, lambda s: len(tok.plain(s)), budget=left - 4, overlap=int(left * WINDOW_OVERLAP))
    return Plan(question, tuple(Window(response[a:b], (a, b)) for a, b in spans), q_cut)


def prompt_blocks(question: str, response: str, header: Sequence[int], tok: Tokenizer) -> PromptBlocks:
    """Tokens and canonical blocks of the prompt of one (already fitted) pair."""
    prompt = tok.prompt(build_user_message(question, response))
    h = min(common_prefix(prompt, header), len(header), len(prompt) - 1)
    through_question = tok.before() + tok.plain(PROMPT_HEADER + "\n# 对话\n" + QUESTION_PREFIX + question + "\n")
    q = max(h, min(common_prefix(prompt, through_question), len(through_question), len(prompt) - 1))
    blocks = [Block(0, tuple(prompt[:h]))]
    if q > h:
        blocks.append(Block(h, tuple(prompt[h:q])))
    return PromptBlocks(prompt, blocks, prompt[q:])
