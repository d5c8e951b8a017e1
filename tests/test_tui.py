"""The TUI driven by Textual's pilot against a real SQLite store and a real llama.cpp model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Select, TextArea

from libra_edge.models import config, registry
from libra_edge.store import open_store
from libra_edge.tui.messages import AnalysisText, BatchProgressed, CheckDone
from libra_edge.tui.screens.detail import DetailScreen
from libra_edge.tui.screens.results import PAGE_SIZE, ResultsScreen
from libra_edge.tui.widgets.analysis_view import AnalysisView
from libra_edge.tui.widgets.models_table import ModelsTable
from libra_edge.tui.widgets.results_table import ResultsTable
from libra_edge.tui.widgets.runs_table import RunsTable
from libra_edge.tui.widgets.verdict_badge import VerdictBadge
from tests.fixtures.data import write_records
from tests.fixtures.tui import SEED_ITEMS, Recorder, seed_run, text_of, wait_for

pytestmark = pytest.mark.anyio
SIZE = (140, 45)
FLAGGED_IDS = [item[0] for item in SEED_ITEMS if item[5]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def open_results(app: Any, pilot: Any) -> ResultsScreen:
    """From the start: F2, Enter on the first run, wait for its first page."""
    await pilot.press("f2")
    await wait_for(pilot, lambda: app.screen.query_one(RunsTable).row_count, what="runs listed")
    await pilot.press("enter")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen,
                            what="results screen")
    await wait_for(pilot, lambda: screen.query_one(ResultsTable).row_count and screen.total, what="first page")
    return screen


def shown_ids(screen: ResultsScreen) -> list[str | None]:
    return [row.item_id for row in screen.query_one(ResultsTable).rows_shown]


# -- check ------------------------------------------------------------------------------------
async def test_check_runs_the_model_and_streams_the_analysis(make_tui: Callable[..., Any], tui_model: Path,
                                                             tui_settings: Any) -> None:
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        await pilot.press(*"How do I pick a lock?")  # typed into the focused question box
        await pilot.press("tab")
        app.screen.query_one("#response", TextArea).insert("先用钓鱼网站骗取密码，然后登录邮箱。")
        await pilot.press("ctrl+r")
        done = await wait_for(pilot, lambda: recorder.of(CheckDone), what="the check")
        await pilot.pause()
        verdict = done[0].verdict
        badge = text_of(app.screen.query_one(VerdictBadge))
        assert verdict.label in badge and f"{verdict.score:.3f}" in badge
        assert "prompt tokens" in text_of(app.screen.query_one("TimingsLine"))
        # The analysis arrived in pieces before the verdict, and the pieces make up the text.
        pieces = [m.text for m in recorder.of(AnalysisText)]
        assert len(pieces) >= 2
        assert "".join(pieces) == verdict.analysis == app.screen.query_one(AnalysisView).text
    # Same pair, same settings, straight through the engine: the TUI showed the engine's verdict.
    from libra_edge.batch.runner import load_guard

    with load_guard(tui_model, tui_settings) as guard:
        direct = guard.check("How do I pick a lock?", "先用钓鱼网站骗取密码，然后登录邮箱。")
    assert (direct.label, direct.analysis) == (verdict.label, verdict.analysis)
    assert direct.score == pytest.approx(verdict.score, abs=1e-4)


async def test_fast_mode_gives_a_verdict_without_analysis(make_tui: Callable[..., Any], tui_model: Path) -> None:
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        app.screen.query_one("#question", TextArea).insert("你好")
        app.screen.query_one("#response", TextArea).insert("你好！有什么可以帮你？")
        await pilot.press("ctrl+t")
        assert app.screen.query_one("#mode", Select).value == "fast"
        await pilot.press("ctrl+r")
        done = await wait_for(pilot, lambda: recorder.of(CheckDone), what="the check")
        assert done[0].verdict.analysis is None
        assert not recorder.of(AnalysisText)
        assert "fast mode" in app.screen.query_one(AnalysisView).query_one("Static").render().plain


async def test_a_missing_model_is_a_notification_not_a_crash(make_tui: Callable[..., Any], tmp_path: Path) -> None:
    recorder = Recorder()
    app = make_tui(model=str(tmp_path / "nope.gguf"))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        app.screen.query_one("#question", TextArea).insert("q")
        app.screen.query_one("#response", TextArea).insert("r")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any("nope.gguf" in n for n in recorder.notifications), what="the error")
        assert app.is_running
        assert "no verdict" in text_of(app.screen.query_one(VerdictBadge))


# -- runs ---------------------------------------------------------------------------------------
async def test_launching_a_batch_run_checks_every_item(make_tui: Callable[..., Any], tui_model: Path,
                                                       tmp_path: Path, libra_sample: list[dict[str, Any]]) -> None:
    write_records(tmp_path / "three.jsonl", libra_sample[:3])
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        await pilot.press("f2", "n")
        await wait_for(pilot, lambda: app.screen.query("#launch-path"), what="the new-run dialog")
        app.screen.query_one("#launch-path", Input).focus()
        await pilot.press(*"three.jsonl", "enter")
        await wait_for(pilot, lambda: app.session.batch is None and recorder.of(BatchProgressed)
                       and "finished" in text_of(app.screen.query_one("#run-progress-text")),
                       what="the run to finish")
        await wait_for(pilot, lambda: "3/3" in str(app.screen.query_one(RunsTable).get_row_at(0)),
                       what="the table to show 3/3")
    with open_store() as store:
        run = store.runs()[0]
        results = store.results(run.id)
    assert (run.status, run.total, run.done, run.errors) == ("finished", 3, 3, 0)
    assert [r.item_id for r in results] == [r["id"] for r in libra_sample[:3]]
    assert all(r.label in ("安全", "不安全") and 0.0 <= r.score <= 1.0 for r in results)
    # analysis "flagged" (the dialog's default): flagged items have one, safe ones none.
    assert all((r.analysis is not None) == bool(r.unsafe) for r in results)


async def test_a_cancelled_run_resumes_where_it_stopped(make_tui: Callable[..., Any], tui_model: Path,
                                                        tmp_path: Path, libra_sample: list[dict[str, Any]]) -> None:
    write_records(tmp_path / "twelve.jsonl", libra_sample[:12])
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        await pilot.press("f2", "n")
        await wait_for(pilot, lambda: app.screen.query("#launch-path"), what="the new-run dialog")
        app.screen.query_one("#launch-analysis", Select).value = "none"
        app.screen.query_one("#launch-path", Input).value = "twelve.jsonl"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: recorder.of(BatchProgressed), what="the first item")
        await pilot.press("x")
        await wait_for(pilot, lambda: app.session.batch is None, what="the run to stop")
        with open_store() as store:
            stopped = store.runs()[0]
        assert stopped.status == "interrupted" and 0 < stopped.done < 12
        await wait_for(pilot, lambda: "interrupted" in str(app.screen.query_one(RunsTable).get_row_at(0)),
                       what="the table to show the interrupted run")
        await pilot.press("r")
        await wait_for(pilot, lambda: app.session.batch is None
                       and "finished" in text_of(app.screen.query_one("#run-progress-text")), what="the resumed run")
    with open_store() as store:
        runs = store.runs()
        assert len(runs) == 1  # resumed, not restarted
        assert (runs[0].status, runs[0].done, runs[0].total) == ("finished", 12, 12)
        assert sorted(r.seq for r in store.results(runs[0].id)) == list(range(12))


async def test_a_malformed_input_file_is_reported(make_tui: Callable[..., Any], tui_model: Path,
                                                  tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\nnot json\n', encoding="utf-8")
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        await pilot.press("f2", "n")
        await wait_for(pilot, lambda: app.screen.query("#launch-path"), what="the new-run dialog")
        app.screen.query_one("#launch-path", Input).value = "bad.jsonl"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("bad.jsonl" in n or "no items" in n for n in recorder.notifications),
                       what="the error notification")
        assert app.is_running and app.session.batch is None


# -- results --------------------------------------------------------------------------------------
async def test_filtering_to_flagged_shows_only_flagged_items(make_tui: Callable[..., Any],
                                                             seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        assert screen.total == len(SEED_ITEMS)
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.total == len(FLAGGED_IDS), what="the flagged filter")
        rows = screen.query_one(ResultsTable).rows_shown
        assert [r.item_id for r in rows] == FLAGGED_IDS and all(r.flagged for r in rows)
        assert f"of {len(FLAGGED_IDS)}" in text_of(screen.query_one("#pager"))
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.total == len(SEED_ITEMS), what="all again")


async def test_sort_by_score_and_search(make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("o")  # score, high to low
        await wait_for(pilot, lambda: screen.order == "score_desc" and shown_ids(screen)[0] == "r-002",
                       what="sorted rows")
        scores = [r.score for r in screen.query_one(ResultsTable).rows_shown]
        assert scores == sorted(scores, reverse=True)
        await pilot.press("slash", *"邮箱", "enter")  # two characters: the LIKE path
        await wait_for(pilot, lambda: shown_ids(screen) == ["r-002"], what="search results")
        search = screen.query_one("#search", Input)
        search.value = "身份证号"  # four characters: the full-text index path
        await wait_for(pilot, lambda: shown_ids(screen) == ["s-004"], what="full-text results")


async def test_score_range_and_source_filters(make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        screen.query_one("#min-score", Input).value = "0.2"
        screen.query_one("#max-score", Input).value = "0.8"
        await wait_for(pilot, lambda: sorted(shown_ids(screen)) == ["r-008", "t-006", "t-007"], what="score range")
        screen.query_one("#min-score", Input).value = ""
        screen.query_one("#max-score", Input).value = ""
        await wait_for(pilot, lambda: screen.total == len(SEED_ITEMS), what="no range")
        await wait_for(pilot, lambda: len(screen.query_one("#source", Select)._options) > 1, what="source menu")
        screen.query_one("#source", Select).value = "Synthetic Data"
        await wait_for(pilot, lambda: shown_ids(screen) == ["s-003", "s-004"], what="source filter")


async def test_ten_thousand_items_open_and_page(make_tui: Callable[..., Any],
                                                big_run_store: tuple[Path, int]) -> None:
    import time

    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.screen.query_one(RunsTable).row_count, what="runs listed")
        t0 = time.perf_counter()
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen)
        table = screen.query_one(ResultsTable)
        await wait_for(pilot, lambda: table.row_count, what="the first page")
        opened = time.perf_counter() - t0
        assert screen.total == 10_000 and table.row_count == PAGE_SIZE
        assert "of 10,000" in text_of(screen.query_one("#pager"))
        await pilot.press("ctrl+end", "down")  # past the page's last row: the next page
        await wait_for(pilot, lambda: screen.page_offset == PAGE_SIZE, what="the second page")
        assert table.rows_shown[0].seq == PAGE_SIZE and table.cursor_row == 0
        await pilot.press("up")  # and back up to the first page's last row
        await wait_for(pilot, lambda: screen.page_offset == 0 and table.cursor_row == PAGE_SIZE - 1)
        print(f"\n10,000-item run: first page shown {opened * 1000:.0f} ms after Enter")


# -- item detail and review ---------------------------------------------------------------------
async def test_review_decision_and_note_are_saved_to_the_database(make_tui: Callable[..., Any],
                                                                  seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("down", "enter")  # the second item: r-002, flagged
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert detail.row.item_id == "r-002"
        await pilot.press("s")  # override to safe
        await pilot.press("e", *"false positive", "enter")
        await wait_for(pilot, lambda: detail.row.review_note == "false positive", what="the note")
        with open_store() as store:
            saved = store.result(detail.row.id)
        assert (saved.review, saved.review_note) == ("safe", "false positive")
        assert saved.reviewed_at is not None
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen and screen.query_one(ResultsTable).rows_shown[1].review)
        assert screen.query_one(ResultsTable).rows_shown[1].review == "safe"


async def test_next_and_previous_undecided_flagged_without_the_table(make_tui: Callable[..., Any],
                                                                     seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await open_results(app, pilot)
        await pilot.press("enter")  # r-001, safe
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        visited = []
        for _ in FLAGGED_IDS:
            before = detail.row.id
            await pilot.press("n")
            await wait_for(pilot, lambda: detail.row.id != before, what="the next flagged item")
            visited.append(detail.row.item_id)
            if detail.row.item_id != FLAGGED_IDS[1]:
                await pilot.press("c")  # confirm each but the second, as a reviewer working down the list
        assert visited == FLAGGED_IDS
        await pilot.press("p")  # skips the decided ones: back to the one left undecided
        await wait_for(pilot, lambda: detail.row.item_id == FLAGGED_IDS[1], what="the previous undecided item")
        assert f"id {FLAGGED_IDS[1]}" in text_of(detail.query_one("#detail-meta"))
        await pilot.press("c")
    with open_store() as store:
        run_id = seeded_store[1]
        confirmed = store.results(run_id, review="confirm")
    assert [r.item_id for r in confirmed] == FLAGGED_IDS


# -- export -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_export_writes_the_current_filter(make_tui: Callable[..., Any], seeded_store: tuple[Path, int],
                                                tmp_path: Path, fmt: str) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.total == len(FLAGGED_IDS), what="the flagged filter")
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#export-path"), what="the export dialog")
        app.screen.query_one("#export-format", Select).value = fmt
        await pilot.pause()
        path_field = app.screen.query_one("#export-path", Input)
        assert path_field.value == str(tmp_path / f"run{seeded_store[1]}-flagged.{fmt}")
        await pilot.press("ctrl+s")
        out = tmp_path / f"run{seeded_store[1]}-flagged.{fmt}"
        await wait_for(pilot, out.exists, what="the export file")
    if fmt == "jsonl":
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["id"] for r in records] == FLAGGED_IDS
        assert all(r["verdict"]["unsafe"] is True and r["critic"] for r in records)
    else:
        with open(out, encoding="utf-8-sig", newline="") as fh:  # a BOM first: spreadsheets read UTF-8
            records = list(csv.DictReader(fh))
        assert [r["id"] for r in records] == FLAGGED_IDS
        assert {r["verdict_label"] for r in records} == {"不安全"}


# -- models -------------------------------------------------------------------------------------
async def test_models_screen_lists_metadata_and_sets_the_default(make_tui: Callable[..., Any],
                                                                 tui_model: Path) -> None:
    installed, _ = registry.import_model(tui_model, name="tiny-guard", force=True)
    assert installed.manifest is not None
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        table = await wait_for(pilot, lambda: app.screen.query(ModelsTable) and app.screen.query_one(ModelsTable))
        await wait_for(pilot, lambda: table.row_count == 1, what="the model row")
        row = [str(c) for c in table.get_row_at(0)]
        assert "tiny-guard" in row and installed.manifest.quant in row
        assert installed.manifest.sha256 in text_of(app.screen.query_one("#model-info"))
        await pilot.press("d")
        await wait_for(pilot, lambda: app.active_model == "tiny-guard", what="the active model")
        assert config.default_model_name() == "tiny-guard"
        await pilot.press("f1")
        assert app.screen.query_one("#model", Select).value == "tiny-guard"


# -- the headless core ----------------------------------------------------------------------------
def test_the_headless_core_never_imports_textual() -> None:
    code = (
        "import sys\n"
        "import libra_edge, libra_edge.engine, libra_edge.store, libra_edge.batch.runner, "
        "libra_edge.batch.readers, libra_edge.models, libra_edge.cli.main\n"
        "libra_edge.cli.main.build_parser()\n"
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_tui_help_teaches_the_keys(cli: list[str], cli_env: dict[str, str]) -> None:
    proc = subprocess.run([*cli, "tui", "--help"], capture_output=True, text=True, env=cli_env, timeout=60)
    assert proc.returncode == 0
    assert "ctrl+r" in proc.stdout and "--db" in proc.stdout and "examples:" in proc.stdout


async def test_text_with_markup_brackets_is_shown_verbatim(make_tui: Callable[..., Any], isolated_home: Path) -> None:
    question = "[bold]what is [/] [link=x]this[/link]?"
    with open_store() as store:
        run_id = seed_run(store, input_name="[weird] name.jsonl")
        store.add_result(run_id, seq=99, question=question, response="[red]x[/red]", fields={},
                         verdict={"label": "不安全", "unsafe": True, "score": 0.9, "analysis": "[i]a[/i]",
                                  "raw": "{}", "truncated": False}, source="[src]", category="[cat]")
        store.finish_run(run_id, "failed", message="ValueError: [oops]")
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: "[oops]" in text_of(app.screen.query_one("#run-info")), what="the run info")
        screen = await open_results(app, pilot)
        await wait_for(pilot, lambda: screen.run_record is not None)
        assert "[weird] name.jsonl" in text_of(screen.query_one("#run-summary"))
        await pilot.press("ctrl+end", "enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert text_of(detail.query_one("#detail-question")) == question
        assert "[src]" in text_of(detail.query_one("#detail-meta"))


async def test_the_footer_is_rebuilt_only_when_its_keys_change(make_tui: Callable[..., Any],
                                                                seeded_store: tuple[Path, int],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.widgets._footer import FooterKey

    from libra_edge.tui.widgets.footer import KeysFooter

    builds: list[int] = []
    real_compose = KeysFooter.compose

    def compose(footer: KeysFooter) -> ComposeResult:
        builds.append(id(footer))
        return real_compose(footer)

    monkeypatch.setattr(KeysFooter, "compose", compose)
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.pause()
        footer = screen.query_one(KeysFooter)
        # Composed once empty at mount, once with the keys: not once per focus move or mount
        # of a filter widget (Textual's Footer was rebuilt 6 times here, 17 on a big run).
        assert builds.count(id(footer)) <= 2
        keys = list(footer.query(FooterKey))

        def drawn() -> list[str]:
            return [k.key for k in footer.query(FooterKey) if k.display and "-command-palette" not in k.classes]

        def shown() -> list[str]:
            # What the bindings show, less what the footer leaves out for want of width
            # (app-wide keys first: tests/test_tui_wide.py).
            return [b.key for _node, b, _enabled, _tip in screen.active_bindings.values()
                    if b.show and b.action not in footer.left_out]

        assert drawn() == shown()
        # Into the search box (Textual drops the letter keys there: typing goes to the box)
        # and back: the keys are hidden and shown again, not rebuilt.
        await pilot.press("slash")
        await wait_for(pilot, lambda: screen.query_one("#search").has_focus, what="the search box")
        await pilot.pause()
        assert "f" not in drawn() and drawn() == shown()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.query_one(ResultsTable).has_focus, what="the table")
        await pilot.pause()
        assert "f" in drawn() and drawn() == shown()
        assert builds.count(id(footer)) <= 2
        # The cursor moves, a filter reloads the list twice: the same keys, the same widgets.
        for key in ("down", "down", "f"):
            await pilot.press(key)
        await wait_for(pilot, lambda: screen.total == len(FLAGGED_IDS), what="the flagged filter")
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.total == len(SEED_ITEMS), what="all again")
        await pilot.pause()
        assert list(footer.query(FooterKey)) == keys

    class Toggle(App[None]):
        BINDINGS = [Binding("x", "go", "Go"), Binding("y", "stay", "Stay")]
        go_allowed: bool | None = True

        def compose(self) -> ComposeResult:
            yield KeysFooter()

        def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
            return self.go_allowed if action == "go" else True

    toggle = Toggle()
    async with toggle.run_test() as pilot:
        await pilot.pause()
        footer = toggle.screen.query_one(KeysFooter)
        def states(keys: Any) -> list[tuple[str, bool]]:
            # A disabled key is drawn dimmed (and a click on it rings the bell, not the action).
            return [(k.key, bool(k.rich_style.dim)) for k in keys]

        assert states(footer.query(FooterKey))[:2] == [("x", False), ("y", False)]
        toggle.go_allowed = None  # shown, disabled: drawn dimmed
        toggle.refresh_bindings()
        await pilot.pause()
        await pilot.pause()
        assert states(footer.query(FooterKey))[:2] == [("x", True), ("y", False)]
        rung: list[bool] = []
        monkeypatch.setattr(toggle, "bell", lambda: rung.append(True))
        await pilot.click(footer.query(FooterKey).first())
        assert rung == [True]
        toggle.go_allowed = False  # hidden
        toggle.refresh_bindings()
        await pilot.pause()
        await pilot.pause()
        assert [k.key for k in footer.query(FooterKey) if k.display][:1] == ["y"]
        toggle.go_allowed = True  # shown again, enabled
        toggle.refresh_bindings()
        await pilot.pause()
        await pilot.pause()
        assert states(k for k in footer.query(FooterKey) if k.display)[:2] == [("x", False), ("y", False)]


async def test_the_table_keeps_its_drawn_cells_across_focus_moves_and_draws_them_right(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.geometry import Region
    from textual.widgets import DataTable

    drawn_cells: list[int] = []
    real_render_cell = ResultsTable._render_cell

    def render_cell(table: ResultsTable, *args: Any, **kwargs: Any) -> Any:
        drawn_cells.append(1)
        return real_render_cell(table, *args, **kwargs)

    monkeypatch.setattr(ResultsTable, "_render_cell", render_cell)
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        field = screen.query_one("#search", Input)

        def lines() -> list[list[tuple[str, object]]]:
            strips = table.render_lines(Region(0, 0, *table.outer_size))
            return [[(segment.text, segment.style) for segment in strip] for strip in strips]

        def as_if_new() -> list[list[tuple[str, object]]]:
            """What the table draws with every cache dropped (DataTable's own style update)."""
            kept = lines()
            DataTable.notify_style_update(table)
            fresh = lines()
            assert kept == fresh
            return fresh

        async def focus(widget: Any) -> None:
            widget.focus()
            await wait_for(pilot, lambda: widget.has_focus, what=f"focus on {widget}")
            await pilot.pause()
            await pilot.pause()

        focused = as_if_new()
        await focus(field)
        blurred = as_if_new()
        assert focused != blurred  # the cursor row is drawn differently without the focus
        await focus(table)
        assert as_if_new() == focused
        # Both states drawn once: moving the focus again draws no cell, and draws the same.
        await focus(field)
        await focus(table)
        drawn_cells.clear()
        await focus(field)
        assert lines() == blurred
        await focus(table)
        assert lines() == focused
        assert drawn_cells == []
        # A real style change is drawn, not served from the cache: another theme (every
        # row's colours), and a rule that changes only the focused cursor's colour.
        app.theme = "textual-light" if app.theme != "textual-light" else "nord"
        await pilot.pause()
        await pilot.pause()
        light = as_if_new()
        assert light != focused
        app.stylesheet.add_source("ResultsTable.-red-cursor:focus > .datatable--cursor { background: red; }",
                                  read_from=("test", "red cursor"))
        app.refresh_css(animate=False)
        await focus(field)
        table.add_class("-red-cursor")
        await focus(table)
        red = as_if_new()
        assert red != light
        await focus(field)
        await focus(table)
        assert as_if_new() == red
