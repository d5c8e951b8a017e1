"""Exact batching across items (issue 28, part 3): does a row's logits depend on the other sequences in its decode?

    .venv/bin/python tests/benchmarks/bench_exact_batching.py MODEL.gguf [MODEL.gguf ...]
        [--slots 4] [--bucket 96] [--reps 3] [--random-items 24] [--threads 1,2]
        [--layouts packed,bucket,bucket+outs,bucket+outs/1ub] [--no-libra] [--seed 0]

A fast batch evaluates each item's prompt alone, in canonical blocks of its own sequence
(engine/decoding.py). This measures whether blocks of several sequences could share one
llama_decode without changing a bit, on the engine's own pieces (`llama.open_model`,
`Context.decode`, one KV stream per sequence, flash attention off).

Items: a prefix (already in the sequence's KV cache, evaluated alone as the engine does,
then put back with `set_seq_state`) and a block evaluated after it. Random items have
random tokens (prefix 0-600, block 1-BUCKET tokens); Libra items (from `Guard.load`, when
the model has a usable template) are the engine's own blocks: the question block after the
header, and the response block plus the opening JSON-frame draft after header + question.

Layouts, each compared row by row with references evaluated alone in the same context:
  packed            blocks of 1..SLOTS items back to back, no padding (total varies);
  bucket            slot k = batch rows [k*B, k*B+B): the item's block, then padding rows
                    of its own sequence at later positions (causal: the real rows never
                    see them; removed with seq_rm afterwards); unused slots hold a filler
                    sequence of B tokens; logits for the real rows only; total = SLOTS*B;
  bucket+outs       the same, logits requested for every row (a fixed number of outputs);
  bucket+outs/1ub   the same in a context with n_ubatch = n_batch = SLOTS*B.
Sequence ids are shuffled across slots in every decode; pad and filler tokens are drawn
anew every decode.

Columns (counts of rows, or blocks, that are NOT bit-identical; np.array_equal): rows: real
rows compared; !=alone: rows differing from the block alone in a decode of its own (packed:
exactly its tokens; bucket*: itself plus its padding, B rows, same outputs requested) and
max|d| their largest logit difference; !=today: rows differing from the block alone,
unpadded, in the 512-token context (the engine's present shape; every row's logits
requested); unstable: rows that differ from the item's first appearance in this layout,
over its later appearances (other compositions, other slots, other sequence ids); kv!=:
blocks whose KV state bytes (after removing padding, re-read through sequence 0) differ
from the alone evaluation's (what a question block, evaluated for its KV only, needs).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from libra_edge.engine import llama  # noqa: E402

LAYOUTS = ("packed", "bucket", "bucket+outs", "bucket+outs/1ub")


@dataclass
class Item:
    name: str
    prefix: list[int]
    block: list[int]
    state: dict[tuple[int, int], bytes | None] = field(default_factory=dict)  # per context key


def random_items(n: int, n_vocab: int, bucket: int, rng: random.Random) -> list[Item]:
    out = []
    hi = min(n_vocab, 150_000)
    for i in range(n):
        # Prefixes of 0 to 600 tokens: the KV length every row of a decode attends over is
        # the longest stream's (rounded up), so it changes with the composition.
        p = rng.choice([0, rng.randint(1, 40), rng.randint(40, 150), rng.randint(150, 600)])
        b = rng.randint(1, bucket)
        out.append(Item(f"rand{i}", [rng.randrange(10, hi) for _ in range(p)], [rng.randrange(10, hi) for _ in range(b)]))
    return out


def libra_items(path: Path, bucket: int) -> tuple[list[Item], str]:
    from libra_edge.bench import BENCH_PAIRS
    from libra_edge.engine.guard import Guard

    try:
        guard = Guard.load(path, threads=1)
    except Exception as exc:  # a model without a usable chat template, say
        return [], f"no Libra items ({type(exc).__name__}: {exc})"
    items = []
    try:
        draft = list(guard._checker.opening_draft)
        for k, (q, r) in enumerate(BENCH_PAIRS):
            p = guard._checker.prompt_blocks(q, r)
            header = list(p.blocks[0].tokens)
            question = list(p.blocks[1].tokens) if len(p.blocks) > 1 else []
            response = list(p.rest) + draft
            if question and len(question) <= bucket:
                items.append(Item(f"libra{k}.q", header, question))
            if len(response) <= bucket:
                items.append(Item(f"libra{k}.r", header + question, response))
    finally:
        guard.close()
    return items, f"{len(items)} Libra blocks (header {len(header)} tokens)"


class Runner:
    def __init__(self, model: llama.Model, *, threads: int, slots: int, bucket: int, ubatch: int) -> None:
        old = llama.UBATCH
        llama.UBATCH = ubatch  # Context reads it for n_batch and n_ubatch
        try:
            self.ctx = llama.Context(model, ctx_per_seq=1024, n_seq=slots, threads=threads)
        finally:
            llama.UBATCH = old
        self.key = (threads, ubatch)
        self.slots, self.bucket = slots, bucket

    def close(self) -> None:
        self.ctx.close()

    def load(self, seq: int, item: Item) -> int:
        """Make `seq` hold exactly `item`'s prefix (its alone-evaluated state); the prefix length."""
        self.ctx.seq_rm(seq, 0)
        if self.key not in item.state:
            if item.prefix:
                step = self.ctx.n_batch  # cut as the engine cuts a long block
                for a in range(0, len(item.prefix), step):
                    self.ctx.decode([(seq, t, a + i, False) for i, t in enumerate(item.prefix[a:a + step])])
                item.state[self.key] = llama.seq_state(self.ctx, seq)
            else:
                item.state[self.key] = None
            return len(item.prefix)
        state = item.state[self.key]
        if state is not None and not llama.set_seq_state(self.ctx, seq, state):
            raise RuntimeError("set_seq_state refused")
        return len(item.prefix)

    def decode(self, slots: list[tuple[int, Item | None, bool]], *, pad: bool, outs: bool,
               rng: random.Random) -> list[tuple[list[np.ndarray], bytes]]:
        """One llama_decode of the slots [(seq, item or None for filler, ...)]; per real slot (rows, kv bytes)."""
        entries: list[tuple[int, int, int, bool]] = []
        want_idx: list[tuple[int, int]] = []  # (slot index, row in block) for each wanted row, in order
        ends = {}
        for k, (seq, item, _) in enumerate(slots):
            if item is None:
                self.ctx.seq_rm(seq, 0)
                for j in range(self.bucket):
                    entries.append((seq, rng.randrange(10, 30000), j, outs))
                    if outs:
                        want_idx.append((k, -1))
                continue
            p = self.load(seq, item)
            for i, t in enumerate(item.block):
                entries.append((seq, t, p + i, True))
                want_idx.append((k, i))
            ends[k] = p + len(item.block)
            if pad:
                for j in range(self.bucket - len(item.block)):
                    entries.append((seq, rng.randrange(10, 30000), p + len(item.block) + j, outs))
                    if outs:
                        want_idx.append((k, -1))
        rows = self.ctx.decode(entries)
        per: dict[int, list[np.ndarray]] = {k: [] for k in ends}
        for (k, i), r in zip(want_idx, rows):
            if i >= 0:
                per[k].append(r)
        raw = []
        for k, (seq, item, _) in enumerate(slots):
            if item is None:
                continue
            self.ctx.seq_rm(seq, ends[k])
            raw.append((per[k], llama.seq_state(self.ctx, seq)))
        # The serialized state names the sequence id: put each into sequence 0 and read it
        # back, so states from different sequences compare by their cells and K/V bytes.
        out = []
        for rows_k, state in raw:
            self.ctx.seq_rm(0, 0)
            if not llama.set_seq_state(self.ctx, 0, state):
                raise RuntimeError("set_seq_state refused")
            out.append((rows_k, llama.seq_state(self.ctx, 0)))
        return out


@dataclass
class Tally:
    rows: int = 0
    eq_alone: int = 0
    max_alone: float = 0.0
    eq_today: int = 0
    max_today: float = 0.0
    kv_eq: int = 0
    blocks: int = 0
    decodes: int = 0
    seen: dict[str, list[np.ndarray]] = field(default_factory=dict)
    stable_rows: int = 0
    stable_total: int = 0


def compare(t: Tally, got: list[np.ndarray], ref: list[np.ndarray], which: str) -> None:
    for g, r in zip(got, ref):
        same = np.array_equal(g, r)
        d = float(np.max(np.abs(g - r)))
        if which == "alone":
            t.eq_alone += same
            t.max_alone = max(t.max_alone, d)
        else:
            t.eq_today += same
            t.max_today = max(t.max_today, d)


def plan(items: list[Item], slots: int, reps: int, rng: random.Random) -> list[list[Item | None]]:
    """Decodes: each a list of `slots` entries (an item or None = filler); every item `reps` times."""
    occ = [it for it in items for _ in range(reps)]
    rng.shuffle(occ)
    decodes = []
    while occ:
        n = rng.randint(1, slots)
        take, occ = occ[:n], occ[n:]
        row: list[Item | None] = [*take, *([None] * (slots - len(take)))]
        rng.shuffle(row)
        decodes.append(row)
    return decodes


def run_model(path: Path, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    model = llama.Model(path, gpu_layers=0, mmap=True)
    items = random_items(args.random_items, model.n_vocab, args.bucket, rng)
    note = "Libra items off"
    if not args.no_libra:
        lib_items, note = libra_items(path, args.bucket)
        items += lib_items
    print(f"\n## {path.name}: {len(items)} items ({note}); slots {args.slots} x bucket {args.bucket} = "
          f"{args.slots * args.bucket} rows; CPU kernels {llama.cpu_variant()}", flush=True)
    print(f"{'layout':<16} {'thr':>3} {'ubatch':>6} {'decodes':>7} {'rows':>6} {'!=alone':>7} {'max|d|':>9} "
          f"{'!=today':>7} {'max|d|':>9} {'unstable':>8} {'kv!=':>5} {'s':>5}", flush=True)
    today_by_thread: dict[int, dict[str, list[np.ndarray]]] = {}
    total = args.slots * args.bucket
    for threads in args.threads:
        base = Runner(model, threads=threads, slots=args.slots, bucket=args.bucket, ubatch=llama.UBATCH)
        # Today's engine: the block alone, unpadded, in the 512-token context.
        today = {it.name: base.decode([(0, it, False)], pad=False, outs=False, rng=rng)[0] for it in items}
        today_by_thread[threads] = {k: v[0] for k, v in today.items()}
        for layout in args.layouts:
            t0 = time.perf_counter()
            runner = base if layout != "bucket+outs/1ub" else Runner(
                model, threads=threads, slots=args.slots, bucket=args.bucket, ubatch=total)
            pad = layout != "packed"
            outs = layout.startswith("bucket+outs")
            alone = today if runner is base and not pad else {
                it.name: runner.decode([(0, it, False)], pad=pad, outs=outs, rng=rng)[0] for it in items}
            t = Tally()
            for row in plan(items, args.slots, args.reps, rng):
                if layout == "packed":
                    row = [it for it in row if it is not None]
                seqs = list(range(args.slots))
                rng.shuffle(seqs)
                slots = [(seqs[k], it, False) for k, it in enumerate(row)]
                results = runner.decode(slots, pad=pad, outs=outs, rng=rng)
                t.decodes += 1
                for it, (got, kv) in zip([it for it in row if it is not None], results):
                    ref_rows, ref_kv = alone[it.name]
                    t.rows += len(got)
                    t.blocks += 1
                    t.kv_eq += kv == ref_kv
                    compare(t, got, ref_rows, "alone")
                    compare(t, got, today[it.name][0], "today")
                    first = t.seen.setdefault(it.name, got)
                    if first is not got:
                        t.stable_total += len(got)
                        t.stable_rows += sum(np.array_equal(a, b) for a, b in zip(got, first))
            if runner is not base:
                runner.close()
            unstable = f"{t.stable_total - t.stable_rows}/{t.stable_total}"
            print(f"{layout:<16} {threads:>3} {runner.ctx.n_batch:>6} {t.decodes:>7} {t.rows:>6} "
                  f"{t.rows - t.eq_alone:>7} {t.max_alone:>9.2e} {t.rows - t.eq_today:>7} {t.max_today:>9.2e} "
                  f"{unstable:>8} {t.blocks - t.kv_eq:>5} {time.perf_counter() - t0:>5.1f}", flush=True)
        base.close()
    if len(today_by_thread) > 1:
        a, b = (today_by_thread[k] for k in sorted(today_by_thread)[:2])
        rows = [(x, y) for name in a for x, y in zip(a[name], b[name])]
        same = sum(np.array_equal(x, y) for x, y in rows)
        print(f"today's alone evaluation, threads {sorted(today_by_thread)[0]} vs {sorted(today_by_thread)[1]}: "
              f"{same}/{len(rows)} rows bit-identical", flush=True)
    model.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--slots", type=int, default=4, help="sequences per decode (default 4)")
    ap.add_argument("--bucket", type=int, default=96, help="rows per sequence slot (default 96)")
    ap.add_argument("--reps", type=int, default=3, help="compositions each item appears in (default 3)")
    ap.add_argument("--random-items", type=int, default=24, help="random-token items (default 24)")
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--layouts", type=lambda s: s.split(","), default=list(LAYOUTS))
    ap.add_argument("--no-libra", action="store_true", help="random items only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.slots * args.bucket > llama.UBATCH:
        ap.error(f"slots x bucket must fit one {llama.UBATCH}-token batch")
    for layout in args.layouts:
        if layout not in LAYOUTS:
            ap.error(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    for path in args.models:
        run_model(path, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
