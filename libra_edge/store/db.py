"""The SQLite store of batch runs and results: opened through `open_store`, safe to share.

One CLI batch writing and a TUI reading the same file at the same time is the normal
case: WAL mode lets readers proceed during writes, `busy_timeout` makes a writer wait
for another instead of failing. Every `add_result` commits on its own, so a crash or
`kill -9` never loses a finished item (WAL with synchronous=NORMAL is durable against
a process dying; only a power cut can lose the last few commits).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from libra_edge import paths
from libra_edge.errors import DiskFullError, LibraError
from libra_edge.store.base import disk_full_error
from libra_edge.store.migrations import MIGRATIONS, split_statements
from libra_edge.store.refusals import RefusalReviews
from libra_edge.store.results import Results
from libra_edge.store.reviews import Reviews
from libra_edge.store.runs import Runs

BUSY_TIMEOUT_MS = 10_000


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


class Store(Runs, Results, Reviews, RefusalReviews):
    """Batch runs and their results. Thread-safe: one connection behind a lock.

    Its parts, one module each: runs and their nodes (`store.runs`), results and exports
    (`store.results`), verdict reviews (`store.reviews`), refusal reviews (`store.refusals`);
    what they share is in `store.base`."""

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

    @property
    def schema_version(self) -> int:
        """The number of migrations applied to this database."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

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
