"""A team's keyword library (one keyword a line, optional risk code): read, checked, and matched in answers.

The standard's second method for generated content: an answer that contains a keyword of
the library is marked. Both the keyword and the answer go through the guard's own input
normalisation (`engine.normalize.normalize_text`) and are case-folded, so that full-width
letters, ligatures or zero-width characters do not hide a keyword.

File format (UTF-8): `keyword` or `keyword<whitespace>A.1.3` per line; blank lines and lines
starting with `#` are ignored. A keyword may contain spaces; the risk code is the last word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from libra_edge.engine.normalize import normalize_text
from libra_edge.errors import InputError

_CODE = re.compile(r"^(?P<word>.*?)\s+(?P<code>A\.\d+\.\d+)\s*$")


def fold(text: str) -> str:
    """The form keywords and answers are compared in: the guard's normalisation, case-folded."""
    return normalize_text(text).casefold()


@dataclass(frozen=True)
class Keyword:
    """One keyword of the library: as written, folded, its risk code (or None) and line."""

    word: str
    folded: str
    risk: str | None
    line: int


@dataclass
class KeywordLibrary:
    """The keywords of a file, with the problems found reading it (`file:line: ...`)."""

    path: str
    keywords: list[Keyword] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def matches(self, text: str) -> list[Keyword]:
        """The keywords the text contains (after normalisation), in library order."""
        folded = fold(text)
        return [k for k in self.keywords if k.folded and k.folded in folded]


def read_keywords(path: str | Path, known_codes: set[str]) -> KeywordLibrary:
    """Read a keyword library; duplicates and unknown risk codes are problems named `file:line`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text: save the keyword library as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the keyword library: {exc.strerror or exc}") from None
    library = KeywordLibrary(str(path))
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _CODE.match(line)
        word, code = (match["word"].strip(), match["code"]) if match else (line, None)
        if code is not None and code not in known_codes:
            library.problems.append(f"{path}:{number}: risk code {code} is not a risk of Appendix A")
            code = None
        folded = fold(word)
        if folded in seen:
            library.problems.append(f"{path}:{number}: duplicate keyword {word!r} (first at line {seen[folded]})")
            continue
        seen[folded] = number
        library.keywords.append(Keyword(word, folded, code, number))
    return library
