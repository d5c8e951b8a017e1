"""The integrity digest of a run: one sha256 over its results in input order, so a signed
report can later be checked against the store (`libra-edge report --verify FILE`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from libra_edge.errors import InputError

if TYPE_CHECKING:
    from libra_edge.store import ResultRow, Store

DIGEST_VERSION = 1
# The marker every report format carries, on one line, so --verify reads any of them.
_MARKER = re.compile(r"libra-edge-integrity v(\d+) run=(\d+) results=(\d+) sha256=([0-9a-f]{64})")


@dataclass(frozen=True)
class Integrity:
    """A run's digest: what it covers and its value."""

    run_id: int
    results: int
    sha256: str
    version: int = DIGEST_VERSION

    @property
    def marker(self) -> str:
        """The one-line form embedded in reports (and parsed back by `read_marker`)."""
        return f"libra-edge-integrity v{self.version} run={self.run_id} results={self.results} sha256={self.sha256}"


def _field(value: object) -> str:
    # repr() of a float is exact and stable; None and text are spelled out unambiguously.
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def digest_rows(run_id: int, rows: Iterable[ResultRow]) -> Integrity:
    """The digest over results in seq order: seq, item id, label, unsafe, score, error flag,
    reviewer decision, note and reviewer, and a reviewer's refusal decision where there is one."""
    h = hashlib.sha256(f"libra-edge results v{DIGEST_VERSION} run {run_id}\n".encode())
    n = 0
    for row in rows:
        n += 1
        parts: tuple[object, ...] = (row.seq, row.item_id, row.label, row.unsafe, row.score, row.error is not None,
                                     row.review, row.review_note, row.reviewer)
        if row.refusal_review is not None:  # a reviewer's refusal decision (audit runs); absent, as before
            parts += ("refusal", row.refusal_review, row.refusal_reviewer)
        h.update(("\t".join(_field(p) for p in parts) + "\n").encode())
    return Integrity(run_id, n, h.hexdigest())


def digest_run(store: Store, run_id: int) -> Integrity:
    """The digest of a run as the store holds it now."""
    store.run(run_id)  # a clear error for a wrong id
    return digest_rows(run_id, store.iter_results(run_id, order="seq"))


def read_marker(path: Path) -> Integrity:
    """The digest a report file carries; InputError if it has none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    found = _MARKER.search(text)
    if found is None:
        raise InputError(f"{path}: no libra-edge integrity digest in this file",
                         hint="was it written by `libra-edge report`?")
    version, run_id, results, sha = found.groups()
    return Integrity(int(run_id), int(results), sha, int(version))


def read_markers(path: Path) -> list[Integrity]:
    """Every digest a report file carries (an `audit report` has one per run); InputError if none."""
    first = read_marker(path)  # the clear errors: unreadable, or no digest at all
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [Integrity(int(run_id), int(results), sha, int(version))
             for version, run_id, results, sha in _MARKER.findall(text)]
    return list(dict.fromkeys(found)) or [first]
