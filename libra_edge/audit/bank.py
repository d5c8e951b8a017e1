"""Check a test bank or keyword library against GB/T 45654-2025's size and coverage rules (`audit bank`).

A bank is read like any batch input (JSON, JSONL, CSV, Parquet, folders). Each question
counts once: duplicates (same text after the guard's normalisation, ignoring spaces and
punctuation) and near-empty questions (fewer than `MIN_QUESTION_CHARS` letters or digits)
are named `file:line` and not counted, and their presence fails the bank's own rule, as
does a record without a question. A record's risk comes from its `risk` field or the
category map (`appendix.RiskMap`); the should-not-refuse bank's topic from its `topic` field.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_edge.audit.appendix import Appendix, RiskMap, appendix
from libra_edge.audit.keywords import KeywordLibrary, fold

KINDS = ("content", "should-refuse", "should-not-refuse")
MIN_QUESTION_CHARS = 4
"""Fewer letters or digits than this (Chinese characters count one each) is a near-empty question."""
TOPIC_FIELD = "topic"


@dataclass(frozen=True)
class CoverageRow:
    """One line of the coverage table: what is counted, how many are required and present."""

    code: str
    name: str
    required: int
    present: int

    @property
    def passed(self) -> bool:
        """Enough items for this rule."""
        return self.present >= self.required


@dataclass
class BankCheck:
    """The outcome of checking a bank (or keyword library): the table, the problems, notes."""

    kind: str
    clause: str
    total: CoverageRow
    rows: list[CoverageRow]
    problems: list[str] = field(default_factory=list)
    """Duplicates, near-empty questions, records without a question, unknown codes: `file:line: ...`."""
    notes: list[str] = field(default_factory=list)

    @property
    def failed_rules(self) -> list[str]:
        """Each rule that fails, in words."""
        failed = [f"{r.code} {r.name}: {r.present:,} < {r.required:,}"
                  for r in [self.total, *self.rows] if not r.passed]
        if self.problems:
            failed.append(f"{len(self.problems):,} problem record(s): duplicates, near-empty or unusable")
        return failed

    @property
    def passed(self) -> bool:
        """Every rule holds."""
        return not self.failed_rules


def meaningful_chars(text: str) -> int:
    """Letters and digits in the text (what makes a question more than punctuation)."""
    return sum(unicodedata.category(ch)[0] in "LN" for ch in text)


def question_key(text: str) -> str:
    """The form two questions are compared in: normalised, case-folded, letters and digits only."""
    return "".join(ch for ch in fold(text) if unicodedata.category(ch)[0] in "LN")


def _records(inputs: Sequence[str | Path]) -> tuple[list[tuple[str, int, dict[str, Any]]], list[str]]:
    from libra_edge.batch.readers import expand_inputs, read_records

    out: list[tuple[str, int, dict[str, Any]]] = []
    problems: list[str] = []
    for path in expand_inputs(list(inputs)):
        rows, issues = read_records(path)
        problems.extend(str(i) for i in issues if i.kind == "skipped")
        out.extend((str(path), line, data) for line, data in rows)
    return out, problems


def check_bank(inputs: Sequence[str | Path], kind: str, risk_map: RiskMap, *, question_field: str = "question",
               topic_field: str = TOPIC_FIELD, data: Appendix | None = None) -> BankCheck:
    """Check a bank of kind `content`, `should-refuse` or `should-not-refuse` against its rules."""
    data = data or appendix()
    rule = data.rules[kind]
    records, problems = _records(inputs)
    first_at: dict[str, str] = {}
    counted: list[dict[str, Any]] = []
    for path, line, record in records:
        where = f"{path}:{line}"
        question = record.get(question_field)
        if not isinstance(question, str):
            problems.append(f"{where}: no {question_field!r} text")
            continue
        if meaningful_chars(question) < MIN_QUESTION_CHARS:
            problems.append(f"{where}: near-empty question {question!r}")
            continue
        key = question_key(question)
        if key in first_at:
            problems.append(f"{where}: duplicate of {first_at[key]}")
            continue
        first_at[key] = where
        counted.append(record)
    notes: list[str] = []
    if kind == "should-not-refuse":
        rows, notes = _topic_rows(counted, data, int(rule["min_per_topic"]), topic_field)
    else:
        rows, notes, bad = _risk_rows(counted, data, rule, risk_map)
        problems.extend(bad)
    total = CoverageRow("total", "questions (distinct, non-empty)", int(rule["min_total"]), len(counted))
    return BankCheck(kind, str(rule["clause"]), total, rows, problems, notes)


def _risk_rows(records: list[dict[str, Any]], data: Appendix, rule: dict[str, Any],
               risk_map: RiskMap) -> tuple[list[CoverageRow], list[str], list[str]]:
    known = {r.code for r in data.risks}
    counts: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for record in records:
        code = risk_map.code_for(record)
        if code is None:
            unmapped[risk_map.describe(record)] += 1
        elif code not in known:
            unknown[code] += 1
        else:
            counts[code] += 1
    minimum: dict[str, int] = rule["min_per_risk"]
    rows = [CoverageRow(r.code, r.zh, int(minimum[r.class_code]), counts[r.code])
            for r in data.risks_of(rule["classes"])]
    notes = []
    if unmapped:
        listed = ", ".join(f"{k} ({v:,})" for k, v in unmapped.most_common(8))
        notes.append(f"{sum(unmapped.values()):,} question(s) map to no risk (counted in the total only): {listed}; "
                     f"add their categories to a copy of the risk map ({risk_map.path}) and pass --risk-map")
    outside = sum(v for k, v in counts.items() if k not in {r.code for r in data.risks_of(rule["classes"])})
    if outside:
        notes.append(f"{outside:,} question(s) are on risks outside {', '.join(rule['classes'])} "
                     "(counted in the total only)")
    bad = [f"risk code {k!r} ({v:,} question(s)) is not a risk of Appendix A" for k, v in sorted(unknown.items())]
    return rows, notes, bad


def _topic_rows(records: list[dict[str, Any]], data: Appendix, minimum: int,
                topic_field: str) -> tuple[list[CoverageRow], list[str]]:
    counts = Counter(str(r.get(topic_field, "")).strip() for r in records)
    rows = [CoverageRow(zh, en, minimum, counts[zh]) for zh, en in data.topics]
    others = {k: v for k, v in counts.items() if k not in {zh for zh, _ in data.topics}}
    notes = []
    if others:
        listed = ", ".join(f"{k or '(none)'} ({v:,})" for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:8])
        notes.append(f"{sum(others.values()):,} question(s) have a {topic_field!r} outside the standard's topics "
                     f"(counted in the total only): {listed}")
    return rows, notes


def check_keywords(library: KeywordLibrary, data: Appendix | None = None) -> BankCheck:
    """Check a keyword library's size and per-risk coverage of A.1 and A.2."""
    data = data or appendix()
    rule = data.rules["keywords"]
    counts = Counter(k.risk for k in library.keywords)
    minimum: dict[str, int] = rule["min_per_risk"]
    rows = [CoverageRow(r.code, r.zh, int(minimum[r.class_code]), counts[r.code])
            for r in data.risks_of(rule["classes"])]
    total = CoverageRow("total", "keywords (distinct)", int(rule["min_total"]), len(library.keywords))
    notes = []
    if counts[None]:
        notes.append(f"{counts[None]:,} keyword(s) carry no risk code (counted in the total only)")
    return BankCheck("keywords", str(rule["clause"]), total, rows, list(library.problems), notes)
