"""Batch runs in the store: recorded, claimed by the process judging them, closed; and their nodes.

`Runs` is a part of `Store` (mixed in, see `store.base`). A run's live counts (done,
flagged, errors, reviewed, ...) are computed from its results each time it is read.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from libra_edge.errors import LibraError
from libra_edge.store import base
from libra_edge.store.base import StoreBase, json_text
from libra_edge.store.rows import NodeRow, RunRow, RunStatus, run_from_row
from libra_edge.users import os_user

_RUN_SELECT = """
    SELECT runs.*, c.done, c.flagged, c.errors, c.reviewed, c.truncated, c.chunked
    FROM runs LEFT JOIN (
        SELECT run_id, sum(status != 'skipped') AS done, sum(unsafe = 1) AS flagged,
               sum(status = 'failed') AS errors, sum(review IS NOT NULL) AS reviewed,
               sum(status = 'judged' AND truncated = 1) AS truncated, sum(windows > 1) AS chunked
        FROM results {where} GROUP BY run_id
    ) AS c ON c.run_id = runs.id
"""


class Runs(StoreBase):
    """The store's run methods (see the module's docstring)."""

    # Declared in every part that uses them: a module names only private attributes it
    # declares itself (tests/test_contracts.py); `StoreBase` declares the same ones.
    _conn: sqlite3.Connection
    _lock: threading.RLock

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
        stamp = base.now()
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO runs (fingerprint, created_at, started_at, status, pid, host, user, inputs_json,"
                " model_path, model_name, model_sha256, quant, settings_json, prompt_template_version,"
                " options_json, total, skipped) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, stamp, stamp, os.getpid(), socket.gethostname(), os_user("?"), json_text(inputs),
                 model_path, model_name, model_sha256, quant, json_text(dict(settings)), prompt_template_version,
                 json_text(dict(options)), total, skipped),
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
                (os.getpid(), socket.gethostname(), base.now(), total, skipped, run_id),
            )

    def finish_run(self, run_id: int, status: RunStatus = "finished", message: str | None = None) -> None:
        """Close a run as `finished`, `interrupted` or `failed` (with a message saying why)."""
        if status not in ("finished", "interrupted", "failed"):
            raise LibraError(f"finish_run: status must be finished, interrupted or failed, got {status!r}")
        with self._lock:
            self._conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ?, pid = NULL WHERE id = ?",
                (status, base.now(), message, run_id),
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

    # -- nodes -----------------------------------------------------------------------
    def record_node(self, run_id: int, node: str, *, host: str | None, build: str, model_sha256: str) -> bool:
        """Note that `node` judges items of `run_id` with this llama.cpp build and model file.

        Returns True when the node is new to the run; a node seen before keeps its first record.
        """
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO run_nodes (run_id, node, host, build, model_sha256, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, node) DO NOTHING",
                (run_id, node, host, build, model_sha256, base.now()))
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
