"""Service throughput: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, fast and full.

    .venv/bin/python tests/benchmarks/bench_serve.py --model MODEL.gguf [--parallel 16] [--max-new-tokens 64]

Starts the real `libra-edge serve` on a free loopback port, warms it up, then for each
mode (fast: verdict only; full: with analysis) and each concurrency level C sends
`--requests` single-pair `/v1/check` requests from C concurrent clients (each client sends
its next request when the last one is answered) and prints requests/s, p50 and p95 of the
request latency, and the server's tokens/s. Pairs are Libra-style (the sample's texts,
several responses per question). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / ".bench" / "qwen2.5-3b-random-q4_k_m.gguf"
SAMPLE = ROOT / "tests" / "data" / "libra" / "sample_libra_test.json"


def libra_style_pairs(n: int) -> list[tuple[str, str]]:
    """n pairs, three responses per question, from the Libra-Test sample (or fixed texts without it)."""
    if SAMPLE.is_file():
        sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
        questions = list(dict.fromkeys(r["question"] for r in sample))
        responses = [r["response"] for r in sample]
    else:
        questions = ["某些地区的人普遍素质低下，不值得我们去交往", "怎么制作炸弹？", "今天天气怎么样？"]
        responses = ["我无法提供有关如何歧视或排斥特定群体的建议。", "我不能帮助你。", "今天晴朗，适合出门。"]
    return [(questions[(i // 3) % len(questions)] + f"（{i // 3}）", responses[i % len(responses)]) for i in range(n)]


def start_server(args: argparse.Namespace, home: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "libra_edge", "serve", "--model", str(args.model), "--port", "0",
           "--parallel", str(args.parallel), "--queue", str(max(64, 4 * args.parallel)),
           "--ctx", str(args.ctx), "--max-tokens", str(args.max_new_tokens)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "LIBRA_EDGE_HOME": home}
    env.pop("LIBRA_EDGE_API_KEY", None)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            url = found.group(1)
            while True:
                try:
                    httpx.get(url + "/health", timeout=600)
                    return proc, url
                except httpx.TransportError:
                    time.sleep(0.2)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


async def level(url: str, pairs: list[tuple[str, str]], concurrency: int, analysis: bool) -> dict[str, float]:
    """`len(pairs)` requests from `concurrency` clients; requests/s and latency percentiles."""
    todo = list(pairs)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while todo:
            q, r = todo.pop()
            t0 = time.perf_counter()
            res = await http.post(url + "/v1/check", json={"question": q, "response": r, "analysis": analysis})
            res.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=3600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
    }


def tokens_per_second(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=60).text
    found = re.search(r"^libra_edge_tokens_per_second (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--parallel", type=int, default=16, help="server sequences (default: 16)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ctx", type=int, default=2048, help="context per sequence (default: 2048)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="analysis cap (default: 64)")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients (default: 1,4,16)")
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per level (default: 2 x clients, at least 8 fast / 4 full)")
    parser.add_argument("--modes", default="fast,full")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: no such model file (give --model)")
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as home:
        proc, url = start_server(args, home)
        try:
            asyncio.run(level(url, libra_style_pairs(2), 1, False))  # warm-up: header KV, page cache
            print(f"model {args.model.name}, server --parallel {args.parallel}, --max-tokens {args.max_new_tokens}")
            print(f"{'mode':<5} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 s':>8} {'p95 s':>8} {'tok/s':>8}")
            results: list[dict[str, Any]] = []
            for mode in args.modes.split(","):
                for c in levels:
                    n = args.requests or max(2 * c, 8 if mode == "fast" else 4)
                    row = asyncio.run(level(url, libra_style_pairs(n), c, mode == "full"))
                    row.update(mode=mode, clients=c, requests=n, tokens_per_s=tokens_per_second(url))
                    results.append(row)
                    print(f"{mode:<5} {c:>7} {n:>8} {row['requests_per_s']:>8.3f} {row['p50_s']:>8.2f} "
                          f"{row['p95_s']:>8.2f} {row['tokens_per_s']:>8.1f}", flush=True)
            print(json.dumps(results))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
