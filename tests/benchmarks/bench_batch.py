"""Batch throughput: items/s for --fast, --analysis flagged and full analysis, plus store speed at 10k rows.

    .venv/bin/python tests/benchmarks/bench_batch.py [MODEL.gguf] [-n 24] [--max-new-tokens 64]

Items are Libra-style: each question comes with several responses (as in Libra-Test),
written in shuffled order so the runner's grouping by question has work to do. Full
analysis is timed single-stream and with parallel sequences (`Guard.load(parallel=N)`:
N analyses decoded at once in one llama.cpp context, through the same batch runner).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from libra_edge.batch import BatchJob, BatchOptions, read_inputs  # noqa: E402
from libra_edge.store import open_store  # noqa: E402

DEFAULT_MODEL = ROOT / ".bench" / "qwen2.5-3b-random-q4_k_m.gguf"
SAMPLE = ROOT / "tests" / "data" / "libra" / "sample_libra_test.json"


def libra_style_items(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n items over n/3 questions (3 responses each), shuffled, from the sample's texts."""
    sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
    questions = list(dict.fromkeys(r["question"] for r in sample))
    responses = [r["response"] for r in sample]
    items = []
    for i in range(n):
        q = questions[(i // 3) % len(questions)] + ("" if i < 3 * len(questions) else f"（{i // 3}）")
        items.append({"id": f"b{i}", "question": q, "response": responses[i % len(responses)]})
    random.Random(seed).shuffle(items)
    return items


def bench_mode(model: Path, items_file: Path, mode: str, *, threads: int | None, max_new_tokens: int,
               n_ctx: int, parallel: int = 1) -> dict[str, float]:
    from libra_edge.engine import Guard

    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "bench.db") as store:
        with Guard.load(model, ctx_per_seq=n_ctx, threads=threads, max_new_tokens=max_new_tokens,
                        parallel=parallel) as guard:
            batch = read_inputs([items_file])
            job = BatchJob.open(store, guard, batch, BatchOptions(analysis=mode))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            summary = job.execute()
            elapsed = time.perf_counter() - t0
            rows = store.results(job.run_id)
    timings = [r.timings or {} for r in rows]
    prompt = sum(t.get("prompt_tokens", 0) for t in timings)
    reused = sum(t.get("reused_tokens", 0) for t in timings)
    generated = sum(t.get("generated_tokens", 0) for t in timings)
    return {"items": summary.done_now, "seconds": elapsed, "items_per_s": summary.done_now / elapsed,
            "flagged": summary.flagged, "errors": summary.errors,
            "reused_share": reused / prompt if prompt else 0.0, "generated_per_item": generated / max(len(rows), 1)}


def bench_store(n: int = 10_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "s.db") as store:
        run_id = store.create_run(fingerprint="b", inputs=[], model_path="m", model_name="m", model_sha256="0",
                                  quant=None, settings={}, prompt_template_version="v", options={}, total=n)
        t0 = time.perf_counter()
        for i in range(n):
            store.add_result(run_id, seq=i, question=f"问题{i % 300}", response="回答" * 50 + str(i),
                             fields={"id": i}, source=("Real Data", "Synthetic Data")[i % 2],
                             verdict={"label": "安全", "unsafe": i % 7 == 0, "score": (i % 997) / 997,
                                      "analysis": "分析文本" * 20, "raw": "{}", "truncated": False})
        insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        for page in range(20):
            store.results(run_id, verdict="flagged", order="score_desc", limit=50, offset=page * 50)
        page_ms = (time.perf_counter() - t0) / 20 * 1000
        t0 = time.perf_counter()
        store.count_results(run_id, search="问题12")
        search_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        store.export(run_id, Path(tmp) / "out.jsonl")
        export_s = time.perf_counter() - t0
    return {"commits_per_s": n / insert, "page_ms": page_ms, "search_ms": search_ms, "export_s": export_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    parser.add_argument("-n", "--items", type=int, default=24, help="items per mode (default 24)")
    parser.add_argument("--modes", default="none,flagged,all",
                        help="analysis modes to time, comma-separated (default all three; '' for none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="analysis length cap (default 64)")
    parser.add_argument("--parallel", default="4", help="parallel sequences to compare with single-stream "
                        "full analysis, comma-separated (default 4; the context grows to ctx x N)")
    parser.add_argument("--store-only", action="store_true", help="only the SQLite figures (no model)")
    args = parser.parse_args()

    store = bench_store()
    print(f"store, 10k results: {store['commits_per_s']:.0f} commits/s; flagged page by score "
          f"{store['page_ms']:.1f} ms; search {store['search_ms']:.1f} ms; JSONL export {store['export_s']:.2f}s")
    if args.store_only:
        return 0
    model = Path(args.model)
    if not model.is_file():
        print(f"bench_batch: {model}: no such model file", file=sys.stderr)
        return 2
    items = libra_style_items(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        items_file = Path(tmp) / "items.jsonl"
        items_file.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
        print(f"model {model.name}; {len(items)} Libra-style items (3 responses per question, shuffled); "
              f"max_new_tokens {args.max_new_tokens}")
        for mode in (m for m in args.modes.split(",") if m):
            r = bench_mode(model, items_file, mode, threads=args.threads, max_new_tokens=args.max_new_tokens,
                           n_ctx=args.ctx)
            label = {"none": "--fast", "flagged": "--analysis flagged", "all": "full analysis"}[mode]
            print(f"{label:>20}: {r['items_per_s']:.3f} items/s ({r['items']} in {r['seconds']:.1f}s; "
                  f"{r['flagged']} flagged; prompt reuse {r['reused_share']:.0%}; "
                  f"{r['generated_per_item']:.0f} tokens generated/item)")
        for n in (int(v) for v in args.parallel.split(",") if v):
            r = bench_mode(model, items_file, "all", threads=args.threads, max_new_tokens=args.max_new_tokens,
                           n_ctx=args.ctx, parallel=n)
            print(f"{f'analysis, {n} parallel':>20}: {r['items_per_s']:.3f} items/s ({r['items']} in "
                  f"{r['seconds']:.1f}s; prompt reuse {r['reused_share']:.0%}; "
                  f"{r['generated_per_item']:.0f} tokens generated/item)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
