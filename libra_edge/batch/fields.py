"""Which input fields hold the question, the response, the id and the grouping labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FieldMap:
    """Input field names; the defaults are Libra-Test's (`question`, `response`, `id`, ...)."""

    question: str = "question"
    response: str = "response"
    id: str = "id"
    source: str = "source"
    category: str = "category_name"
    sub_category: str = "sub_category_name"

    def to_json(self) -> dict[str, str]:
        """The mapping as a JSON-ready dict (stored with the run)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FieldMap:
        """The mapping stored with a run (unknown keys ignored, missing ones defaulted)."""
        known = {k: str(v) for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)
