"""What the parts of `Store` share: the connection, its lock, transactions and the store's formats.

`Store` (`store.db`) is assembled from one mixin per responsibility: `Runs`
(`store.runs`), `Results` (`store.results`), `Reviews` (`store.reviews`) and
`RefusalReviews` (`store.refusals`). Each derives from `StoreBase`, which declares
the state they all use and the two lookups one part makes of another's rows
(`run`, `result`); `Store` inherits the real ones. The helpers here (the timestamp,
JSON and full-disk formats) are the ones more than one part needs.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from libra_edge.errors import DiskFullError, LibraError
from libra_edge.store.rows import ResultRow, RunRow
from libra_edge.units import human_size


_S = TypeVar("_S", bound="StoreBase")


def now() -> str:
    """The current UTC time as ISO 8601 (seconds), the store's timestamp format."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_text(value: Any) -> str:
    """VALUE as the store keeps a JSON column: UTF-8 text as is, keys sorted."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


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


class StoreBase:
    """The connection behind one lock, shared by every part of the store."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    path: Path

    @contextmanager
    def transaction(self: _S) -> Iterator[_S]:
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

    def history_rows(self, table: str, *, run_id: int | None, result_id: int | None) -> list[sqlite3.Row]:
        """The events of `table` (review_history, refusal_history) of one item or one run, oldest first."""
        if (run_id is None) == (result_id is None):
            raise LibraError(f"{table}: give run_id or result_id")
        column, value = ("result_id", result_id) if result_id is not None else ("run_id", run_id)
        with self._lock:
            rows: list[sqlite3.Row] = self._conn.execute(
                f"SELECT * FROM {table} WHERE {column} = ? ORDER BY id", (value,)).fetchall()
        return rows

    def run(self, run_id: int) -> RunRow:  # pragma: no cover - Runs'
        raise NotImplementedError

    def result(self, result_id: int) -> ResultRow:  # pragma: no cover - Results'
        raise NotImplementedError
