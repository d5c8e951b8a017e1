"""Greedy grammar-constrained decoding over one llama.cpp context, in a canonical schedule.

llama.cpp's CPU kernels give bit-identical results for the same batch shapes only: the
same prompt evaluated whole, or split into two batches at another place, gives logits
that differ in the last bits (and, near 0.5, a different verdict). So the tokens that
decide a verdict are always evaluated in the same blocks, whatever ran before:

1. the header (template prefix and the fixed instructions), one batch;
2. the question, one batch;
3. the response and the template's closing tokens, with a fixed draft of the JSON
   frame that precedes the verdict, one batch.

A block's KV state is reused only when the sequence (or another sequence, by copy)
holds exactly the same blocks before it, evaluated the same way: reuse then gives the
bit-identical state a fresh evaluation would. Blocks never mix sequences. The header
block's state may also come from an earlier process (`Decoder.restore`, saved by the
header-state cache, engine/header_state.py): the bytes that evaluation wrote, put back
in the same cells.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from libra_edge.engine import llama
from libra_edge.engine.grammar import VERDICT_GRAMMAR
from libra_edge.errors import LibraError


# Candidates the grammar is asked about before the whole vocabulary (Decoder.greedy).
GREEDY_CANDIDATES = (64, 4096)


@dataclass(frozen=True)
class Block:
    """A run of prompt tokens evaluated as one batch, at a fixed place in the prompt."""

    start: int
    tokens: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


class CheckCancelled(LibraError):
    """A check stopped before its verdict because its caller asked (a batch being stopped).

    Raised between two llama.cpp calls, never inside one: what the sequence holds stays a
    record of whole blocks plus tokens past them, which the next check drops, so a later
    check of the same pair gets the same blocks and the same score.
    """

    def __init__(self, message: str = "stopped before its verdict") -> None:
        super().__init__(message)


class Decoder:
    """One llama.cpp context: a grammar per sequence and the record of each KV stream.

    Each sequence has its own KV stream of `ctx_per_seq` cells (the context is not
    unified), holding a list of evaluated blocks followed by generated tokens.
    """

    def __init__(self, model: llama.Model, ctx: llama.Context) -> None:
        self.model = model
        self.ctx = ctx
        self.n_vocab = model.n_vocab
        self.n_seq = ctx.n_seq
        self.ctx_per_seq = ctx.n_ctx_seq  # llama.cpp's llama_n_ctx_seq
        self._grammars = [llama.Grammar(model, VERDICT_GRAMMAR) for _ in range(self.n_seq)]
        # Per sequence: the prompt blocks whose KV state it holds, then every token it holds.
        self.blocks: list[list[Block]] = [[] for _ in range(self.n_seq)]
        self.kv: list[list[int]] = [[] for _ in range(self.n_seq)]
        self.interrupt: Callable[[], bool] | None = None
        """Asked before every llama.cpp call of `evaluate`; True raises CheckCancelled (set by
        the scheduler for the check it is admitting: a long response's windows and frame
        tokens are many calls, and a stop must not wait for all of them)."""

    def close(self) -> None:
        """Free the grammar samplers (the context is freed by its owner)."""
        for g in self._grammars:
            g.close()
        self._grammars = []

    # ---------------------------------------------------------------- vocabulary
    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; `special` lets control-token text become control tokens."""
        if not text and not add_bos:
            return []
        return self.model.tokenize(text.encode("utf-8"), add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`; a character cut in half at either end is dropped."""
        return self.model.detokenize(tokens).decode("utf-8", errors="ignore")

    def piece(self, token: int) -> bytes:
        """The bytes one token decodes to (control tokens: empty)."""
        return self.model.piece(token)

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, `<|im_end|>`...)."""
        return self.model.is_eog(token)

    # ------------------------------------------------------------------ KV state
    def forget(self, seq: int | None = None) -> None:
        """Drop the KV state of `seq` (all sequences when None)."""
        for s in range(self.n_seq) if seq is None else (seq,):
            self.truncate(0, s)

    def truncate(self, n: int, seq: int = 0) -> None:
        """Forget `seq`'s KV state from position `n` on (and the blocks it cuts)."""
        if n < len(self.kv[seq]):
            self.ctx.seq_rm(seq, n)
            del self.kv[seq][n:]
        self.blocks[seq] = [b for b in self.blocks[seq] if b.end <= n]

    def held_state(self, seq: int) -> tuple[tuple[Block, ...], bytes]:
        """The blocks `seq` holds and llama.cpp's bytes for their KV state (the header-state cache).

        `seq` must hold whole blocks and nothing past them, so the bytes are exactly the
        state those blocks' evaluation wrote.
        """
        blocks = tuple(self.blocks[seq])
        if not blocks or blocks[-1].end != len(self.kv[seq]):
            raise RuntimeError(f"sequence {seq} holds {len(self.kv[seq])} tokens, not whole blocks")
        return blocks, llama.seq_state(self.ctx, seq)

    def restore(self, blocks: Sequence[Block], state: bytes, seq: int) -> bool:
        """Make `seq` hold `blocks` from their saved KV state (`held_state` of an earlier process).

        The bytes are the cells a fresh evaluation of the blocks wrote, put back in the
        same cells, so what follows computes exactly as after that evaluation. False, and
        `seq` left empty, when llama.cpp refuses the bytes or they do not hold exactly
        the blocks' positions.
        """
        tokens: list[int] = []
        for block in blocks:
            if block.start != len(tokens):
                raise RuntimeError(f"block at {block.start} after {len(tokens)} tokens")
            tokens.extend(block.tokens)
        self.forget(seq)
        if not tokens or len(tokens) > self.ctx_per_seq or not llama.set_seq_state(self.ctx, seq, state):
            return False
        if llama.seq_positions(self.ctx, seq) != (0, len(tokens) - 1):
            self.ctx.seq_rm(seq, 0)
            return False
        self.kv[seq] = tokens
        self.blocks[seq] = list(blocks)
        return True

    def _room(self, seq: int, n: int) -> None:
        if len(self.kv[seq]) + n > self.ctx_per_seq:
            raise RuntimeError(f"context overflow: {len(self.kv[seq]) + n} > {self.ctx_per_seq} tokens")

    def reuse(self, blocks: Sequence[Block], seq: int) -> int:
        """Make `seq` hold the longest leading run of `blocks` any sequence holds; return it.

        The run is taken in place when `seq` holds it, else copied from the sequence
        that does (across KV streams llama.cpp copies whole streams only, so the rest is
        dropped after the copy). Returns how many blocks are now held.
        """
        def held(s: int) -> int:
            n = 0
            for have, want in zip(self.blocks[s], blocks):
                if have != want:
                    break
                n += 1
            return n

        best, source = held(seq), seq
        for other in range(self.n_seq):
            if other != seq and (n := held(other)) > best:
                best, source = n, other
        keep = blocks[best - 1].end if best else 0
        if source == seq:
            self.truncate(keep, seq)
        else:
            self.ctx.seq_rm(seq, 0)
            self.ctx.seq_cp(source, seq)
            self.kv[seq] = self.kv[source][:]
            self.blocks[seq] = self.blocks[source][:]
            self.truncate(keep, seq)
        return best

    def evaluate(self, tokens: Sequence[int], seq: int, *, logits_from: int) -> list[np.ndarray]:
        """Evaluate `tokens` after `seq`'s KV state as one block; logits for tokens[logits_from:].

        A block of more than `llama.UBATCH` tokens is cut into calls of that many tokens,
        counted from the block's start: the same cuts whenever the block is evaluated.
        """
        self._room(seq, len(tokens))
        rows: list[np.ndarray] = []
        step = self.ctx.n_batch
        for start in range(0, len(tokens), step):
            if self.interrupt is not None and self.interrupt():
                raise CheckCancelled()
            n_past = len(self.kv[seq])
            chunk = tokens[start : start + step]
            entries = [(seq, tok, n_past + i, start + i >= logits_from) for i, tok in enumerate(chunk)]
            rows.extend(self.ctx.decode(entries))
            self.kv[seq].extend(chunk)
        return rows

    def evaluate_block(self, block: Block, seq: int) -> None:
        """Evaluate a prompt block (no logits kept) and record it as held."""
        if len(self.kv[seq]) != block.start:
            raise RuntimeError(f"block at {block.start} evaluated after {len(self.kv[seq])} tokens")
        self.evaluate(block.tokens, seq, logits_from=len(block.tokens))
        self.blocks[seq].append(block)

    def decode_each(self, steps: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """One token for each of several sequences, in one batch: [(seq, token)] -> logits."""
        for seq, _tok in steps:
            self._room(seq, 1)
        rows = self.ctx.decode([(seq, tok, len(self.kv[seq]), True) for seq, tok in steps])
        for seq, tok in steps:
            self.kv[seq].append(tok)
        return rows

    # ------------------------------------------------------------------- grammar
    def reset_grammar(self, seq: int) -> None:
        """Start `seq`'s grammar over."""
        self._grammars[seq].reset()

    def accept(self, token: int, seq: int = 0) -> None:
        """Advance `seq`'s grammar past `token`."""
        self._grammars[seq].accept(token)

    def greedy(self, logits: np.ndarray, text: str, reject: Callable[[str], bool] | None, seq: int = 0) -> int:
        """The likeliest token the grammar admits (and `reject(text + piece)` does not refuse).

        Ties go to the lowest token id, as `np.argmax` breaks them.
        """
        grammar = self._grammars[seq]
        best = int(np.argmax(logits))
        if grammar.allows(best, float(logits[best])) and not self._refused(best, text, reject):
            return best
        # The grammar is asked about the likeliest tokens first, then the whole vocabulary:
        # a grammar pass over 150k tokens costs tens of milliseconds, over a few hundred,
        # microseconds. Exact: a token outside the top k has a lower logit than each in it.
        for k in GREEDY_CANDIDATES:
            if k >= len(logits):
                break
            top = np.argpartition(logits, -k)[-k:]
            floor = float(logits[top].min())
            allowed = grammar.allowed_among(logits, top)
            # Highest logit first, lowest id among equals (np.argmax's order).
            for tok in sorted((int(t) for t in allowed), key=lambda t: (-float(logits[t]), t)):
                if float(logits[tok]) <= floor:
                    break  # a token outside the top k may tie with it: decide over the whole vocabulary
                if not self._refused(tok, text, reject):
                    return tok
        masked = grammar.mask(logits)
        while True:
            best = int(np.argmax(masked))
            if masked[best] == -np.inf:
                raise RuntimeError("the grammar admits no token here")
            if not self._refused(best, text, reject):
                return best
            masked[best] = -np.inf

    def _refused(self, token: int, text: str, reject: Callable[[str], bool] | None) -> bool:
        if reject is None:
            return False
        return reject(text + self.piece(token).decode("utf-8", errors="ignore"))


class Generation:
    """One answer being generated in one sequence: its tokens and its text."""

    def __init__(self, decoder: Decoder, *, seq: int, reused: int) -> None:
        self._dec = decoder
        self.seq = seq
        self.reused = reused
        self.tokens: list[int] = []
        self._bytes = bytearray()
        self.prefill_s = 0.0
        self.cut = False  # the analysis string was cut by the token cap or the context's end

    @property
    def text(self) -> str:
        """The generated text so far (an unfinished UTF-8 character left out)."""
        return self._bytes.decode("utf-8", errors="ignore")

    def _take(self, token: int) -> None:
        self.tokens.append(token)
        self._bytes += self._dec.piece(token)

    def force(self, tokens: Sequence[int]) -> None:
        """Append tokens chosen by the caller (the grammar must admit them)."""
        for tok in tokens:
            self._dec.accept(tok, self.seq)
            self._take(tok)

    def advance(
        self,
        *,
        pending: Sequence[int],
        draft: Sequence[int],
        done: Callable[[str], bool],
        reject: Callable[[str], bool] | None,
        limit: int,
    ) -> np.ndarray:
        """Evaluate `pending` + `draft` in one batch, then decode greedily until `done(text)`.

        `draft` is a fixed guess of the next tokens, the same for every pair, so the batch
        shape depends on the pair alone. Each draft token is kept only while it equals the
        greedy, grammar-admitted choice: the output is exactly greedy decoding. Returns
        the logits for the position after the last token.
        """
        dec, seq = self._dec, self.seq
        t0 = time.perf_counter()
        rows = dec.evaluate([*pending, *draft], seq, logits_from=len(pending) - 1)
        if not self.prefill_s:
            self.prefill_s = time.perf_counter() - t0
        logits = rows[0]
        kept: int | None = 0
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
            logits = dec.evaluate([tok], seq, logits_from=0)[0]
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
        if stream.closed and self.text.rstrip().endswith("}"):
            try:
                json.loads(self.text)
                return False
            except ValueError:
                pass
        return True


class JsonStringStream:
    """Feeds the decoded value of the `分析` string to a callback as it grows."""

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        self._callback = callback
        self._start: int | None = None
        self._sent = 0
        self.closed = False

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
        value, closed = json_string_prefix(body)
        self.closed = closed
        if len(value) > self._sent:
            piece = value[self._sent :]
            self._sent = len(value)
            if self._callback is not None:
                self._callback(piece)


def json_string_prefix(body: str) -> tuple[str, bool]:
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
