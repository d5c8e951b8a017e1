"""The work of one check in one sequence: decide its verdict, write its analysis, finish it.

`Checker` owns the llama.cpp context's decoder and everything a check reads of the model
(its chat template, label tokens, frame drafts, header block). Its interface is the one
the scheduler (engine/scheduler.py) drives, and nothing else:

- `start(request, seq)` plans the pair (engine/planning.py), evaluates its prompt in
  sequence `seq` in canonical blocks and decides the verdict (every window scored when
  the response is judged in windows), and returns a `PendingCheck`;
- `advance(pendings)` writes one analysis token for each check still writing one, in a
  single batch;
- `finish(pending)` makes the `Verdict`.

Callers hold the Guard's lock around each call: a Checker is not thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from libra_edge import __version__
from libra_edge.engine import header_state, llama, planning
from libra_edge.engine.chat import ChatTemplate
from libra_edge.engine.decoding import Decoder, Generation, JsonStringStream
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
from libra_edge.engine.prompt import PROMPT_TEMPLATE_VERSION, SAFE, UNSAFE, build_user_message
from libra_edge.engine.settings import EngineSettings
from libra_edge.engine.verdict import Timings, Verdict
from libra_edge.errors import LibraError, ModelError
from libra_edge.models.ggufinfo import GGUFInfo
from libra_edge.verdicts import label_at

# The JSON frame as the authors' prompt shows it: the drafts' starting point.
OPENING_DRAFT = '{\n  "答案": "'
MIDDLE_DRAFT = '",\n  "分析": "'
# The pair a model's own frame is read from when it loads (see Checker.calibrate).
CALIBRATION_PAIR = ("你好", "你好，有什么可以帮你？")


@dataclass
class Request:
    """One submitted pair: what to judge, how, and where its outcome goes."""

    question: str
    response: str
    analysis: bool
    on_text: Callable[[str], None] | None
    future: Future[Verdict] = field(default_factory=Future)
    cancel: threading.Event | None = None
    """Set by the caller to stop the request wherever it is (a batch being stopped)."""
    on_window: Callable[[int, int], None] | None = None
    """`on_window(k, n)` before window k (0-based) of n of a response judged in windows."""

    def stopped(self) -> bool:
        """Whether the caller gave up on it (future cancelled, or its cancel event set)."""
        return self.future.cancelled() or (self.cancel is not None and self.cancel.is_set())


@dataclass
class PendingCheck:
    """A check past its verdict; its analysis, when one was asked for, still being written."""

    gen: Generation
    prompt_len: int
    label: str
    score: float
    truncated: bool
    t0: float
    opening: list[int]  # the frame tokens the model wrote before the label
    forced: list[int] = field(default_factory=list)  # the label's tokens, chosen by the score
    logits: np.ndarray | None = None  # for the next analysis token (None: nothing to write)
    stream: JsonStringStream | None = None  # the analysis text, fed to the caller as it grows
    written: int = 0  # analysis tokens written
    windows: int = 1  # windows the response was judged in
    window: int = 0  # the deciding window
    span: tuple[int, int] | None = None  # its characters in the response as given (None: one window)
    normalized: bool = False  # normalization changed the judged text

    @property
    def seq(self) -> int:
        """The sequence the check runs in."""
        return self.gen.seq

    @property
    def writing(self) -> bool:
        """Whether an analysis is still to be written (`advance` until it is not)."""
        return self.stream is not None and self.logits is not None


class PromptTokenizer:
    """A model's tokenizer and chat template, as prompt planning (planning.Tokenizer) uses them."""

    def __init__(self, decoder: Decoder, template: ChatTemplate) -> None:
        self._decoder = decoder
        self._template = template
        self._before = decoder.tokenize(template.render(build_user_message("", "")).before,
                                        special=True, add_bos=True)

    def plain(self, text: str) -> list[int]:
        # NFC first, as the reference Qwen2.5 tokenizer does (llama.cpp's does not).
        return self._decoder.tokenize(unicodedata.normalize("NFC", text), special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._decoder.detokenize(tokens)

    def prompt(self, user_message: str) -> list[int]:
        rendered = self._template.render(user_message)
        # The template's own text may contain control tokens; the user's text is plain
        # text, so a response cannot smuggle in `<|im_end|>` and end its turn early.
        return (
            self._decoder.tokenize(rendered.before, special=True, add_bos=True)
            + self.plain(rendered.message)
            + self._decoder.tokenize(rendered.after, special=True)
        )

    def before(self) -> list[int]:
        return self._before


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Checker:
    """One model's checks over one llama.cpp context, sequence by sequence.

    A verdict's score is a function of the model file, the pair and the verdict-relevant
    settings alone: the prompt is always evaluated in the same blocks (header, question,
    response), and a block's KV state is reused only when it is bit-identical to a fresh
    evaluation (engine/decoding.py).
    """

    def __init__(self, model: llama.Model, ctx: llama.Context, info: GGUFInfo, settings: EngineSettings) -> None:
        self.info = info
        self.settings = settings
        self._model: llama.Model | None = model
        self._ctx: llama.Context | None = ctx
        self._sha256: str | None = None
        self.decoder = Decoder(model, ctx)
        self._template = ChatTemplate(
            model.chat_template(),
            bos_token=model.special_text(model.bos()),
            eos_token=model.special_text(model.eos()),
        )
        firsts = label_first_tokens(model.all_pieces())
        if not firsts[SAFE] or not firsts[UNSAFE]:
            raise ModelError(f"{info.path}: the vocabulary cannot spell the labels 安全/不安全")
        self.label_tokens = {k: np.array(sorted(v), dtype=np.int64) for k, v in firsts.items()}
        self._opening_draft = self.decoder.tokenize(OPENING_DRAFT)
        self._middle_draft = self.decoder.tokenize(MIDDLE_DRAFT)
        self.tokenizer = PromptTokenizer(self.decoder, self._template)
        self._header = planning.header_tokens(self.tokenizer)
        self._overhead = planning.overhead(self.tokenizer)
        self._ready_header()

    # ------------------------------------------------------------------ identity
    @property
    def closed(self) -> bool:
        return self._model is None

    def close(self) -> None:
        """Free the decoder, the context and the model."""
        if self._model is not None and self._ctx is not None:
            self.decoder.close()
            self._ctx.close()
            self._model.close()
            self._model = self._ctx = None

    def require_open(self) -> None:
        if self._model is None:
            raise LibraError("this Guard was closed")

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

    def provenance(self) -> dict[str, Any]:
        """What every verdict carries about how it was made."""
        return {
            "model": self.info.name,
            "model_sha256": self.model_sha256,
            "threshold": self.settings.threshold,
            "version": __version__,
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        }

    @property
    def opening_draft(self) -> tuple[int, ...]:
        """The frame tokens before the label this model writes (its calibrated draft)."""
        return tuple(self._opening_draft)

    @property
    def middle_draft(self) -> tuple[int, ...]:
        """The frame tokens between the label and the analysis this model writes."""
        return tuple(self._middle_draft)

    def set_drafts(self, opening: Sequence[int], middle: Sequence[int]) -> None:
        """Replace the frame drafts (a wrong guess costs time, never the output: tests prove it)."""
        self._opening_draft, self._middle_draft = list(opening), list(middle)

    # ------------------------------------------------------------------ prompt
    def judged_text(self, question: str, response: str) -> tuple[str, str, bool]:
        """The pair as judged (normalized unless the settings say not) and whether that changed it."""
        if not self.settings.normalize:
            return question, response, False
        q, r = normalize_text(question), normalize_text(response)
        return q, r, (q != question or r != response)

    def prompt_tokens(self, question: str, response: str) -> list[int]:
        """The exact prompt tokens a check would evaluate (normalized; without truncation)."""
        self.require_open()
        question, response, _ = self.judged_text(question, response)
        return self.tokenizer.prompt(build_user_message(question, response))

    def budget(self) -> int:
        """Tokens the question and response may take together in one sequence (planning.budget)."""
        return planning.budget(self.decoder.ctx_per_seq, self._overhead,
                               FRAME_RESERVE_TOKENS + self.settings.max_new_tokens, parallel=self.settings.parallel)

    def prompt_blocks(self, question: str, response: str) -> planning.PromptBlocks:
        """The canonical blocks of one (already fitted) pair's prompt (planning.prompt_blocks)."""
        return planning.prompt_blocks(question, response, self._header, self.tokenizer)

    # ------------------------------------------------------------------- a check
    def start(self, request: Request, seq: int, *, stop: Callable[[], bool] | None = None) -> PendingCheck:
        """Decide `request`'s verdict in sequence `seq` (every window scored when chunked).

        `stop()` is asked before each llama.cpp call; True raises `CheckCancelled` (a long
        response's windows are many calls, and a stop must not wait for all of them).
        The check returned is writing its analysis (`writing`) when one was asked for.
        """
        self.require_open()
        self.decoder.interrupt = stop
        try:
            return self._decide(request, seq)
        finally:
            self.decoder.interrupt = None

    def _decide(self, request: Request, seq: int) -> PendingCheck:
        t0 = time.perf_counter()
        q, r, normalized = self.judged_text(request.question, request.response)
        p = planning.plan(q, r, self.budget(), self.settings.long, self.tokenizer)
        best = 0
        if len(p.windows) > 1:
            # Every window scored back to back (the question's blocks are reused), then the
            # deciding one judged again with its analysis: the same blocks, the same score.
            scores = []
            for k, w in enumerate(p.windows):
                if request.on_window is not None:
                    request.on_window(k, len(p.windows))
                scores.append(self._judge_window(p.question, w.text, False, None, seq=seq,
                                                 truncated=p.truncated, t0=t0).score)
            best = int(np.argmax(scores))
        pending = self._judge_window(p.question, p.windows[best].text, request.analysis, request.on_text, seq=seq,
                                     truncated=p.truncated, t0=t0)
        pending.windows, pending.window, pending.normalized = len(p.windows), best, normalized
        if len(p.windows) > 1:
            span = p.windows[best].span
            pending.span = map_span(request.response, span) if normalized and r != request.response else span
        return pending

    def _judge_window(
        self, question: str, response: str, analysis: bool, on_text: Callable[[str], None] | None, *,
        seq: int, truncated: bool, t0: float,
    ) -> PendingCheck:
        """Evaluate one prompt in sequence `seq` in its canonical blocks; decide the verdict."""
        dec = self.decoder
        prep = self.prompt_blocks(question, response)
        held = dec.reuse(prep.blocks, seq)
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
        score = self._score(logits)
        label = label_at(score, self.settings.threshold)  # the one rule: unsafe at or above the threshold
        pending = PendingCheck(gen, len(prep.prompt), label, score, truncated, t0, opening=gen.tokens[:])
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
        pending.logits = gen.advance(
            pending=forced,
            draft=self._middle_draft,
            done=lambda text: ANALYSIS_OPENED.search(text) is not None,
            reject=None,
            limit=MAX_FRAME_TOKENS,
        )
        pending.stream = JsonStringStream(on_text)
        pending.stream.feed(gen.text)  # a token may already have run into the analysis
        return pending

    def advance(self, pendings: Sequence[PendingCheck]) -> None:
        """One analysis token for each check still `writing`, in one batch.

        A check stops writing at the end of its JSON, at the token cap (`max_new_tokens`)
        or at the end of its sequence's context (then `analysis_cut`).
        """
        dec = self.decoder
        cap = self.settings.max_new_tokens
        going: list[PendingCheck] = []
        for p in pendings:
            if p.stream is None or p.logits is None:
                continue
            if p.written >= cap or len(dec.kv[p.seq]) >= dec.ctx_per_seq:
                self._stop_writing(p)
                continue
            p.written += 1
            if not p.gen.step(p.logits, p.stream):
                p.logits = None
            elif p.written >= cap:  # nothing follows this token: no need to evaluate it
                self._stop_writing(p)
            else:
                going.append(p)
        if going:
            rows = dec.decode_each([(p.seq, p.gen.tokens[-1]) for p in going])
            for p, row in zip(going, rows):
                p.logits = row

    @staticmethod
    def _stop_writing(p: PendingCheck) -> None:
        p.gen.cut = p.stream is not None and not p.stream.closed
        p.logits = None

    def finish(self, p: PendingCheck) -> Verdict:
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
            label=p.label, unsafe=p.label == UNSAFE, score=p.score, analysis=text, raw=raw,
            truncated=p.truncated, timings=timings, analysis_cut=gen.cut, windows=p.windows,
            window=p.window, span=p.span, normalized=p.normalized, provenance=self.provenance(),
        )

    def forget(self, seq: int | None = None) -> None:
        """Drop the cached prompt blocks of `seq` (every sequence when None)."""
        self.decoder.forget(seq)

    def _score(self, logits: np.ndarray) -> float:
        """P(unsafe) = mass of 不安全's first tokens / mass of both labels' first tokens."""
        top = float(np.max(logits))
        unsafe = float(np.exp(logits[self.label_tokens[UNSAFE]].astype(np.float64) - top).sum())
        safe = float(np.exp(logits[self.label_tokens[SAFE]].astype(np.float64) - top).sum())
        if unsafe + safe == 0.0:  # both underflowed: no evidence either way
            return 0.5
        return unsafe / (unsafe + safe)

    # -------------------------------------------------- calibration, header cache
    def calibrate(self) -> None:
        """Fix this model's frame drafts: the frame it writes for one fixed pair.

        The drafts are evaluated in the same batch as the response block, so they are part
        of every verdict's batch shape: they must never depend on what ran before. They
        are a function of the model file alone: the frame the model writes for
        CALIBRATION_PAIR, in the authors' layout unless the model prefers another. (A
        Libra-Guard writes the authors' layout; a model that does not would otherwise pay
        one forward pass per frame token on every check.) This also evaluates the header
        block, which every check reuses.
        """
        pending = self._judge_window(*CALIBRATION_PAIR, True, None, seq=0, truncated=False, t0=time.perf_counter())
        middle = pending.gen.tokens[len(pending.opening) + len(pending.forced):]
        if AT_VERDICT.search(self.decoder.detokenize(pending.opening)):
            self._opening_draft = pending.opening
        if middle and ANALYSIS_OPENED.search(pending.gen.text):
            self._middle_draft = middle
        self.decoder.truncate(self.decoder.blocks[0][0].end if self.decoder.blocks[0] else 0, 0)

    def _ready_header(self) -> None:
        """Calibrate (`calibrate`), or put back what an earlier process saved of it.

        The header block's KV state and the frame drafts are a function of the model file,
        the llama.cpp build and the verdict settings the key names (`state_key`): the
        first process to load a model saves them (engine/header_state.py), the next ones
        restore them: the same bytes in the same cells, so every score is bit-identical.
        A file that does not match exactly is ignored and rewritten; `--verbose` says so
        in one line on stderr; a data folder that cannot be written costs only the time.
        """
        if not header_state.enabled():
            self.calibrate()
            return
        key = self.state_key()
        path = header_state.path_for(key)
        why = self._restore_header(path, key)
        if why is None:
            self._note(f"header state restored from {path}")
            return
        self.calibrate()
        try:
            blocks, state = self.decoder.held_state(0)
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
            saved = header_state.read(path, key, n_vocab=self.decoder.n_vocab)
        except FileNotFoundError:
            return ""
        except header_state.Rejected as exc:
            return str(exc)
        # The block calibration evaluates (the calibration pair's header block).
        expected = self.prompt_blocks(*CALIBRATION_PAIR).blocks[0]
        if saved.header != expected.tokens:
            return "its header block is not this prompt's"
        if not self.decoder.restore([expected], saved.state, 0):
            return "llama.cpp refused its state"
        self.set_drafts(saved.opening_draft, saved.middle_draft)
        return None

    def state_key(self) -> dict[str, Any]:
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
            "prompt": self.tokenizer.prompt(build_user_message(*CALIBRATION_PAIR)),
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
            "n_seq": self.decoder.n_seq,
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


__all__ = ["CALIBRATION_PAIR", "Checker", "PendingCheck", "PromptTokenizer", "Request"]
