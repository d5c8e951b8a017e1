"""Where `batch -o` (and `report --export`) write: the target checked before any work, the
finished run's rows, and an unfinished run's rows so far (OUT.partial, never OUT itself)."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from libra_edge.cli.common import destination_folder
from libra_edge.errors import InputError, LibraError

if TYPE_CHECKING:
    from libra_edge.store import Store

OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv"}


@dataclass(frozen=True)
class OutputTarget:
    """Where `-o` writes: a validated file path (None: stdout) and its format."""

    path: Path | None
    format: str
    bom: bool

    @property
    def partial(self) -> Path | None:
        """Where an incomplete run's rows go (never the final name)."""
        return None if self.path is None else self.path.with_name(self.path.name + ".partial")


def output_target(raw: str | None, *, bom: bool = True, mkdir: bool = False) -> OutputTarget | None:
    """`-o` checked before any work: a known suffix (else exit 2), and an existing folder this
    process can write in (else exit 4; `mkdir` creates a missing one: `destination_folder`)."""
    if raw is None:
        return None
    if raw == "-":
        return OutputTarget(None, "jsonl", bom)
    path = Path(raw).expanduser()
    fmt = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        suffix = f"{path.suffix!r}" if path.suffix else "no suffix"
        raise LibraError(f"-o {raw}: unknown output format ({suffix}); use .jsonl, .json or .csv, or - for stdout")
    if path.is_dir():
        raise InputError(f"-o {raw}: is a folder; name a file in it, e.g. {path / 'results.jsonl'}")
    folder = destination_folder(path.parent, mkdir=mkdir, name=f"-o {raw}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".libra-edge-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"-o {raw}: cannot write in {folder}: {exc.strerror or exc}") from None
    return OutputTarget(path, fmt, bom)


def write_output(store: Store, run_id: int, output: OutputTarget) -> None:
    """A finished run's rows to OUT (or stdout); OUT.partial, superseded, is removed."""
    if output.path is None:
        store.export(run_id, sys.stdout, format=output.format, bom=output.bom)
        sys.stdout.flush()
        return
    n = store.export(run_id, output.path, format=output.format, bom=output.bom)
    partial = output.partial
    if partial is not None and partial.exists():
        partial.unlink()  # superseded by the complete file
    print(f"  wrote {n} rows to {output.path}", file=sys.stderr)


def write_partial(store: Store, run_id: int, output: OutputTarget | None) -> None:
    """What an unfinished run has so far, to OUT.partial (never to OUT itself); best effort."""
    if output is None or output.partial is None:
        return
    try:
        n = store.export(run_id, output.partial, format=output.format, bom=output.bom)
    except LibraError as exc:
        print(f"libra-edge: could not write {output.partial}: {exc}", file=sys.stderr)
        return
    except OSError as exc:
        print(f"libra-edge: could not write {output.partial}: {exc.strerror or exc}", file=sys.stderr)
        return
    print(f"  wrote {n} rows so far to {output.partial} (incomplete)", file=sys.stderr)
