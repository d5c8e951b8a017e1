"""GB/T 45654-2025 Appendix A as data: the 5 classes and 31 risks, the bank rules, and the category map.

The tables live in `appendix_a.json` (shipped with the package, versioned) so that a team
can read them, and a correction to the standard's figures is a data change, not a code
change. `risk_map.json` maps the category fields a bank already has (Libra-Test's
`category_name`/`sub_category_name`) to risk codes; a team copies it and passes its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from libra_edge.errors import InputError

APPENDIX_FILE = "appendix_a.json"
RISK_MAP_FILE = "risk_map.json"
RISK_FIELD = "risk"
"""A record's own risk code (e.g. `A.2.4`): it wins over the category map."""


@dataclass(frozen=True)
class Risk:
    """One of the 31 risks: code (A.1.1 ... A.5.2), class code and names."""

    code: str
    class_code: str
    zh: str
    en: str


@dataclass(frozen=True)
class RiskClass:
    """One of the 5 classes of Appendix A (A.1 ... A.5) with its risks."""

    code: str
    zh: str
    en: str
    risks: tuple[Risk, ...]


@dataclass(frozen=True)
class Appendix:
    """Appendix A and the bank rules, as read from the shipped data file."""

    version: int
    standard: str
    classes: tuple[RiskClass, ...]
    topics: tuple[tuple[str, str], ...]
    """The should-not-refuse bank's topics: (Chinese name, English name)."""
    rules: dict[str, dict[str, Any]]

    @property
    def risks(self) -> tuple[Risk, ...]:
        """All 31 risks in the standard's order."""
        return tuple(r for c in self.classes for r in c.risks)

    def risk(self, code: str) -> Risk | None:
        """The risk with this code, or None."""
        return next((r for r in self.risks if r.code == code), None)

    def risks_of(self, class_codes: list[str]) -> list[Risk]:
        """The risks of the named classes, in order."""
        return [r for c in self.classes if c.code in class_codes for r in c.risks]


@lru_cache(maxsize=1)
def appendix() -> Appendix:
    """The shipped Appendix A (read once)."""
    data = json.loads(resources.files("libra_edge.audit").joinpath(APPENDIX_FILE).read_text(encoding="utf-8"))
    classes = tuple(
        RiskClass(c["code"], c["zh"], c["en"], tuple(Risk(r["code"], c["code"], r["zh"], r["en"]) for r in c["risks"]))
        for c in data["classes"])
    topics = tuple((t["code"], t["en"]) for t in data["non_refusal_topics"])
    return Appendix(int(data["appendix_a_version"]), data["standard"], classes, topics, data["rules"])


@dataclass(frozen=True)
class RiskMap:
    """Category fields -> risk code, read from a mapping file (the shipped one or the user's)."""

    path: str
    version: int
    fields: tuple[str, str]
    table: dict[str, str | None]

    def code_for(self, record: dict[str, Any]) -> str | None:
        """The record's risk code: its own `risk` field, else `category/sub`, else `category`."""
        own = record.get(RISK_FIELD)
        if isinstance(own, str) and own.strip():
            return own.strip()
        category = _text(record.get(self.fields[0]))
        sub = _text(record.get(self.fields[1]))
        if category and sub and f"{category}/{sub}" in self.table:
            return self.table[f"{category}/{sub}"]
        if category:
            return self.table.get(category)
        return None

    def describe(self, record: dict[str, Any]) -> str:
        """What the map looked up for this record (for a note on an unmapped one)."""
        category = _text(record.get(self.fields[0])) or "(none)"
        sub = _text(record.get(self.fields[1]))
        return f"{category}/{sub}" if sub else category


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_risk_map(path: str | Path | None = None) -> RiskMap:
    """The category map: the shipped one, or the user's file (checked: every code must exist)."""
    if path is None:
        where = f"libra_edge/audit/{RISK_MAP_FILE}"
        text = resources.files("libra_edge.audit").joinpath(RISK_MAP_FILE).read_text(encoding="utf-8")
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: cannot read the risk map: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("map"), dict):
        raise InputError(f"{where}: a risk map is a JSON object with a \"map\" object (category -> risk code)")
    fields = data.get("fields", ["category_name", "sub_category_name"])
    if not (isinstance(fields, list) and len(fields) == 2 and all(isinstance(f, str) for f in fields)):
        raise InputError(f"{where}: \"fields\" must name two fields: the category and the sub-category")
    known = {r.code for r in appendix().risks}
    for key, code in data["map"].items():
        if code is not None and code not in known:
            raise InputError(f"{where}: \"{key}\" maps to {code!r}, "
                             "which is not a risk of Appendix A (A.1.1 ... A.5.2)")
    return RiskMap(where, int(data.get("risk_map_version", 1)), (fields[0], fields[1]), dict(data["map"]))
