"""What the TUI shares between screens: the open store, the active model, loaded guards, the reviewer.

Screens never load a model themselves: workers lease a `Guard` from the session, so a
check and a batch run on the same model share one llama.cpp context (the engine's lock
serializes them), and a guard that was replaced by another model is closed only once
the last worker using it lets go. Guards are cached by (model file, `EngineSettings`):
the engine's own declaration of what a loaded guard is, so the cache, a run's
fingerprint and resume never disagree about which settings matter.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libra_edge.batch.runner import load_guard
from libra_edge.engine import Guard
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError, ModelError
from libra_edge.models import config, registry, resolve_model
from libra_edge.store import ResultRow, Store
from libra_edge.users import os_user

REVIEWER_ENV = "LIBRA_EDGE_REVIEWER"

GuardKey = tuple[str, EngineSettings]


@dataclass
class ActiveBatch:
    """The batch run this TUI is checking: its cancel switch and a flag set when it stops."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    run_id: int | None = None


@dataclass
class _Loaded:
    """A cached guard and how many workers hold it."""

    guard: Guard
    leases: int = 0


def reviewer_name(explicit: str | None = None) -> str:
    """Who records decisions: `--reviewer NAME`, else $LIBRA_EDGE_REVIEWER, else the OS user."""
    for candidate in (explicit, os.environ.get(REVIEWER_ENV)):
        if candidate and candidate.strip():
            return candidate.strip()
    return os_user()


def model_label(spec: str | None) -> str:
    """A short name for a model spec: the installed name, or a GGUF file's stem."""
    if not spec:
        return "no model"
    path = Path(spec)
    if path.suffix == ".gguf" or "/" in spec or "\\" in spec:
        return path.stem
    return spec


class Session:
    """The store, the active model spec, the reviewer and the guards loaded so far (thread-safe)."""

    def __init__(self, store: Store, *, model: str | None, settings: EngineSettings,
                 reviewer: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.reviewer = reviewer_name(reviewer)
        self._model = model
        self._lock = threading.Lock()
        # key -> [guard, leases]; the current model's guard stays loaded between checks.
        self._guards: dict[GuardKey, _Loaded] = {}
        self._loading: dict[GuardKey, threading.Event] = {}
        self._closed = False
        self.batch: ActiveBatch | None = None
        """Set while a batch run launched from the TUI is being checked."""
        # (what was decided: "verdict" or "refusal", result ids) of each decision made here, newest last
        self._undo: list[tuple[str, list[int]]] = []

    # -- review decisions ----------------------------------------------------------------
    # Each is one short transaction (BEGIN IMMEDIATE: read, decide, write, log), made on
    # the event loop so that decisions and undos reach the database in key order.
    def decide(self, result_id: int, decision: str | None, note: str | None, *, keep_note: bool = False) -> ResultRow:
        """Record this reviewer's decision and note on an item (undoable with `undo`);
        `keep_note`: leave the note as the database has it (a decision from the table)."""
        row = self.store.set_review(result_id, decision, note, reviewer=self.reviewer, keep_note=keep_note)
        self._undo.append(("verdict", [result_id]))
        return row

    def decide_refusal(self, result_id: int, refused: bool | None) -> ResultRow:
        """Record this reviewer's decision that an answer is a refusal (True) or not (False), or
        clear it (None: the refusal rules' mark counts again); undoable with `undo`."""
        row = self.store.set_refusal_review(result_id, refused, reviewer=self.reviewer)
        self._undo.append(("refusal", [result_id]))
        return row

    def confirm_many(self, result_ids: list[int]) -> list[int]:
        """Confirm the model's verdict on the undecided items among `result_ids` (one undo step)."""
        done = self.store.confirm_many(result_ids, reviewer=self.reviewer)
        if done:
            self._undo.append(("verdict", done))
        return done

    @property
    def can_undo(self) -> bool:
        """Whether a decision made in this session can still be undone."""
        return bool(self._undo)

    def undo(self) -> list[ResultRow]:
        """Undo the latest decision (verdict or refusal, or a bulk confirmation) made in this session; returns the
        items as they are now. LibraError when there is none, or when another reviewer has
        decided the item since (their decision stands)."""
        if not self._undo:
            raise LibraError("nothing to undo in this session")
        kind, ids = self._undo.pop()
        undo = self.store.undo_refusal_review if kind == "refusal" else self.store.undo_review
        rows = []
        try:
            for result_id in reversed(ids):
                rows.append(undo(result_id, reviewer=self.reviewer))
        except LibraError:
            undone = {r.id for r in rows}
            rest = [i for i in ids if i not in undone]
            if rest and len(rest) < len(ids):
                self._undo.append((kind, rest))
            raise
        return rows

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

    def default_model_name(self) -> str | None:
        """The installed model used when none is chosen: the configured default, else the only one."""
        try:
            name = config.default_model_name()
        except Exception:  # a broken config file: the Models screen says so
            name = None
        if name:
            return name
        models = registry.installed_models()
        return models[0].name if len(models) == 1 else None

    def model_name(self) -> str:
        """The name of the model checks would use now (what the model menu shows)."""
        return model_label(self._model or self.default_model_name())

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, spec) of every installed model, plus the active one when it is a file."""
        choices = [(m.name, m.name) for m in registry.installed_models()]
        specs = {spec for _, spec in choices}
        if self._model and self._model not in specs:
            choices.insert(0, (model_label(self._model), self._model))
        return choices

    # -- guards ------------------------------------------------------------------------
    @contextmanager
    def lease(self, model: str | Path | None = None, settings: EngineSettings | None = None) -> Iterator[Guard]:
        """A loaded guard for `model` (default: the active model) with `settings` (default: the session's).

        Loads on first use (slow: call from a worker thread). The load runs outside the
        session's lock, so the event loop (which takes it to switch models) never waits
        for llama.cpp; two workers asking for the same guard at once load it once.
        """
        spec = str(model) if model is not None else self._model
        settings = settings or self.settings
        path = resolve_model(spec)
        key: GuardKey = (str(path.resolve()), settings)
        entry = self._acquire(key, path)
        try:
            yield entry.guard
        finally:
            with self._lock:
                entry.leases -= 1
            self._drop_idle()

    def _acquire(self, key: GuardKey, path: Path) -> _Loaded:
        while True:
            with self._lock:
                if self._closed:
                    raise LibraError("the application is closing")
                entry = self._guards.get(key)
                if entry is not None:
                    entry.leases += 1
                    return entry
                loading = self._loading.get(key)
                mine = loading is None
                if loading is None:
                    loading = self._loading[key] = threading.Event()
            if not mine:
                loading.wait()  # loaded by the other worker (or failed: then try ourselves)
                continue
            try:
                guard = load_guard(path, key[1])
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                loading.set()
                raise
            with self._lock:
                self._loading.pop(key, None)
                entry = self._guards[key] = _Loaded(guard, 1)
            loading.set()
            return entry

    def _active_key_path(self) -> str | None:
        try:
            return str(resolve_model(self._model).resolve())
        except (ModelError, LibraError, OSError):
            return None

    def _drop_idle(self) -> None:
        """Close guards that nobody uses and that are not the active model's with the session's settings."""
        active = self._active_key_path()
        with self._lock:
            idle = [k for k, e in self._guards.items()
                    if e.leases == 0 and (self._closed or k != (active, self.settings))]
            guards = [self._guards.pop(k).guard for k in idle]
        for guard in guards:
            guard.close()

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
