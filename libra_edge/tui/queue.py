"""The reviewer's queue: a run's filtered, sorted list of results, and walking it.

`next_undecided` / `previous_undecided` find the nearest flagged item without a decision
in the list the reviewer is looking at (same filter, same sort), so a day's triage is
`n`, decide, `n`, decide... Plain store reads: called from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from libra_edge.store import Order, ResultFilter, ResultRow, Store

SCAN = 64  # rows fetched per step when looking for the next item


@dataclass(frozen=True)
class ResultList:
    """The list an item was opened from: a run, a filter and a sort order."""

    run_id: int
    filter: ResultFilter
    order: Order

    def page(self, store: Store, offset: int, limit: int) -> list[ResultRow]:
        """Rows `offset` .. `offset + limit` of the list."""
        return list(store.iter_results(self.run_id, self.filter, order=self.order, limit=limit, offset=offset))


def wanted(row: ResultRow) -> bool:
    """A queue item: flagged by the model, no decision yet."""
    return row.flagged and row.review is None


def next_undecided(store: Store, lst: ResultList, current_id: int | None, index: int) -> tuple[ResultRow, int] | None:
    """The first undecided flagged item after position `index` (holding `current_id`), with its position."""
    offset = max(index, 0)
    while True:
        rows = lst.page(store, offset, SCAN)
        if not rows:
            return None
        for i, row in enumerate(rows):
            # The list may have lost the current item (decided under an "undecided"
            # filter): then the row now at `index` is already the next one.
            if row.id == current_id or (offset + i) < index:
                continue
            if wanted(row):
                return row, offset + i
        offset += len(rows)


def previous_undecided(store: Store, lst: ResultList, index: int) -> tuple[ResultRow, int] | None:
    """The last undecided flagged item before position `index`, with its position."""
    end = index
    while end > 0:
        start = max(0, end - SCAN)
        rows = lst.page(store, start, end - start)
        for i in range(len(rows) - 1, -1, -1):
            if wanted(rows[i]):
                return rows[i], start + i
        end = start
    return None


def rows_between(store: Store, lst: ResultList, first: int, last: int) -> list[ResultRow]:
    """The rows at positions `first` .. `last` (inclusive) of the list."""
    lo, hi = min(first, last), max(first, last)
    return lst.page(store, lo, hi - lo + 1)
