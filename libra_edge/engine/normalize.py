"""Normalise the judged text so trivial Unicode tricks do not evade the guard.

Applied to the text the model reads, never to the text stored: Unicode NFKC (which folds
full-width ASCII letters and digits, ligatures and compatibility forms), with zero-width
and bidirectional control characters removed. Chinese full-width punctuation (，。：？！
and the ideographic space) is kept as written: it is how Chinese text is normally
punctuated, and folding it would change ordinary inputs the model was trained on.
"""

from __future__ import annotations

import re
import unicodedata

# Zero-width and invisible formatting characters, and bidi controls (embeddings,
# overrides, isolates, marks).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)
# Full-width punctuation and the ideographic space, which NFKC would fold to ASCII.
_KEPT = frozenset(
    [chr(c) for c in range(0xFF01, 0xFF10)]
    + [chr(c) for c in range(0xFF1A, 0xFF21)]
    + [chr(c) for c in range(0xFF3B, 0xFF41)]
    + [chr(c) for c in range(0xFF5B, 0xFF66)]
    + ["\u3000"]
)


def normalize_text(text: str) -> str:
    """The text as the guard judges it: NFKC (Chinese punctuation kept), no invisibles."""
    text = _INVISIBLE.sub("", text)
    if text.isascii():
        return text
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        if ch in _KEPT:
            if run:
                out.append(unicodedata.normalize("NFKC", "".join(run)))
                run = []
            out.append(ch)
        else:
            run.append(ch)
    if run:
        out.append(unicodedata.normalize("NFKC", "".join(run)))
    return _INVISIBLE.sub("", "".join(out))


def offsets(given: str) -> list[int]:
    """For each character of `normalize_text(given)`, the index in `given` it came from."""
    origin: list[int] = []
    for i, ch in enumerate(given):
        origin.extend([i] * len(normalize_text(ch)))
    return origin


def map_span(given: str, span: tuple[int, int]) -> tuple[int, int]:
    """A character span of the normalised text, mapped back onto the text as given.

    Characters are normalised one at a time for the mapping; where NFKC composes across
    characters (rare outside combining marks) the span is widened, never narrowed.
    """
    origin = offsets(given)
    if not origin:
        return (0, 0)
    start = origin[min(span[0], len(origin) - 1)]
    end = origin[min(max(span[1] - 1, 0), len(origin) - 1)] + 1
    return (start, max(end, start))
