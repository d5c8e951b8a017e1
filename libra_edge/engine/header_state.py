"""The header-state cache: a model's header block and frame drafts, kept between processes.

A fresh Guard evaluates the prompt's header block (~150 tokens, the same for every pair)
and reads the model's own JSON frame for a fixed pair (`Checker.calibrate`, engine/checker.py). Both are a
function of the model file, the llama.cpp build and a few settings alone, so the first
process saves them in the data folder (`<home>/state/<key>.bin`) and the next one puts
the header's KV state back with llama.cpp's sequence-state API instead of computing it:
the same bytes the evaluation would write, so every score stays bit-identical.

The file is never trusted: its header names the format, the key it was made for and the
sha256 of the rest, and a file whose magic, version, key, length or digest does not match
is ignored and rewritten (atomically: a reader never sees half a file). A data folder that
cannot be written only costs the next process its calibration again; a check never fails
on the cache. `LIBRA_EDGE_NO_STATE_CACHE=1` turns it off (benchmarks of the cold path).

Layout (little-endian): 8-byte magic, u32 format version, u32 meta length, u64 state
length, 32-byte sha256 of meta + state; then the meta (UTF-8 JSON: the key, the header
block's tokens, the two frame drafts) and the state (llama.cpp's bytes for sequence 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libra_edge import paths

MAGIC = b"LIBRAHST"
FORMAT_VERSION = 1
DISABLE_ENV = "LIBRA_EDGE_NO_STATE_CACHE"
_FIXED = struct.Struct("<8sIIQ32s")
# Far above any header's state (a 14B model's 200-token header is ~40 MiB): a size field
# beyond it is damage, not a reason to allocate.
MAX_STATE_BYTES = 1 << 30
MAX_META_BYTES = 1 << 20


class Rejected(Exception):
    """A cache file that must not be used (the message says why, for `--verbose`)."""


@dataclass(frozen=True)
class HeaderState:
    """What a Guard needs to treat its header block as evaluated: tokens, drafts, KV bytes."""

    header: tuple[int, ...]
    opening_draft: tuple[int, ...]
    middle_draft: tuple[int, ...]
    state: bytes


def enabled() -> bool:
    """False when `LIBRA_EDGE_NO_STATE_CACHE` is set to anything but empty or 0."""
    return os.environ.get(DISABLE_ENV, "").strip() in ("", "0")


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of the key's canonical JSON (the file's name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def path_for(key: dict[str, Any]) -> Path:
    """Where the state for `key` lives in the data folder."""
    return paths.state_dir() / f"{key_digest(key)[:32]}.bin"


def encode(key: dict[str, Any], hs: HeaderState) -> bytes:
    """The file's bytes for `hs`, made under `key`."""
    meta = json.dumps({"key": key, "header": list(hs.header), "opening_draft": list(hs.opening_draft),
                       "middle_draft": list(hs.middle_draft)}, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(meta + hs.state).digest()
    return _FIXED.pack(MAGIC, FORMAT_VERSION, len(meta), len(hs.state), digest) + meta + hs.state


def _tokens(meta: dict[str, Any], name: str, n_vocab: int) -> tuple[int, ...]:
    value = meta.get(name)
    if not isinstance(value, list) or not all(isinstance(t, int) and 0 <= t < n_vocab for t in value):
        raise Rejected(f"its {name} is not a list of token ids")
    return tuple(value)


def decode(raw: bytes, key: dict[str, Any], *, n_vocab: int) -> HeaderState:
    """The state in `raw`, or Rejected when it is not exactly a file made under `key`."""
    if len(raw) < _FIXED.size:
        raise Rejected(f"it is truncated ({len(raw)} bytes)")
    magic, version, n_meta, n_state, digest = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise Rejected("it is not a libra-edge header-state file")
    if version != FORMAT_VERSION:
        raise Rejected(f"it has format version {version}, this libra-edge writes {FORMAT_VERSION}")
    if n_meta > MAX_META_BYTES or n_state > MAX_STATE_BYTES:
        raise Rejected("its header is damaged")
    if len(raw) != _FIXED.size + n_meta + n_state:
        kind = "truncated" if len(raw) < _FIXED.size + n_meta + n_state else "longer than its header says"
        raise Rejected(f"it is {kind} ({len(raw)} bytes, header says {_FIXED.size + n_meta + n_state})")
    body = raw[_FIXED.size:]
    if hashlib.sha256(body).digest() != digest:
        raise Rejected("its sha256 does not match its contents")
    try:
        meta = json.loads(body[:n_meta].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Rejected("its metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise Rejected("its metadata is not an object")
    if meta.get("key") != key:
        found = meta.get("key")
        theirs: dict[str, Any] = found if isinstance(found, dict) else {}
        differ = sorted(k for k in set(key) | set(theirs) if key.get(k) != theirs.get(k))
        raise Rejected("it was made for another " + ", ".join(differ or ["key"]))
    state = bytes(body[n_meta:])
    if not state:
        raise Rejected("it holds no state")
    return HeaderState(
        header=_tokens(meta, "header", n_vocab),
        opening_draft=_tokens(meta, "opening_draft", n_vocab),
        middle_draft=_tokens(meta, "middle_draft", n_vocab),
        state=state,
    )


def read(path: Path, key: dict[str, Any], *, n_vocab: int) -> HeaderState:
    """The state saved at `path` for `key`; Rejected (or FileNotFoundError) when there is none to use."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None  # no cache yet: not worth a line
    except OSError as exc:
        raise Rejected(f"it cannot be read ({exc.strerror or exc})") from None
    return decode(raw, key, n_vocab=n_vocab)


def write(path: Path, key: dict[str, Any], hs: HeaderState) -> None:
    """Save `hs` at `path`, atomically (a temporary file beside it, then a rename). Raises OSError."""
    data = encode(key, hs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
