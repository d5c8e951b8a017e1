"""The engine's settings, typed: one declaration says which fields change verdicts.

The run fingerprint (resume), the TUI's guard cache and the stored run record all read
this one class, so a new setting is declared once, with its effect on verdicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from libra_edge.errors import LibraError
from libra_edge.verdicts import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_THRESHOLD,
    MIN_CTX_PER_SEQ,
    THRESHOLD_RANGE,
    valid_threshold,
)

GpuLayers = int | str
LongMode = Literal["chunk", "truncate"]
LONG_MODES: tuple[str, ...] = ("chunk", "truncate")


class SettingError(LibraError):
    """A setting out of its range: `setting` names the field, `problem` says what is wrong.

    The message is `setting: problem`; a command line names its flag instead (`--ctx: ...`).
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def _setting(default: Any, *, verdict: bool, doc: str) -> Any:
    return field(default=default, metadata={"verdict": verdict, "doc": doc})


@dataclass(frozen=True)
class EngineSettings:
    """How a Guard is loaded and judges. `verdict=True` fields change scores or text.

    Fields marked `verdict=False` change speed or memory only: a stored run may resume
    with other values for them, and two Guards that differ only in them judge alike.
    """

    ctx_per_seq: int = _setting(4096, verdict=True, doc="context tokens of each sequence (decides truncation and windows)")
    threshold: float = _setting(DEFAULT_THRESHOLD, verdict=True, doc="P(unsafe) at or above which the verdict is 不安全")
    max_new_tokens: int = _setting(DEFAULT_MAX_NEW_TOKENS, verdict=True, doc="longest analysis, in tokens")
    long: str = _setting("chunk", verdict=True, doc="a response too long for the context: chunk (judge every window) or truncate (head and tail)")
    normalize: bool = _setting(True, verdict=True, doc="NFKC, drop zero-width/bidi controls, fold full-width ASCII in the judged text")
    gpu_layers: GpuLayers = _setting("auto", verdict=True, doc="layers offloaded to a GPU (GPU arithmetic differs from the CPU's)")
    parallel: int = _setting(1, verdict=False, doc="sequences decoded together (analyses generated at once)")
    threads: int | None = _setting(None, verdict=False, doc="CPU threads (default: physical cores)")
    mmap: bool = _setting(False, verdict=False, doc="map the weights instead of reading them")
    verbose: bool = _setting(False, verdict=False, doc="show llama.cpp's own logs")

    def __post_init__(self) -> None:
        if not valid_threshold(self.threshold):
            raise SettingError("threshold", f"{THRESHOLD_RANGE}, got {self.threshold!r}")
        if not 1 <= self.parallel <= 64:
            raise SettingError("parallel", f"must be between 1 and 64, got {self.parallel}")
        if self.ctx_per_seq < MIN_CTX_PER_SEQ:
            raise SettingError("ctx_per_seq", f"must be at least {MIN_CTX_PER_SEQ} tokens, got {self.ctx_per_seq}")
        if self.max_new_tokens < 1:
            raise SettingError("max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        if self.long not in LONG_MODES:
            raise SettingError("long", f"expected chunk or truncate, got {self.long!r}")
        if self.threads is not None and self.threads < 1:
            raise SettingError("threads", f"must be at least 1, got {self.threads}")

    # ----------------------------------------------------------------- declarations
    @classmethod
    def verdict_fields(cls) -> tuple[str, ...]:
        """Names of the fields that change verdicts, scores or analyses."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("verdict"))

    @classmethod
    def speed_fields(cls) -> tuple[str, ...]:
        """Names of the fields that change only speed or memory."""
        return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("verdict"))

    def verdict_key(self) -> dict[str, Any]:
        """The verdict-relevant fields and values (what a run's fingerprint holds)."""
        return {name: getattr(self, name) for name in self.verdict_fields()}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (stored with a run)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EngineSettings:
        """A copy with some fields changed (validated; unknown names raise LibraError)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise LibraError(f"unknown engine setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> EngineSettings:
        """The settings a stored run was made with, from its `settings_json`.

        Runs stored before this class existed held the whole context in `n_ctx` and each
        sequence's share in `n_ctx_seq` (or, before that, only `n_ctx` with one sequence).
        Unknown keys (diagnostics stored beside the settings) are ignored.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in stored.items() if k in names}
        if "ctx_per_seq" not in values:
            legacy = stored.get("n_ctx_seq") or stored.get("n_ctx")
            if isinstance(legacy, int):
                values["ctx_per_seq"] = legacy
        if "long" not in values and ("n_ctx" in stored or "n_ctx_seq" in stored):
            values["long"] = "truncate"  # runs before chunking cut long texts head+tail
        if "normalize" not in values and ("n_ctx" in stored or "n_ctx_seq" in stored):
            values["normalize"] = False  # and judged the text as given
        return cls(**values)
