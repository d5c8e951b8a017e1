"""Reviewers' decisions on the verdicts: decided, noted, confirmed in bulk, undone; every change kept.

`Reviews` is a part of `Store` (mixed in, see `store.base`). An item's decision lives in
its `results` row (`review`, `review_note`, `reviewer`, `reviewed_at`); each change is
also appended to `review_history`, which nothing deletes from: undoing a decision
appends an `undo` entry that restores the state before it.
"""

from __future__ import annotations

import sqlite3
import threading

from libra_edge.errors import LibraError
from libra_edge.store import base
from libra_edge.store.base import StoreBase
from libra_edge.store.rows import REVIEW_DECISIONS, ResultRow, ReviewEvent, decision_before_undo, review_event_from_row


class Reviews(StoreBase):
    """The store's review methods (see the module's docstring)."""

    # Declared in every part that uses them: a module names only private attributes it
    # declares itself (tests/test_contracts.py); `StoreBase` declares the same ones.
    _conn: sqlite3.Connection
    _lock: threading.RLock

    def set_review(self, result_id: int, decision: str | None, note: str | None = None, *,
                   reviewer: str | None = None, keep_note: bool = False) -> ResultRow:
        """Record a reviewer's decision (`confirm`, `safe`, `unsafe`; None clears it) and note
        (`keep_note=True`: the item's note as it is in the database now, whoever wrote it).

        A decision that agrees with the model's verdict (`unsafe` on an item the model
        flagged, `safe` on one it judged safe) is recorded as `confirm`: it is not an
        override. The previous state stays in the review history (see `undo_review`).
        One transaction that reads, decides and writes under SQLite's write lock, so two
        reviewers (two processes) deciding at once never lose either decision.
        """
        if decision is not None and decision not in REVIEW_DECISIONS:
            raise LibraError(f"review decision: expected confirm, safe or unsafe, got {decision!r}")
        with self.transaction():
            current = self._review_state(result_id)
            if keep_note:
                note = current["review_note"]
            decision = _normalized_decision(decision, current["unsafe"], current["seq"])
            if decision == current["review"]:
                action = "note" if note != current["review_note"] else "decide"  # same decision: re-decided
            else:
                action = "clear" if decision is None else "decide"
            self._write_review(current, decision, note, reviewer, base.now(), action)
        return self.result(result_id)

    def undo_review(self, result_id: int, *, reviewer: str | None = None) -> ResultRow:
        """Undo the latest review change of an item, restoring the state before it.

        Nothing is deleted: an `undo` entry is appended to the history. With `reviewer`,
        a change made by someone else is not undone (LibraError names who made it).
        """
        with self.transaction():
            current = self._review_state(result_id)
            before = decision_before_undo(self.review_history(result_id=result_id), seq=current["seq"],
                                          reviewer=reviewer, what="review decision", latest="decision")
            stamp = base.now()
            self._conn.execute(
                "UPDATE results SET review = ?, review_note = ?, reviewed_at = ?, reviewer = ? WHERE id = ?",
                (before.review if before else None, before.note if before else None,
                 before.decided_at if before else None, before.reviewer if before else None, result_id))
            self._conn.execute(
                "INSERT INTO review_history (result_id, run_id, seq, review, note, reviewer, decided_at, action)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'undo')",
                (result_id, current["run_id"], current["seq"], before.review if before else None,
                 before.note if before else None, reviewer, stamp))
        return self.result(result_id)

    def confirm_many(self, result_ids: list[int], *, reviewer: str | None = None) -> list[int]:
        """Confirm the model's verdict on each undecided, judged item of `result_ids` (one
        transaction); items already decided or without a verdict are left alone.
        Returns the ids confirmed."""
        confirmed: list[int] = []
        with self.transaction():
            stamp = base.now()
            for result_id in result_ids:
                current = self._review_state(result_id)
                if current["review"] is not None or current["unsafe"] is None:
                    continue
                self._write_review(current, "confirm", current["review_note"], reviewer, stamp, "bulk-confirm")
                confirmed.append(result_id)
        return confirmed

    def review_history(self, *, run_id: int | None = None, result_id: int | None = None) -> list[ReviewEvent]:
        """Review events of one item or one run, oldest first (every decision, note and undo)."""
        return [review_event_from_row(r) for r in self.history_rows("review_history", run_id=run_id, result_id=result_id)]

    def _review_state(self, result_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT id, run_id, seq, unsafe, review, review_note FROM results WHERE id = ?", (result_id,)
        ).fetchone()
        if row is None:
            raise LibraError(f"no result {result_id} in {self.path}")
        return row

    def _write_review(self, current: sqlite3.Row, decision: str | None, note: str | None,
                      reviewer: str | None, stamp: str, action: str) -> None:
        """The item's new state and its history entry (inside the caller's transaction)."""
        cleared = decision is None and not note
        self._conn.execute(
            "UPDATE results SET review = ?, review_note = ?, reviewed_at = ?, reviewer = ? WHERE id = ?",
            (decision, note, None if cleared else stamp, None if cleared else reviewer, current["id"]))
        self._conn.execute(
            "INSERT INTO review_history (result_id, run_id, seq, review, note, reviewer, decided_at, action)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (current["id"], current["run_id"], current["seq"], decision, note, reviewer, stamp, action))


def _normalized_decision(decision: str | None, unsafe: int | None, seq: int) -> str | None:
    """`safe`/`unsafe` that agree with the model's verdict are confirmations."""
    if unsafe is None:
        if decision == "confirm":
            raise LibraError(f"item {seq + 1}: the check failed, there is no verdict to confirm",
                             hint="decide 安全 (safe) or 不安全 (unsafe)")
        return decision
    if (decision == "unsafe" and unsafe) or (decision == "safe" and not unsafe):
        return "confirm"
    return decision

