"""The sha256 of a file, hashed once and cached; of a model file, from its manifest when installed.

The one hash of every file libra-edge names by digest: a run's model (its fingerprint and
provenance, `Guard.model_sha256`, each cluster actor's check of its own copy), a `serve`
run's, and the inputs a report lists. One cache, keyed by path, size and mtime, so a file
is read once until it changes, whoever asks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from libra_edge import paths


def _cache_path() -> Path:
    return paths.home() / "cache" / "sha256.json"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of the file at `path`, from the cache while its size and mtime hold."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), str):
        return str(cache[key])
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = value
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only data folder: hash again next time
    return value


def model_sha256(path: Path) -> str:
    """sha256 of a model file: its installed manifest's (when the size agrees), else `file_sha256`."""
    from libra_edge.models.manifest import load_manifest, manifest_path_for

    path = Path(path).resolve()
    manifest = manifest_path_for(path)
    if manifest.exists():
        try:
            m = load_manifest(manifest)
            if m.size == path.stat().st_size:
                return m.sha256
        except Exception:  # a damaged manifest: hash the file instead
            pass
    return file_sha256(path)
