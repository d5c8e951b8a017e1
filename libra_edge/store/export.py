"""The output format of checked items (JSONL and CSV), shared by `batch -o` and the TUI's export.

Each JSONL row is the input record with every field unchanged, plus:

- `critic`: the model's raw JSON text, as the authors' inference script writes it, so
  their metric script (and `libra-edge eval`) reads our files unchanged;
- `verdict`: `{"label", "unsafe", "score", "analysis", "truncated", "error"}`, the keys
  `check --json` prints. They sit in their own object because Libra-Test inputs already
  carry a gold `label` (and may carry `score`-like fields): a prediction written at the
  top level would overwrite the gold label and evaluate as 100% accurate;
- `review`: `{"decision", "note", "reviewer", "reviewed_at"}`, only on items a reviewer
  triaged: the decision in force, who made it and when (UTC, ISO 8601);
- `refusal_review`: `{"refused", "reviewer", "reviewed_at"}`, only on answers whose
  refusal mark a reviewer set (the refusal assessments count it before the detector's).

Every input record has a row: `verdict.status` is `judged`, `failed` (the check
raised) or `skipped` (a placeholder for a record that yields no item: malformed, or a
conversation with nothing to judge). A failed or skipped row has `critic: ""` (counted
as a wrong answer by the authors' metric), `verdict.error` saying why and
`verdict.input` (`file:line`, on every row) saying where. `windows`, `window`, `span`
([start, end) of the deciding window in the response), `normalized` and `analysis_cut`
describe how a long or obfuscated response was judged. A transcript turn's row holds
the conversation's other fields, `conversation_id`, `turn_index`, `question` and
`response`; the conversation itself stays in the results database. CSV has the same content flattened: the input's columns, then
`critic`, `verdict_label`, `verdict_unsafe`, ..., `review_decision`, `review_note`,
`reviewer`, `reviewed_at`, `refusal_review`, `refusal_reviewer`, `refusal_reviewed_at`.
Rows come in the order asked for (the TUI exports in its screen's sort order).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from libra_edge.store.rows import ResultRow
from libra_edge.verdicts import relabel

FORMATS: tuple[str, ...] = ("jsonl", "json", "csv")
VERDICT_KEYS = ("label", "unsafe", "score", "analysis", "truncated", "error", "status", "input",
                "windows", "window", "span", "normalized", "analysis_cut",
                "model", "model_sha256", "threshold", "version")
# The run's provenance every verdict object carries (as `check --json` prints it).
PROVENANCE_KEYS = ("model", "model_sha256", "threshold", "version")
# Fields holding a whole conversation: kept in the store, left out of a turn's output row.
TRANSCRIPT_FIELDS = ("messages", "conversations")
# Keys this format adds to the input record (an input field of the same name is replaced).
ADDED_KEYS = ("critic", "verdict", "review", "refusal_review")
# CSV's review columns, after the verdict's (`_review_cells` fills them).
REVIEW_COLUMNS = ("review_decision", "review_note", "reviewer", "reviewed_at",
                  "refusal_review", "refusal_reviewer", "refusal_reviewed_at")


def relabelled(row: ResultRow, threshold: float | None) -> ResultRow:
    """A judged row's verdict at another threshold, from its stored score (nothing re-judged).

    `label`, `unsafe` and the raw reply's `答案` follow the threshold (`verdicts.relabel`, as a
    `serve` request's threshold does); the score, the analysis and everything else stay as
    judged. Failed and skipped rows, and rows whose label does not change, are returned as is.
    """
    if threshold is None or row.status != "judged" or row.score is None or row.unsafe is None:
        return row
    seen = relabel(row.score, row.unsafe, row.raw, threshold)
    if not seen.changed:
        return row
    return dataclasses.replace(row, unsafe=seen.unsafe, label=seen.label, raw=seen.raw)


def output_fields(row: ResultRow) -> dict[str, Any]:
    """The input fields a row carries to the output (a transcript turn: all but the conversation)."""
    fields = dict(row.fields)
    if row.conversation_id is not None:
        for key in TRANSCRIPT_FIELDS:
            if isinstance(fields.get(key), list):
                del fields[key]
    return fields


def verdict_object(row: ResultRow, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `verdict` object of a row (the keys of VERDICT_KEYS; provenance from the run)."""
    span = [row.span_start, row.span_end] if row.span_start is not None and row.span_end is not None else None
    return {
        "label": row.label,
        "unsafe": row.unsafe,
        "score": row.score,
        "analysis": row.analysis,
        "truncated": row.truncated,
        "error": row.error,
        "status": row.status,
        "input": f"{row.input_file}:{row.input_line}" if row.input_file else None,
        "windows": row.windows,
        "window": row.window,
        "span": span,
        "normalized": row.normalized,
        "analysis_cut": row.analysis_cut,
        **{key: (provenance or {}).get(key) for key in PROVENANCE_KEYS},
    }


def output_record(row: ResultRow, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSONL object for one result: input fields + `critic` + `verdict` (+ `review`)."""
    record = output_fields(row)
    record["critic"] = row.raw if row.raw is not None else ""
    record["verdict"] = verdict_object(row, provenance)
    if row.review is not None or row.review_note:
        record["review"] = {"decision": row.review, "note": row.review_note, "reviewer": row.reviewer,
                            "reviewed_at": row.reviewed_at}
    else:
        record.pop("review", None)
    if row.refusal_review is not None:
        record["refusal_review"] = {"refused": row.refusal_review, "reviewer": row.refusal_reviewer,
                                    "reviewed_at": row.refusal_reviewed_at}
    else:
        record.pop("refusal_review", None)
    return record


def write_jsonl(rows: Iterable[ResultRow], out: TextIO, provenance: Mapping[str, Any] | None = None) -> int:
    """Write rows as JSONL (UTF-8 text, Chinese unescaped); returns the number written."""
    n = 0
    for row in rows:
        out.write(json.dumps(output_record(row, provenance), ensure_ascii=False) + "\n")
        n += 1
    return n


def write_json(rows: Iterable[ResultRow], out: TextIO, provenance: Mapping[str, Any] | None = None) -> int:
    """Write rows as one JSON array (one object per line inside it); returns the number written."""
    n = 0
    out.write("[")
    for row in rows:
        out.write(("\n" if n == 0 else ",\n") + json.dumps(output_record(row, provenance), ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


class ByteCounter(io.TextIOBase):
    """A text sink that only counts the UTF-8 bytes written (what an export will need on disk)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode("utf-8"))
        return len(text)


def csv_columns(field_names: Iterable[str]) -> list[str]:
    """CSV header: the input's columns (first-seen order), then ours."""
    ours = ["critic", *(f"verdict_{key}" for key in VERDICT_KEYS), *REVIEW_COLUMNS]
    return [name for name in field_names if name not in ADDED_KEYS and name not in ours] + ours


def _csv_cell(value: Any) -> str:
    """A CSV cell: strings as is, nested values and booleans as JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _review_cells(row: ResultRow) -> dict[str, Any]:
    """A row's REVIEW_COLUMNS: the verdict review and the refusal review in force."""
    return dict(zip(REVIEW_COLUMNS, (row.review, row.review_note, row.reviewer, row.reviewed_at,
                                     row.refusal_review, row.refusal_reviewer, row.refusal_reviewed_at),
                    strict=True))


def write_csv(rows: Iterable[ResultRow], columns: list[str], out: TextIO,
              provenance: Mapping[str, Any] | None = None) -> int:
    """Write rows as CSV with the given header; returns the number written."""
    writer = csv.writer(out)
    writer.writerow(columns)
    n = 0
    for row in rows:
        record = output_fields(row)
        record["critic"] = row.raw if row.raw is not None else ""
        for key, value in verdict_object(row, provenance).items():
            record[f"verdict_{key}"] = value
        record.update(_review_cells(row))
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
