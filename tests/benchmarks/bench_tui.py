"""TUI responsiveness on a big run: open the results browser, page, scroll, filter, search.

    .venv/bin/python tests/benchmarks/bench_tui.py [--items 10000] [--scroll 600]

Seeds a run of N results into a temporary store, then drives the app headless with
Textual's pilot and prints, for each operation, how long until its rows were on screen
and the longest stall of the event loop meanwhile (what a user feels as a freeze). For
contrast it also times building all N rows in one DataTable, which the browser never does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class StallMeter:
    """Measures the longest gap between ticks of a 5 ms asyncio heartbeat."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.005)
            last = now

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.get_running_loop().create_task(self._beat())

    def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        return self.worst


async def timed(pilot: Any, meter: StallMeter, action: Callable[[], Any], done: Callable[[], bool],
                timeout: float = 60.0) -> tuple[float, float]:
    """Seconds from `action()` until `done()`, and the worst loop stall in between."""
    meter.start()
    t0 = time.perf_counter()
    result = action()
    if asyncio.iscoroutine(result):
        await result
    while not done():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("operation did not finish")
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    return elapsed, meter.stop()


async def run(items: int, scroll: int) -> None:
    from libra_edge.tui.app import make_app
    from libra_edge.tui.screens.results import PAGE_SIZE, ResultsScreen
    from libra_edge.tui.widgets.results_table import ResultsTable
    from libra_edge.tui.widgets.runs_table import RunsTable

    app = make_app(start_dir=Path(tempfile.gettempdir()))
    meter = StallMeter()
    rows: list[tuple[str, float, float]] = []
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.press("f2")
        while not app.screen.query(RunsTable) or not app.screen.query_one(RunsTable).row_count:
            await pilot.pause(0.01)

        def results_shown() -> bool:
            screen = app.screen
            return isinstance(screen, ResultsScreen) and bool(screen.query_one(ResultsTable).row_count)

        rows.append(("open results (first page)", *await timed(pilot, meter, lambda: pilot.press("enter"),
                                                                 results_shown)))
        screen: Any = app.screen
        table = screen.query_one(ResultsTable)

        def request_done(before: int) -> Callable[[], bool]:
            return lambda: screen._request > before and screen.query_one("#pager").render().plain[:5] != "loadi"

        pages = []
        for _ in range(20):
            before = screen._request
            t, stall = await timed(pilot, meter, lambda: pilot.press("right_square_bracket"), request_done(before))
            pages.append((t, stall))
        rows.append((f"next page ({PAGE_SIZE} rows), mean of 20", statistics.mean(p[0] for p in pages),
                     max(p[1] for p in pages)))

        await pilot.press("ctrl+home")
        start_offset = screen.page_offset
        t0 = time.perf_counter()
        meter.start()
        for _ in range(scroll):
            await pilot.press("down")
        while screen.page_offset + table.cursor_row < start_offset + scroll:
            await asyncio.sleep(0.002)
        t = time.perf_counter() - t0
        rows.append((f"scroll {scroll} rows with ↓ (crosses pages), per key", t / scroll, meter.stop()))

        for label, key in (("filter: flagged only", "f"), ("sort: score high→low", "o")):
            before = screen._request
            rows.append((label, *await timed(pilot, meter, lambda k=key: pilot.press(k), request_done(before))))

        def decided() -> bool:
            return table.rows_shown[table.cursor_row].review is not None

        rows.append(("decide the item under the cursor (c)", *await timed(pilot, meter, lambda: pilot.press("c"),
                                                                         decided)))
        here = screen.page_offset + table.cursor_row
        rows.append(("next undecided flagged item (n)", *await timed(
            pilot, meter, lambda: pilot.press("n"), lambda: screen.page_offset + table.cursor_row != here)))

        for label, term in (("search, full-text (身份证号)", "身份证号"), ("search, substring (邮箱)", "邮箱")):
            before = screen._request
            field = screen.query_one("#search")

            def submit(term: str = term) -> Any:
                field.focus()
                field.value = term
                return pilot.press("enter")

            rows.append((label, *await timed(pilot, meter, submit, request_done(before))))
        shown = screen.total

    # The alternative this design avoids: every row of the run in one table (the same
    # table widget and cells as the browser's, given all N rows as one "page").
    from textual.app import App, ComposeResult

    from libra_edge.store import open_store
    from libra_edge.tui.widgets.results_table import ResultsTable as Table

    with open_store() as store:
        run_id = store.runs()[0].id
        every = store.results(run_id)

    class AllRows(App[None]):
        def compose(self) -> ComposeResult:
            yield Table()

    all_app = AllRows()
    async with all_app.run_test(size=(140, 45)) as pilot:
        dt = all_app.query_one(Table)
        meter.start()
        t0 = time.perf_counter()
        dt.show_page(every, 0)
        await pilot.pause()
        rows.append((f"(contrast) all {len(every):,} rows in one DataTable", time.perf_counter() - t0, meter.stop()))

    print(f"\nTUI results browser, run of {items:,} items (last search matched {shown:,})")
    print(f"{'operation':<52} {'time':>10} {'worst stall':>12}")
    for label, t, stall in rows:
        print(f"{label:<52} {t * 1000:>8.1f}ms {stall * 1000:>10.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="results in the run (default: 10000)")
    parser.add_argument("--scroll", type=int, default=600, help="rows to scroll with the arrow key (default: 600)")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="bench-tui-")
    os.environ["LIBRA_EDGE_HOME"] = home

    from libra_edge.store import open_store
    from tests.fixtures.tui import seed_run_bulk

    t0 = time.perf_counter()
    with open_store() as store:
        seed_run_bulk(store, args.items)
    print(f"seeded {args.items:,} results in {time.perf_counter() - t0:.1f}s ({home})")
    asyncio.run(run(args.items, args.scroll))


if __name__ == "__main__":
    main()
