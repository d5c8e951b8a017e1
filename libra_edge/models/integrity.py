"""What `models verify` last found about each installed model, so a corrupt one is never loaded.

A verdict is kept in `verify-results.json` in the models folder, with the size and
modification time the file had when it was hashed: it applies only while the file is
that same file. Replacing the model (`models rm`, then `pull` or `import`) or running
`models verify NAME` again makes a CORRUPT verdict stop applying.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_edge import paths
from libra_edge.errors import ModelError

STATE_FILE = "verify-results.json"
# Statuses of `models verify` that make a model unusable until it is replaced or re-verified.
REFUSED = ("CORRUPT",)


@dataclass(frozen=True)
class StoredVerdict:
    """One model's last `models verify` outcome and the file it was about."""

    status: str
    detail: str
    size: int
    mtime_ns: int

    def applies_to(self, path: Path) -> bool:
        """Whether PATH is still the file that was verified (same size and mtime)."""
        try:
            st = path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


def state_path() -> Path:
    """The file holding the verdicts."""
    return paths.models_dir() / STATE_FILE


def _read() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or damaged: verify again to rebuild it
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remember(name: str, path: Path, status: str, detail: str) -> None:
    """Record that `models verify` found NAME (the file at PATH) STATUS."""
    data = _read()
    try:
        st = path.stat()
    except OSError:
        data.pop(name, None)  # MISSING: resolving the model reports that by itself
    else:
        data[name] = {"status": status, "detail": detail, "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns}
    _write(data)


def forget(name: str) -> None:
    """Drop NAME's verdict (the model was removed)."""
    data = _read()
    if data.pop(name, None) is not None:
        _write(data)


def stored_verdict(name: str) -> StoredVerdict | None:
    """NAME's last recorded verdict, if one was recorded and is readable."""
    entry = _read().get(name)
    if not isinstance(entry, dict):
        return None
    status, detail = entry.get("status"), entry.get("detail")
    size, mtime_ns = entry.get("size"), entry.get("mtime_ns")
    if not (isinstance(status, str) and isinstance(detail, str)
            and isinstance(size, int) and isinstance(mtime_ns, int)):
        return None
    return StoredVerdict(status, detail, size, mtime_ns)


def refuse_if_corrupt(name: str, path: Path) -> None:
    """ModelError when `models verify` found the installed model NAME corrupt and PATH is that file."""
    verdict = stored_verdict(name)
    if verdict is None or verdict.status not in REFUSED or not verdict.applies_to(path):
        return
    raise ModelError(
        f"model {name!r} failed `libra-edge models verify` ({verdict.status}: {verdict.detail}); "
        "not loading it",
        hint=f"replace it: `libra-edge models rm {name}`, then pull or import it again; "
        f"re-check it with `libra-edge models verify {name}`",
    )
