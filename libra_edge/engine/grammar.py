"""The output grammar and the token sets that let the verdict be scored from raw logits."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .prompt import LABELS

# The only shape an answer can take: verdict first, then the analysis string. Whitespace
# between the structural characters is free (bounded), so the model keeps the pretty
# layout its prompt shows (`{\n  "答案": ...`) as well as a one-line layout; forcing one
# layout pushes a fine-tuned model off its format.
VERDICT_GRAMMAR = r"""
root    ::= "{" ws "\"答案\"" ws ":" ws "\"" verdict "\"" ws "," ws "\"分析\"" ws ":" ws "\"" text "\"" ws "}"
verdict ::= "安全" | "不安全"
text    ::= char*
char    ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] )
ws      ::= [ \t\n]{0,8}
"""

# Output the grammar can force around the verdict and the analysis, in tokens. Every token
# is at least one byte, so the literal bytes plus the longest whitespace runs bound each.
WS_MAX = 8  # the `ws` rule's bound, above
OPENING_MAX_TOKENS = len('{"答案":"'.encode()) + 3 * WS_MAX  # up to the verdict's first token
MIDDLE_MAX_TOKENS = len('不安全","分析":"'.encode()) + 4 * WS_MAX  # the verdict to the analysis
CLOSING_MAX_TOKENS = len('"}'.encode()) + WS_MAX  # after the analysis
# The most tokens one frame step may take, and what a check keeps free besides its analysis.
MAX_FRAME_TOKENS = max(OPENING_MAX_TOKENS, MIDDLE_MAX_TOKENS)
FRAME_RESERVE_TOKENS = OPENING_MAX_TOKENS + MIDDLE_MAX_TOKENS + CLOSING_MAX_TOKENS

# The generated text right when the next token starts the verdict value.
AT_VERDICT = re.compile(r'\{[ \t\n]*"答案"[ \t\n]*:[ \t\n]*"\Z')
# Generated text that already ran past the verdict's opening quote.
PAST_VERDICT_QUOTE = re.compile(r'\{[ \t\n]*"答案"[ \t\n]*:[ \t\n]*".')
# The analysis key and the opening quote of its value (a token may run on into the value).
ANALYSIS_OPENED = re.compile(r'"分析"[ \t\n]*:[ \t\n]*"')
_AFTER_LABEL = re.compile(r"[ \t\n]*(,[ \t\n]*)?")


def label_first_tokens(pieces: Iterable[tuple[int, bytes]]) -> dict[str, frozenset[int]]:
    """For each label, every token the grammar admits as the first token of its value.

    `pieces` gives (token id, the bytes the token decodes to). A token counts for label L
    when its text is a non-empty prefix of `L"`, or is `L"` followed by the whitespace and
    comma the grammar allows next. Tokens that decode to incomplete UTF-8 (byte fallbacks
    such as the first byte of 不) are left out: llama.cpp's grammar would admit them, but
    such a byte begins thousands of characters, so its probability is no evidence for
    either label. Only a label that no whole-character token can begin (a SentencePiece
    vocabulary that spells 不 with byte-fallback pieces, or a model without Chinese
    tokens) is scored through its byte prefixes instead, label by label. SentencePiece
    pieces arrive with `▁` already turned into a space, so `▁安全` (" 安全") never counts:
    the grammar wants the label right after the quote.
    """
    pieces = list(pieces)
    targets = {label: label + '"' for label in LABELS}
    whole: dict[str, set[int]] = {label: set() for label in LABELS}
    partial: dict[str, set[int]] = {label: set() for label in LABELS}
    for token_id, raw in pieces:
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            for label, target in targets.items():
                if target.encode("utf-8").startswith(raw):
                    partial[label].add(token_id)
            continue
        for label, target in targets.items():
            if target.startswith(text) or (
                text.startswith(target) and _AFTER_LABEL.fullmatch(text[len(target) :])
            ):
                whole[label].add(token_id)
    return {label: frozenset(whole[label] or partial[label]) for label in LABELS}


def close_json(raw_prefix: str) -> str:
    """Complete a generation cut off anywhere after the analysis opened into valid JSON.

    Every cut point is handled: inside the analysis string (a trailing incomplete escape,
    `\\` or a `\\u` split across tokens, is dropped), right after the string's closing
    quote, or in the whitespace before the final brace. The object is closed in the
    layout the model used for the verdict line. The verdict is never touched.
    """
    opened = ANALYSIS_OPENED.search(raw_prefix)
    if opened is None:
        raise ValueError("the analysis never opened: nothing to close")
    start = opened.end()
    closing = "\n}" if "\n" in raw_prefix.split('"答案"', 1)[0] else "}"
    end = _string_end(raw_prefix, start)
    if end is not None:  # the string closed; only whitespace (or the brace) may follow
        return raw_prefix[: end + 1] + closing
    body = raw_prefix
    for cut in range(0, 13):  # an escape split mid-way, and a surrogate pair's first half
        candidate = body[: len(body) - cut] if cut else body
        if len(candidate) >= start and _string_tail_ok(candidate[start:]):
            body = candidate
            break
    return body + '"' + closing


def _string_end(text: str, start: int) -> int | None:
    """Index of the quote closing the JSON string that starts at `start`, or None."""
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return i
        i += 2 if ch == "\\" else 1
    return None


def _string_tail_ok(text: str) -> bool:
    """True when `text` + '"' ends a JSON string cleanly (no dangling backslash escape)."""
    # An odd run of backslashes at the end (optionally followed by the start of a
    # \\uXXXX escape) leaves an escape open.
    m = re.search(r"(\\+)(u[0-9a-fA-F]{0,3})?\Z", text)
    if m is not None and len(m.group(1)) % 2 == 1:
        return False
    # A surrogate pair cut after its first half: that half alone is no character.
    m = re.search(r"(\\+)u[dD][89abAB][0-9a-fA-F]{2}\Z", text)
    return m is None or len(m.group(1)) % 2 == 0
