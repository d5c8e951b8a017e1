"""Snapshots of the TUI's main screens on fixed store contents (update: `--snapshot-update`).

Every screen is filled from rows seeded through the store API with fixed values: no
dates, timings or temporary paths appear (the store's clock is fixed), so a changed
picture means changed code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from libra_edge.models import registry
from libra_edge.store import base as store_base
from libra_edge.store import open_store
from libra_edge.tui.screens.detail import DetailScreen
from libra_edge.tui.screens.help import HelpScreen
from libra_edge.tui.screens.results import ResultsScreen
from libra_edge.tui.screens.summary import SummaryScreen
from libra_edge.tui.widgets.models_table import ModelsTable
from libra_edge.tui.widgets.results_table import ResultsTable
from libra_edge.tui.widgets.runs_table import RunsTable
from tests.fixtures.tui import seed_run, wait_for

SIZE = (140, 40)
MODEL = "/models/libra-guard-3b-q4_k_m.gguf"  # shown by name only; never loaded here


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions are stamped 2026-01-02 03:04 UTC, whenever the test runs."""
    monkeypatch.setattr(store_base, "now", lambda: "2026-01-02T03:04:05+00:00")


@pytest.fixture
def two_runs(isolated_home: Path) -> None:
    """The seeded run plus a smaller one checked without analysis."""
    with open_store() as store:
        seed_run(store)
        seed_run(store, 3, analysis="none", input_name="spot-check.csv")


async def _results(pilot: Pilot, *keys: str) -> None:
    app = pilot.app
    await pilot.press("f2")
    await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count == 2)
    await pilot.press("down", "enter")  # the first (older) run: 8 items
    screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen)
    await wait_for(pilot, lambda: screen.total and screen.run_record is not None)
    for key in keys:
        before = screen._request
        await pilot.press(key)
        await wait_for(pilot, lambda: screen._request > before and screen.query_one(ResultsTable).row_count)
    await wait_for(pilot, lambda: "loading" not in str(screen.query_one("#pager").render()))


def test_check_screen(snap_compare: Callable[..., bool], make_tui: Callable[..., Any]) -> None:
    """The check screen before any check: editors, model and mode menus, an empty verdict."""
    app = make_tui(model=MODEL)
    assert snap_compare(app, terminal_size=SIZE)


def test_check_screen_with_a_pair(snap_compare: Callable[..., bool], make_tui: Callable[..., Any]) -> None:
    """A pair typed in, fast mode chosen."""

    async def type_pair(pilot: Pilot) -> None:
        pilot.app.screen.query_one("#question").insert("如何入侵别人的邮箱？")
        pilot.app.screen.query_one("#response").insert("先用钓鱼网站骗取密码，然后登录邮箱。")
        await pilot.press("ctrl+t")

    app = make_tui(model=MODEL)
    assert snap_compare(app, terminal_size=SIZE, run_before=type_pair)


def test_runs_screen(snap_compare: Callable[..., bool], make_tui: Callable[..., Any], two_runs: None) -> None:
    """Two finished runs with their counts."""

    async def runs(pilot: Pilot) -> None:
        await pilot.press("f2")
        await wait_for(pilot, lambda: pilot.app.screen.query_one(RunsTable).row_count == 2)

    assert snap_compare(make_tui(model=MODEL), terminal_size=SIZE, run_before=runs)


def test_results_screen(snap_compare: Callable[..., bool], make_tui: Callable[..., Any], two_runs: None) -> None:
    """A run's items in input order with the filter bar."""
    assert snap_compare(make_tui(model=MODEL), terminal_size=SIZE, run_before=_results)


def test_results_flagged_by_score(snap_compare: Callable[..., bool], make_tui: Callable[..., Any],
                                  two_runs: None) -> None:
    """Flagged items only, highest score first."""

    async def flagged(pilot: Pilot) -> None:
        await _results(pilot, "f", "o")

    assert snap_compare(make_tui(model=MODEL), terminal_size=SIZE, run_before=flagged)


def test_item_detail_with_review(snap_compare: Callable[..., bool], make_tui: Callable[..., Any],
                                 two_runs: None) -> None:
    """A flagged item overridden to safe, with a note."""

    async def detail(pilot: Pilot) -> None:
        await _results(pilot)
        await pilot.press("down", "enter")
        screen = await wait_for(pilot, lambda: isinstance(pilot.app.screen, DetailScreen) and pilot.app.screen)
        await pilot.press("e", *"quoted from a news report", "enter", "s")
        await wait_for(pilot, lambda: screen.row.review == "safe" and screen.row.review_note)
        pilot.app.clear_notifications()

    assert snap_compare(make_tui(model=MODEL), terminal_size=SIZE, run_before=detail)


def test_models_screen(snap_compare: Callable[..., bool], make_tui: Callable[..., Any], smollm2_gguf: Path) -> None:
    """An installed model with its metadata and full sha256."""
    registry.import_model(smollm2_gguf, name="smollm2-135m", force=True)

    async def models(pilot: Pilot) -> None:
        await pilot.press("f3")
        await wait_for(pilot, lambda: pilot.app.screen.query(ModelsTable)
                       and pilot.app.screen.query_one(ModelsTable).row_count == 1)

    assert snap_compare(make_tui(model="smollm2-135m"), terminal_size=SIZE, run_before=models)


def test_new_run_dialog(snap_compare: Callable[..., bool], make_tui: Callable[..., Any], tmp_path: Path) -> None:
    """The file picker: folders and the batch formats only."""
    (tmp_path / "logs.jsonl").write_text(json.dumps({"question": "q", "response": "r"}) + "\n")
    (tmp_path / "notes.txt").write_text("not an input format\n")
    (tmp_path / "exports").mkdir()

    async def dialog(pilot: Pilot) -> None:
        await pilot.press("f2", "n")
        await wait_for(pilot, lambda: pilot.app.screen.query("#launch-tree"))
        tree = pilot.app.screen.query_one("#launch-tree")
        await wait_for(pilot, lambda: len(tree.root.children) >= 3)

    assert snap_compare(make_tui(model=MODEL), terminal_size=SIZE, run_before=dialog)


@pytest.fixture
def reviewed_gold_run(isolated_home: Path) -> None:
    """The seeded run with gold labels, three decisions and a note."""
    with open_store() as store:
        run_id = seed_run(store, gold=True)
        rows = {r.item_id: r.id for r in store.results(run_id)}
        store.set_review(rows["r-002"], "confirm", reviewer="alice")
        store.set_review(rows["r-008"], "safe", "exaggeration, not advice", reviewer="alice")
        store.set_review(rows["t-007"], "unsafe", "hints at a method", reviewer="bob")


async def _gold_results(pilot: Pilot) -> ResultsScreen:
    app = pilot.app
    await pilot.press("f2")
    await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count == 1)
    await pilot.press("enter")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen)
    await wait_for(pilot, lambda: screen.total and screen.run_record is not None and screen.progress is not None)
    await wait_for(pilot, lambda: "loading" not in str(screen.query_one("#pager").render()))
    return screen


def test_results_with_gold_labels_and_decisions(snap_compare: Callable[..., bool], make_tui: Callable[..., Any],
                                                reviewed_gold_run: None) -> None:
    """Gold column (≠ where the model disagrees), decisions, the progress line; 160 columns wide."""

    async def results(pilot: Pilot) -> None:
        await _gold_results(pilot)

    assert snap_compare(make_tui(model=MODEL), terminal_size=(160, 30), run_before=results)


def test_summary_panel(snap_compare: Callable[..., bool], make_tui: Callable[..., Any],
                       reviewed_gold_run: None) -> None:
    """Counts, rates with intervals by source and category, the score histogram, coverage."""

    async def summary(pilot: Pilot) -> None:
        await _gold_results(pilot)
        await pilot.press("i")
        screen = await wait_for(pilot, lambda: isinstance(pilot.app.screen, SummaryScreen) and pilot.app.screen)
        await wait_for(pilot, lambda: screen.summary is not None)
        await pilot.pause()

    assert snap_compare(make_tui(model=MODEL), terminal_size=(140, 40), run_before=summary)


def test_help_screen(snap_compare: Callable[..., bool], make_tui: Callable[..., Any], reviewed_gold_run: None) -> None:
    """`?` on the results: every key of the screen, what it does and where it applies."""

    async def help_screen(pilot: Pilot) -> None:
        await _gold_results(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
        await pilot.pause()

    assert snap_compare(make_tui(model=MODEL), terminal_size=(140, 50), run_before=help_screen)
