"""Two reviewers on one database: two processes, each with its own `Store` connection, deciding
items of the same run at the same time lose no decision and leave a complete history."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from libra_edge.errors import LibraError
from libra_edge.store import open_store
from tests.fixtures.tui import seed_run

ITEMS = 40
ROUNDS = 3


def _reviewer(db: str, name: str, run_id: int, start: Any) -> None:
    """Decide every item of the run ROUNDS times (the same items as the other reviewer)."""
    with open_store(db) as store:
        ids = [r.id for r in store.results(run_id)]
        start.wait(30)
        for round_ in range(ROUNDS):
            for i, result_id in enumerate(ids):
                decision = ("confirm", "safe", "unsafe")[(i + round_) % 3]
                store.set_review(result_id, decision, f"{name} round {round_}", reviewer=name)
            if round_ == 1:
                try:  # undo our latest decision on the first item, unless the other decided it since
                    store.undo_review(ids[0], reviewer=name)
                except LibraError:
                    pass


def test_two_processes_deciding_the_same_run_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with open_store(db) as store:
        run_id = seed_run(store, ITEMS)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_reviewer, args=(str(db), name, run_id, start)) for name in ("ann", "ben")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0]

    with open_store(db) as store:
        history = store.review_history(run_id=run_id)
        results = {r.id: r for r in store.results(run_id)}
    decisions = [e for e in history if e.action != "undo"]
    undos = [e for e in history if e.action == "undo"]
    # Every decision of both reviewers is in the history, none overwritten.
    for name in ("ann", "ben"):
        mine = [e for e in decisions if e.reviewer == name]
        assert len(mine) == ITEMS * ROUNDS
        assert {(e.result_id, e.note) for e in mine} == {
            (rid, f"{name} round {r}") for rid in results for r in range(ROUNDS)}
    assert len(history) == 2 * ITEMS * ROUNDS + len(undos)
    # Each item's state is the one its history ends in (decisions serialized, none lost).
    for result_id, row in results.items():
        events = [e for e in history if e.result_id == result_id]
        last = events[-1]
        assert (row.review, row.review_note) == (last.review, last.note)
        if last.action != "undo":
            assert row.reviewer == last.reviewer


def test_decisions_made_before_the_history_existed_become_its_first_entries(tmp_path: Path) -> None:
    import sqlite3

    from libra_edge.store.migrations import MIGRATIONS, split_statements

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in split_statements(MIGRATIONS[0]):  # a database of schema 1, with a decision in it
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs (id, fingerprint, created_at, status, inputs_json, model_path, model_name,"
                 " model_sha256, settings_json, prompt_template_version, options_json, total)"
                 " VALUES (1, 'f', '2026-01-01T00:00:00+00:00', 'finished', '[]', 'm', 'm', 's', '{}', '1', '{}', 1)")
    conn.execute("INSERT INTO results (run_id, seq, question, response, input_json, label, unsafe, score,"
                 " checked_at, review, review_note, reviewed_at) VALUES (1, 0, 'q', 'r', '{}', '不安全', 1, 0.9,"
                 " '2026-01-01T00:00:00+00:00', 'safe', 'old note', '2026-01-02T00:00:00+00:00')")
    conn.close()
    with open_store(db) as store:
        row = store.results(1)[0]
        assert (row.review, row.review_note, row.reviewer) == ("safe", "old note", None)
        [event] = store.review_history(result_id=row.id)
        assert (event.action, event.review, event.decided_at) == ("import", "safe", "2026-01-02T00:00:00+00:00")
        store.set_review(row.id, "confirm", None, reviewer="new")
        restored = store.undo_review(row.id, reviewer="new")
        assert (restored.review, restored.review_note) == ("safe", "old note")


def test_a_decision_from_the_table_keeps_a_note_written_elsewhere_since(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    with open_store(db) as mine, open_store(db) as theirs:
        run_id = seed_run(mine)
        item = mine.results(run_id)[1].id
        theirs.set_review(item, None, "check the source", reviewer="kim")
        row = mine.set_review(item, "confirm", None, reviewer="lee", keep_note=True)
    assert (row.review, row.review_note, row.reviewer) == ("confirm", "check the source", "lee")
