"""The sha256 of a model file, from its manifest when installed, else hashed once and cached."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from libra_edge import paths


def _cache_path() -> Path:
    return paths.home() / "cache" / "sha256.json"


def model_sha256(path: Path) -> str:
    """sha256 hex digest of `path`: a manifest beside it, else a cache keyed by size and mtime."""
    from libra_edge.models.manifest import load_manifest, manifest_path_for

    path = Path(path).resolve()
    st = path.stat()
    manifest = manifest_path_for(path)
    if manifest.exists():
        try:
            m = load_manifest(manifest)
            if m.size == st.st_size:
                return m.sha256
        except Exception:  # a damaged manifest: hash the file instead
            pass
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
