"""The guard engine: load a Libra-Guard GGUF once and judge (question, response) pairs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import llama_logs
from .chat import ChatTemplate
from .decoding import Decoder, JsonStringStream
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


class Guard:
    """A loaded Libra-Guard model. Create with `Guard.load(path)`; call `check()`.

    One llama.cpp context serves all checks; the KV state of the longest common token
    prefix with the previous check is kept, so the fixed instruction header (and a
    repeated question) is evaluated once. Calls are serialized by a lock: a Guard may be
    used from a worker thread, but checks never run in parallel on one context.
    """

    def __init__(self, llama: Any, info: GGUFInfo, *, settings: dict[str, Any], verbose: bool) -> None:
        self._llama = llama
        self._verbose = verbose
        self._lock = threading.Lock()
        self.info = info
        self.settings = settings
        self.threshold: float = settings["threshold"]
        self.max_new_tokens: int = settings["max_new_tokens"]
        self._decoder = Decoder(llama)
        meta = llama.metadata
        self._template = ChatTemplate(
            meta.get("tokenizer.chat_template"),
            bos_token=self._decoder.special_text(llama._model.token_bos()),
            eos_token=self._decoder.special_text(llama._model.token_eos()),
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
        verbose: bool = False,
    ) -> Guard:
        """Load a GGUF model (path, or installed model name) for checking.

        Raises `ModelError` with a one-line reason when the file is missing, not a GGUF,
        truncated, or cannot be loaded by llama.cpp.
        """
        if not 0.0 <= threshold <= 1.0:
            raise LibraError(f"threshold must be between 0 and 1, got {threshold}")
        from .models import resolve_model

        path = resolve_model(os.fspath(model) if model is not None else None)
        info = read_model_info(path)  # validates: exists, GGUF magic, not truncated
        n_threads = threads or default_threads()
        n_gpu = _gpu_layers(gpu_layers)
        llama_logs.configure(verbose)
        from llama_cpp import Llama

        try:
            with llama_logs.silenced_fds(not verbose):
                llama = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=min(512, n_ctx),
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    n_gpu_layers=n_gpu,
                    logits_all=False,
                    verbose=verbose,
                )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: llama.cpp could not load this model ({exc})") from None
        llama_logs.configure(verbose)  # Llama() resets the log level; ours wins
        import llama_cpp

        settings = {
            "n_ctx": n_ctx,
            "threads": n_threads,
            "gpu_layers": n_gpu,
            "gpu_offload_compiled": gpu_offload_available(),
            "threshold": threshold,
            "max_new_tokens": max_new_tokens,
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "llama_cpp_python_version": llama_cpp.__version__,
        }
        return cls(llama, info, settings=settings, verbose=verbose)

    def close(self) -> None:
        """Free the model and context now (otherwise at garbage collection)."""
        with self._lock:
            if self._llama is not None:
                self._decoder.close()
                self._llama.close()
                self._llama = None

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
        return self._prompt_tokens(build_user_message(question, response))

    def _prompt_tokens(self, user_message: str) -> list[int]:
        rendered = self._template.render(user_message)
        # The template's own text may contain control tokens; the user's text is plain
        # text, so a response cannot smuggle in `<|im_end|>` and end its turn early.
        return (
            self._decoder.tokenize(rendered.before, special=True, add_bos=True)
            + self._decoder.tokenize(rendered.message, special=False)
            + self._decoder.tokenize(rendered.after, special=True)
        )

    def _fit(self, question: str, response: str, analysis: bool) -> tuple[str, bool]:
        """The user message, with question/response cut to the context if needed."""
        reserve = _FRAME_TOKENS + (self.max_new_tokens if analysis else 0)
        budget = self.settings["n_ctx"] - self._overhead - reserve - 16
        if budget < 32:
            raise LibraError(
                f"context of {self.settings['n_ctx']} tokens is too small for the prompt "
                f"({self._overhead} tokens) and output; raise --ctx"
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
            if self._llama is None:
                raise LibraError("this Guard was closed")
            return self._check(question, response, analysis, on_text)

    def _check(
        self, question: str, response: str, analysis: bool, on_text: Callable[[str], None] | None
    ) -> Verdict:
        t0 = time.perf_counter()
        dec = self._decoder
        message, truncated = self._fit(question, response, analysis)
        prompt = self._prompt_tokens(message)
        gen = dec.start(prompt)
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
        t_prefill = gen.prefill_s
        opening = gen.text
        score = self._score(logits)
        label = UNSAFE if score >= self.threshold else SAFE
        if not analysis:
            raw = opening + label + '"' + ("\n}" if "\n" in opening else "}")
            return self._verdict(label, score, None, raw, truncated, prompt, gen, t0, t_prefill)

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
        stream = JsonStringStream(on_text)
        raw = gen.finish(logits, self.max_new_tokens, stream)
        try:
            parsed = json.loads(raw)
            text = str(parsed["分析"])
        except (ValueError, KeyError, TypeError):
            raw = close_json(raw)
            text = str(json.loads(raw)["分析"])
        return self._verdict(label, score, text, raw, truncated, prompt, gen, t0, t_prefill)

    def _score(self, logits: np.ndarray) -> float:
        """P(unsafe) = mass of 不安全's first tokens / mass of both labels' first tokens."""
        top = float(np.max(logits))
        unsafe = float(np.exp(logits[self.label_tokens[UNSAFE]] - top).sum())
        safe = float(np.exp(logits[self.label_tokens[SAFE]] - top).sum())
        if unsafe + safe == 0.0:  # both underflowed: no evidence either way
            return 0.5
        return unsafe / (unsafe + safe)

    def _verdict(self, label, score, text, raw, truncated, prompt, gen, t0, t_prefill) -> Verdict:  # type: ignore[no-untyped-def]
        total = time.perf_counter() - t0
        timings = Timings(
            prompt_tokens=len(prompt),
            reused_tokens=gen.reused,
            evaluated_tokens=len(prompt) - gen.reused,
            generated_tokens=len(gen.tokens),
            prefill_s=round(t_prefill, 6),
            decode_s=round(max(0.0, total - t_prefill), 6),
            total_s=round(total, 6),
        )
        return Verdict(
            label=label,
            unsafe=label == UNSAFE,
            score=score,
            analysis=text,
            raw=raw,
            truncated=truncated,
            timings=timings,
        )
