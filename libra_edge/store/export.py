"""The output format of checked items (JSONL and CSV), shared by `batch -o` and the TUI's export.

Each JSONL row is the input record with every field unchanged, plus:

- `critic`: the model's raw JSON text, as the authors' inference script writes it, so
  their metric script (and `libra-edge eval`) reads our files unchanged;
- `verdict`: `{"label", "unsafe", "score", "analysis", "truncated", "error"}`, the keys
  `check --json` prints. They sit in their own object because Libra-Test inputs already
  carry a gold `label` (and may carry `score`-like fields): a prediction written at the
  top level would overwrite the gold label and evaluate as 100% accurate;
- `review`: `{"decision", "note", "reviewed_at"}`, only on items a reviewer triaged.

A failed item has `critic: ""` (counted as a wrong answer by the authors' metric) and
`verdict.error` set. CSV has the same content flattened: the input's columns, then
`critic`, `verdict_label`, `verdict_unsafe`, ..., `review_decision`, `review_note`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from libra_edge.store.rows import ResultRow

VERDICT_KEYS = ("label", "unsafe", "score", "analysis", "truncated", "error")
# Keys this format adds to the input record (an input field of the same name is replaced).
ADDED_KEYS = ("critic", "verdict", "review")


def output_record(row: ResultRow) -> dict[str, Any]:
    """The JSONL object for one result: input fields + `critic` + `verdict` (+ `review`)."""
    record = dict(row.fields)
    record["critic"] = row.raw if row.raw is not None else ""
    record["verdict"] = {
        "label": row.label,
        "unsafe": row.unsafe,
        "score": row.score,
        "analysis": row.analysis,
        "truncated": row.truncated,
        "error": row.error,
    }
    if row.review is not None:
        record["review"] = {"decision": row.review, "note": row.review_note, "reviewed_at": row.reviewed_at}
    else:
        record.pop("review", None)
    return record


def write_jsonl(rows: Iterable[ResultRow], out: TextIO) -> int:
    """Write rows as JSONL (UTF-8 text, Chinese unescaped); returns the number written."""
    n = 0
    for row in rows:
        out.write(json.dumps(output_record(row), ensure_ascii=False) + "\n")
        n += 1
    return n


def csv_columns(field_names: Iterable[str]) -> list[str]:
    """CSV header: the input's columns (first-seen order), then ours."""
    columns = [name for name in field_names if name not in ADDED_KEYS]
    columns.append("critic")
    columns.extend(f"verdict_{key}" for key in VERDICT_KEYS)
    columns.extend(["review_decision", "review_note"])
    return columns


def _csv_cell(value: Any) -> str:
    """A CSV cell: strings as is, nested values and booleans as JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def write_csv(rows: Iterable[ResultRow], columns: list[str], out: TextIO) -> int:
    """Write rows as CSV with the given header; returns the number written."""
    writer = csv.writer(out)
    writer.writerow(columns)
    n = 0
    for row in rows:
        record = dict(row.fields)
        record["critic"] = row.raw if row.raw is not None else ""
        for key in VERDICT_KEYS:
            record[f"verdict_{key}"] = getattr(row, key)
        record["review_decision"] = row.review
        record["review_note"] = row.review_note
        writer.writerow([_csv_cell(record.get(col)) for col in columns])
        n += 1
    return n


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """Open `path` for writing so that it only ever appears complete (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
