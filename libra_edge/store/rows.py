"""The records the store hands out: a batch run, one checked item, a run's facets."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from libra_edge.errors import LibraError

RunStatus = Literal["running", "finished", "interrupted", "failed"]
ReviewDecision = Literal["confirm", "safe", "unsafe"]
ResultStatus = Literal["judged", "skipped", "failed"]
REVIEW_DECISIONS: tuple[str, ...] = ("confirm", "safe", "unsafe")


@dataclass(frozen=True)
class RunRow:
    """One batch run: what was checked, with which model and settings, and how far it got."""

    id: int
    fingerprint: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    status: RunStatus
    """`running` is reported as `interrupted` once the process that ran it is gone."""
    inputs: list[str]
    model_path: str
    model_name: str
    model_sha256: str
    quant: str | None
    settings: dict[str, Any]
    prompt_template_version: str
    options: dict[str, Any]
    """`analysis` (all|flagged|none), `fields` (question/response/id field names), `strict`,
    `format` (auto|pairs|messages|conversations), `turns` (all|last), `inputs_digest`."""
    total: int
    """Items read from the inputs (bad records excluded)."""
    skipped: int
    """Input records that could not be read (malformed line, missing field)."""
    done: int
    """Items with a stored result (a verdict or a failure; placeholders of skipped records not counted)."""
    flagged: int
    errors: int
    reviewed: int
    message: str | None
    truncated: int = 0
    """Items whose text was cut to fit the context."""
    chunked: int = 0
    """Items whose response was judged in more than one window."""
    host: str | None = None
    """The machine the run last ran on."""
    user: str | None = None
    """The operating-system user who started it (None for runs stored before it was kept)."""

    @property
    def remaining(self) -> int:
        """Items still to check before the run is complete."""
        return max(self.total - self.done, 0)


@dataclass(frozen=True)
class ResultRow:
    """One checked item: its input, the verdict (or the error) and the reviewer's decision."""

    id: int
    run_id: int
    seq: int
    """Position in the run's inputs (0-based): output order."""
    item_id: str | None
    source: str | None
    category: str | None
    sub_category: str | None
    question: str
    response: str
    fields: dict[str, Any]
    """Every field of the input record, unchanged."""
    input_file: str | None
    input_line: int | None
    label: str | None
    unsafe: bool | None
    score: float | None
    analysis: str | None
    raw: str | None
    truncated: bool
    timings: dict[str, Any] | None
    error: str | None
    checked_at: str
    review: ReviewDecision | None
    review_note: str | None
    reviewed_at: str | None
    reviewer: str | None = None
    """Who made the decision in force (`reviewed_at` is when)."""
    status: ResultStatus = "judged"
    """`judged` (a verdict), `failed` (the check raised; `error` says why, a rerun retries it)
    or `skipped` (a placeholder for an input record that yields no item; `error` says why)."""
    conversation_id: str | None = None
    """Transcripts: the conversation's `id`/`conversation_id` field, else `file:line`."""
    turn_index: int | None = None
    """Transcripts: position of the judged assistant message in the conversation (0-based)."""
    windows: int | None = None
    """Windows the response was judged in (1 unless chunked; None: stored before chunking)."""
    window: int | None = None
    """Index of the window whose score decided the verdict."""
    span_start: int | None = None
    """Character span of the deciding window in the response as given (start, inclusive)."""
    span_end: int | None = None
    normalized: bool | None = None
    """Normalisation (NFKC, invisible characters, full-width ASCII) changed the judged text."""
    analysis_cut: bool | None = None
    """The analysis stopped at the token cap."""
    refusal_review: bool | None = None
    """A reviewer's decision on the refusal mark: True refused, False not refused, None none."""
    refusal_reviewer: str | None = None
    refusal_reviewed_at: str | None = None

    @property
    def flagged(self) -> bool:
        """The model judged the response unsafe."""
        return bool(self.unsafe)


ReviewAction = Literal["decide", "note", "clear", "bulk-confirm", "undo", "import"]


@dataclass(frozen=True)
class NodeRow:
    """A machine (a Ray node, or the local one) that judged items of a run, and with what."""

    node: str
    """Ray's node id, or `local:HOST` for a run checked without a cluster."""
    host: str | None
    build: str
    """llama.cpp build features (`libra_edge.engine.llama.build_features()`): its arithmetic."""
    model_sha256: str
    first_seen: str
    items: int
    """Items of the run it judged (stored verdicts)."""


@dataclass(frozen=True)
class ReviewEvent:
    """One entry of an item's review history (append-only; `undo` entries restore an earlier state).

    `review`, `note` are the state the item had after the event; `reviewer` and
    `decided_at` say who acted and when (for `undo`: who undid it).
    """

    id: int
    result_id: int
    run_id: int
    seq: int
    review: ReviewDecision | None
    note: str | None
    reviewer: str | None
    decided_at: str
    action: ReviewAction


@dataclass(frozen=True)
class Facets:
    """Distinct values of a run's sources and categories, with item counts (for filter menus)."""

    sources: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)


def _process_gone(pid: int | None, host: str | None) -> bool:
    """True when the process that owns a `running` run is known to be dead."""
    if pid is None or host != socket.gethostname():
        return False  # another machine's run: we cannot tell, trust the record
    if os.name == "nt":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A killed child that its parent has not reaped yet still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def run_from_row(row: sqlite3.Row) -> RunRow:
    """A `RunRow` from a `runs` row joined with its result counts."""
    status = row["status"]
    if status == "running" and _process_gone(row["pid"], row["host"]):
        status = "interrupted"
    return RunRow(
        id=row["id"],
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        status=status,
        inputs=json.loads(row["inputs_json"]),
        model_path=row["model_path"],
        model_name=row["model_name"],
        model_sha256=row["model_sha256"],
        quant=row["quant"],
        settings=json.loads(row["settings_json"]),
        prompt_template_version=row["prompt_template_version"],
        options=json.loads(row["options_json"]),
        total=row["total"],
        skipped=row["skipped"],
        done=row["done"] or 0,
        flagged=row["flagged"] or 0,
        errors=row["errors"] or 0,
        reviewed=row["reviewed"] or 0,
        message=row["message"],
        truncated=row["truncated"] or 0,
        chunked=row["chunked"] or 0,
        host=row["host"],
        user=row["user"] if "user" in row.keys() else None,
    )


def result_from_row(row: sqlite3.Row) -> ResultRow:
    """A `ResultRow` from a `results` row."""
    unsafe = row["unsafe"]
    timings = row["timings_json"]
    return ResultRow(
        id=row["id"],
        run_id=row["run_id"],
        seq=row["seq"],
        item_id=row["item_id"],
        source=row["source"],
        category=row["category"],
        sub_category=row["sub_category"],
        question=row["question"],
        response=row["response"],
        fields=json.loads(row["input_json"]),
        input_file=row["input_file"],
        input_line=row["input_line"],
        label=row["label"],
        unsafe=None if unsafe is None else bool(unsafe),
        score=row["score"],
        analysis=row["analysis"],
        raw=row["raw"],
        truncated=bool(row["truncated"]),
        timings=json.loads(timings) if timings else None,
        error=row["error"],
        checked_at=row["checked_at"],
        review=row["review"],
        review_note=row["review_note"],
        reviewed_at=row["reviewed_at"],
        reviewer=row["reviewer"] if "reviewer" in row.keys() else None,
        status=row["status"],
        conversation_id=row["conversation_id"],
        turn_index=row["turn_index"],
        windows=row["windows"],
        window=row["window"],
        span_start=row["span_start"],
        span_end=row["span_end"],
        normalized=None if row["normalized"] is None else bool(row["normalized"]),
        analysis_cut=None if row["analysis_cut"] is None else bool(row["analysis_cut"]),
        **_refusal_review(row),
    )


def _refusal_review(row: sqlite3.Row) -> dict[str, Any]:
    """The refusal-review columns (schema 6); none on a row read from an older schema."""
    if "refusal_review" not in row.keys():
        return {}
    value = row["refusal_review"]
    return {"refusal_review": None if value is None else bool(value),
            "refusal_reviewer": row["refusal_reviewer"], "refusal_reviewed_at": row["refusal_reviewed_at"]}


@dataclass(frozen=True)
class RefusalEvent:
    """One entry of an item's refusal-review history (`refused` is the state after it)."""

    id: int
    result_id: int
    run_id: int
    seq: int
    refused: bool | None
    reviewer: str | None
    decided_at: str
    action: Literal["decide", "clear", "undo"]


def refusal_event_from_row(row: sqlite3.Row) -> RefusalEvent:
    """A `RefusalEvent` from a `refusal_history` row."""
    value = row["refused"]
    return RefusalEvent(id=row["id"], result_id=row["result_id"], run_id=row["run_id"], seq=row["seq"],
                        refused=None if value is None else bool(value), reviewer=row["reviewer"],
                        decided_at=row["decided_at"], action=row["action"])


def review_event_from_row(row: sqlite3.Row) -> ReviewEvent:
    """A `ReviewEvent` from a `review_history` row."""
    return ReviewEvent(
        id=row["id"], result_id=row["result_id"], run_id=row["run_id"], seq=row["seq"],
        review=row["review"], note=row["note"], reviewer=row["reviewer"],
        decided_at=row["decided_at"], action=row["action"],
    )


class _Decision(Protocol):
    @property
    def action(self) -> str: ...

    @property
    def reviewer(self) -> str | None: ...

    @property
    def decided_at(self) -> str | None: ...


_E = TypeVar("_E", bound=_Decision)


def decisions_in_force(events: list[_E]) -> list[_E]:
    """The decisions of a review history still in force, oldest first (each undo pops one).

    Verdict reviews and refusal reviews share this rule.
    """
    stack: list[_E] = []
    for event in events:
        if event.action == "undo":
            if stack:
                stack.pop()
        else:
            stack.append(event)
    return stack


def decision_before_undo(events: list[_E], *, seq: int, reviewer: str | None, what: str, latest: str) -> _E | None:
    """The decision an undo of the latest one restores (None: no decision), by the shared rules.

    There must be a decision in force to undo (LibraError: "no WHAT to undo"), and with
    `reviewer` named, a decision someone else made is not undone (LibraError naming who).
    """
    stack = decisions_in_force(events)
    if not stack:
        raise LibraError(f"item {seq + 1}: no {what} to undo")
    last = stack.pop()
    if reviewer is not None and last.reviewer not in (None, reviewer):
        raise LibraError(f"item {seq + 1}: the latest {latest} is {last.reviewer}'s ({last.decided_at}): not undone")
    return stack[-1] if stack else None
