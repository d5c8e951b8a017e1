"""A run's identity and record: what makes two runs the same run, and what a run records.

    fp = fingerprint(batch, options, model_sha256(guard), guard.settings)
    run_id = record_run(store, guard, fingerprint=fp, inputs=[...], options={...}, total=n)

`record_run` is the one way a run is written to the store, for a batch run and for a
`serve --log-results` run alike: the model (name, path, quant, sha256), every engine
setting, the prompt template's and the tool's versions and the llama.cpp build whose
arithmetic made the scores. `resume_settings` gives the settings to continue a run with,
`describe_mismatch` says in words why a run cannot be resumed with other inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from libra_edge import __version__
from libra_edge.batch.fields import FieldMap
from libra_edge.batch.policy import ANALYSIS_MODES, AnalysisMode
from libra_edge.batch.readers import BatchInput
from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS
from libra_edge.engine.prompt import PROMPT_TEMPLATE_VERSION
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError
from libra_edge.models.ggufinfo import GGUFInfo
from libra_edge.store import RunRow, Store


@dataclass(frozen=True)
class BatchOptions:
    """How a run reads and checks its items; part of the run's identity (fingerprint)."""

    analysis: AnalysisMode = "all"
    """`all`: every item gets an analysis; `flagged`: only unsafe ones (a fast check
    first); `none`: verdict and score only (`--fast`)."""
    fields: FieldMap = field(default_factory=FieldMap)
    strict: bool = False
    format: str = "auto"
    """Record format: `auto` (detected per file), `pairs`, `messages`, `conversations`."""
    turns: str = "all"
    """Transcripts: judge `all` assistant turns or only the `last` of each conversation."""

    def __post_init__(self) -> None:
        if self.analysis not in ANALYSIS_MODES:
            raise LibraError(f"analysis: expected all, flagged or none, got {self.analysis!r}")
        if self.format not in INPUT_FORMATS:
            raise LibraError(f"format: expected {', '.join(INPUT_FORMATS)}, got {self.format!r}")
        if self.turns not in TURN_SELECTIONS:
            raise LibraError(f"turns: expected all or last, got {self.turns!r}")

    def to_json(self) -> dict[str, Any]:
        """Stored with the run (`RunRow.options`)."""
        return {"analysis": self.analysis, "fields": self.fields.to_json(), "strict": self.strict,
                "format": self.format, "turns": self.turns}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchOptions:
        """The options a stored run was made with (what `to_json` wrote; absent keys: the defaults)."""
        return cls(analysis=data.get("analysis", "all"), fields=FieldMap.from_json(data.get("fields")),
                   strict=bool(data.get("strict", False)), format=str(data.get("format", "auto")),
                   turns=str(data.get("turns", "all")))


class RecordedGuard(Protocol):
    """What a run records of the guard that judges it (a `Guard`, or a cluster's stand-in)."""

    @property
    def info(self) -> GGUFInfo:
        """The model file's header: `path`, `name`, `quant`."""

    @property
    def settings(self) -> EngineSettings:
        """The effective settings: their verdict fields make the run's fingerprint."""


def model_sha256(guard: RecordedGuard) -> str:
    """The model file's sha256: the guard's own (`Guard.model_sha256`, which its verdicts carry),
    else `models.digest.model_sha256` of its file, the one function every caller uses."""
    sha = getattr(guard, "model_sha256", None)
    if isinstance(sha, str):
        return sha
    from libra_edge.models.digest import model_sha256 as file_model_sha256

    return file_model_sha256(Path(guard.info.path))


def recorded_settings(settings: EngineSettings) -> dict[str, Any]:
    """What a run records about how it judged: every setting, the prompt template's and the
    tool's versions, and the llama.cpp build whose arithmetic made the scores (another SIMD
    path gives slightly other scores)."""
    from libra_edge.engine import llama

    return {**settings.to_dict(), "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "libra_edge_version": __version__, "build": llama.build_features()}


def record_run(store: Store, guard: RecordedGuard, *, fingerprint: str, inputs: list[str],
               options: Mapping[str, Any], total: int, skipped: int = 0,
               sha256: str | None = None) -> int:
    """Create the run in the store (status `running`), recording the guard's model and
    `recorded_settings`; returns its id. `sha256`: the model's, when the caller has it."""
    info = guard.info
    return store.create_run(
        fingerprint=fingerprint, inputs=inputs, model_path=str(info.path),
        model_name=info.name or Path(info.path).stem, model_sha256=sha256 or model_sha256(guard),
        quant=info.quant, settings=recorded_settings(guard.settings),
        prompt_template_version=PROMPT_TEMPLATE_VERSION, options=dict(options), total=total, skipped=skipped,
    )


def fingerprint(batch: BatchInput, options: BatchOptions, model_sha256: str, settings: EngineSettings) -> str:
    """Identity of a run: same inputs, model, verdict-relevant settings and mode = same run."""
    payload = {
        "inputs": batch.digest,
        "model": model_sha256,
        "settings": settings.verdict_key(),
        "prompt": PROMPT_TEMPLATE_VERSION,
        "analysis": options.analysis,
        "format": options.format,
        "turns": options.turns,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def resume_settings(run: RunRow, **speed: Any) -> EngineSettings:
    """The settings to load a Guard with to continue `run`: the CLI's and the TUI's resume.

    Verdict-relevant settings (context per sequence, threshold, max tokens, long-text
    mode, normalisation, GPU layers) are the run's own, so the resumed run has the same
    fingerprint; speed settings (`parallel`, `threads`, `mmap`, `verbose`) are the run's
    unless given here (None keeps the run's). Naming a verdict setting raises LibraError.
    """
    if run.options.get("kind") == "serve":
        raise LibraError(f"run {run.id} was recorded by `libra-edge serve`: it has no input files to resume",
                         hint=f"see it with `libra-edge report {run.id}`")
    verdict = sorted(set(speed) & set(EngineSettings.verdict_fields()))
    if verdict:
        raise LibraError(f"run {run.id}: {', '.join(verdict)} decide verdicts and cannot change on resume",
                         hint="start a new run to use other values")
    return EngineSettings.from_stored(run.settings).replace(**{k: v for k, v in speed.items() if v is not None})


def describe_mismatch(run: RunRow, batch: BatchInput, options: BatchOptions, sha: str,
                      settings: EngineSettings) -> str:
    """Why a run cannot be resumed with these inputs/model/settings, in words."""
    reasons = []
    if run.model_sha256 != sha:
        reasons.append(f"it used model {run.model_name} (sha256 {run.model_sha256[:12]}…), not this one")
    stored = BatchOptions.from_json(run.options)
    for name in ("analysis", "format", "turns"):
        if getattr(stored, name) != getattr(options, name):
            reasons.append(f"it used --{name} {getattr(stored, name)}, not {getattr(options, name)}")
    if stored.fields != options.fields:
        reasons.append("it used other field names")
    try:
        before = EngineSettings.from_stored(run.settings).verdict_key()
    except LibraError:
        before = {}
    for key, value in settings.verdict_key().items():
        if before.get(key) != value:
            reasons.append(f"its {key} was {before.get(key)!r}, now {value!r}")
    if run.options.get("inputs_digest") != batch.digest or not reasons:
        reasons.append("the input files changed since")
    return "; ".join(reasons)


def input_label(label: str) -> str:
    """How a run records one input: `-` for stdin, else the absolute path."""
    return label if label == "-" else str(Path(label).expanduser().resolve())


def input_labels(batch: BatchInput) -> list[str]:
    """The inputs a run records (`input_label` of each)."""
    return [input_label(label) for label in batch.labels]


__all__ = ["BatchOptions", "RecordedGuard", "describe_mismatch", "fingerprint", "input_label", "input_labels",
           "model_sha256", "record_run", "recorded_settings", "resume_settings"]
