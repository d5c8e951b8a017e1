"""Which results of a run to list, count or export, and how that becomes SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from libra_edge.errors import LibraError
from libra_edge.store.rows import REVIEW_DECISIONS

VerdictFilter = Literal["all", "flagged", "safe", "error"]
Order = Literal["seq", "score_desc", "score_asc"]

_ORDER_SQL = {
    "seq": "seq",
    # Items without a score (errors) sort last either way (NULL is lowest in SQLite);
    # both forms walk the (run_id, score) index instead of sorting the run.
    "score_desc": "score DESC, seq",
    "score_asc": "score ASC NULLS LAST, seq",
}

# FTS5's trigram tokenizer indexes 3-character windows: shorter terms (most Chinese
# words are two characters) fall back to LIKE over the run's rows.
_TRIGRAM = 3


@dataclass(frozen=True)
class ResultFilter:
    """A selection of a run's results; every field narrows it, the defaults select all."""

    verdict: VerdictFilter = "all"
    """`flagged`: judged unsafe; `safe`: judged safe; `error`: the check failed."""
    review: str | None = None
    """None: any; `reviewed` / `unreviewed`; or a decision: `confirm`, `safe`, `unsafe`."""
    min_score: float | None = None
    max_score: float | None = None
    source: str | None = None
    category: str | None = None
    search: str | None = None
    """Whitespace-separated terms, each a substring of the question, response or analysis."""

    def where(self, run_id: int) -> tuple[str, list[Any]]:
        """SQL condition over `results` and its parameters."""
        clauses = ["run_id = ?"]
        params: list[Any] = [run_id]
        if self.verdict == "flagged":
            clauses.append("unsafe = 1")
        elif self.verdict == "safe":
            clauses.append("unsafe = 0")
        elif self.verdict == "error":
            clauses.append("error IS NOT NULL")
        elif self.verdict != "all":
            raise LibraError(f"verdict filter: expected all, flagged, safe or error, got {self.verdict!r}")
        if self.review is not None:
            if self.review == "reviewed":
                clauses.append("review IS NOT NULL")
            elif self.review == "unreviewed":
                clauses.append("review IS NULL")
            elif self.review in REVIEW_DECISIONS:
                clauses.append("review = ?")
                params.append(self.review)
            else:
                raise LibraError(
                    f"review filter: expected reviewed, unreviewed, confirm, safe or unsafe, got {self.review!r}"
                )
        if self.min_score is not None:
            clauses.append("score >= ?")
            params.append(self.min_score)
        if self.max_score is not None:
            clauses.append("score <= ?")
            params.append(self.max_score)
        if self.source is not None:
            clauses.append("source = ?")
            params.append(self.source)
        if self.category is not None:
            clauses.append("category = ?")
            params.append(self.category)
        if self.search:
            _search_clauses(self.search, clauses, params)
        return " AND ".join(clauses), params


def order_sql(order: str) -> str:
    """ORDER BY expression for an `order` name."""
    try:
        return _ORDER_SQL[order]
    except KeyError:
        raise LibraError(f"order: expected seq, score_desc or score_asc, got {order!r}") from None


def _search_clauses(search: str, clauses: list[str], params: list[Any]) -> None:
    """Add one condition per search term: FTS5 for long terms, LIKE for short ones."""
    long_terms = []
    for term in search.split():
        if len(term) >= _TRIGRAM:
            long_terms.append('"' + term.replace('"', '""') + '"')
        else:
            pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(
                "(question LIKE ? ESCAPE '\\' OR response LIKE ? ESCAPE '\\' "
                "OR coalesce(analysis, '') LIKE ? ESCAPE '\\')"
            )
            params.extend([pattern, pattern, pattern])
    if long_terms:
        clauses.append("id IN (SELECT rowid FROM results_fts WHERE results_fts MATCH ?)")
        params.append(" AND ".join(long_terms))
