"""Greedy grammar-constrained decoding over one llama.cpp context, with KV prefix reuse."""

from __future__ import annotations

import codecs
import ctypes
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .grammar import VERDICT_GRAMMAR

_NEG_INF = float("-inf")


class Decoder:
    """Owns the batch, one grammar sampler per sequence and the record of the KV cache.

    Sequence 0 carries the last check's prompt, whose prefix (the instruction header)
    other sequences copy; sequences 1..n_seq-1 serve parallel analyses. Each sequence has
    its own KV stream of `n_ctx_seq` cells (the context is not unified).
    """

    def __init__(self, model: Any, ctx: Any, *, n_batch: int, n_ctx: int, n_seq: int = 1) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self._model = model
        self._ctx = ctx.ctx
        self._vocab = model.vocab
        self.n_vocab: int = model.n_vocab()
        self.n_batch = n_batch
        self.n_seq = n_seq
        self.n_ctx_seq: int = llama_cpp.llama_n_ctx_seq(self._ctx) if n_seq > 1 else n_ctx
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._grammars = [
            llama_cpp.llama_sampler_init_grammar(self._vocab, VERDICT_GRAMMAR.encode("utf-8"), b"root")
            for _ in range(n_seq)
        ]
        if not all(self._grammars):
            raise RuntimeError("llama.cpp rejected the verdict grammar")
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # Tokens whose KV state sits in each sequence, in position order.
        self.kv: list[list[int]] = [[] for _ in range(n_seq)]
        # Reused arrays for the grammar: the whole vocabulary, and a single candidate.
        self._all = np.zeros(self.n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
        self._all["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._all_arr = llama_cpp.llama_token_data_array(
            data=self._all.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        self._one = np.zeros(1, dtype=self._all.dtype)
        self._one_arr = llama_cpp.llama_token_data_array(
            data=self._one.ctypes.data_as(llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False
        )

    def close(self) -> None:
        """Free the C objects this decoder allocated."""
        for g in self._grammars:
            self._lc.llama_sampler_free(g)
        self._grammars = []
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None

    # ---------------------------------------------------------------- vocabulary
    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; `special` lets control-token text become control tokens."""
        if not text and not add_bos:
            return []
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, special))

    def detokenize(self, tokens: list[int]) -> str:
        """Text of `tokens`; a character cut in half at either end is dropped."""
        raw = self._model.detokenize(tokens, special=False)
        return raw.decode("utf-8", errors="ignore")

    def piece(self, token: int) -> bytes:
        """The bytes one token decodes to (control tokens: empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            n = self._lc.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def special_text(self, token: int) -> str:
        """Text of a control token such as BOS/EOS ("" when the model has none)."""
        if token < 0:
            return ""
        n = self._lc.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, True)
        return self._piece_buf.raw[: max(n, 0)].decode("utf-8", errors="ignore")

    def all_pieces(self) -> list[tuple[int, bytes]]:
        """(id, bytes) for the whole vocabulary (about 0.1 s for 150k tokens)."""
        buf, fn, vocab = self._piece_buf, self._lc.llama_token_to_piece, self._vocab
        out = []
        for tok in range(self.n_vocab):
            n = fn(vocab, tok, buf, 256, 0, False)
            if n > 0:
                out.append((tok, buf.raw[:n]))
        return out

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, `<|im_end|>`...)."""
        return bool(self._lc.llama_vocab_is_eog(self._vocab, token))

    # ------------------------------------------------------------------ KV state
    @property
    def kv_tokens(self) -> list[int]:
        """Tokens in sequence 0's KV state."""
        return self.kv[0]

    def start(self, prompt: list[int], seq: int = 0) -> Generation:
        """Begin a generation after `prompt` in `seq`, keeping the common prefix's KV state.

        The longest prefix `prompt` shares with what any sequence holds is not evaluated
        again: kept in place when `seq` itself holds it (the previous check's header and
        question), else copied from the sequence that does (parallel analyses of several
        responses to one question share the header and the question).
        """
        limit = len(prompt) - 1  # re-run >= 1 token for logits
        keep, source = _common_prefix(self.kv[seq], prompt, limit), seq
        for other in range(self.n_seq):
            shared = _common_prefix(self.kv[other], prompt, limit) if other != seq else 0
            if shared > keep:
                keep, source = shared, other
        if source == seq:
            self.truncate(keep, seq)
        else:
            # Across KV streams llama.cpp copies whole streams only (the buffer copy runs at
            # the next decode): take all of `source`, then drop what follows the prefix.
            memory = self._lc.llama_get_memory(self._ctx)
            self._seq_rm(seq, 0)
            self._lc.llama_memory_seq_cp(memory, source, seq, -1, -1)
            self._seq_rm(seq, keep)
            self.kv[seq] = self.kv[source][:keep]
        self._lc.llama_sampler_reset(self._grammars[seq])
        return Generation(self, prompt[keep:], reused=keep, seq=seq)

    def _seq_rm(self, seq: int, start: int) -> None:
        self._lc.llama_memory_seq_rm(self._lc.llama_get_memory(self._ctx), seq, start, -1)

    def truncate(self, n: int, seq: int = 0) -> None:
        """Forget `seq`'s KV state from position `n` on."""
        if n < len(self.kv[seq]):
            self._seq_rm(seq, n)
            del self.kv[seq][n:]

    def _room(self, seq: int, n: int) -> None:
        if len(self.kv[seq]) + n > self.n_ctx_seq:
            raise RuntimeError(f"context overflow: {len(self.kv[seq]) + n} > {self.n_ctx_seq} tokens")

    def decode(self, tokens: list[int], logits_from: int, seq: int = 0) -> list[np.ndarray]:
        """Evaluate `tokens` after `seq`'s KV state; logits (copies) for tokens[logits_from:]."""
        self._room(seq, len(tokens))
        rows: list[np.ndarray] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            n_past = len(self.kv[seq])
            entries = [(seq, tok, n_past + i, start + i >= logits_from) for i, tok in enumerate(chunk)]
            rows.extend(self._run(entries))
            self.kv[seq].extend(chunk)
        return rows

    def decode_each(self, steps: list[tuple[int, int]]) -> list[np.ndarray]:
        """One token for each of several sequences, in one batch: [(seq, token)] -> logits."""
        for seq, _tok in steps:
            self._room(seq, 1)
        rows = self._run([(seq, tok, len(self.kv[seq]), True) for seq, tok in steps])
        for seq, tok in steps:
            self.kv[seq].append(tok)
        return rows

    def _run(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        batch = self._batch
        wanted = []
        for i, (seq, tok, pos, want) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
            if want:
                wanted.append(i)
        batch.n_tokens = len(entries)
        rc = self._lc.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        return [
            np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,)).copy()
            for i in wanted
        ]

    # ------------------------------------------------------------------- grammar
    def grammar_allows(self, token: int, logit: float, seq: int = 0) -> bool:
        """Whether the grammar, in its current state, admits `token` next."""
        self._one["id"][0] = token
        self._one["logit"][0] = logit
        self._one_arr.size = 1
        self._lc.llama_sampler_apply(self._grammars[seq], ctypes.byref(self._one_arr))
        return bool(self._one["logit"][0] != _NEG_INF)

    def grammar_mask(self, logits: np.ndarray, seq: int = 0) -> np.ndarray:
        """`logits` with every token the grammar forbids set to -inf."""
        self._all["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._all["logit"] = logits
        self._all_arr.size = self.n_vocab
        self._all_arr.sorted = False
        self._lc.llama_sampler_apply(self._grammars[seq], ctypes.byref(self._all_arr))
        masked = np.full(self.n_vocab, _NEG_INF, dtype=np.float32)
        n = self._all_arr.size
        masked[self._all["id"][:n]] = self._all["logit"][:n]
        return masked

    def accept(self, token: int, seq: int = 0) -> None:
        """Advance `seq`'s grammar past `token`."""
        self._lc.llama_sampler_accept(self._grammars[seq], token)

    def greedy(self, logits: np.ndarray, text: str, reject: Callable[[str], bool] | None, seq: int = 0) -> int:
        """The likeliest token the grammar admits (and `reject(text + piece)` does not refuse)."""
        best = int(np.argmax(logits))
        if self.grammar_allows(best, float(logits[best]), seq) and not self._refused(best, text, reject):
            return best
        masked = self.grammar_mask(logits, seq)
        while True:
            best = int(np.argmax(masked))
            if masked[best] == _NEG_INF:
                raise RuntimeError("the grammar admits no token here")
            if not self._refused(best, text, reject):
                return best
            masked[best] = _NEG_INF

    def _refused(self, token: int, text: str, reject: Callable[[str], bool] | None) -> bool:
        if reject is None:
            return False
        return reject(text + self.piece(token).decode("utf-8", errors="ignore"))


def _common_prefix(held: list[int], prompt: list[int], limit: int) -> int:
    """How many leading tokens of `prompt` (at most `limit`) `held` starts with."""
    n, end = 0, min(limit, len(held))
    while n < end and held[n] == prompt[n]:
        n += 1
    return n


class Generation:
    """One answer being generated: its tokens, its text, and the prompt still to evaluate."""

    def __init__(self, decoder: Decoder, pending_prompt: list[int], *, reused: int, seq: int = 0) -> None:
        self._dec = decoder
        self.seq = seq
        self._pending_prompt = pending_prompt
        self.reused = reused
        self.tokens: list[int] = []
        self._bytes = bytearray()
        self.prefill_s = 0.0

    @property
    def text(self) -> str:
        """The generated text so far (an unfinished UTF-8 character left out)."""
        return self._bytes.decode("utf-8", errors="ignore")

    def _take(self, token: int) -> None:
        self.tokens.append(token)
        self._bytes += self._dec.piece(token)

    def force(self, tokens: list[int]) -> None:
        """Append tokens chosen by the caller (the grammar must admit them)."""
        for tok in tokens:
            self._dec.accept(tok, self.seq)
            self._take(tok)

    def advance(
        self,
        *,
        pending: list[int],
        draft: list[int],
        done: Callable[[str], bool],
        reject: Callable[[str], bool] | None,
        limit: int,
    ) -> np.ndarray:
        """Evaluate `pending` tokens, then decode greedily until `done(text)`.

        `draft` is a guess of the next tokens (what the model produced last time). It is
        evaluated in the same batch and each token kept only while it equals the greedy,
        grammar-admitted choice: the output is exactly greedy decoding, in fewer passes.
        Returns the logits for the position after the last token.
        """
        dec = self._dec
        pending = self._pending_prompt + pending
        self._pending_prompt = []
        t0 = time.perf_counter()
        seq = self.seq
        rows = dec.decode(pending + draft, logits_from=len(pending) - 1, seq=seq)
        if not self.prefill_s:
            self.prefill_s = time.perf_counter() - t0
        logits = rows[0]
        kept = 0
        steps = 0
        while not done(self.text):
            steps += 1
            if steps > limit:
                raise RuntimeError(f"no JSON frame after {limit} tokens: {self.text!r}")
            tok = dec.greedy(logits, self.text, reject, seq)
            dec.accept(tok, seq)
            self._take(tok)
            if kept is not None and kept < len(draft) and draft[kept] == tok:
                kept += 1
                logits = rows[kept]
                continue
            if kept is not None:  # the guess ended or went wrong: drop the rest of it
                dec.truncate(len(dec.kv[seq]) - (len(draft) - kept), seq)
                kept = None
            logits = dec.decode([tok], logits_from=0, seq=seq)[0]
        if kept is not None and kept < len(draft):
            dec.truncate(len(dec.kv[seq]) - (len(draft) - kept), seq)
        return logits

    def step(self, logits: np.ndarray, stream: JsonStringStream) -> bool:
        """Choose and take the next analysis token; False once the answer is complete."""
        dec = self._dec
        tok = dec.greedy(logits, self.text, None, self.seq)
        if dec.is_eog(tok):
            return False
        dec.accept(tok, self.seq)
        self._take(tok)
        stream.feed(self.text)
        if stream.closed and self.text.endswith("}"):
            try:
                json.loads(self.text)
                return False
            except ValueError:
                pass
        return True


def finish_all(
    decoder: Decoder, work: list[tuple[Generation, np.ndarray, JsonStringStream]], max_tokens: int
) -> None:
    """Decode the analyses of several generations together, one batch per step.

    Each stops at the end of its JSON object, at EOG, or after `max_tokens` tokens.
    A step for N sequences costs less than N single steps where llama.cpp's batched
    kernels have headroom (memory-bound CPUs, GPUs); on a 2-core CPU, 16 sequences
    decode about twice as many tokens per second as one.
    """
    logits = {id(g): row for g, row, _ in work}
    active = list(work)
    for _ in range(max_tokens):
        active = [(g, row, s) for g, row, s in active if g.step(logits[id(g)], s)]
        if not active:
            return
        rows = decoder.decode_each([(g.seq, g.tokens[-1]) for g, _, _ in active])
        for (g, _, _), row in zip(active, rows):
            logits[id(g)] = row


class JsonStringStream:
    """Feeds the decoded value of the `分析` string to a callback as it grows."""

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        self._callback = callback
        self._start: int | None = None
        self._sent = 0
        self._decoded = ""
        self.closed = False
        self._decoder = codecs.getincrementaldecoder("utf-8")

    def feed(self, text: str) -> None:
        """`text` is the whole generation so far; emits the new part of the analysis."""
        if self._start is None:
            idx = text.find('"分析"')
            if idx < 0:
                return
            colon = text.find(":", idx + 4)
            quote = text.find('"', colon + 1) if colon >= 0 else -1
            if quote < 0:
                return
            self._start = quote + 1
        body = text[self._start :]
        value, closed = _json_string_prefix(body)
        self.closed = closed
        if len(value) > self._sent:
            piece = value[self._sent :]
            self._sent = len(value)
            if self._callback is not None:
                self._callback(piece)


def _json_string_prefix(body: str) -> tuple[str, bool]:
    """Decode the JSON string content at the start of `body`; (text so far, closed?)."""
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == '"':
            return "".join(out), True
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            break
        esc = body[i + 1]
        if esc == "u":
            if i + 6 > n:
                break
            try:
                out.append(json.loads('"' + body[i : i + 6] + '"'))
            except ValueError:
                out.append(body[i : i + 6])
            i += 6
        else:
            out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(esc, esc))
            i += 2
    return "".join(out), False
