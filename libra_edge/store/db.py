"""The SQLite store of batch runs and results: opened through `open_store`, safe to share.

One CLI batch writing and a TUI reading the same file at the same time is the normal
case: WAL mode lets readers proceed during writes, `busy_timeout` makes a writer wait
for another instead of failing. Every `add_result` commits on its own, so a crash or
`kill -9` never loses a finished item (WAL with synchronous=NORMAL is durable against
a process dying; only a power cut can lose the last few commits).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import errno
import os
import shutil
import socket
import sqlite3
import threading
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO, cast

from libra_edge import paths
from libra_edge.units import human_size
from libra_edge.errors import DiskFullError, LibraError
from libra_edge.store import export as export_format
from libra_edge.store.filters import Order, ResultFilter, order_sql
from libra_edge.store.migrations import MIGRATIONS, split_statements
from libra_edge.store.refusals import RefusalReviews
from libra_edge.store.rows import (
    REVIEW_DECISIONS,
    Facets,
    NodeRow,
    ResultRow,
    RunRow,
    ReviewEvent,
    RunStatus,
    decisions_in_force,
    result_from_row,
    review_event_from_row,
    run_from_row,
)

BUSY_TIMEOUT_MS = 10_000
_PAGE = 256

_RUN_SELECT = """
    SELECT runs.*, c.done, c.flagged, c.errors, c.reviewed, c.truncated, c.chunked
    FROM runs LEFT JOIN (
        SELECT run_id, sum(status != 'skipped') AS done, sum(unsafe = 1) AS flagged,
               sum(status = 'failed') AS errors, sum(review IS NOT NULL) AS reviewed,
               sum(status = 'judged' AND truncated = 1) AS truncated, sum(windows > 1) AS chunked
        FROM results {where} GROUP BY run_id
    ) AS c ON c.run_id = runs.id
"""


_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL (Python 3.11 has it; typeshed does not yet)


class _Connection(sqlite3.Connection):
    """A connection whose `execute` reports a full disk as a `DiskFullError` naming the file.

    Every write of the store goes through `execute` (autocommit mode commits there too),
    so this one place turns "database or disk is full" from an internal error into the
    user's problem it is. SQLite rolls the failed statement back: the file stays intact.
    """

    db_path: Path | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise disk_full_error(self.db_path or Path("results database")) from None
            raise

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise disk_full_error(self.db_path or Path("results database")) from None
            raise


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(exc)


def disk_full_error(path: Path, needed: int | None = None, what: str = "") -> DiskFullError:
    """A full disk under `path` as one line: the file, the space free and, if known, needed."""
    try:
        free: int | None = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    except OSError:
        free = None
    message = f"{path}: the disk is full ({human_size(free)} free)"
    if needed:
        message += f"; about {human_size(needed)} more {what or 'are needed'}"
    return DiskFullError(message, hint="free some space there and run the same command again: "
                         "every finished item is kept")


def now() -> str:
    """The current UTC time as ISO 8601 (seconds), the store's timestamp format."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_store(path: str | Path | None = None) -> Store:
    """Open (creating and migrating as needed) the results database; default: the user's."""
    db_path = Path(path) if path is not None else paths.database_path()
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
    except (OSError, sqlite3.Error) as exc:
        raise LibraError(f"{db_path}: cannot open the results database: {exc}") from None
    conn.row_factory = sqlite3.Row
    conn.db_path = db_path
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, db_path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LibraError(f"{db_path}: not a usable libra-edge database: {exc}") from None
    return Store(conn, db_path)


def _migrate(conn: sqlite3.Connection, db_path: Path) -> None:
    """Apply the migrations this database has not seen, each atomically with its version bump."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise LibraError(
            f"{db_path}: written by a newer libra-edge (schema {version}, this one knows {len(MIGRATIONS)})",
            hint="upgrade libra-edge",
        )
    if version == len(MIGRATIONS):
        return
    # IMMEDIATE takes the write lock first: two processes opening a new database at
    # once cannot both run migration 1.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, len(MIGRATIONS)):
            for statement in split_statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _os_user() -> str:
    """The operating-system user running this process ("?" when it cannot be told)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "?"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class Store(RefusalReviews):
    """Batch runs and their results. Thread-safe: one connection behind a lock.

    Reviewers' refusal decisions (`set_refusal_review`, ...) are in `store.refusals`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Group writes into one commit (bulk imports): everything inside is committed at the
        end, or nothing if it raises. Other threads' calls wait; nested use joins the outer one.

        Each write outside a transaction commits on its own, which is what makes a batch run
        crash-safe; use this only where losing the whole group together is acceptable.
        """
        with self._lock:
            if self._conn.in_transaction:
                yield self
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """The number of migrations applied to this database."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # -- runs ------------------------------------------------------------------------
    def create_run(
        self,
        *,
        fingerprint: str,
        inputs: list[str],
        model_path: str,
        model_name: str,
        model_sha256: str,
        quant: str | None,
        settings: Mapping[str, Any],
        prompt_template_version: str,
        options: Mapping[str, Any],
        total: int,
        skipped: int = 0,
    ) -> int:
        """Record a new run (status `running`, owned by this process); returns its id."""
        stamp = now()
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO runs (fingerprint, created_at, started_at, status, pid, host, user, inputs_json,"
                " model_path, model_name, model_sha256, quant, settings_json, prompt_template_version,"
                " options_json, total, skipped) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, stamp, stamp, os.getpid(), socket.gethostname(), _os_user(), _json(inputs), model_path,
                 model_name, model_sha256, quant, _json(dict(settings)), prompt_template_version,
                 _json(dict(options)), total, skipped),
            )
            return int(cur.lastrowid or 0)

    def set_total(self, run_id: int, total: int) -> None:
        """Record how many items a run has (a `serve` run learns it as requests come)."""
        with self._lock:
            self._conn.execute("UPDATE runs SET total = ? WHERE id = ?", (total, run_id))

    def claim_run(self, run_id: int, *, total: int | None = None, skipped: int | None = None) -> None:
        """Mark a run `running` again, owned by this process (resuming it)."""
        with self._lock:
            self._conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, host = ?, finished_at = NULL, message = NULL,"
                " started_at = ?, total = coalesce(?, total), skipped = coalesce(?, skipped) WHERE id = ?",
                (os.getpid(), socket.gethostname(), now(), total, skipped, run_id),
            )

    def finish_run(self, run_id: int, status: RunStatus = "finished", message: str | None = None) -> None:
        """Close a run as `finished`, `interrupted` or `failed` (with a message saying why)."""
        if status not in ("finished", "interrupted", "failed"):
            raise LibraError(f"finish_run: status must be finished, interrupted or failed, got {status!r}")
        with self._lock:
            self._conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ?, pid = NULL WHERE id = ?",
                (status, now(), message, run_id),
            )

    def runs(self) -> list[RunRow]:
        """Every run, newest first, with live counts."""
        with self._lock:
            rows = self._conn.execute(_RUN_SELECT.format(where="") + " ORDER BY runs.id DESC").fetchall()
        return [run_from_row(r) for r in rows]

    def run(self, run_id: int) -> RunRow:
        """One run by id (LibraError if there is none)."""
        with self._lock:
            row = self._conn.execute(
                _RUN_SELECT.format(where="WHERE run_id = ?") + " WHERE runs.id = ?", (run_id, run_id)
            ).fetchone()
        if row is None:
            raise LibraError(f"no run {run_id} in {self.path}", hint="`libra-edge batch --runs` lists them")
        return run_from_row(row)

    def find_run(self, fingerprint: str) -> RunRow | None:
        """The newest run with this fingerprint (same inputs, model and settings), if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id FROM runs WHERE fingerprint = ? ORDER BY id DESC LIMIT 1", (fingerprint,)
            ).fetchone()
        return None if row is None else self.run(row["id"])

    def done_seqs(self, run_id: int, *, include_errors: bool = True) -> set[int]:
        """Input positions that already have a result (failures optionally counted as not done).

        Placeholders of skipped input records are never counted: they are not items.
        """
        sql = "SELECT seq FROM results WHERE run_id = ?"
        sql += " AND status != 'skipped'" if include_errors else " AND status = 'judged'"
        with self._lock:
            return {r[0] for r in self._conn.execute(sql, (run_id,))}

    # -- results ---------------------------------------------------------------------
    def add_result(
        self,
        run_id: int,
        *,
        seq: int,
        question: str,
        response: str,
        fields: Mapping[str, Any],
        verdict: Mapping[str, Any] | None = None,
        error: str | None = None,
        item_id: str | None = None,
        source: str | None = None,
        category: str | None = None,
        sub_category: str | None = None,
        input_file: str | None = None,
        input_line: int | None = None,
        conversation_id: str | None = None,
        turn_index: int | None = None,
        node: str | None = None,
    ) -> int:
        """Store (and commit) one item's verdict — `Verdict.to_dict()` — or its error; returns the id.

        A verdict's `windows`, `window`, `span` ([start, end] or None), `normalized` and
        `analysis_cut` are kept when present. `node` names where it was judged (see
        `record_node`). Storing the same `seq` again replaces the verdict (a retried
        error) and keeps any reviewer decision.
        """
        v = dict(verdict or {})
        unsafe = v.get("unsafe")
        timings = v.get("timings")
        span = v.get("span") or (None, None)

        def flag(key: str) -> int | None:
            return None if v.get(key) is None else int(bool(v[key]))

        with self._lock:
            row = self._conn.execute(
                """
                INSERT INTO results (run_id, seq, item_id, source, category, sub_category, question,
                    response, input_json, input_file, input_line, label, unsafe, score, analysis, raw,
                    truncated, timings_json, error, checked_at, status, conversation_id, turn_index,
                    windows, window, span_start, span_end, normalized, analysis_cut, node)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id, seq) DO UPDATE SET
                    label = excluded.label, unsafe = excluded.unsafe, score = excluded.score,
                    analysis = excluded.analysis, raw = excluded.raw, truncated = excluded.truncated,
                    timings_json = excluded.timings_json, error = excluded.error,
                    checked_at = excluded.checked_at, status = excluded.status,
                    windows = excluded.windows, window = excluded.window, span_start = excluded.span_start,
                    span_end = excluded.span_end, normalized = excluded.normalized,
                    analysis_cut = excluded.analysis_cut, node = excluded.node
                """,
                (run_id, seq, item_id, source, category, sub_category, question, response,
                 json.dumps(dict(fields), ensure_ascii=False), input_file, input_line,
                 v.get("label"), None if unsafe is None else int(bool(unsafe)), v.get("score"),
                 v.get("analysis"), v.get("raw"), int(bool(v.get("truncated", False))),
                 _json(timings) if timings is not None else None, error, now(),
                 "failed" if error is not None else "judged", conversation_id, turn_index,
                 v.get("windows"), v.get("window"), span[0], span[1], flag("normalized"), flag("analysis_cut"),
                 node),
            )
            row = self._conn.execute(
                "SELECT id FROM results WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
            return int(row[0])

    def record_node(self, run_id: int, node: str, *, host: str | None, build: str, model_sha256: str) -> bool:
        """Note that `node` judges items of `run_id` with this llama.cpp build and model file.

        Returns True when the node is new to the run; a node seen before keeps its first record.
        """
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO run_nodes (run_id, node, host, build, model_sha256, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, node) DO NOTHING",
                (run_id, node, host, build, model_sha256, now()))
            return cur.rowcount > 0

    def run_nodes(self, run_id: int) -> list[NodeRow]:
        """The nodes that judged a run's items, in the order they joined, with their item counts."""
        with self._lock:
            rows = self._conn.execute(
                """
                SELECT n.node, n.host, n.build, n.model_sha256, n.first_seen,
                       (SELECT COUNT(*) FROM results r WHERE r.run_id = n.run_id AND r.node = n.node
                        AND r.status = 'judged') AS items
                FROM run_nodes n WHERE n.run_id = ? ORDER BY n.id
                """, (run_id,)).fetchall()
        return [NodeRow(node=r[0], host=r[1], build=r[2], model_sha256=r[3], first_seen=r[4], items=r[5])
                for r in rows]

    def add_placeholders(self, run_id: int, placeholders: Iterable[Any]) -> int:
        """Store a `skipped` row for each input record that yields no item (one commit).

        Each placeholder has `seq`, `file`, `line`, `reason` and `fields` (`batch.Placeholder`);
        `error` holds the reason. Rows already stored (a resumed run) are left as they are.
        Returns how many were new.
        """
        rows = [(run_id, p.seq, json.dumps(dict(p.fields), ensure_ascii=False), p.file, p.line, p.reason, now())
                for p in placeholders]
        if not rows:
            return 0
        count = "SELECT count(*) FROM results WHERE run_id = ?"
        with self.transaction():
            before = int(self._conn.execute(count, (run_id,)).fetchone()[0])
            self._conn.executemany(
                "INSERT INTO results (run_id, seq, question, response, input_json, input_file, input_line,"
                " error, checked_at, status) VALUES (?, ?, '', '', ?, ?, ?, ?, ?, 'skipped')"
                " ON CONFLICT (run_id, seq) DO NOTHING", rows)
            return int(self._conn.execute(count, (run_id,)).fetchone()[0]) - before

    def disk_full(self, items: int) -> DiskFullError:
        """The error for a full disk under the database, estimating the space `items` more need."""
        try:
            size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
            with self._lock:
                stored = int(self._conn.execute("SELECT count(*) FROM results").fetchone()[0])
        except (OSError, sqlite3.Error, LibraError):
            size, stored = 0, 0
        # Each row is written twice (WAL, then the checkpoint) and indexed for search.
        needed = max(2 * items * size // max(stored, 1), 1_000_000) if items else None
        return disk_full_error(self.path, needed, f"are needed for the {items} items left")

    def results(
        self,
        run_id: int,
        filters: ResultFilter | None = None,
        *,
        order: Order = "seq",
        limit: int | None = None,
        offset: int = 0,
        **criteria: Any,
    ) -> list[ResultRow]:
        """A page of a run's results matching `filters` and/or `ResultFilter` fields given as
        keywords (`verdict="flagged"`, `review=`, `min_score=`, `max_score=`, `source=`,
        `category=`, `search=`); keywords override the same field of `filters`."""
        flt = _result_filter(filters, criteria)
        return list(self.iter_results(run_id, flt, order=order, limit=limit, offset=offset))

    def iter_results(
        self, run_id: int, filters: ResultFilter | None = None, *, order: Order = "seq",
        limit: int | None = None, offset: int = 0,
    ) -> Iterator[ResultRow]:
        """Like `results`, streamed page by page (for exports of large runs)."""
        where, params = (filters or ResultFilter()).where(run_id)
        sql = f"SELECT * FROM results WHERE {where} ORDER BY {order_sql(order)} LIMIT ? OFFSET ?"
        remaining = limit
        position = offset
        # The lock is taken per page, never held while the caller works on a row.
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            with self._lock:
                rows = self._conn.execute(sql, [*params, page, position]).fetchall()
            for row in rows:
                yield result_from_row(row)
            if len(rows) < page:
                return
            position += page
            if remaining is not None:
                remaining -= page

    def count_results(self, run_id: int, filters: ResultFilter | None = None, **criteria: Any) -> int:
        """How many of a run's results match (the same selection as `results`; for pagers)."""
        where, params = _result_filter(filters, criteria).where(run_id)
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM results WHERE {where}", params).fetchone()[0])

    def result(self, result_id: int) -> ResultRow:
        """One result by id (LibraError if there is none)."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if row is None:
            raise LibraError(f"no result {result_id} in {self.path}")
        return result_from_row(row)

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
            self._write_review(current, decision, note, reviewer, now(), action)
        return self.result(result_id)

    def undo_review(self, result_id: int, *, reviewer: str | None = None) -> ResultRow:
        """Undo the latest review change of an item, restoring the state before it.

        Nothing is deleted: an `undo` entry is appended to the history. With `reviewer`,
        a change made by someone else is not undone (LibraError names who made it).
        """
        with self.transaction():
            current = self._review_state(result_id)
            stack = decisions_in_force(self.review_history(result_id=result_id))
            if not stack:
                raise LibraError(f"item {current['seq'] + 1}: no review decision to undo")
            last = stack.pop()
            if reviewer is not None and last.reviewer not in (None, reviewer):
                raise LibraError(f"item {current['seq'] + 1}: the latest decision is {last.reviewer}'s "
                                 f"({last.decided_at}): not undone")
            before = stack[-1] if stack else None
            stamp = now()
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
            stamp = now()
            for result_id in result_ids:
                current = self._review_state(result_id)
                if current["review"] is not None or current["unsafe"] is None:
                    continue
                self._write_review(current, "confirm", current["review_note"], reviewer, stamp, "bulk-confirm")
                confirmed.append(result_id)
        return confirmed

    def review_history(self, *, run_id: int | None = None, result_id: int | None = None) -> list[ReviewEvent]:
        """Review events of one item or one run, oldest first (every decision, note and undo)."""
        if (run_id is None) == (result_id is None):
            raise LibraError("review_history: give run_id or result_id")
        column, value = ("result_id", result_id) if result_id is not None else ("run_id", run_id)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM review_history WHERE {column} = ? ORDER BY id", (value,)).fetchall()
        return [review_event_from_row(r) for r in rows]

    def conversation(self, run_id: int, conversation_id: str) -> list[ResultRow]:
        """The judged turns of one conversation of a run (transcript inputs), in turn order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM results WHERE run_id = ? AND conversation_id = ? ORDER BY turn_index, seq",
                (run_id, conversation_id)).fetchall()
        return [result_from_row(r) for r in rows]

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

    def facets(self, run_id: int) -> Facets:
        """The run's distinct sources and categories with their item counts."""
        with self._lock:
            sources = self._conn.execute(
                "SELECT source, count(*) FROM results WHERE run_id = ? AND source IS NOT NULL"
                " GROUP BY source ORDER BY source", (run_id,)).fetchall()
            categories = self._conn.execute(
                "SELECT category, count(*) FROM results WHERE run_id = ? AND category IS NOT NULL"
                " GROUP BY category ORDER BY category", (run_id,)).fetchall()
        return Facets(sources={r[0]: r[1] for r in sources}, categories={r[0]: r[1] for r in categories})

    def export(
        self,
        run_id: int,
        path: str | Path | TextIO,
        *,
        format: str = "jsonl",
        filters: ResultFilter | None = None,
        order: Order = "seq",
        bom: bool = False,
        threshold: float | None = None,
    ) -> int:
        """Write the selected results in `order` (default: input order) as `jsonl`, `json`
        (one array) or `csv` (see `store.export`); `bom` starts a CSV with a UTF-8 BOM.
        `threshold` relabels each judged row from its stored score (`score >= threshold`
        is unsafe) without judging anything again; the rows' `threshold` then says so.

        A path is written atomically (it appears only once complete); an open text
        stream (e.g. stdout) is written as is. Returns the number of rows written. A full
        disk raises `DiskFullError` naming the file and the space the export needs.
        """
        if format not in export_format.FORMATS:
            raise LibraError(f"export format: expected {', '.join(export_format.FORMATS)}, got {format!r}")
        self.run(run_id)  # a clear error for a wrong id
        if isinstance(path, (str, Path)):
            try:
                with export_format.atomic_text_file(Path(path)) as fh:
                    return self._export_to(run_id, fh, format, filters, order, bom, threshold)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                sink = export_format.ByteCounter()
                self._export_to(run_id, cast(TextIO, sink), format, filters, order, bom, threshold)
                raise disk_full_error(Path(path), sink.bytes, "are needed for this file") from None
        return self._export_to(run_id, path, format, filters, order, bom, threshold)

    def _export_to(self, run_id: int, out: TextIO, format: str, filters: ResultFilter | None,
                   order: Order = "seq", bom: bool = False, threshold: float | None = None) -> int:
        order_sql(order)  # a clear error for a wrong order before the file is opened
        rows = (export_format.relabelled(r, threshold) for r in self.iter_results(run_id, filters, order=order))
        run = self.run(run_id)
        provenance = {"model": run.model_name, "model_sha256": run.model_sha256,
                      "threshold": run.settings.get("threshold") if threshold is None else threshold,
                      "version": run.settings.get("libra_edge_version")}
        if format == "jsonl":
            return export_format.write_jsonl(rows, out, provenance)
        if format == "json":
            return export_format.write_json(rows, out, provenance)
        names: dict[str, None] = {}
        for row in self.iter_results(run_id, filters):  # first pass: the union of input columns
            names.update(dict.fromkeys(export_format.output_fields(row)))
        if bom:
            out.write("\ufeff")  # spreadsheet tools then read the file as UTF-8 (Chinese intact)
        return export_format.write_csv(rows, export_format.csv_columns(names), out, provenance)

    # -- file hashes -------------------------------------------------------------------
    def file_sha256(self, path: str | Path) -> str:
        """sha256 of a file: `models.digest.file_sha256`, the one hash and cache of every file."""
        from libra_edge.models.digest import file_sha256

        return file_sha256(Path(path))


def _result_filter(filters: ResultFilter | None, criteria: Mapping[str, Any]) -> ResultFilter:
    """`filters` (default: everything) with the keyword criteria applied on top."""
    base = filters or ResultFilter()
    return dataclasses.replace(base, **criteria) if criteria else base  # TypeError names an unknown field


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

