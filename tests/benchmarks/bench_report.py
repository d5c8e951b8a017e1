"""Report generation on a big run: summary, HTML (with and without charts), Markdown, JSON, verify.

    .venv/bin/python tests/benchmarks/bench_report.py [--items 10000]

Seeds a Libra-Test-shaped run of N results (about 15% flagged with analyses, gold labels,
reviewer decisions) into a temporary store and prints, for each step, seconds and the
size of what it wrote. Not part of the test suite (tests/test_report_render.py bounds the size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    """Seed the run, time each step, print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()

    from libra_edge.report import summarize_run, write_report
    from libra_edge.report.digest import digest_run
    from libra_edge.store import open_store
    from tests.report_runs import make_large_run

    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / "results.db") as store:
        t0 = time.perf_counter()
        run = make_large_run(store, args.items)
        print(f"seeded {args.items:,} results in {time.perf_counter() - t0:.2f} s")
        print(f"{'step':<28} {'seconds':>8} {'size':>10}")

        def step(name: str, fn: object) -> None:
            start = time.perf_counter()
            out = fn()  # type: ignore[operator]
            took = time.perf_counter() - start
            size = f"{Path(out).stat().st_size / 1e6:.2f} MB" if isinstance(out, Path) else ""
            print(f"{name:<28} {took:>8.2f} {size:>10}")

        step("summarize_run", lambda: summarize_run(store, run))
        step("digest (verify)", lambda: digest_run(store, run))
        step("html, charts", lambda: write_report(store, run, Path(tmp) / "r.html"))
        step("html, no charts", lambda: write_report(store, run, Path(tmp) / "n.html", charts=False))
        step("html, all flagged listed", lambda: write_report(store, run, Path(tmp) / "a.html", max_items=None))
        step("markdown", lambda: write_report(store, run, Path(tmp) / "r.md", fmt="md"))
        step("json", lambda: write_report(store, run, Path(tmp) / "r.json", fmt="json"))
        step("html, threshold 0.3", lambda: write_report(store, run, Path(tmp) / "t.html", threshold=0.3))


if __name__ == "__main__":
    main()
