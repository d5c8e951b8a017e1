"""TUI responsiveness on a big run: open the results browser, page, scroll, filter, search.

    .venv/bin/python tests/benchmarks/bench_tui.py [--items 10000] [--scroll 600]

Seeds a run of N results into a temporary store, then drives the app headless (keys sent
as a terminal sends them) and prints, for each operation, how long until its rows were on
screen and painted, and the longest stall of the event loop meanwhile (what a user feels
as a freeze). Operations are a third of a second apart, as a reviewer's would be. For
contrast it also times building all N rows in one DataTable, which the browser never does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
    """The longest gap between ticks of a 5 ms asyncio heartbeat, and the time spent in
    Python's garbage collector meanwhile (a full collection took 0.06-0.27 s on a 2-core VM
    and lands wherever the allocations make it due, so it explains many a slow operation)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.gc_seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0
        self.full_collections: list[float] = []
        """Seconds of each full (oldest-generation) collection, whether an operation was timed or not."""
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if info["generation"] == 2:
            self.full_collections.append(took)
        if self._task is not None:
            self.gc_seconds += took

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.005)
            last = now

    def start(self) -> None:
        self.worst = self.gc_seconds = 0.0
        self._task = asyncio.get_running_loop().create_task(self._beat())

    def stop(self) -> tuple[float, float]:
        """(longest stall, seconds in the garbage collector) since `start`."""
        assert self._task is not None
        self._task.cancel()
        self._task = None
        return self.worst, self.gc_seconds


# The keys the benchmark presses, as Textual's pilot names them, with their characters.
CHARACTERS = {"slash": "/", "right_square_bracket": "]", "f": "f", "o": "o", "c": "c", "n": "n"}


def send(app: Any, key: str) -> None:
    """Deliver a key press the way the terminal does, without waiting for anything.

    `pilot.press` also waits until the process looks idle (Textual compares CPU and wall
    time), and the stall meter's heartbeat keeps it from looking idle on a slow VM: each
    press then waited up to a second, whatever the app did. So keys are sent here and each
    operation is timed to its own "done" condition and the paint that follows.
    """
    from textual import events

    event = events.Key(key, CHARACTERS.get(key))
    event.set_sender(app)
    app.post_message(event)


async def painted(app: Any) -> None:
    """Until the screen has been painted after everything already queued."""
    done = asyncio.get_running_loop().create_future()
    app.call_after_refresh(lambda: done.done() or done.set_result(None))
    await done


async def settle(app: Any) -> None:
    """A reviewer's pause between actions: whatever an action left to do is done first."""
    await asyncio.sleep(0.3)
    await painted(app)


async def timed(app: Any, meter: StallMeter, action: Callable[[], Any], done: Callable[[], bool],
                timeout: float = 60.0) -> tuple[float, float, float]:
    """Seconds from `action()` until `done()` and the screen painted; the worst loop stall
    and the seconds in the garbage collector in between."""
    meter.start()
    t0 = time.perf_counter()
    result = action()
    if asyncio.iscoroutine(result):
        await result
    while not done():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("operation did not finish")
        await asyncio.sleep(0.001)
    await painted(app)
    elapsed = time.perf_counter() - t0
    return (elapsed, *meter.stop())


async def run(items: int, scroll: int) -> None:
    from libra_edge.tui.app import make_app
    from libra_edge.tui.screens.results import PAGE_SIZE, ResultsScreen
    from libra_edge.tui.widgets.results_table import ResultsTable
    from libra_edge.tui.widgets.runs_table import RunsTable

    app = make_app(start_dir=Path(tempfile.gettempdir()))
    meter = StallMeter()
    rows: list[tuple[str, float, float, float]] = []
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.press("f2")
        while not app.screen.query(RunsTable) or not app.screen.query_one(RunsTable).row_count:
            await pilot.pause(0.01)
        await settle(app)

        def results_shown() -> bool:
            screen = app.screen
            return isinstance(screen, ResultsScreen) and any(t.row_count for t in screen.query(ResultsTable))

        rows.append(("open results (first page)", *await timed(app, meter, lambda: send(app, "enter"),
                                                                 results_shown)))
        await settle(app)
        screen: Any = app.screen
        table = screen.query_one(ResultsTable)

        def request_done(before: int) -> Callable[[], bool]:
            return lambda: screen._request > before and screen.query_one("#pager").render().plain[:5] != "loadi"

        pages = []
        turns = min(20, (screen.total - 1) // PAGE_SIZE)
        for _ in range(turns):
            before = screen._request
            pages.append(await timed(app, meter, lambda: send(app, "right_square_bracket"), request_done(before)))
            await settle(app)
        rows.append((f"next page ({PAGE_SIZE} rows), mean of {turns}", statistics.mean(p[0] for p in pages),
                     max(p[1] for p in pages), statistics.mean(p[2] for p in pages)))

        # Holding ↓: each key is sent once the previous one has moved the cursor and been
        # painted (a held key repeats faster than that, so this is the rate the user sees).
        await pilot.press("ctrl+home")
        await settle(app)
        meter.start()
        t0 = time.perf_counter()
        for _ in range(scroll):
            here = screen.page_offset + table.cursor_row
            send(app, "down")
            while screen.page_offset + table.cursor_row == here:
                await asyncio.sleep(0.001)
            await painted(app)
        elapsed = time.perf_counter() - t0
        stall, in_gc = meter.stop()
        rows.append((f"scroll {scroll} rows with ↓ (crosses pages), per key", elapsed / scroll, stall, in_gc / scroll))
        await settle(app)

        for label, key in (("filter: flagged only", "f"), ("sort: score high→low", "o")):
            before = screen._request
            rows.append((label, *await timed(app, meter, lambda k=key: send(app, k), request_done(before))))
            await settle(app)

        if "c" in screen.active_bindings:  # the triage keys (not in older versions)
            def decided() -> bool:
                return table.rows_shown[table.cursor_row].review is not None

            rows.append(("decide the item under the cursor (c)", *await timed(app, meter, lambda: send(app, "c"),
                                                                             decided)))
            await settle(app)
            here = screen.page_offset + table.cursor_row
            rows.append(("next undecided flagged item (n)", *await timed(
                app, meter, lambda: send(app, "n"), lambda: screen.page_offset + table.cursor_row != here)))
            await settle(app)

        # A search as a reviewer makes it from the table: `/`, the words, Enter; timed until
        # the matching rows are painted (the screen may then move the focus back to the table).
        field = screen.query_one("#search")
        for label, term in (("search, full-text (身份证号)", "身份证号"), ("search, substring (邮箱)", "邮箱")):
            before = screen._request
            table.focus()
            await settle(app)

            async def search(term: str = term) -> None:
                send(app, "slash")
                while not field.has_focus:
                    await asyncio.sleep(0.001)
                field.value = term
                send(app, "enter")

            rows.append((label, *await timed(app, meter, search, request_done(before))))
            await settle(app)
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
        await painted(all_app)
        rows.append((f"(contrast) all {len(every):,} rows in one DataTable", time.perf_counter() - t0, *meter.stop()))

    print(f"\nTUI results browser, run of {items:,} items (last search matched {shown:,})")
    print(f"{'operation':<52} {'time':>10} {'worst stall':>12} {'of which GC':>12}")
    for label, t, stall, in_gc in rows:
        print(f"{label:<52} {t * 1000:>8.1f}ms {stall * 1000:>10.1f}ms {in_gc * 1000:>10.1f}ms")
    full = meter.full_collections
    if full:
        print(f"full garbage collections during the run: {len(full)}, "
              f"{min(full) * 1000:.0f}-{max(full) * 1000:.0f}ms each (median {statistics.median(full) * 1000:.0f}ms)")


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
