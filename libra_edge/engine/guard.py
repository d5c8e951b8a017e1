"""The guard: load a Libra-Guard GGUF once and judge (question, response) pairs.

`Guard` is the engine's public front: it loads the model, owns the lock every llama.cpp
call is made under and the scheduler (engine/scheduler.py) that runs submitted checks,
and answers `check`, `submit` and `check_many`. The work of one check in one sequence
(planning, canonical blocks, the verdict, the analysis) is the Checker's
(engine/checker.py); the verdict rule itself is `verdicts.label_at`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from typing import Any

import numpy as np

from libra_edge.engine import llama
from libra_edge.engine.checker import Checker, Request
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.engine.scheduler import Scheduler
from libra_edge.engine.settings import EngineSettings, GpuLayers
from libra_edge.engine.threads import default_threads  # the threads a Guard runs when not told
from libra_edge.engine.verdict import Timings, Verdict
from libra_edge.errors import LibraError, ModelError
from libra_edge.models.ggufinfo import GGUFInfo, read_model_info

__all__ = ["Guard", "Timings", "Verdict", "default_threads", "gpu_offload_available", "resolve_gpu_layers"]


def gpu_offload_available() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, Vulkan...)."""
    return llama.supports_gpu_offload()


def resolve_gpu_layers(value: GpuLayers) -> int:
    """The layer count llama.cpp gets: -1 all, 0 none; 'auto' = all when the build can offload."""
    if value == "auto":
        return -1 if gpu_offload_available() else 0
    if value == "all":
        return -1
    if isinstance(value, int) and value >= 0:
        return value if gpu_offload_available() else 0
    raise LibraError(f"gpu_layers: expected 'auto', 'all' or a number >= 0, got {value!r}")


class Guard:
    """A loaded Libra-Guard model. Create with `Guard.load(path)`; call `check()`.

    One llama.cpp context serves all checks. A verdict's score is a function of the
    model file, the pair and the verdict-relevant settings alone (engine/checker.py).
    Every llama.cpp call is made under one lock: a Guard may be shared by threads, but
    checks never interleave on one context; submitted checks share decode steps through
    the scheduler (continuous batching over `parallel` sequences).
    """

    def __init__(self, model: llama.Model, ctx: llama.Context, info: GGUFInfo, settings: EngineSettings) -> None:
        self.info = info
        self.settings = settings
        self._lock = threading.Lock()
        self._checker = Checker(model, ctx, info, settings)  # reads the model's frame (calibration)
        self._scheduler = Scheduler(self._checker, self._lock, sequences=settings.parallel)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, model: str | os.PathLike[str] | None, settings: EngineSettings | None = None, **fields: Any) -> Guard:
        """Load a GGUF model (path, or installed model name) for checking.

        `settings` (or keyword fields of `EngineSettings`, which override it) say how:
        `ctx_per_seq` tokens of context for each of `parallel` sequences (a sequence
        generates one analysis; `check_many` runs up to `parallel` at once), `threshold`,
        `max_new_tokens`, `long`, `normalize`, `gpu_layers`, `threads`, `mmap`, `verbose`.
        Raises `ModelError` with a one-line reason when the file is missing, not a GGUF,
        truncated, or cannot be loaded by llama.cpp.
        """
        base = settings or EngineSettings()
        chosen = base.replace(**fields) if fields else base
        from libra_edge.models import resolve_model

        path = resolve_model(os.fspath(model) if model is not None else None)
        info = read_model_info(path)  # validates: exists, GGUF magic, not truncated
        llama.set_logging(chosen.verbose)
        effective = chosen.replace(
            threads=chosen.threads or default_threads(),
            gpu_layers=resolve_gpu_layers(chosen.gpu_layers),
        )
        try:
            lm, ctx = llama.open_model(
                path, gpu_layers=int(effective.gpu_layers), mmap=effective.mmap,
                ctx_per_seq=effective.ctx_per_seq, n_seq=effective.parallel, threads=int(effective.threads or 1),
            )
        except llama.LoadError as exc:
            raise ModelError(f"{path}: {exc}") from None
        try:
            return cls(lm, ctx, info, effective)
        except BaseException:
            ctx.close()
            lm.close()
            raise

    def close(self) -> None:
        """Free the model and context now (otherwise at garbage collection)."""
        self._scheduler.close()
        with self._lock:
            self._checker.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_cache(self) -> None:
        """Forget every cached prompt block (the next check evaluates its whole prompt).

        Verdicts do not change (reuse is exact); only the time of the next check does.
        A sequence writing an analysis keeps its state until that check is done.
        Benchmarks use it to time a prompt from an empty cache.
        """
        self._scheduler.forget_cache()

    # -------------------------------------------------------------- properties
    @property
    def threshold(self) -> float:
        """P(unsafe) at or above which the verdict is 不安全."""
        return self.settings.threshold

    @property
    def max_new_tokens(self) -> int:
        """The longest analysis, in tokens."""
        return self.settings.max_new_tokens

    @property
    def parallel(self) -> int:
        """Sequences decoded together by `check_many`."""
        return self.settings.parallel

    @property
    def ctx_per_seq(self) -> int:
        """Context tokens each sequence holds (llama.cpp's, at least `settings.ctx_per_seq`)."""
        return self._checker.decoder.ctx_per_seq

    @property
    def chat_template_source(self) -> str:
        """Where the prompt's chat template comes from: `gguf` or `fallback` (Qwen2.5 ChatML)."""
        return self._checker.chat_template_source

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file (from its manifest when installed, else hashed once)."""
        return self._checker.model_sha256

    @property
    def label_tokens(self) -> dict[str, np.ndarray]:
        """The vocabulary's first tokens of each label (the score is their mass)."""
        return self._checker.label_tokens

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token of the vocabulary decodes to (control tokens: empty)."""
        self._checker.require_open()
        return self._checker.decoder.piece(token)

    def provenance(self) -> dict[str, Any]:
        """What every verdict carries about how it was made."""
        return self._checker.provenance()

    def prompt_tokens(self, question: str, response: str) -> list[int]:
        """The exact prompt tokens `check()` would evaluate (normalized; without truncation)."""
        return self._checker.prompt_tokens(question, response)

    # ------------------------------------------------------------------- check
    def check(
        self,
        question: str,
        response: str,
        *,
        analysis: bool = True,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_window: Callable[[int, int], None] | None = None,
    ) -> Verdict:
        """Judge one pair. With `analysis=False` (fast mode) stop right after the verdict.

        `on_text` receives the analysis text piece by piece as it is generated (from the
        engine's worker thread). Setting `cancel` stops the check within one llama.cpp
        call, wherever it is (between a long response's windows, between decode steps):
        it raises `CheckCancelled`. `on_window(k, n)` is called (from the worker thread)
        before window k (0-based) of n of a response judged in windows.
        """
        return self.submit(question, response, analysis=analysis, on_text=on_text, cancel=cancel,
                           on_window=on_window).result()

    def submit(
        self,
        question: str,
        response: str,
        *,
        analysis: bool = True,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_window: Callable[[int, int], None] | None = None,
    ) -> Future[Verdict]:
        """Queue one pair; the future gets its Verdict. Thread-safe.

        Requests run with continuous batching over `parallel` sequences: each verdict is
        decided as soon as a sequence is free, in blocks of its own (bit-identical to a
        lone check), and analyses being written share decode steps. Cancelling the future
        drops a queued request, or stops a running one at its next llama.cpp call; so does
        setting `cancel` (the future then fails with `CheckCancelled`).
        """
        if not isinstance(question, str) or not isinstance(response, str):
            raise LibraError("question and response must be strings")
        self._checker.require_open()
        return self._scheduler.submit(Request(question, response, analysis, on_text, cancel=cancel,
                                              on_window=on_window))

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet finished (waiting plus in flight)."""
        return self._scheduler.depth

    def check_many(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        analysis: bool = True,
        on_verdict: Callable[[int, Verdict], None] | None = None,
        cancel: threading.Event | None = None,
        on_window: Callable[[int, int, int], None] | None = None,
    ) -> list[Verdict]:
        """Judge several pairs, up to `parallel` at once with continuous batching.

        Verdicts and scores are bit-identical to `check()` on each pair (each verdict is
        decided in blocks of its own sequence). Analyses written together share decode
        batches, so their text can differ in rare near-ties from a lone check's.
        `on_verdict(index, verdict)` is called as each finishes (in finishing order).
        The first failure is raised after every other pair has finished. `cancel` stops
        them all as in `check`; `on_window(index, k, n)` reports a windowed pair's windows.
        """

        def windows_of(i: int) -> Callable[[int, int], None] | None:
            report = on_window
            if report is None:
                return None
            return lambda k, n: report(i, k, n)

        futures = {self.submit(q, r, analysis=analysis, cancel=cancel, on_window=windows_of(i)): i
                   for i, (q, r) in enumerate(pairs)}
        out: list[Verdict | None] = [None] * len(pairs)
        error: BaseException | None = None
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                verdict = fut.result()
            except BaseException as exc:  # noqa: BLE001 - raised once the others are done
                error = error or exc
                continue
            out[i] = verdict
            if on_verdict is not None:
                on_verdict(i, verdict)
        if error is not None:
            if cancel is not None and cancel.is_set():
                raise CheckCancelled()  # the group was stopped: not a failure of its pairs
            raise error
        return [v for v in out if v is not None]
