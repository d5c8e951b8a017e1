"""Reproducible random samples of test banks or conversation logs (`libra-edge audit sample`).

How a record is drawn, so that anyone can redraw the same sample (with this tool or without):
each record gets the key sha256("libra-edge-sample v1|<seed>|<sha256 of its file>|<index in
that file>"), and a stratum's sample is its records with the smallest keys. The sample
depends on the seed and the files' contents only: not on file names, their order, the
machine or the Python version. The records are written in input order.

Stratified (`by=FIELD`): N is split over the field's values in proportion to their sizes
(largest remainders get the rounding), or equally (`allocation="equal"`, a stratum smaller
than its share gives all it has and the rest is shared among the others).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from libra_edge import __version__
from libra_edge.errors import InputError, LibraError

SAMPLE_VERSION = 1
NO_VALUE = "(none)"
Allocation = Literal["proportional", "equal"]
ALLOCATIONS: tuple[str, ...] = ("proportional", "equal")


@dataclass(frozen=True)
class Record:
    """One input record with where it came from and its draw key."""

    file_index: int
    index: int
    """0-based position among the file's object records."""
    line: int
    data: dict[str, Any]
    key: str


@dataclass
class Stratum:
    """One value of the stratifying field: how many records it has and how many were drawn."""

    value: str
    population: int
    allocated: int = 0
    drawn: int = 0
    note: str | None = None


@dataclass
class InputFile:
    """An input file as it was read: path, content digest and object records."""

    path: str
    sha256: str
    records: int
    skipped: int


@dataclass
class Sample:
    """A drawn sample and everything needed to redraw it (written as the sidecar)."""

    seed: str
    n_requested: int
    by: str | None
    allocation: str
    inputs: list[InputFile]
    strata: list[Stratum]
    records: list[dict[str, Any]] = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def n_drawn(self) -> int:
        """Records in the sample."""
        return len(self.records)

    def provenance(self, output: Path | None = None, output_sha256: str | None = None) -> dict[str, Any]:
        """The sidecar's content: method, seed, inputs with digests, strata, notes."""
        return {
            "libra_edge_sample": SAMPLE_VERSION,
            "tool": f"libra-edge {__version__}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "method": "per record sha256('libra-edge-sample v1|' + seed + '|' + file sha256 + '|' + index); "
                      "smallest keys per stratum; records written in input order",
            "seed": self.seed,
            "n_requested": self.n_requested,
            "n_drawn": self.n_drawn,
            "by": self.by,
            "allocation": self.allocation if self.by else None,
            "inputs": [asdict(i) for i in self.inputs],
            "strata": [asdict(s) for s in self.strata],
            "notes": self.notes,
            "output": None if output is None else {"path": str(output), "sha256": output_sha256},
        }


def draw_key(seed: str, file_sha256: str, index: int) -> str:
    """The key that orders a record for drawing (smallest first)."""
    return hashlib.sha256(f"libra-edge-sample v{SAMPLE_VERSION}|{seed}|{file_sha256}|{index}".encode()).hexdigest()


def new_seed() -> str:
    """A fresh random seed (recorded with the sample so it can be redrawn)."""
    return str(secrets.randbelow(10**9))


def read_population(inputs: Sequence[str | Path], seed: str) -> tuple[list[InputFile], list[Record]]:
    """Every object record of the inputs (files or folders), keyed for drawing."""
    from libra_edge.batch.readers import expand_inputs, read_records

    files: list[InputFile] = []
    records: list[Record] = []
    for file_index, path in enumerate(expand_inputs(list(inputs))):
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        rows, issues = read_records(path)
        files.append(InputFile(str(path), digest, len(rows), sum(i.kind == "skipped" for i in issues)))
        for index, (line, data) in enumerate(rows):
            records.append(Record(file_index, index, line, data, draw_key(seed, digest, index)))
    return files, records


def stratum_value(record: dict[str, Any], by: str) -> str:
    """The stratum of a record: its field's value as text, or "(none)" when absent or empty."""
    value = record.get(by)
    if value is None or value == "":
        return NO_VALUE
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def allocate(sizes: dict[str, int], n: int, allocation: str) -> dict[str, int]:
    """How many records each stratum gives: proportional (largest remainders) or equal (capped
    at the stratum's size, the shortfall shared among the rest). Sums to min(n, total)."""
    total = sum(sizes.values())
    n = min(n, total)
    if allocation == "proportional":
        exact = {k: n * s / total for k, s in sizes.items()} if total else {}
        alloc = {k: int(v) for k, v in exact.items()}
        # Ties broken by the stratum's name, so the split is the same everywhere.
        order = sorted(exact, key=lambda k: (-(exact[k] - alloc[k]), k))
        for k in order[: n - sum(alloc.values())]:
            alloc[k] += 1
        return alloc
    if allocation != "equal":
        raise LibraError(f"allocation: expected proportional or equal, got {allocation!r}")
    alloc = dict.fromkeys(sizes, 0)
    remaining = n
    open_ = sorted(k for k, s in sizes.items() if s > 0)
    while remaining > 0 and open_:
        share, extra = divmod(remaining, len(open_))
        for i, k in enumerate(open_):
            alloc[k] += min(share + (i < extra), sizes[k] - alloc[k])
        remaining = n - sum(alloc.values())
        open_ = [k for k in open_ if alloc[k] < sizes[k]]
    return alloc


def draw(inputs: Sequence[str | Path], n: int, *, seed: str | int | None = None, by: str | None = None,
         allocation: str = "proportional") -> Sample:
    """Draw a reproducible sample of `n` records (stratified by field `by` when given)."""
    if n < 1:
        raise LibraError(f"-n: the sample size must be at least 1, got {n}")
    if allocation not in ALLOCATIONS:
        raise LibraError(f"--allocation: expected proportional or equal, got {allocation!r}")
    seed_text = new_seed() if seed is None else str(seed)
    files, population = read_population(inputs, seed_text)
    if not population:
        raise InputError("no records to sample: the inputs hold no JSON objects or rows")
    groups: dict[str, list[Record]] = {}
    for record in population:
        groups.setdefault(stratum_value(record.data, by) if by else "(all)", []).append(record)
    notes: list[str] = []
    if by and set(groups) == {NO_VALUE}:
        raise InputError(f"--by {by}: no record has a field {by!r}",
                         hint=f"fields of the first record: {', '.join(list(population[0].data)[:12])}")
    sizes = {k: len(v) for k, v in groups.items()}
    alloc = allocate(sizes, n, allocation)
    if n > len(population):
        notes.append(f"asked for {n:,} records but the inputs hold {len(population):,}: all of them are taken")
    chosen: list[Record] = []
    strata: list[Stratum] = []
    equal_share = -(-min(n, len(population)) // len(groups))  # ceil: a stratum's equal share
    for value in sorted(groups):
        members = groups[value]
        take = alloc[value]
        stratum = Stratum(value, len(members), take, take)
        if by and allocation == "equal" and len(members) < equal_share:
            stratum.note = f"stratum has only {len(members):,} records, fewer than its equal share: all taken"
            notes.append(f"{by}={value}: {stratum.note}; the shortfall is shared among the other strata")
        chosen.extend(sorted(members, key=lambda r: r.key)[:take])
        strata.append(stratum)
    chosen.sort(key=lambda r: (r.file_index, r.index))
    return Sample(seed_text, n, by, allocation, files, strata, [r.data for r in chosen], notes)


def sidecar_path(output: Path) -> Path:
    """Where a sample's provenance is written: `OUT.meta.json` beside the sample."""
    return output.with_name(output.name + ".meta.json")


def write_sample(sample: Sample, output: Path) -> Path:
    """Write the sample as JSONL (records unchanged, input order) and its sidecar; returns the sidecar."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample.records)
    data = text.encode("utf-8")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(data)
        side = sidecar_path(output)
        meta = sample.provenance(output, hashlib.sha256(data).hexdigest())
        side.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise LibraError(f"{output}: cannot write the sample: {exc.strerror or exc}") from None
    return side
