"""The guard engine: load a Libra-Guard GGUF once and judge (question, response) pairs."""

from __future__ import annotations

import json
import os
import threading
import unicodedata
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import llama_logs
from .chat import ChatTemplate
from .decoding import Decoder, Generation, JsonStringStream, finish_all
from .errors import LibraError, ModelError
from .grammar import ANALYSIS_OPENED, AT_VERDICT, PAST_VERDICT_QUOTE, close_json, label_first_tokens
from .models.ggufinfo import GGUFInfo, read_model_info
from .prompt import PROMPT_TEMPLATE_VERSION, SAFE, UNSAFE, build_user_message

GpuLayers = int | str

# Marks the place where a too-long text was cut to fit the context.
TRUNCATION_MARK = "\n……\n"
# Tokens kept free besides the analysis: the JSON frame and the verdict.
_FRAME_TOKENS = 48
# The JSON frame before the verdict or the analysis never needs more tokens than this:
# the grammar bounds each whitespace run to 8 characters.
_MAX_FRAME_TOKENS = 64


@dataclass(frozen=True)
class Timings:
    """Where one check spent its tokens and time."""

    prompt_tokens: int  # tokens in the full prompt
    reused_tokens: int  # prompt tokens whose KV state was kept from the previous check
    evaluated_tokens: int  # prompt tokens actually run through the model
    generated_tokens: int  # output tokens (forced and speculated ones included)
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
    truncated: bool  # the inputs were cut (head and tail kept) to fit the context
    timings: Timings = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `libra-edge check --json` prints it."""
        return {
            "label": self.label,
            "unsafe": self.unsafe,
            "score": self.score,
            "analysis": self.analysis,
            "truncated": self.truncated,
            "raw": self.raw,
            "timings": asdict(self.timings),
        }


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def default_threads() -> int:
    """Physical cores where Linux tells them, else logical CPUs available to us."""
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                    cores.add((phys, core))
        if cores:
            return min(len(cores), len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):
        pass
    return max(1, os.cpu_count() or 1)


def gpu_offload_available() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (CUDA, Metal, Vulkan...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _gpu_layers(value: GpuLayers) -> int:
    if value == "auto":
        return -1 if gpu_offload_available() else 0
    if value == "all":
        return -1
    if isinstance(value, int) and value >= 0:
        return value
    raise LibraError(f"gpu_layers: expected 'auto', 'all' or a number >= 0, got {value!r}")


def _open_runtime(
    path: Path, n_ctx: int, n_batch: int, threads: int, gpu_layers: int, parallel: int, verbose: bool,
    mmap: bool = False,
) -> _Runtime:
    """Load the weights and create a context with `parallel` sequences."""
    import llama_cpp
    from llama_cpp import _internals

    llama_logs.configure(verbose)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = gpu_layers
    # Read the weights rather than map them: on CPUs where llama.cpp repacks quantized
    # tensors for its SIMD kernels, the mapped file pages stay resident beside the repacked
    # copy, and a 3B Q4_K_M then holds 3.4 GiB instead of 2.1 GiB.
    mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.n_seq_max = parallel
    # One KV stream per sequence: each analysis attends over its own cells only. (A unified
    # cache shares the header's cells, but every token then attends over all sequences'
    # cells: 16 parallel analyses of a 3B model decode ~30% slower on a CPU.)
    cparams.kv_unified = False
    cparams.no_perf = True
    # Flash attention (llama.cpp's "auto" default) changes the arithmetic with the batch
    # shape: a prompt evaluated whole and one resumed from a kept prefix then disagree.
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    try:
        with llama_logs.silenced_fds(not verbose):
            model = _internals.LlamaModel(path_model=str(path), params=mparams, verbose=verbose)
            try:
                ctx = _internals.LlamaContext(model=model, params=cparams, verbose=verbose)
            except BaseException:
                model.close()
                raise
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: llama.cpp could not load this model ({exc})") from None
    return _Runtime(model, ctx)


class _Runtime:
    """The llama.cpp model and context, freed together (context first)."""

    def __init__(self, model: Any, ctx: Any) -> None:
        self.model = model
        self.ctx = ctx

    def close(self) -> None:
        self.ctx.close()
        self.model.close()


@dataclass
class _Pending:
    """A check past its verdict, its analysis (if any) still to generate."""

    gen: Generation
    prompt: list[int]
    label: str
    score: float
    truncated: bool
    t0: float
    logits: np.ndarray | None = None
    stream: JsonStringStream | None = None


class Guard:
    """A loaded Libra-Guard model. Create with `Guard.load(path)`; call `check()`.

    One llama.cpp context serves all checks; the KV state of the longest common token
    prefix with the previous check is kept, so the fixed instruction header (and a
    repeated question) is evaluated once. Calls are serialized by a lock: a Guard may be
    used from a worker thread, but checks never run in parallel on one context.
    """

    def __init__(self, runtime: _Runtime, info: GGUFInfo, *, settings: dict[str, Any], verbose: bool) -> None:
        self._runtime: _Runtime | None = runtime
        self._verbose = verbose
        self._lock = threading.Lock()
        self.info = info
        self.settings = settings
        self.threshold: float = settings["threshold"]
        self.max_new_tokens: int = settings["max_new_tokens"]
        self.parallel: int = settings["parallel"]
        model = runtime.model
        self._decoder = Decoder(
            model, runtime.ctx, n_batch=settings["n_batch"], n_ctx=settings["n_ctx"], n_seq=self.parallel
        )
        self._template = ChatTemplate(
            model.metadata().get("tokenizer.chat_template"),
            bos_token=self._decoder.special_text(model.token_bos()),
            eos_token=self._decoder.special_text(model.token_eos()),
        )
        firsts = label_first_tokens(self._decoder.all_pieces())
        if not firsts[SAFE] or not firsts[UNSAFE]:
            raise ModelError(f"{info.path}: the vocabulary cannot spell the labels 安全/不安全")
        self.label_tokens = {k: np.array(sorted(v), dtype=np.int64) for k, v in firsts.items()}
        self._opening_draft: list[int] = self._decoder.tokenize('{\n  "答案": "')
        self._middle_draft: list[int] = self._decoder.tokenize('",\n  "分析": "')
        self._overhead = len(self._prompt_tokens(build_user_message("", "")))

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        gpu_layers: GpuLayers = "auto",
        threshold: float = 0.5,
        max_new_tokens: int = 256,
        parallel: int = 1,
        mmap: bool = False,
        verbose: bool = False,
    ) -> Guard:
        """Load a GGUF model (path, or installed model name) for checking.

        `parallel` > 1 lets `check_many` generate that many analyses at once (one llama.cpp
        context, one sequence each with `n_ctx / parallel` tokens of its own; a sequence
        starts from a copy of the header's KV state rather than evaluating it again).
        `mmap=True` maps the file instead of reading it: processes then share the weights
        through the page cache, but on CPUs where llama.cpp repacks quantized tensors the
        mapped pages stay resident beside the repacked copy (more memory per process).
        Raises `ModelError` with a one-line reason when the file is missing, not a GGUF,
        truncated, or cannot be loaded by llama.cpp.
        """
        if not 0.0 <= threshold <= 1.0:
            raise LibraError(f"threshold must be between 0 and 1, got {threshold}")
        if not 1 <= parallel <= 64:
            raise LibraError(f"parallel must be between 1 and 64, got {parallel}")
        from .models import resolve_model

        path = resolve_model(os.fspath(model) if model is not None else None)
        info = read_model_info(path)  # validates: exists, GGUF magic, not truncated
        n_threads = threads or default_threads()
        n_gpu = _gpu_layers(gpu_layers)
        n_batch = min(512, n_ctx)
        runtime = _open_runtime(path, n_ctx, n_batch, n_threads, n_gpu, parallel, verbose, mmap)
        import llama_cpp

        settings = {
            "n_ctx": n_ctx,
            "n_batch": n_batch,
            "parallel": parallel,
            "threads": n_threads,
            "gpu_layers": n_gpu,
            "mmap": mmap,
            "gpu_offload_compiled": gpu_offload_available(),
            "threshold": threshold,
            "max_new_tokens": max_new_tokens,
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "llama_cpp_python_version": llama_cpp.__version__,
        }
        try:
            guard = cls(runtime, info, settings=settings, verbose=verbose)
        except BaseException:
            runtime.close()
            raise
        settings["n_ctx_seq"] = guard._decoder.n_ctx_seq  # what each sequence can hold
        return guard

    def close(self) -> None:
        """Free the model and context now (otherwise at garbage collection)."""
        with self._lock:
            if self._runtime is not None:
                self._decoder.close()
                self._runtime.close()
                self._runtime = None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ prompt
    @property
    def chat_template_is_fallback(self) -> bool:
        """True when the GGUF had no chat template and Qwen2.5's ChatML is used instead."""
        return self._template.is_fallback

    def prompt_tokens(self, question: str, response: str) -> list[int]:
        """The exact prompt tokens `check()` would evaluate (without truncation)."""
        if self._runtime is None:
            raise LibraError("this Guard was closed")
        return self._prompt_tokens(build_user_message(question, response))

    def _prompt_tokens(self, user_message: str) -> list[int]:
        rendered = self._template.render(user_message)
        # The template's own text may contain control tokens; the user's text is plain
        # text, so a response cannot smuggle in `<|im_end|>` and end its turn early.
        return (
            self._decoder.tokenize(rendered.before, special=True, add_bos=True)
            # NFC first, as the reference Qwen2.5 tokenizer does (llama.cpp's does not).
            + self._decoder.tokenize(unicodedata.normalize("NFC", rendered.message), special=False)
            + self._decoder.tokenize(rendered.after, special=True)
        )

    def _fit(self, question: str, response: str, analysis: bool) -> tuple[str, bool]:
        """The user message, with question/response cut to the context if needed.

        With parallel sequences each one has an equal share of the context.
        """
        reserve = _FRAME_TOKENS + (self.max_new_tokens if analysis else 0)
        budget = self._decoder.n_ctx_seq - self._overhead - reserve - 16
        if budget < 32:
            raise LibraError(
                f"context of {self._decoder.n_ctx_seq} tokens"
                + (f" per sequence ({self.parallel} parallel)" if self.parallel > 1 else "")
                + f" is too small for the prompt ({self._overhead} tokens) and output; raise --ctx"
            )
        if len(question.encode()) + len(response.encode()) <= budget:  # >= 1 byte per token
            return build_user_message(question, response), False
        q = self._decoder.tokenize(question, special=False)
        r = self._decoder.tokenize(response, special=False)
        if len(q) + len(r) <= budget:
            return build_user_message(question, response), False
        q_keep = min(len(q), budget // 2)
        r_keep = min(len(r), budget - q_keep)
        q_keep = min(len(q), budget - r_keep)
        return build_user_message(self._head_tail(question, q, q_keep), self._head_tail(response, r, r_keep)), True

    def _head_tail(self, text: str, tokens: list[int], keep: int) -> str:
        if len(tokens) <= keep:
            return text
        keep = max(2, keep - 8)  # room for the mark and boundary merges
        head = self._decoder.detokenize(tokens[: keep - keep // 2])
        tail = self._decoder.detokenize(tokens[len(tokens) - keep // 2 :])
        return head + TRUNCATION_MARK + tail

    # ------------------------------------------------------------------- check
    def check(
        self,
        question: str,
        response: str,
        *,
        analysis: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> Verdict:
        """Judge one pair. With `analysis=False` (fast mode) stop right after the verdict.

        `on_text` receives the analysis text piece by piece as it is generated.
        """
        if not isinstance(question, str) or not isinstance(response, str):
            raise LibraError("question and response must be strings")
        with self._lock:
            if self._runtime is None:
                raise LibraError("this Guard was closed")
            pending = self._begin(question, response, analysis, on_text, seq=0)
            return self._complete([pending])[0]

    def check_many(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        analysis: bool = True,
        on_verdict: Callable[[int, Verdict], None] | None = None,
    ) -> list[Verdict]:
        """Judge several pairs; with analysis, up to `parallel` are generated at once.

        Same verdicts, scores and text as calling `check()` on each pair in turn (greedy
        decoding per sequence). `on_verdict(index, verdict)` is called as each finishes.
        """
        out: list[Verdict] = []
        step = self.parallel if analysis else 1
        for base in range(0, len(pairs), step):
            group = pairs[base : base + step]
            with self._lock:
                if self._runtime is None:
                    raise LibraError("this Guard was closed")
                started = [self._begin(q, r, analysis, None, seq=i) for i, (q, r) in enumerate(group)]
                verdicts = self._complete(started)
            for i, verdict in enumerate(verdicts):
                if on_verdict is not None:
                    on_verdict(base + i, verdict)
                out.append(verdict)
        return out

    def _begin(
        self, question: str, response: str, analysis: bool, on_text: Callable[[str], None] | None, *, seq: int
    ) -> _Pending:
        """Evaluate the prompt in sequence `seq` and decide the verdict."""
        t0 = time.perf_counter()
        dec = self._decoder
        message, truncated = self._fit(question, response, analysis)
        prompt = self._prompt_tokens(message)
        gen = dec.start(prompt, seq=seq)
        # Opening `{ "答案": "`: the model picks the layout; the last layout it chose is
        # speculated in the same batch as the prompt and verified token by token.
        logits = gen.advance(
            pending=[],
            draft=self._opening_draft,
            done=lambda text: AT_VERDICT.search(text) is not None,
            reject=lambda text: PAST_VERDICT_QUOTE.search(text) is not None,
            limit=_MAX_FRAME_TOKENS,
        )
        self._opening_draft = gen.tokens[:]
        score = self._score(logits)
        label = UNSAFE if score >= self.threshold else SAFE
        pending = _Pending(gen, prompt, label, score, truncated, t0)
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
        mark = len(gen.tokens)
        gen.force(forced)
        logits = gen.advance(
            pending=forced,
            draft=self._middle_draft,
            done=lambda text: ANALYSIS_OPENED.search(text) is not None,
            reject=None,
            limit=_MAX_FRAME_TOKENS,
        )
        self._middle_draft = gen.tokens[mark + len(forced) :]
        pending.logits = logits
        pending.stream = JsonStringStream(on_text)
        pending.stream.feed(gen.text)  # a token may already have run into the analysis
        return pending

    def _complete(self, started: list[_Pending]) -> list[Verdict]:
        """Generate the analyses still open (together), then build the verdicts."""
        work = [(p.gen, p.logits, p.stream) for p in started if p.stream is not None and p.logits is not None]
        if work:
            finish_all(self._decoder, work, self.max_new_tokens)
        verdicts = []
        for p in started:
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
            verdicts.append(self._verdict(p, text, raw))
        return verdicts

    def _score(self, logits: np.ndarray) -> float:
        """P(unsafe) = mass of 不安全's first tokens / mass of both labels' first tokens."""
        top = float(np.max(logits))
        unsafe = float(np.exp(logits[self.label_tokens[UNSAFE]] - top).sum())
        safe = float(np.exp(logits[self.label_tokens[SAFE]] - top).sum())
        if unsafe + safe == 0.0:  # both underflowed: no evidence either way
            return 0.5
        return unsafe / (unsafe + safe)

    def _verdict(self, p: _Pending, text: str | None, raw: str) -> Verdict:
        total = time.perf_counter() - p.t0
        gen = p.gen
        timings = Timings(
            prompt_tokens=len(p.prompt),
            reused_tokens=gen.reused,
            evaluated_tokens=len(p.prompt) - gen.reused,
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
        )
