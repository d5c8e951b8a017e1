"""Checked items in the store: each stored as it is judged, then paged, searched, counted and exported.

`Results` is a part of `Store` (mixed in, see `store.base`). Every `add_result` commits
on its own, so a crash never loses a finished item; reads take the lock per page and
never hold it while the caller works on a row.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, cast

from libra_edge.errors import LibraError
from libra_edge.store import base
from libra_edge.store import export as export_format
from libra_edge.store.base import StoreBase, disk_full_error, json_text
from libra_edge.store.filters import Order, ResultFilter, order_sql
from libra_edge.store.rows import Facets, ResultRow, result_from_row

_PAGE = 256


class Results(StoreBase):
    """The store's result methods (see the module's docstring)."""

    # Declared in every part that uses them: a module names only private attributes it
    # declares itself (tests/test_contracts.py); `StoreBase` declares the same ones.
    _conn: sqlite3.Connection
    _lock: threading.RLock

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
                 json_text(timings) if timings is not None else None, error, base.now(),
                 "failed" if error is not None else "judged", conversation_id, turn_index,
                 v.get("windows"), v.get("window"), span[0], span[1], flag("normalized"), flag("analysis_cut"),
                 node),
            )
            row = self._conn.execute(
                "SELECT id FROM results WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
            return int(row[0])

    def add_placeholders(self, run_id: int, placeholders: Iterable[Any]) -> int:
        """Store a `skipped` row for each input record that yields no item (one commit).

        Each placeholder has `seq`, `file`, `line`, `reason` and `fields` (`batch.Placeholder`);
        `error` holds the reason. Rows already stored (a resumed run) are left as they are.
        Returns how many were new.
        """
        stamp = base.now()
        rows = [(run_id, p.seq, json.dumps(dict(p.fields), ensure_ascii=False), p.file, p.line, p.reason, stamp)
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

    def done_seqs(self, run_id: int, *, include_errors: bool = True) -> set[int]:
        """Input positions that already have a result (failures optionally counted as not done).

        Placeholders of skipped input records are never counted: they are not items.
        """
        sql = "SELECT seq FROM results WHERE run_id = ?"
        sql += " AND status != 'skipped'" if include_errors else " AND status = 'judged'"
        with self._lock:
            return {r[0] for r in self._conn.execute(sql, (run_id,))}

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

    def conversation(self, run_id: int, conversation_id: str) -> list[ResultRow]:
        """The judged turns of one conversation of a run (transcript inputs), in turn order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM results WHERE run_id = ? AND conversation_id = ? ORDER BY turn_index, seq",
                (run_id, conversation_id)).fetchall()
        return [result_from_row(r) for r in rows]

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


def _result_filter(filters: ResultFilter | None, criteria: Mapping[str, Any]) -> ResultFilter:
    """`filters` (default: everything) with the keyword criteria applied on top."""
    base = filters or ResultFilter()
    return dataclasses.replace(base, **criteria) if criteria else base  # TypeError names an unknown field
