"""What the TUI shares between screens: the open store, the active model and loaded guards.

Screens never load a model themselves: workers lease a `Guard` from the session, so a
check and a batch run on the same model share one llama.cpp context (the engine's lock
serializes them), and a guard that was replaced by another model is closed only once
the last worker using it lets go.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from libra_edge.engine import Guard
from libra_edge.errors import LibraError, ModelError
from libra_edge.models import registry, resolve_model
from libra_edge.store import Store


@dataclass(frozen=True)
class GuardSettings:
    """The engine options a guard is loaded with (the verdict-relevant ones key the cache)."""

    n_ctx: int = 4096
    threshold: float = 0.5
    max_new_tokens: int = 256
    threads: int | None = None
    gpu_layers: int | str = "auto"
    verbose: bool = False


@dataclass
class ActiveBatch:
    """The batch run this TUI is checking: its cancel switch and a flag set when it stops."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    run_id: int | None = None


def model_label(spec: str | None) -> str:
    """A short name for a model spec: the installed name, or a GGUF file's stem."""
    if not spec:
        return "default model"
    path = Path(spec)
    if path.suffix == ".gguf" or "/" in spec or "\\" in spec:
        return path.stem
    return spec


class Session:
    """The store, the active model spec and the guards loaded so far (thread-safe)."""

    def __init__(self, store: Store, *, model: str | None, settings: GuardSettings) -> None:
        self.store = store
        self.settings = settings
        self._model = model
        self._lock = threading.Lock()
        # key -> [guard, leases]; the current model's guard stays loaded between checks.
        self._guards: dict[tuple[Any, ...], list[Any]] = {}
        self._closed = False
        self.batch: ActiveBatch | None = None
        """Set while a batch run launched from the TUI is being checked."""

    # -- the active model ------------------------------------------------------------
    @property
    def model(self) -> str | None:
        """The model checks use: a GGUF path, an installed name, or None (the default)."""
        return self._model

    def set_model(self, spec: str | None) -> None:
        """Use another model from now on; idle guards of the old one are closed."""
        with self._lock:
            self._model = spec
        self._drop_idle()

    def resolved_model(self) -> Path:
        """The GGUF file of the active model (ModelError when none can be chosen)."""
        return resolve_model(self._model)

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, spec) of every installed model, plus the active one when it is a file."""
        choices = [(m.name, m.name) for m in registry.installed_models()]
        specs = {spec for _, spec in choices}
        if self._model and self._model not in specs:
            choices.insert(0, (model_label(self._model), self._model))
        return choices

    # -- guards ------------------------------------------------------------------------
    @contextmanager
    def lease(self, model: str | Path | None = None, **overrides: Any) -> Iterator[Guard]:
        """A loaded guard for `model` (default: the active model) with optional settings overrides.

        Loads on first use (slow: call from a worker thread). The guard stays cached
        while it belongs to the active model; others are closed when released.
        """
        spec = str(model) if model is not None else self._model
        settings = replace(self.settings, **overrides)
        path = resolve_model(spec)
        key = (str(path.resolve()), settings.n_ctx, settings.threshold, settings.max_new_tokens)
        with self._lock:
            if self._closed:
                raise LibraError("the application is closing")
            entry = self._guards.get(key)
            if entry is None:
                # Loading under the lock: a check and a batch asking at once load it once.
                guard = Guard.load(
                    path, n_ctx=settings.n_ctx, threshold=settings.threshold,
                    max_new_tokens=settings.max_new_tokens, threads=settings.threads,
                    gpu_layers=settings.gpu_layers, verbose=settings.verbose,
                )
                entry = self._guards[key] = [guard, 0]
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
            self._drop_idle()

    def _active_key_path(self) -> str | None:
        try:
            return str(resolve_model(self._model).resolve())
        except (ModelError, LibraError, OSError):
            return None

    def _drop_idle(self) -> None:
        """Close guards that nobody uses and that do not belong to the active model."""
        active = self._active_key_path()
        with self._lock:
            idle = [k for k, (_, leases) in self._guards.items()
                    if leases == 0 and (self._closed or k[0] != active or k[1:] != self._default_key())]
            guards = [self._guards.pop(k)[0] for k in idle]
        for guard in guards:
            guard.close()

    def _default_key(self) -> tuple[Any, ...]:
        s = self.settings
        return (s.n_ctx, s.threshold, s.max_new_tokens)

    def close(self, *, wait_s: float = 60.0) -> None:
        """Stop a running batch (it is marked interrupted), close the guards, then the store."""
        batch = self.batch
        if batch is not None:
            batch.cancel.set()
            # The runner stops after the item in hand and records the run as interrupted;
            # closing the store under it would lose that record.
            batch.finished.wait(wait_s)
        with self._lock:
            self._closed = True
        self._drop_idle()
        self.store.close()
