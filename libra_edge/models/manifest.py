"""The manifest kept beside each installed GGUF: where it came from and its sha256."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from libra_edge.errors import ModelError

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1

# progress(done_bytes, total_bytes): called as a long file operation advances.
Progress = Callable[[int, int], None]

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    """Provenance and integrity of one installed model (written as `<name>.manifest.json`)."""

    name: str
    file: str
    sha256: str
    size: int
    architecture: str | None
    quant: str
    created: str
    libra_edge_version: str
    prompt_template_version: str
    origin: str  # "pull" or "import"
    source_repo: str | None = None
    source_revision: str | None = None
    source_commit: str | None = None
    imported_from: str | None = None
    context_length: int | None = None
    n_params: int | None = None
    # Quantized with an importance matrix: from which calibration set (its name and the
    # sha256 of its file), as the GGUF's metadata records it. None: without one.
    imatrix_dataset: str | None = None
    imatrix_calibration_sha256: str | None = None
    imatrix_entries: int | None = None
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        """The manifest as pretty JSON text."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


_REQUIRED = {"name": str, "file": str, "sha256": str, "size": int, "quant": str}


def manifest_path_for(gguf: Path) -> Path:
    """`dir/x.gguf` -> `dir/x.manifest.json`."""
    return gguf.with_name(gguf.stem + MANIFEST_SUFFIX)


def load_manifest(path: Path) -> Manifest:
    """Read a manifest; ModelError naming the file and field when it is malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: manifest missing") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = f"line {exc.lineno}: " if isinstance(exc, json.JSONDecodeError) else ""
        raise ModelError(f"{path}: {line}manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: manifest must be a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise ModelError(f"{path}: manifest field {key!r} missing or not a {kind.__name__}")
    sha = data["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError(f"{path}: manifest field 'sha256' is not a sha256 hex digest")
    known = {f.name for f in fields(Manifest)}
    defaults: dict[str, Any] = {
        "architecture": None, "created": "", "libra_edge_version": "",
        "prompt_template_version": "", "origin": "import",
    }
    # Unknown keys (a newer libra-edge wrote them) are dropped, not an error.
    return Manifest(**{**defaults, **{k: v for k, v in data.items() if k in known}})


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write atomically: a crash leaves the old manifest or the new one, never half of one."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def now_iso() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, reading it in chunks (reports progress as it goes)."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def copy_with_sha256(src: Path, dst: Path, progress: Progress | None = None) -> str:
    """Copy SRC to DST while hashing it in the same pass; returns the hex sha256."""
    digest = hashlib.sha256()
    total = src.stat().st_size
    done = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()
