"""Numbered schema migrations of the results database (append only: never edit a shipped one)."""

from __future__ import annotations

import sqlite3

# MIGRATIONS[i] takes the database from `PRAGMA user_version = i` to `i + 1`.
# A shipped script is frozen: users' databases already ran it. Change the schema by
# appending a new script.
MIGRATIONS: tuple[str, ...] = (
    # 1: runs, results, review columns, full-text search, file-hash cache (dropped by 7).
    """
    CREATE TABLE runs (
        id                      INTEGER PRIMARY KEY,
        fingerprint             TEXT NOT NULL,
        created_at              TEXT NOT NULL,
        started_at              TEXT,
        finished_at             TEXT,
        status                  TEXT NOT NULL DEFAULT 'running'
                                CHECK (status IN ('running', 'finished', 'interrupted', 'failed')),
        pid                     INTEGER,
        host                    TEXT,
        inputs_json             TEXT NOT NULL,
        model_path              TEXT NOT NULL,
        model_name              TEXT NOT NULL,
        model_sha256            TEXT NOT NULL,
        quant                   TEXT,
        settings_json           TEXT NOT NULL,
        prompt_template_version TEXT NOT NULL,
        options_json            TEXT NOT NULL,
        total                   INTEGER NOT NULL DEFAULT 0,
        skipped                 INTEGER NOT NULL DEFAULT 0,
        message                 TEXT
    );
    CREATE INDEX runs_fingerprint ON runs (fingerprint);

    CREATE TABLE results (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        item_id       TEXT,
        source        TEXT,
        category      TEXT,
        sub_category  TEXT,
        question      TEXT NOT NULL,
        response      TEXT NOT NULL,
        input_json    TEXT NOT NULL,
        input_file    TEXT,
        input_line    INTEGER,
        label         TEXT,
        unsafe        INTEGER,
        score         REAL,
        analysis      TEXT,
        raw           TEXT,
        truncated     INTEGER NOT NULL DEFAULT 0,
        timings_json  TEXT,
        error         TEXT,
        checked_at    TEXT NOT NULL,
        review        TEXT CHECK (review IN ('confirm', 'safe', 'unsafe')),
        review_note   TEXT,
        reviewed_at   TEXT,
        UNIQUE (run_id, seq)
    );
    -- The TUI pages through one run at a time, filtered and sorted these ways.
    CREATE INDEX results_run_score ON results (run_id, score);
    CREATE INDEX results_run_unsafe ON results (run_id, unsafe, seq);
    CREATE INDEX results_run_source ON results (run_id, source);
    CREATE INDEX results_run_category ON results (run_id, category);
    CREATE INDEX results_run_review ON results (run_id, review);

    -- Trigram tokens find Chinese substrings (no word boundaries to split on);
    -- external content, so the texts are not stored twice.
    CREATE VIRTUAL TABLE results_fts USING fts5 (
        question, response, analysis,
        content = 'results', content_rowid = 'id', tokenize = 'trigram'
    );
    CREATE TRIGGER results_fts_insert AFTER INSERT ON results BEGIN
        INSERT INTO results_fts (rowid, question, response, analysis)
        VALUES (new.id, new.question, new.response, new.analysis);
    END;
    CREATE TRIGGER results_fts_delete AFTER DELETE ON results BEGIN
        INSERT INTO results_fts (results_fts, rowid, question, response, analysis)
        VALUES ('delete', old.id, old.question, old.response, old.analysis);
    END;
    CREATE TRIGGER results_fts_update AFTER UPDATE OF question, response, analysis ON results BEGIN
        INSERT INTO results_fts (results_fts, rowid, question, response, analysis)
        VALUES ('delete', old.id, old.question, old.response, old.analysis);
        INSERT INTO results_fts (rowid, question, response, analysis)
        VALUES (new.id, new.question, new.response, new.analysis);
    END;

    -- sha256 of large files (models, inputs), keyed by path, size and mtime, so a
    -- resumed run does not re-hash a 2 GB model.
    CREATE TABLE file_hashes (
        path      TEXT PRIMARY KEY,
        size      INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        sha256    TEXT NOT NULL
    );
    """,
    # 2: review evidence: who decided, and every decision kept (undo restores the one before).
    """
    ALTER TABLE results ADD COLUMN reviewer TEXT;
    CREATE TABLE review_history (
        id          INTEGER PRIMARY KEY,
        result_id   INTEGER NOT NULL REFERENCES results (id) ON DELETE CASCADE,
        run_id      INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        review      TEXT CHECK (review IN ('confirm', 'safe', 'unsafe')),
        note        TEXT,
        reviewer    TEXT,
        decided_at  TEXT NOT NULL,
        action      TEXT NOT NULL
                    CHECK (action IN ('decide', 'note', 'clear', 'bulk-confirm', 'undo', 'import'))
    );
    CREATE INDEX review_history_result ON review_history (result_id, id);
    CREATE INDEX review_history_run ON review_history (run_id, id);
    -- Decisions made before this table existed become its first entries.
    INSERT INTO review_history (result_id, run_id, seq, review, note, reviewer, decided_at, action)
        SELECT id, run_id, seq, review, review_note, NULL, coalesce(reviewed_at, checked_at), 'import'
        FROM results WHERE review IS NOT NULL OR review_note IS NOT NULL;
    """,
    # 3: transcripts, long texts judged in windows, complete runs: every input
    # record has a row, `status` says whether it was judged, skipped (input) or failed.
    """
    ALTER TABLE results ADD COLUMN conversation_id TEXT;
    ALTER TABLE results ADD COLUMN turn_index INTEGER;
    ALTER TABLE results ADD COLUMN windows INTEGER;
    ALTER TABLE results ADD COLUMN window INTEGER;
    ALTER TABLE results ADD COLUMN span_start INTEGER;
    ALTER TABLE results ADD COLUMN span_end INTEGER;
    ALTER TABLE results ADD COLUMN normalized INTEGER;
    ALTER TABLE results ADD COLUMN analysis_cut INTEGER;
    ALTER TABLE results ADD COLUMN status TEXT NOT NULL DEFAULT 'judged'
        CHECK (status IN ('judged', 'skipped', 'failed'));
    UPDATE results SET status = 'failed' WHERE error IS NOT NULL;
    CREATE INDEX results_run_conversation ON results (run_id, conversation_id, turn_index);
    """,
    # 4: provenance: who started the run (user@host is what an audit report names).
    """
    ALTER TABLE runs ADD COLUMN user TEXT;
    """,
    # 5: which node judged each item, and each node's llama.cpp build and model file (a
    # run spread over a cluster, or resumed on another machine, keeps its audit trail).
    """
    ALTER TABLE results ADD COLUMN node TEXT;
    CREATE TABLE run_nodes (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        node          TEXT NOT NULL,
        host          TEXT,
        build         TEXT NOT NULL,
        model_sha256  TEXT NOT NULL,
        first_seen    TEXT NOT NULL,
        UNIQUE (run_id, node)
    );
    """,
    # 6: a reviewer's decision on the refusal rules' mark (the should-refuse and
    # should-not-refuse assessments), with its own history (undo restores the one before).
    """
    ALTER TABLE results ADD COLUMN refusal_review INTEGER CHECK (refusal_review IN (0, 1));
    ALTER TABLE results ADD COLUMN refusal_reviewer TEXT;
    ALTER TABLE results ADD COLUMN refusal_reviewed_at TEXT;
    CREATE TABLE refusal_history (
        id          INTEGER PRIMARY KEY,
        result_id   INTEGER NOT NULL REFERENCES results (id) ON DELETE CASCADE,
        run_id      INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        refused     INTEGER CHECK (refused IN (0, 1)),
        reviewer    TEXT,
        decided_at  TEXT NOT NULL,
        action      TEXT NOT NULL CHECK (action IN ('decide', 'clear', 'undo'))
    );
    CREATE INDEX refusal_history_result ON refusal_history (result_id, id);
    CREATE INDEX refusal_history_run ON refusal_history (run_id, id);
    """,
    # 7: the file-hash cache of migration 1 goes, unused: every file's sha256 is cached
    # once by `models.digest` (in libra-edge's home), not in each results database.
    """
    DROP TABLE IF EXISTS file_hashes;
    """,
)


def split_statements(script: str) -> list[str]:
    """The statements of a script, split where SQLite says a statement is complete.

    `executescript` would commit the migration's transaction first; running the
    statements one by one keeps a migration and its version bump atomic.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
