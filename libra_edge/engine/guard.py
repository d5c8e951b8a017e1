"""The guard: load a Libra-Guard GGUF once and judge (question, response) pairs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from libra_edge import __version__
from libra_edge.engine import llama
from libra_edge.engine import header_state
from libra_edge.engine.chat import ChatTemplate
from libra_edge.engine.decoding import Block, CheckCancelled, Decoder, Generation, JsonStringStream
from libra_edge.engine.scheduler import Request, Scheduler
from libra_edge.engine.grammar import (
    ANALYSIS_OPENED,
    AT_VERDICT,
    FRAME_RESERVE_TOKENS,
    MAX_FRAME_TOKENS,
    PAST_VERDICT_QUOTE,
    VERDICT_GRAMMAR,
    close_json,
    label_first_tokens,
)
from libra_edge.engine.normalize import map_span, normalize_text
from libra_edge.engine.prompt import (
    PROMPT_TEMPLATE_VERSION,
    SAFE,
    UNSAFE,
    build_user_message,
)
from libra_edge.engine.settings import EngineSettings, GpuLayers
from libra_edge.engine import threads as threads_policy
from libra_edge.engine import planning
from libra_edge.errors import LibraError, ModelError
from libra_edge.models.ggufinfo import GGUFInfo, read_model_info
from libra_edge.verdicts import label_at

# The JSON frame as the authors' prompt shows it: the drafts' starting point.
OPENING_DRAFT = '{\n  "答案": "'
MIDDLE_DRAFT = '",\n  "分析": "'
# The pair a model's own frame is read from when it loads (see Guard._calibrate).
CALIBRATION_PAIR = ("你好", "你好，有什么可以帮你？")


@dataclass(frozen=True)
class Timings:
    """Where one check spent its tokens and time."""

    prompt_tokens: int  # tokens in the full prompt (the deciding window's, when chunked)
    reused_tokens: int  # prompt tokens whose KV state was kept from an earlier check
    evaluated_tokens: int  # prompt tokens actually run through the model
    generated_tokens: int  # output tokens (forced and drafted ones included)
    prefill_s: float
    decode_s: float
    total_s: float


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one (question, response) pair."""

    label: str  # "安全" or "不安全"
    unsafe: bool
    score: float  # P(unsafe) in [0, 1], from the raw logits at the verdict position
    analysis: str | None  # None in fast mode
    raw: str  # the model's JSON text; always parses
    truncated: bool  # an input was cut (head and tail kept) to fit the context
    timings: Timings = field(compare=False)
    analysis_cut: bool = False  # the analysis was stopped by the token cap or the context
    windows: int = 1  # windows the response was judged in (1 unless chunked)
    window: int = 0  # the window whose score decided (the highest)
    span: tuple[int, int] | None = None  # that window's characters in the response as given
    normalized: bool = False  # normalization changed the judged text
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `libra-edge check --json` prints it."""
        return {
            "label": self.label,
            "unsafe": self.unsafe,
            "score": self.score,
            "analysis": self.analysis,
            "truncated": self.truncated,
            "analysis_cut": self.analysis_cut,
            "windows": self.windows,
            "window": self.window,
            "span": list(self.span) if self.span is not None else None,
            "normalized": self.normalized,
            "raw": self.raw,
            "timings": asdict(self.timings),
            **self.provenance,
        }


def default_threads() -> int:
    """The threads a Guard runs when not told: the thread policy's (engine/threads.py)."""
    return threads_policy.default_threads()


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


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class _Prepared:
    """One pair made ready for the model: the text judged and its prompt blocks."""

    prompt: list[int]
    blocks: list[Block]
    rest: list[int]  # the response block: evaluated with the opening draft, never reused
    truncated: bool


@dataclass
class _Pending:
    """A check past its verdict, its analysis (if any) still to generate."""

    gen: Generation
    prompt_len: int
    label: str
    score: float
    truncated: bool
    t0: float
    logits: np.ndarray | None = None
    stream: JsonStringStream | None = None
    forced: list[int] = field(default_factory=list)  # the label's tokens, chosen by the score


class _PlanningTokenizer:
    """The guard's tokenizer as prompt planning (planning.Tokenizer) sees it."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def plain(self, text: str) -> list[int]:
        return self._guard._plain(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._guard._decoder.detokenize(tokens)

    def prompt(self, user_message: str) -> list[int]:
        return self._guard._prompt_tokens(user_message)

    def before(self) -> list[int]:
        return self._guard._before


class Guard:
    """A loaded Libra-Guard model. Create with `Guard.load(path)`; call `check()`.

    One llama.cpp context serves all checks. A verdict's score is a function of the
    model file, the pair and the verdict-relevant settings alone: the prompt is always
    evaluated in the same blocks (header, question, response), and a block's KV state is
    reused only when it is bit-identical to a fresh evaluation. Calls are serialized by
    a lock: a Guard may be shared by threads, but checks never interleave on one context.
    """

    def __init__(self, model: llama.Model, ctx: llama.Context, info: GGUFInfo, settings: EngineSettings) -> None:
        self._model: llama.Model | None = model
        self._ctx: llama.Context | None = ctx
        self._lock = threading.Lock()
        self.info = info
        self.settings = settings
        self._sha256: str | None = None
        self._decoder = Decoder(model, ctx)
        self._scheduler = Scheduler(self)
        self._template = ChatTemplate(
            model.chat_template(),
            bos_token=model.special_text(model.bos()),
            eos_token=model.special_text(model.eos()),
        )
        firsts = label_first_tokens(model.all_pieces())
        if not firsts[SAFE] or not firsts[UNSAFE]:
            raise ModelError(f"{info.path}: the vocabulary cannot spell the labels 安全/不安全")
        self.label_tokens = {k: np.array(sorted(v), dtype=np.int64) for k, v in firsts.items()}
        self._opening_draft = self._decoder.tokenize(OPENING_DRAFT)
        self._middle_draft = self._decoder.tokenize(MIDDLE_DRAFT)
        rendered = self._template.render(build_user_message("", ""))
        self._before = self._decoder.tokenize(rendered.before, special=True, add_bos=True)
        self._tokens = _PlanningTokenizer(self)
        self._header = planning.header_tokens(self._tokens)
        self._overhead = planning.overhead(self._tokens)
        self._ready_header()

    def _calibrate(self) -> None:
        """Fix this model's frame drafts: the frame it writes for one fixed pair.

        The drafts are evaluated in the same batch as the response block, so they are part
        of every verdict's batch shape: they must never depend on what ran before. They
        are a function of the model file alone: the frame the model writes for
        CALIBRATION_PAIR, in the authors' layout unless the model prefers another. (A
        Libra-Guard writes the authors' layout; a model that does not would otherwise pay
        one forward pass per frame token on every check.) This also evaluates the header
        block, which every check reuses.
        """
        t0 = time.perf_counter()
        pending = self._begin(*CALIBRATION_PAIR, True, None, seq=0, truncated=False, t0=t0)
        opening = self._last_opening
        middle = pending.gen.tokens[len(opening) + len(pending.forced):]
        if AT_VERDICT.search(self._decoder.detokenize(opening)):
            self._opening_draft = opening
        if middle and ANALYSIS_OPENED.search(pending.gen.text):
            self._middle_draft = middle
        self._decoder.truncate(self._decoder.blocks[0][0].end if self._decoder.blocks[0] else 0, 0)

    # -------------------------------------------------- the header-state cache
    def _ready_header(self) -> None:
        """Calibrate (`_calibrate`), or put back what an earlier process saved of it.

        The header block's KV state and the frame drafts are a function of the model file,
        the llama.cpp build and the verdict settings the key names (`_state_key`): the
        first process to load a model saves them (engine/header_state.py), the next ones
        restore them: the same bytes in the same cells, so every score is bit-identical.
        A file that does not match exactly is ignored and rewritten; `--verbose` says so
        in one line on stderr; a data folder that cannot be written costs only the time.
        """
        if not header_state.enabled():
            self._calibrate()
            return
        key = self._state_key()
        path = header_state.path_for(key)
        why = self._restore_header(path, key)
        if why is None:
            self._note(f"header state restored from {path}")
            return
        self._calibrate()
        try:
            blocks, state = self._decoder.held_state(0)
            header_state.write(path, key, header_state.HeaderState(
                header=blocks[0].tokens, opening_draft=tuple(self._opening_draft),
                middle_draft=tuple(self._middle_draft), state=state))
        except (OSError, RuntimeError) as exc:
            saved = f"not saved ({getattr(exc, 'strerror', None) or exc})"
        else:
            saved = f"saved to {path}"
        self._note(f"header state {saved}" if why == "" else f"header state {path} ignored: {why}; rebuilt, {saved}")

    def _restore_header(self, path: Path, key: dict[str, Any]) -> str | None:
        """Restore the saved header state: None when done, else why not ("" when there is none)."""
        try:
            saved = header_state.read(path, key, n_vocab=self._decoder.n_vocab)
        except FileNotFoundError:
            return ""
        except header_state.Rejected as exc:
            return str(exc)
        # The block calibration evaluates (the calibration pair's header block).
        expected = self._prepare(*CALIBRATION_PAIR).blocks[0]
        if saved.header != expected.tokens:
            return "its header block is not this prompt's"
        if not self._decoder.restore([expected], saved.state, 0):
            return "llama.cpp refused its state"
        self._opening_draft = list(saved.opening_draft)
        self._middle_draft = list(saved.middle_draft)
        return None

    def _state_key(self) -> dict[str, Any]:
        """Everything the header state's bytes and the drafts depend on, measured.

        The model file, the libra-edge and llama.cpp builds (library files, SIMD features,
        the CPU kernels chosen), the KV layout, GPU offload, and what calibration reads:
        its prompt tokens, the starting drafts, the grammar, the label tokens and the
        threshold (which decides the calibration pair's label, so the middle draft), and
        the number of sequences (llama.cpp's bytes for one sequence name every KV stream
        of the context, one per sequence). Not the thread count or the context size: the
        saved bytes were compared across them (1 and 2 threads, 512 to 8192 tokens per
        sequence; tests/test_header_cache.py) and are the same.
        """
        calibration = {
            "prompt": self._prompt_tokens(build_user_message(*CALIBRATION_PAIR)),
            "header": self._header,
            "opening_draft": self._opening_draft,
            "middle_draft": self._middle_draft,
            "labels": {k: v.tolist() for k, v in sorted(self.label_tokens.items())},
            "grammar": VERDICT_GRAMMAR,
            "max_frame_tokens": MAX_FRAME_TOKENS,
        }
        digest = hashlib.sha256(json.dumps(calibration, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return {
            "model_sha256": self.model_sha256,
            "libra_edge": __version__,
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "llama_cpp_python": llama.version(),
            "build": llama.build_features(),
            "cpu_variant": llama.cpu_variant() or "built-in",
            "libraries": hashlib.sha256(llama.library_identity().encode()).hexdigest()[:16],
            "kv_layout": llama.kv_layout(),
            "gpu_layers": int(self.settings.gpu_layers),
            "n_seq": self._decoder.n_seq,
            "threshold": float(self.settings.threshold),
            "calibration": digest,
        }

    def _note(self, line: str) -> None:
        """One line on stderr with `verbose` (the convention of llama.cpp's own logs); else nothing."""
        if self.settings.verbose:
            try:
                sys.stderr.write(f"libra-edge: {line}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

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
            if self._model is not None and self._ctx is not None:
                self._decoder.close()
                self._ctx.close()
                self._model.close()
                self._model = self._ctx = None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_cache(self) -> None:
        """Forget every cached prompt block (the next check evaluates its whole prompt).

        Verdicts do not change (reuse is exact); only the time of the next check does.
        Benchmarks use it to time a prompt from an empty cache.
        """
        with self._lock:
            self._require_open()
            self._decoder.forget()

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
    def n_ctx_seq(self) -> int:
        """Context tokens each sequence holds."""
        return self._decoder.n_ctx_seq

    @property
    def chat_template_source(self) -> str:
        """Where the prompt's chat template comes from: `gguf` or `fallback` (Qwen2.5 ChatML)."""
        return "fallback" if self._template.is_fallback else "gguf"

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file (from its manifest when installed, else hashed once)."""
        if self._sha256 is None:
            from libra_edge.models.digest import model_sha256

            self._sha256 = model_sha256(self.info.path)
        return self._sha256

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token of the vocabulary decodes to (control tokens: empty)."""
        self._require_open()
        return self._decoder.piece(token)

    def provenance(self) -> dict[str, Any]:
        """What every verdict carries about how it was made."""
        return {
            "model": self.info.name,
            "model_sha256": self.model_sha256,
            "threshold": self.threshold,
            "version": __version__,
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        }

    # ------------------------------------------------------------------ prompt
    def _plain(self, text: str) -> list[int]:
        # NFC first, as the reference Qwen2.5 tokenizer does (llama.cpp's does not).
        return self._decoder.tokenize(unicodedata.normalize("NFC", text), special=False)

    def prompt_tokens(self, question: str, response: str) -> list[int]:
        """The exact prompt tokens `check()` would evaluate (normalized; without truncation)."""
        if self._model is None:
            raise LibraError("this Guard was closed")
        question, response, _ = self._judged_text(question, response)
        return self._prompt_tokens(build_user_message(question, response))

    def _prompt_tokens(self, user_message: str) -> list[int]:
        rendered = self._template.render(user_message)
        # The template's own text may contain control tokens; the user's text is plain
        # text, so a response cannot smuggle in `<|im_end|>` and end its turn early.
        return (
            self._decoder.tokenize(rendered.before, special=True, add_bos=True)
            + self._plain(rendered.message)
            + self._decoder.tokenize(rendered.after, special=True)
        )

    def _prepare(self, question: str, response: str) -> _Prepared:
        """Tokens and blocks of the prompt for one (already fitted) pair."""
        pb = planning.prompt_blocks(question, response, self._header, self._tokens)
        return _Prepared(pb.prompt, pb.blocks, pb.rest, truncated=False)

    def _budget(self) -> int:
        """Tokens the question and response may take together in one sequence (planning.budget)."""
        return planning.budget(self._decoder.n_ctx_seq, self._overhead, FRAME_RESERVE_TOKENS + self.max_new_tokens,
                               parallel=self.parallel)

    def _plan(self, question: str, response: str) -> tuple[str, list[tuple[str, tuple[int, int]]], bool]:
        """The question to judge and the response windows (text, span in `response`): planning.plan."""
        p = planning.plan(question, response, self._budget(), self.settings.long, self._tokens)
        return p.question, [(w.text, w.span) for w in p.windows], p.truncated

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
        self._require_open()
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

    def _require_open(self) -> None:
        if self._model is None:
            raise LibraError("this Guard was closed")

    def _judged_text(self, question: str, response: str) -> tuple[str, str, bool]:
        if not self.settings.normalize:
            return question, response, False
        q, r = normalize_text(question), normalize_text(response)
        return q, r, (q != question or r != response)

    def _start(
        self, question: str, response: str, analysis: bool, on_text: Callable[[str], None] | None, *, seq: int,
        on_window: Callable[[int, int], None] | None = None,
    ) -> tuple[_Pending, tuple[int, int] | None, dict[str, Any]]:
        """Decide one pair's verdict in sequence `seq` (every window scored when chunked).

        Returns the pending check (its analysis, if asked, still to write), the deciding
        window's span in the response as given, and the verdict's window facts.
        """
        t0 = time.perf_counter()
        q, r, normalized = self._judged_text(question, response)
        q_fit, windows, truncated = self._plan(q, r)
        best = 0
        if len(windows) > 1:
            # Every window scored back to back (the question's blocks are reused), then the
            # deciding one judged again with its analysis: the same blocks, the same score.
            scores = []
            for k, (w, _) in enumerate(windows):
                if on_window is not None:
                    on_window(k, len(windows))
                scores.append(self._begin(q_fit, w, False, None, seq=seq, truncated=truncated, t0=t0).score)
            best = int(np.argmax(scores))
        pending = self._begin(q_fit, windows[best][0], analysis, on_text, seq=seq, truncated=truncated, t0=t0)
        span = self._span(windows[best][1], r, response, normalized, len(windows))
        return pending, span, {"normalized": normalized, "windows": len(windows), "window": best}

    @staticmethod
    def _span(span: tuple[int, int], judged: str, given: str, normalized: bool, n_windows: int) -> tuple[int, int] | None:
        """The deciding window's span in the response as given (None when not chunked)."""
        if n_windows == 1:
            return None
        if not normalized or judged == given:
            return span
        return map_span(given, span)

    def _begin(
        self, question: str, response: str, analysis: bool, on_text: Callable[[str], None] | None, *,
        seq: int, truncated: bool, t0: float,
    ) -> _Pending:
        """Evaluate the prompt in sequence `seq` in its canonical blocks; decide the verdict."""
        dec = self._decoder
        prep = self._prepare(question, response)
        held = dec.prepare(prep.blocks, seq)
        reused = prep.blocks[held - 1].end if held else 0
        t_prefill = time.perf_counter()
        for block in prep.blocks[held:]:
            dec.evaluate_block(block, seq)
        dec.reset_grammar(seq)
        gen = Generation(dec, seq=seq, reused=reused)
        # The opening `{ "答案": "` in a fixed draft, evaluated with the response block.
        logits = gen.advance(
            pending=prep.rest,
            draft=self._opening_draft,
            done=lambda text: AT_VERDICT.search(text) is not None,
            reject=lambda text: PAST_VERDICT_QUOTE.search(text) is not None,
            limit=MAX_FRAME_TOKENS,
        )
        gen.prefill_s = time.perf_counter() - t_prefill
        self._last_opening = gen.tokens[:]  # the frame the model chose (tests read it)
        score = self._score(logits)
        label = label_at(score, self.threshold)  # the one rule: unsafe at or above the threshold
        pending = _Pending(gen, len(prep.prompt), label, score, truncated, t0)
        if not analysis:
            return pending

        # The label is decided by the score; spell it with the model's likeliest first
        # token for it, then let the grammar-constrained model continue.
        firsts = self.label_tokens[label]
        first = int(firsts[np.argmax(logits[firsts])])
        piece = dec.piece(first)
        if piece.startswith(label.encode()):  # the token spells the whole label (and more)
            forced = [first]
        elif _is_text(piece):
            forced = [first, *dec.tokenize(label[len(piece.decode()) :])]
        else:  # a byte-fallback vocabulary: spell the label the tokenizer's way
            forced = dec.tokenize(label)
        gen.force(forced)
        pending.forced = forced
        logits = gen.advance(
            pending=forced,
            draft=self._middle_draft,
            done=lambda text: ANALYSIS_OPENED.search(text) is not None,
            reject=None,
            limit=MAX_FRAME_TOKENS,
        )
        pending.logits = logits
        pending.stream = JsonStringStream(on_text)
        pending.stream.feed(gen.text)  # a token may already have run into the analysis
        return pending

    def _finish(self, p: _Pending, span: tuple[int, int] | None, extra: dict[str, Any]) -> Verdict:
        """The verdict of a check whose analysis (if any) is written."""
        if p.stream is None:  # fast mode: close the object right after the verdict
            opening = p.gen.text
            raw = opening + p.label + '"' + ("\n}" if "\n" in opening else "}")
            text = None
        else:
            raw = p.gen.text
            try:
                text = str(json.loads(raw)["分析"])
            except (ValueError, KeyError, TypeError):
                raw = close_json(raw)
                text = str(json.loads(raw)["分析"])
        return self._verdict(p, text, raw, span, extra, self.provenance())

    def _score(self, logits: np.ndarray) -> float:
        """P(unsafe) = mass of 不安全's first tokens / mass of both labels' first tokens."""
        top = float(np.max(logits))
        unsafe = float(np.exp(logits[self.label_tokens[UNSAFE]].astype(np.float64) - top).sum())
        safe = float(np.exp(logits[self.label_tokens[SAFE]].astype(np.float64) - top).sum())
        if unsafe + safe == 0.0:  # both underflowed: no evidence either way
            return 0.5
        return unsafe / (unsafe + safe)

    def _verdict(self, p: _Pending, text: str | None, raw: str, span: tuple[int, int] | None,
                 extra: dict[str, Any], provenance: dict[str, Any]) -> Verdict:
        total = time.perf_counter() - p.t0
        gen = p.gen
        timings = Timings(
            prompt_tokens=p.prompt_len,
            reused_tokens=gen.reused,
            evaluated_tokens=p.prompt_len - gen.reused,
            generated_tokens=len(gen.tokens),
            prefill_s=round(gen.prefill_s, 6),
            decode_s=round(max(0.0, total - gen.prefill_s), 6),
            total_s=round(total, 6),
        )
        return Verdict(
            label=p.label,
            unsafe=p.label == UNSAFE,
            score=p.score,
            analysis=text,
            raw=raw,
            truncated=p.truncated,
            timings=timings,
            analysis_cut=gen.cut,
            windows=int(extra.get("windows", 1)),
            window=int(extra.get("window", 0)),
            span=span,
            normalized=bool(extra.get("normalized", False)),
            provenance=provenance,
        )
