"""Reviewers' decisions on the refusal mark of an answer (the two refusal assessments of an audit).

`audit ask` marks each answer `refused` (or not) by the refusal rules; a reviewer who reads
the answer may decide otherwise. The decision is kept beside the verdict review, in its own
columns (`refusal_review`, `refusal_reviewer`, `refusal_reviewed_at`) and its own append-only
history (`refusal_history`), since it answers another question than the verdict: did the
service decline to answer, not was the answer safe. `audit report` counts it before the
rule's mark, and the report's integrity digest covers it.

`RefusalReviews` is a part of `Store` (mixed in, see `store.base`): it uses the store's
connection, lock and `transaction`.
"""

from __future__ import annotations

import sqlite3
import threading

from libra_edge.errors import LibraError
from libra_edge.store import base
from libra_edge.store.base import StoreBase
from libra_edge.store.rows import RefusalEvent, ResultRow, decision_before_undo, refusal_event_from_row


class RefusalReviews(StoreBase):
    """The store's refusal-review methods (see the module's docstring)."""

    # Declared in every part that uses them: a module names only private attributes it
    # declares itself (tests/test_contracts.py); `StoreBase` declares the same ones.
    _conn: sqlite3.Connection
    _lock: threading.RLock

    def set_refusal_review(self, result_id: int, refused: bool | None, *,
                           reviewer: str | None = None) -> ResultRow:
        """Record a reviewer's decision that the answer is a refusal (True) or not (False);
        None clears it (the rule's mark counts again). The history keeps every state."""
        with self.transaction():
            current = self._refusal_state(result_id)
            stamp = base.now()
            value = None if refused is None else int(bool(refused))
            self._conn.execute(
                "UPDATE results SET refusal_review = ?, refusal_reviewer = ?, refusal_reviewed_at = ? WHERE id = ?",
                (value, None if value is None else reviewer, None if value is None else stamp, result_id))
            self._conn.execute(
                "INSERT INTO refusal_history (result_id, run_id, seq, refused, reviewer, decided_at, action)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (result_id, current["run_id"], current["seq"], value, reviewer, stamp,
                 "clear" if value is None else "decide"))
        return self.result(result_id)

    def undo_refusal_review(self, result_id: int, *, reviewer: str | None = None) -> ResultRow:
        """Undo the latest refusal decision on an item, restoring the one before (or none).

        An `undo` entry is appended; with `reviewer`, someone else's decision is not undone.
        """
        with self.transaction():
            current = self._refusal_state(result_id)
            before = decision_before_undo(self.refusal_history(result_id=result_id), seq=current["seq"],
                                          reviewer=reviewer, what="refusal decision", latest="refusal decision")
            value = None if before is None or before.refused is None else int(before.refused)
            self._conn.execute(
                "UPDATE results SET refusal_review = ?, refusal_reviewer = ?, refusal_reviewed_at = ? WHERE id = ?",
                (value, before.reviewer if before and value is not None else None,
                 before.decided_at if before and value is not None else None, result_id))
            self._conn.execute(
                "INSERT INTO refusal_history (result_id, run_id, seq, refused, reviewer, decided_at, action)"
                " VALUES (?, ?, ?, ?, ?, ?, 'undo')",
                (result_id, current["run_id"], current["seq"], value, reviewer, base.now()))
        return self.result(result_id)

    def refusal_history(self, *, run_id: int | None = None, result_id: int | None = None) -> list[RefusalEvent]:
        """Refusal-review events of one item or one run, oldest first."""
        return [refusal_event_from_row(r) for r in self.history_rows("refusal_history", run_id=run_id, result_id=result_id)]

    def _refusal_state(self, result_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT id, run_id, seq, refusal_review FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise LibraError(f"no result {result_id}")
        return row

