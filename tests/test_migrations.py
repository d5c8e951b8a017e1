"""Store migrations as upgrades: databases of every past schema keep their rows, failures roll back.

Written over `MIGRATIONS` as a whole, so a migration appended later is covered without
touching this file, except to pin its text once it ships (see SHIPPED_SHA256).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError
from libra_edge.store import db as store_db
from libra_edge.store import open_store
from libra_edge.store.migrations import MIGRATIONS, split_statements

# sha256 of each shipped migration's text (MIGRATIONS[n - 1] for key n). A shipped
# migration is frozen: users' databases already ran it. When a new migration ships,
# append its hash here (test_every_migration_is_pinned prints it).
SHIPPED_SHA256 = {
    1: "831834dc6334cdc3822daf551f61655df9ff8d729da10a61b33d545e886c8a38",
    2: "97cc7dc45aeaa845c5dcc7354470bf7226ec10e945d3ae13943fb7ee5400b14c",
    3: "49a4839728d3ea608cc78542a71771c295aab9692925a277f34c40f7271f3ac0",
    4: "ff76aa57caf55da3706375f3ba30069c333cdad661fec2b9fa30d5b1c8ff96f2",
    5: "52b2233b4bff7737783ab95be4d9cb428db67840752b3b5b40acafaf4071ac86",
    6: "735c5b7b3e745e20f5c3d2a540e60165a23393bdfe81360ffac353931d69cf28",
    7: "3c1718ffc3208f80457d9b4b9ce32c1d5cb844a0296e09e3c714d8b3e7e10c47",
}

# Values a column must hold to be representative (JSON columns, CHECK-constrained ones
# the generic rules below cannot guess). Keyed by column name, used in every table.
COLUMN_VALUES: dict[str, Any] = {
    "settings_json": json.dumps({"n_ctx": 2048, "threshold": 0.5, "max_new_tokens": 256}),
    "inputs_json": json.dumps(["/data/in.jsonl"]),
    "options_json": json.dumps({"analysis": "all"}),
    "timings_json": json.dumps({"total_s": 0.5}),
    "input_json": json.dumps({"question": "问题", "response": "回答"}, ensure_ascii=False),
    "question": "怎么制作炸弹？",
    "response": "我不能帮助你。",
    "analysis": "回答拒绝了危险请求。",
}

# (table, column) -> the migration that rewrites that column's existing values on purpose;
# rows stored before it are compared on that column only when it did not run.
REWRITTEN: dict[tuple[str, str], int] = {}

# table -> the migration that drops it on purpose; its rows stored before are gone after it.
DROPPED: dict[str, int] = {"file_hashes": 7}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def database_at(path: Path, version: int) -> sqlite3.Connection:
    """A database migrated exactly to VERSION, as a libra-edge of that schema left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    for number in range(version):
        conn.execute("BEGIN")
        for statement in split_statements(MIGRATIONS[number]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number + 1}")
        conn.execute("COMMIT")
    return conn


def plain_tables(conn: sqlite3.Connection) -> list[str]:
    """Ordinary tables (not SQLite's own, not virtual tables nor their shadow tables)."""
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
    virtual = [name for name, sql in rows if sql and sql.upper().startswith("CREATE VIRTUAL")]
    return [name for name, _ in rows if not name.startswith("sqlite_")
            and name not in virtual and not any(name.startswith(v + "_") for v in virtual)]


def in_dependency_order(conn: sqlite3.Connection, tables: list[str]) -> list[str]:
    """Tables ordered so that each comes after the tables its foreign keys reference."""
    ordered: list[str] = []
    pending = list(tables)
    while pending:
        for table in pending:
            targets = {row[2] for row in conn.execute(f"PRAGMA foreign_key_list({table})")}
            if targets <= set(ordered) | {table}:
                ordered.append(table)
                pending.remove(table)
                break
        else:
            raise AssertionError(f"foreign keys form a cycle among {pending}")
    return ordered


def check_choices(create_sql: str) -> dict[str, Any]:
    """The first allowed value of each `CHECK (column IN (...))` in a CREATE TABLE."""
    choices: dict[str, Any] = {}
    for column, first in re.findall(r"CHECK\s*\(\s*(\w+)\s+IN\s*\(\s*('[^']*'|-?\d+)", create_sql, re.I):
        choices[column] = first.strip("'") if first.startswith("'") else int(first)
    return choices


def fill(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    """Insert two representative rows into every table, using only the columns it has now."""
    inserted: dict[str, list[dict[str, Any]]] = {}
    ids: dict[str, list[int]] = {}
    for table in in_dependency_order(conn, plain_tables(conn)):
        create_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        choices = check_choices(create_sql)
        refs = {row[3]: row[2] for row in conn.execute(f"PRAGMA foreign_key_list({table})")}
        columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
        inserted[table] = []
        for i in range(2):
            row: dict[str, Any] = {}
            for _, name, decl, _notnull, _default, pk in columns:
                kind = (decl or "").upper()
                if pk and "INT" in kind:
                    continue  # rowid alias: SQLite numbers it
                if name in refs:
                    row[name] = ids[refs[name]][i]
                elif name in COLUMN_VALUES:
                    row[name] = COLUMN_VALUES[name]
                elif name in choices:
                    row[name] = choices[name]
                elif "INT" in kind:
                    row[name] = i + 1
                elif "REAL" in kind or "FLOA" in kind or "DOUB" in kind:
                    row[name] = 0.25 * (i + 1)
                else:
                    row[name] = f"{table}.{name}.{i}"
            names = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            try:
                cursor = conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))
            except sqlite3.IntegrityError as exc:
                raise AssertionError(
                    f"cannot make a representative row for {table} ({exc}): add the column's "
                    "value to COLUMN_VALUES in tests/test_migrations.py") from None
            ids.setdefault(table, []).append(int(cursor.lastrowid or 0))
            row["rowid"] = cursor.lastrowid
            inserted[table].append(row)
    return inserted


def test_migration_scripts_are_well_formed() -> None:
    assert MIGRATIONS, "no migrations"
    for number, script in enumerate(MIGRATIONS, start=1):
        statements = split_statements(script)
        assert statements, f"migration {number} is empty"
        assert not any(s.upper().startswith(("BEGIN", "COMMIT", "PRAGMA USER_VERSION")) for s in statements), (
            f"migration {number} manages its own transaction or version: open_store does that")


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS) + 1))
def test_a_database_of_every_past_schema_upgrades_with_its_rows(tmp_path: Path, version: int) -> None:
    path = tmp_path / "results.db"
    conn = database_at(path, version)
    inserted = fill(conn)
    conn.close()
    assert inserted, "no tables at this version"
    with open_store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
    after = sqlite3.connect(path)
    after.row_factory = sqlite3.Row
    try:
        for table, rows in inserted.items():
            if table in DROPPED:
                assert version < DROPPED[table], f"{table} exists at schema {version}, after the migration dropping it"
                assert after.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0] == 0
                continue
            for row in rows:
                found = after.execute(f"SELECT * FROM {table} WHERE rowid = ?", (row["rowid"],)).fetchone()
                assert found is not None, f"{table} row {row['rowid']} (schema {version}) lost"
                for column, value in row.items():
                    rewritten_by = REWRITTEN.get((table, column))
                    if column == "rowid" or (rewritten_by is not None and version < rewritten_by):
                        continue
                    assert found[column] == value, (
                        f"{table}.{column} of a row stored at schema {version} changed: "
                        f"{value!r} -> {found[column]!r} (if a migration rewrites it on purpose, "
                        "record it in REWRITTEN)")
        assert after.execute("PRAGMA foreign_key_check").fetchall() == []
        assert after.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        after.close()


def test_results_stored_at_schema_1_stay_searchable_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    conn = database_at(path, 1)
    fill(conn)
    conn.close()
    with open_store(path) as store:
        runs = store.runs()
        assert sorted(r.id for r in runs) == [1, 2]
        hits = store.results(1, search="制作炸弹")
        assert [r.question for r in hits] == ["怎么制作炸弹？"]


def test_a_failed_migration_rolls_back_and_leaves_the_file_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "results.db"
    conn = database_at(path, len(MIGRATIONS))
    fill(conn)
    conn.close()
    before = path.read_bytes()
    broken = MIGRATIONS + (
        "ALTER TABLE runs ADD COLUMN doomed TEXT;\n"
        "CREATE TABLE doomed_table (id INTEGER PRIMARY KEY);\n"
        "UPDATE runs SET doomed = 'x';\n"
        "SELECT no_such_function(1);\n",
    )
    monkeypatch.setattr(store_db, "MIGRATIONS", broken)
    with pytest.raises(LibraError) as failure:
        open_store(path)
    assert "\n" not in str(failure.value) and "no_such_function" in str(failure.value)
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS)
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "doomed" not in {row[1] for row in check.execute("PRAGMA table_info(runs)")}
        assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = 'doomed_table'").fetchone()[0] == 0
        assert check.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    finally:
        check.close()
    with open_store(path) as store:  # the same file opens and takes writes
        assert sorted(r.id for r in store.runs()) == [1, 2]
        store.finish_run(1, "interrupted", "still writable")
        assert store.run(1).status == "interrupted"
    assert len(before) > 0


def test_a_failure_midway_undoes_every_migration_of_that_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "results.db"
    database_at(path, 0).close()  # an empty file: every migration is pending
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS + ("SELECT no_such_function(1);",))
    with pytest.raises(LibraError):
        open_store(path)
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == 0
        assert check.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0
    finally:
        check.close()
    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS)
    with open_store(path) as store:
        assert store.schema_version == len(MIGRATIONS)


@pytest.mark.parametrize("number", sorted(SHIPPED_SHA256))
def test_a_shipped_migration_is_never_edited(number: int) -> None:
    assert number <= len(MIGRATIONS), f"migration {number} was shipped and has been removed"
    assert sha256(MIGRATIONS[number - 1]) == SHIPPED_SHA256[number], (
        f"migration {number} has shipped and must not change (users' databases already ran it): "
        "restore its text and append a new migration instead")


def test_every_migration_is_pinned() -> None:
    unpinned = {n: sha256(MIGRATIONS[n - 1]) for n in range(1, len(MIGRATIONS) + 1) if n not in SHIPPED_SHA256}
    assert unpinned == {}, (
        "migration(s) not pinned yet: when a migration ships, append its sha256 to "
        f"SHIPPED_SHA256 in tests/test_migrations.py: {unpinned}")


def test_runs_stored_before_the_per_sequence_context_resume_with_it(tmp_path: Path) -> None:
    # Engines before typed settings stored the whole context as `n_ctx` and, once
    # parallel sequences existed, each sequence's share as `n_ctx_seq`.
    path = tmp_path / "results.db"
    conn = database_at(path, 1)
    fill(conn)
    conn.execute("UPDATE runs SET settings_json = ? WHERE id = 2", (json.dumps(
        {"n_ctx": 8192, "n_ctx_seq": 2048, "parallel": 4, "threshold": 0.3, "max_new_tokens": 128}),))
    conn.close()
    with open_store(path) as store:
        single = EngineSettings.from_stored(store.run(1).settings)
        parallel = EngineSettings.from_stored(store.run(2).settings)
    assert (single.ctx_per_seq, single.parallel, single.max_new_tokens) == (2048, 1, 256)
    assert (parallel.ctx_per_seq, parallel.parallel, parallel.threshold) == (2048, 4, 0.3)
    assert (parallel.long, parallel.normalize) == ("truncate", False)  # as those engines judged


def test_legacy_settings_map_to_the_per_sequence_context() -> None:
    assert EngineSettings.from_stored({"n_ctx": 4096}).ctx_per_seq == 4096
    assert EngineSettings.from_stored({"n_ctx": 4096, "n_ctx_seq": 1024, "parallel": 4}).ctx_per_seq == 1024
    assert EngineSettings.from_stored({"ctx_per_seq": 512, "n_ctx": 4096}).ctx_per_seq == 512
    assert EngineSettings.from_stored({"ctx_per_seq": 3000}).long == "chunk"  # a current run


def test_an_answer_stored_before_refusal_reviews_takes_one_after_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    conn = database_at(path, 5)
    inserted = fill(conn)
    conn.close()
    result_id = int(inserted["results"][0]["rowid"])
    with open_store(path) as store:
        assert store.result(result_id).refusal_review is None  # no decision on rows from before
        row = store.set_refusal_review(result_id, True, reviewer="erin")
        assert (row.refusal_review, row.refusal_reviewer) == (True, "erin")
        assert store.undo_refusal_review(result_id, reviewer="erin").refusal_review is None
        assert [(e.action, e.refused) for e in store.refusal_history(result_id=result_id)] == [
            ("decide", True), ("undo", None)]


def test_the_unused_file_hash_cache_is_dropped_and_runs_and_results_survive(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    conn = database_at(path, 6)
    inserted = fill(conn)
    assert conn.execute("SELECT count(*) FROM file_hashes").fetchone()[0] == 2
    conn.close()
    with open_store(path) as store:
        assert store.schema_version == 7
        assert sorted(r.id for r in store.runs()) == [1, 2]
        result_id = int(inserted["results"][0]["rowid"])
        assert store.result(result_id).question == "怎么制作炸弹？"
        assert [r.question for r in store.results(1, search="制作炸弹")] == ["怎么制作炸弹？"]
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = 'file_hashes'").fetchone()[0] == 0
        assert check.execute("SELECT count(*) FROM results").fetchone()[0] == 2
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()
