"""Read batch inputs — JSON array, JSONL, CSV, Parquet, folders of those, or JSONL on stdin — into items.

A record is a flat (question, response) pair or a chat transcript (OpenAI `messages`,
ShareGPT `conversations`; see `transcripts`), detected per file or named by `format`.
Bad records do not stop a batch: each is reported as `file:line: reason`, skipped
(unless `strict`) and kept as a `Placeholder`, so that every input record still has
its row in the output. Whole-file problems (not UTF-8, not a JSON array, pyarrow
missing) stop with one clear error before any work starts.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from libra_edge.batch.fields import FieldMap
from libra_edge.batch.transcripts import (
    INPUT_FORMATS,
    TRANSCRIPT_KEYS,
    InputFormat,
    MalformedConversation,
    TranscriptFormat,
    TurnSelection,
    detect_format,
    read_conversation,
)
from libra_edge.errors import InputError
from libra_edge.store.export import ADDED_KEYS

SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_HINT = "pip install 'libra-edge[parquet]'"
STDIN = "-"
"""The input name that reads JSONL from standard input."""
STDIN_NAME = "<stdin>"
# Responses can be megabytes; the csv module's default field limit is 128 KiB.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Item:
    """One (question, response) pair to check, with its whole input record."""

    seq: int
    """Position across all inputs (0-based): output order."""
    question: str
    response: str
    fields: dict[str, Any]
    item_id: str | None
    source: str | None
    category: str | None
    sub_category: str | None
    file: str
    line: int
    """Line of a JSONL/CSV record, 1-based record number in a JSON array or Parquet file."""
    conversation_id: str | None = None
    """Transcripts: the conversation's `id`/`conversation_id` field, else `file:line`."""
    turn_index: int | None = None
    """Transcripts: position of the judged assistant message in the conversation (0-based)."""


@dataclass(frozen=True)
class Placeholder:
    """An input record that yields no item (malformed, nothing to judge): its output row says why."""

    seq: int
    """Its position among the outputs, like `Item.seq`."""
    file: str
    line: int
    reason: str
    fields: dict[str, Any]
    """The record's fields when it was an object (so ids and gold labels stay visible), else empty."""

    @property
    def where(self) -> str:
        """`file:line` of the record."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class InputIssue:
    """A problem with the inputs: a `skipped` record or a `warning` (nothing lost)."""

    kind: Literal["skipped", "warning"]
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class BatchInput:
    """Everything read from a batch's inputs: items in order, issues, and a content digest."""

    files: list[Path]
    fields: FieldMap
    items: list[Item] = field(default_factory=list)
    issues: list[InputIssue] = field(default_factory=list)
    file_digests: list[str] = field(default_factory=list)
    placeholders: list[Placeholder] = field(default_factory=list)
    """One per record that yields no item, in the same sequence as `items`."""
    formats: dict[str, str] = field(default_factory=dict)
    """The record format of each file (`pairs`, `messages`, `conversations`)."""
    labels: list[str] = field(default_factory=list)
    """Each file read, in order, or `-` for stdin: what a run records and resumes from."""

    @property
    def skipped(self) -> int:
        """Records that could not be read and are not in `items` (each has a placeholder)."""
        return len(self.placeholders)

    @property
    def records(self) -> int:
        """Output rows the inputs make: one per item plus one per placeholder."""
        return len(self.items) + len(self.placeholders)

    @property
    def digest(self) -> str:
        """sha256 over the input files' contents (in order) and the field mapping."""
        h = hashlib.sha256()
        h.update(json.dumps(self.fields.to_json(), sort_keys=True).encode())
        for d in self.file_digests:
            h.update(d.encode())
        return h.hexdigest()


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Input files in order: files as given, folders as their known-format files, sorted."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUFFIX_FORMATS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise InputError(f"{path}: folder has no .json, .jsonl, .csv or .parquet files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file")
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def read_inputs(
    inputs: Sequence[str | Path],
    fields: FieldMap | None = None,
    *,
    strict: bool = False,
    format: InputFormat = "auto",
    turns: TurnSelection = "all",
    stdin: IO[bytes] | None = None,
) -> BatchInput:
    """Read every input into items (global input order); `strict` stops at the first bad record.

    `format`: `auto` detects each file's records (a `messages` or `conversations` list
    makes a transcript file, anything else flat pairs); the others force one format.
    `turns`: `all` judges every assistant turn of a transcript, `last` only its last.
    `-` among the inputs reads JSONL from `stdin` (default: the process's standard input).
    """
    if format not in INPUT_FORMATS:
        raise InputError(f"format: expected {', '.join(INPUT_FORMATS)}, got {format!r}")
    fields = fields or FieldMap()
    sources: list[tuple[str, bytes, str]] = []  # (name, content, record format by suffix)
    files: list[Path] = []
    labels: list[str] = []
    for raw in inputs:
        if str(raw) == STDIN:
            data = (stdin or sys.stdin.buffer).read()
            sources.append((STDIN_NAME, data, "jsonl"))
            labels.append(STDIN)
            continue
        for path in expand_inputs([raw]):
            files.append(path)
            labels.append(str(path))
            sources.append((str(path), _read_bytes(path), SUFFIX_FORMATS.get(path.suffix.lower(), "jsonl")))
    batch = BatchInput(files=files, fields=fields, labels=labels)
    reader = _Reader(batch, fields, strict=strict, turns=turns)
    for name, data, suffix_format in sources:
        batch.file_digests.append(hashlib.sha256(data).hexdigest())
        records = list(_records(Path(name), data, suffix_format))
        if not records:
            batch.issues.append(InputIssue("warning", name, None, "empty: no records"))
            continue
        record_format = format if format != "auto" else _detect(records)
        batch.formats[name] = record_format
        reader.read_file(name, records, record_format)
    return batch


def _detect(records: list[tuple[int, Any]]) -> str:
    """A file's record format, from its first readable record."""
    for _, record in records:
        if isinstance(record, (dict, list)):
            return detect_format(record) or "pairs"
    return "pairs"


class _Reader:
    """Turns one file's records into items and placeholders, numbering them across files."""

    def __init__(self, batch: BatchInput, fields: FieldMap, *, strict: bool, turns: TurnSelection) -> None:
        self.batch, self.fields, self.strict, self.turns = batch, fields, strict, turns
        self.first_seen: dict[str, str] = {}

    @property
    def next_seq(self) -> int:
        return self.batch.records

    def read_file(self, name: str, records: list[tuple[int, Any]], record_format: str) -> None:
        objects = [r for r in records if isinstance(r[1], dict)]
        if record_format == "pairs":
            _check_mapping(name, objects, self.fields)
        else:
            key = TRANSCRIPT_KEYS[record_format]
            if objects and not any(key in rec for _, rec in objects) and not any(
                    isinstance(rec, list) for _, rec in records):
                present = list(dict.fromkeys(k for _, rec in objects[:50] for k in rec))
                raise InputError(f"{name}: no record has a {key!r} field (fields: {', '.join(map(str, present))})",
                                 hint="is this the right --format?")
        clashes = sorted({k for _, rec in objects for k in rec if k in ADDED_KEYS})
        if clashes:
            self.batch.issues.append(InputIssue(
                "warning", name, None, f"field(s) {', '.join(clashes)} will be replaced by libra-edge's in the output"))
        for line, record in records:
            if record_format == "pairs":
                issue, item = _item(name, line, record, self.fields, self.next_seq)
                if issue is not None:
                    self.skip(issue, record)
                    continue
                assert item is not None
                self.check_duplicate(name, line, item.item_id)
                self.batch.items.append(item)
            else:
                self.read_conversation(name, line, record, record_format)  # type: ignore[arg-type]

    def read_conversation(self, name: str, line: int, record: Any, fmt: TranscriptFormat) -> None:
        if isinstance(record, InputIssue):
            self.skip(record, None)
            return
        try:
            conv = read_conversation(record, fmt, turns=self.turns)
        except MalformedConversation as exc:
            self.skip(InputIssue("skipped", name, line, str(exc)), record)
            return
        for note in conv.notes:
            self.batch.issues.append(InputIssue("warning", name, line, note))
        others = conv.other_fields
        given = _text(others.get(self.fields.id)) or _text(others.get("conversation_id"))
        conversation_id = given or f"{name}:{line}"
        if given is not None:
            self.check_duplicate(name, line, given)
        key = TRANSCRIPT_KEYS[fmt]
        for turn in conv.turns:
            row_fields = {**others, "conversation_id": conversation_id, "turn_index": turn.index,
                          "question": turn.question, "response": turn.response}
            # The whole conversation stays in the store (the TUI shows it); exports drop it.
            row_fields[key] = record[key] if isinstance(record, dict) else record
            self.batch.items.append(Item(
                seq=self.next_seq, question=turn.question, response=turn.response, fields=row_fields,
                item_id=given, source=_optional(others, self.fields.source),
                category=_optional(others, self.fields.category),
                sub_category=_optional(others, self.fields.sub_category),
                file=name, line=line, conversation_id=conversation_id, turn_index=turn.index,
            ))

    def skip(self, issue: InputIssue, record: Any) -> None:
        if self.strict:
            raise InputError(f"{issue} (stopped: --strict)")
        self.batch.issues.append(issue)
        self.batch.placeholders.append(Placeholder(
            seq=self.next_seq, file=issue.file, line=issue.line or 0, reason=issue.message,
            fields=dict(record) if isinstance(record, dict) else {}))

    def check_duplicate(self, name: str, line: int, item_id: str | None) -> None:
        if item_id is None:
            return
        if item_id in self.first_seen:
            self.batch.issues.append(InputIssue(
                "warning", name, line, f"duplicate id {item_id!r} (first at {self.first_seen[item_id]}); both kept"))
        else:
            self.first_seen[item_id] = f"{name}:{line}"


def read_records(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[InputIssue]]:
    """Every object record of one file (any supported format) with its line, and the bad ones."""
    records: list[tuple[int, dict[str, Any]]] = []
    issues: list[InputIssue] = []
    for line, record in _records(path, _read_bytes(path)):
        if isinstance(record, InputIssue):
            issues.append(record)
        elif not isinstance(record, dict):
            issues.append(InputIssue("skipped", str(path), line, f"expected a JSON object, got {type(record).__name__}"))
        else:
            records.append((line, record))
    return records, issues


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a BOM is accepted and dropped), or an error with a conversion hint."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        hint = _encoding_hint(path, data)
        raise InputError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x})", hint=hint) from None


def _encoding_hint(path: Path, data: bytes) -> str:
    """How to convert a non-UTF-8 file, naming the encoding it most likely is."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess = "UTF-16"
    else:
        try:
            data.decode("gb18030")
            guess = "GB18030"  # also covers GBK and GB2312, common for Chinese CSV exports
        except UnicodeDecodeError:
            guess = None
    if guess:
        return f"it looks like {guess}: convert it with `iconv -f {guess} -t UTF-8 {path} > utf8{path.suffix}`"
    return f"convert it to UTF-8 first, e.g. `iconv -f ENCODING -t UTF-8 {path} > utf8{path.suffix}`"


def _records(path: Path, data: bytes, fmt: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line, record) pairs of one file; a malformed record is yielded as an `InputIssue`."""
    fmt = fmt or SUFFIX_FORMATS.get(path.suffix.lower(), "jsonl")  # other suffixes: JSONL, like the authors' script
    if fmt == "parquet":
        yield from _parquet_records(path, data)
        return
    text = _decode(path, data)
    if fmt == "json":
        yield from _json_records(path, text)
    elif fmt == "csv":
        yield from _csv_records(path, text)
    else:
        yield from _jsonl_records(path, text)


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, InputIssue("skipped", str(path), number, f"invalid JSON: {exc.msg} (column {exc.colno})")


def _json_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _jsonl_records(path, text)  # JSONL saved as .json
            return
        raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        yield number, record


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield line, InputIssue(
                    "skipped", str(path), line, f"{len(row)} columns, the header has {len(header)}")
                continue
            yield line, dict(zip(header, row))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: unreadable CSV: {exc}") from None


def _parquet_records(path: Path, data: bytes) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow", hint=PARQUET_HINT) from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable Parquet: {exc}") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield number, {k: _jsonable(v) for k, v in record.items()}


def _jsonable(value: Any) -> Any:
    """Parquet values as JSON values (timestamps as ISO text, bytes as UTF-8 or base64)."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_mapping(name: str, records: list[tuple[int, Any]], fields: FieldMap) -> None:
    """A field missing from every record is a mapping mistake, not bad data: stop and say so."""
    if not records:
        return
    for role, option in (("question", "--question-field"), ("response", "--response-field")):
        wanted = getattr(fields, role)
        if not any(wanted in rec for _, rec in records):
            present = list(dict.fromkeys(k for _, rec in records[:50] for k in rec))
            raise InputError(
                f"{name}: no record has a {wanted!r} field (fields: {', '.join(map(str, present)) or 'none'})",
                hint=f"name the {role} field with {option}",
            )


def _text(value: Any) -> str | None:
    """A field value as text: strings as is, numbers written out; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _item(name: str, line: int, record: Any, fields: FieldMap, seq: int) -> tuple[InputIssue | None, Item | None]:
    """The item of one record, or the issue that makes it unusable."""
    if isinstance(record, InputIssue):
        return record, None
    if not isinstance(record, dict):
        return InputIssue("skipped", name, line, f"expected a JSON object, got {type(record).__name__}"), None
    texts: dict[str, str] = {}
    for role in ("question", "response"):
        key = getattr(fields, role)
        if key not in record:
            return InputIssue("skipped", name, line, f"missing field {key!r}"), None
        value = _text(record[key])
        if value is None:
            kind = "null" if record[key] is None else type(record[key]).__name__
            return InputIssue("skipped", name, line, f"field {key!r} is {kind}, not text"), None
        texts[role] = value

    return None, Item(
        seq=seq,
        question=texts["question"],
        response=texts["response"],
        fields=record,
        item_id=_optional(record, fields.id),
        source=_optional(record, fields.source),
        category=_optional(record, fields.category),
        sub_category=_optional(record, fields.sub_category),
        file=name,
        line=line,
    )


def _optional(record: dict[str, Any], key: str) -> str | None:
    """A field's text, or None when it is absent or empty."""
    return _text(record.get(key)) if record.get(key) not in (None, "") else None
