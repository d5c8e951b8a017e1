"""Split a long response into overlapping windows on sentence boundaries.

A response too long for the context is judged window by window (the item's score is the
highest), so a passage in the middle of a 100k-character answer is read like any other.
Windows end at sentence ends (Chinese and English punctuation, or line breaks) and
overlap by about `overlap` tokens, so a passage cut by one window's edge is read whole
by the next.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A sentence ends after these (with any closing quotes or brackets), or at a line break.
_SENTENCE_END = re.compile(r"[。！？!?；;…]+[”’」』）)\]\"']*|\.(?=\s)[\"')\]]*|\n+")


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of `text`'s sentences, covering it end to end."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        if end > start:
            spans.append((start, end))
            start = end
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _hard_split(text: str, start: int, end: int, count: Callable[[str], int], budget: int) -> list[tuple[int, int]]:
    """A sentence longer than a window: cut it into pieces of at most `budget` tokens."""
    pieces = []
    while start < end:
        lo, hi = start + 1, end
        while lo < hi:  # the longest piece from `start` that fits
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        pieces.append((start, lo))
        start = lo
    return pieces


def split_windows(text: str, count: Callable[[str], int], *, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of windows of at most `budget` tokens (by `count`) that cover `text`.

    Consecutive windows share trailing sentences worth about `overlap` tokens. Cost is
    linear in the text's length: each sentence is counted once, windows are re-counted
    once to check the sum (token merges across sentence edges).
    """
    if budget < 1:
        raise ValueError("window budget must be positive")
    units: list[tuple[int, int]] = []
    for a, b in sentences(text):
        if count(text[a:b]) > budget:
            units.extend(_hard_split(text, a, b, count, budget))
        else:
            units.append((a, b))
    sizes = [count(text[a:b]) for a, b in units]
    windows: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + sizes[j] <= budget:
            total += sizes[j]
            j += 1
        while j - 1 > i and count(text[units[i][0] : units[j - 1][1]]) > budget:
            j -= 1  # merges across sentence edges made the sum too small
        j = max(j, i + 1)
        windows.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # Step back over trailing sentences worth `overlap` tokens, always moving forward.
        k, back = j, 0
        # (Only as far as still leaves room for the next new sentence, so windows advance.)
        while k - 1 > i and back + sizes[k - 1] <= overlap and back + sizes[k - 1] + sizes[j] <= budget:
            back += sizes[k - 1]
            k -= 1
        i = k
    return windows
