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
    either label. Only a vocabulary with no whole-character token for a label (a model
    without Chinese tokens) is scored through those byte prefixes instead.
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
    chosen = whole if all(whole.values()) else {k: whole[k] | partial[k] for k in LABELS}
    return {label: frozenset(ids) for label, ids in chosen.items()}


def close_json(raw_prefix: str) -> str:
    """Complete a generation cut off inside the analysis string into valid JSON.

    Drops a trailing incomplete escape sequence, then closes the string and the object
    in the layout the model used for the verdict line.
    """
    body = raw_prefix
    for cut in range(0, 7):
        candidate = body[: len(body) - cut] if cut else body
        if _string_tail_ok(candidate):
            body = candidate
            break
    closing = "\n}" if "\n" in raw_prefix.split('"答案"', 1)[0] else "}"
    return body + '"' + closing


def _string_tail_ok(text: str) -> bool:
    """True when `text` + '"' ends a JSON string cleanly (no dangling backslash escape)."""
    # An odd run of backslashes at the end (optionally followed by the start of a
    # \uXXXX escape) leaves an escape open.
    m = re.search(r"(\\+)(u[0-9a-fA-F]{0,3})?\Z", text)
    return m is None or len(m.group(1)) % 2 == 0
