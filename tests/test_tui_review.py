"""The triage screens as a reviewer uses them for a day: columns, filter keys, help, navigation,
decisions as evidence (reviewer, time, history, undo), the queue, bulk confirm, export,
refresh from another reviewer, the summary panel and the report key.

Driven by Textual's pilot against a real SQLite store in the test's LIBRA_EDGE_HOME.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.widgets import Input, Select

from libra_edge.models import registry
from libra_edge.report import summarize_run
from libra_edge.store import open_store
from libra_edge.tui.screens.confirm import ConfirmScreen
from libra_edge.tui.screens.detail import DetailScreen
from libra_edge.tui.screens.help import HelpScreen
from libra_edge.tui.screens.launch import LaunchScreen
from libra_edge.tui.screens.results import ResultsScreen
from libra_edge.tui.screens.runs import RunsScreen
from libra_edge.tui.screens.summary import SummaryScreen
from libra_edge.tui.session import REVIEWER_ENV, reviewer_name
from libra_edge.tui.widgets.results_table import ResultsTable
from libra_edge.tui.widgets.runs_table import RunsTable
from tests.fixtures.tui import SEED_ITEMS, seed_run, text_of, wait_for

pytestmark = pytest.mark.anyio
SIZE = (160, 45)
FLAGGED_IDS = [item[0] for item in SEED_ITEMS if item[5]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gold_run(isolated_home: Path) -> int:
    """The seeded run with Libra-Test gold labels on every input record."""
    with open_store() as store:
        return seed_run(store, gold=True)


async def open_results(app: Any, pilot: Any) -> ResultsScreen:
    """F2, Enter on the first run, wait for its first page and its counts."""
    await pilot.press("f2")
    await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count,
                   what="runs listed")
    await pilot.press("enter")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen, what="results")
    await wait_for(pilot, lambda: screen.query_one(ResultsTable).row_count and screen.total
                   and screen.progress is not None, what="first page")
    return screen


def rich_text(widget: Any, width: int = 150) -> str:
    """What a Static holding a Rich renderable (a table) shows, as plain text."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(widget.content)
    return console.file.getvalue()  # type: ignore[attr-defined]


def shown_ids(screen: ResultsScreen) -> list[str | None]:
    return [row.item_id for row in screen.query_one(ResultsTable).rows_shown]


def pager(screen: ResultsScreen) -> str:
    return text_of(screen.query_one("#pager"))


async def settle(pilot: Any, screen: ResultsScreen, before: int) -> None:
    """Wait for the page requested after `before` to be on screen."""
    await wait_for(pilot, lambda: screen._request > before and "loading" not in pager(screen), what="the page")


async def cursor_to(pilot: Any, screen: ResultsScreen, item_id: str) -> None:
    table = screen.query_one(ResultsTable)
    table.move_cursor(row=shown_ids(screen).index(item_id))
    await pilot.pause()


# -- results table ----------------------------------------------------------------------------
async def test_the_table_shows_question_response_gold_and_decision_across_the_width(
        make_tui: Callable[..., Any], gold_run: int) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        keys = [str(c.key.value) for c in table.ordered_columns]
        assert keys[-2:] == ["question", "response"] and "gold" in keys and "decision" in keys
        # The columns fill the terminal's width (question and response take what is left).
        assert table.virtual_size.width >= table.size.width - 4
        cells = {k: str(v) for k, v in zip(keys, table.get_row_at(6))}  # t-007: model 安全, gold 不安全
        assert cells["gold"] == "不安全≠" and cells["verdict"] == "安全"
        assert cells["response"].startswith("偷窃是违法的")
        cells = {k: str(v) for k, v in zip(keys, table.get_row_at(1))}  # r-002: both 不安全
        assert cells["gold"] == "不安全"


async def test_the_gold_column_is_left_out_when_the_inputs_have_no_labels(make_tui: Callable[..., Any],
                                                                         seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        keys = [str(c.key.value) for c in screen.query_one(ResultsTable).ordered_columns]
        assert "gold" not in keys and "response" in keys


async def test_the_detail_shows_the_gold_label_and_analysis(make_tui: Callable[..., Any], gold_run: int) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "r-008")
        await pilot.press("enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert "gold 安全 (DISAGREES)" in text_of(detail.query_one("#detail-meta"))
        gold = detail.query_one("#detail-gold")
        assert gold.display and "只是夸张的说法" in text_of(gold)


# -- filters by key, the status line, help ------------------------------------------------------
async def test_every_filter_has_a_key_and_the_status_line_names_each_active_one(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await wait_for(pilot, lambda: len(screen.query_one("#category", Select)._options) > 1, what="menus")
        before = screen._request
        await pilot.press("f")
        await settle(pilot, screen, before)
        before = screen._request
        await pilot.press("k")  # first category in menu order: 偏见歧视 (t-005, safe)
        await settle(pilot, screen, before)
        before = screen._request
        await pilot.press("k")  # next: 谣言错误 (t-006, flagged)
        await settle(pilot, screen, before)
        assert shown_ids(screen) == ["t-006"]
        text = pager(screen)
        assert "flagged" in text and "category 谣言错误" in text
        before = screen._request
        await pilot.press("t")  # first source: Real Data (nothing flagged there in 谣言错误)
        await settle(pilot, screen, before)
        assert "source Real Data" in pager(screen) and screen.total == 0
        before = screen._request
        await pilot.press("d")  # decision filter: undecided
        await settle(pilot, screen, before)
        await pilot.press("m", *"0.5", "enter")
        await wait_for(pilot, lambda: "score ≥ 0.5" in pager(screen), what="the score filter")
        assert screen.focused is screen.query_one(ResultsTable)  # Enter went back to the table
        await pilot.press("slash", *"邮箱", "enter")
        await wait_for(pilot, lambda: "search “邮箱”" in pager(screen), what="the search")
        text = pager(screen)
        for word in ("flagged", "undecided", "score ≥ 0.5", "source Real Data", "category 谣言错误", "search “邮箱”"):
            assert word in text, (word, text)
        before = screen._request
        await pilot.press("a")
        await wait_for(pilot, lambda: screen.total == len(SEED_ITEMS) and "filter: none" in pager(screen),
                       what="all filters cleared")


async def test_the_footer_lists_the_filter_keys(make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    from textual.widgets._footer import FooterKey

    app = make_tui()
    async with app.run_test(size=(200, 45)) as pilot:
        screen = await open_results(app, pilot)
        await pilot.pause()
        shown = {key.key for key in screen.query(FooterKey)}
        assert {"f", "d", "t", "k", "m", "slash", "a", "o"} <= shown, shown


async def test_the_help_screen_lists_every_binding_of_the_current_screen(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("question_mark")
        help_screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        listed = {(k.key, k.where) for k in help_screen.keys}
        for binding in ResultsScreen.BINDINGS:
            assert (app.get_key_display(binding), "this screen") in listed, binding  # type: ignore[arg-type]
        assert any(k.where == "everywhere" and k.description == "Quit" for k in help_screen.keys), \
            help_screen.keys
        described = {k.key: k.description for k in help_screen.keys if k.where == "this screen"}
        assert described["z"].startswith("Undo the last decision")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="the help to close")


# -- navigation ----------------------------------------------------------------------------------
async def test_one_escape_leaves_the_results_even_from_a_filter_field(make_tui: Callable[..., Any],
                                                                    seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await open_results(app, pilot)
        await pilot.press("slash", *"abc")
        assert isinstance(app.focused, Input)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs screen")


async def test_one_escape_leaves_the_item_even_from_the_note_field_and_keeps_the_note(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "r-002")
        await pilot.press("enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        await pilot.press("e", *"half typed")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="the results")
    with open_store() as store:
        assert store.result(detail.row.id).review_note == "half typed"


async def test_the_new_run_dialog_starts_in_a_path_field_that_takes_a_pasted_path(
        make_tui: Callable[..., Any], tui_model: Path, tmp_path: Path, libra_sample: list[dict[str, Any]]) -> None:
    logs = tmp_path / "pasted logs.jsonl"
    logs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in libra_sample[:2]), encoding="utf-8")
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", "n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
        field = dialog.query_one("#launch-path", Input)
        assert app.focused is field
        dialog.query_one("#launch-analysis", Select).value = "none"
        field.post_message(events.Paste(f"'{logs}'"))  # as a file manager pastes it: quoted
        await wait_for(pilot, lambda: field.value == f"'{logs}'", what="the pasted path")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.session.batch is None
                       and "finished" in text_of(app.screen.query_one("#run-progress-text")), what="the run")
    with open_store() as store:
        run = store.runs()[0]
    assert run.inputs == [str(logs)] and (run.done, run.status) == (2, "finished")


async def test_the_model_menu_names_the_default_model(make_tui: Callable[..., Any], tui_model: Path) -> None:
    registry.import_model(tui_model, name="tiny-guard", force=True)
    app = make_tui()  # no --model: the only installed model is the one checks use
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        select = app.screen.query_one("#model", Select)
        assert select.value == "tiny-guard"
        assert "tiny-guard" in text_of(app.screen.query_one("#engine-state"))
        shown = text_of(select.query_one("SelectCurrent #label"))
        assert shown == "tiny-guard"


# -- decisions as evidence ------------------------------------------------------------------------
def test_the_reviewer_comes_from_the_flag_then_the_environment_then_the_os_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    monkeypatch.setenv(REVIEWER_ENV, "env-reviewer")
    assert reviewer_name("flag-reviewer") == "flag-reviewer"
    assert reviewer_name(None) == "env-reviewer"
    monkeypatch.delenv(REVIEWER_ENV)
    assert reviewer_name(None) == getpass.getuser()


async def test_a_decision_records_reviewer_and_time_and_u_on_a_flagged_item_is_a_confirmation(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui(reviewer="alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "r-002")  # flagged by the model
        await pilot.press("u")
        await cursor_to(pilot, screen, "r-001")  # judged safe by the model
        await pilot.press("u")
        await wait_for(pilot, lambda: screen.query_one(ResultsTable).rows_shown[0].review == "unsafe")
        assert "reviewer alice" in text_of(screen.query_one("#review-progress"))
    with open_store() as store:
        rows = {r.item_id: r for r in store.results(seeded_store[1], review="reviewed")}
        history = store.review_history(run_id=seeded_store[1])
    assert rows["r-002"].review == "confirm"  # agreeing with the model is not an override
    assert rows["r-001"].review == "unsafe"
    assert {r.reviewer for r in rows.values()} == {"alice"} and all(r.reviewed_at for r in rows.values())
    assert [(e.seq, e.review, e.reviewer, e.action) for e in history] == [
        (1, "confirm", "alice", "decide"), (0, "unsafe", "alice", "decide")]


async def test_undo_brings_back_the_previous_decision_and_the_history_keeps_all(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui(reviewer="bob")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "r-002")
        await pilot.press("c", "s")
        row = lambda: screen.query_one(ResultsTable).rows_shown[1]  # noqa: E731
        assert row().review == "safe"
        await pilot.press("z")
        assert row().review == "confirm" and row().reviewer == "bob"
        await pilot.press("z")
        assert row().review is None and row().reviewer is None
        await pilot.press("z")  # nothing left to undo: a warning, nothing changes
        assert row().review is None
        item = row().id
    with open_store() as store:
        history = store.review_history(result_id=item)
    assert [(e.action, e.review) for e in history] == [
        ("decide", "confirm"), ("decide", "safe"), ("undo", "confirm"), ("undo", None)]


async def test_another_reviewers_later_decision_is_not_undone(make_tui: Callable[..., Any],
                                                             seeded_store: tuple[Path, int]) -> None:
    app = make_tui(reviewer="alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "r-002")
        await pilot.press("c")
        item = screen.query_one(ResultsTable).rows_shown[1].id
        with open_store() as other:  # a second reviewer, another connection
            other.set_review(item, "safe", "not harmful", reviewer="carol")
        await pilot.press("z")
        await pilot.press("g")
        await wait_for(pilot, lambda: screen.query_one(ResultsTable).rows_shown[1].review == "safe",
                       what="the refresh")
        assert screen.query_one(ResultsTable).rows_shown[1].reviewer == "carol"


async def test_a_refresh_shows_decisions_made_in_another_window(make_tui: Callable[..., Any],
                                                               seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        ids = [r.id for r in screen.query_one(ResultsTable).rows_shown]
        with open_store() as other:
            other.set_review(ids[3], "safe", reviewer="dave")
        await pilot.press("g")
        await wait_for(pilot, lambda: screen.query_one(ResultsTable).rows_shown[3].review == "safe")
        await wait_for(pilot, lambda: screen.progress == (1, len(FLAGGED_IDS)), what="the progress line")
        assert f"1/{len(FLAGGED_IDS)} flagged decided" in text_of(screen.query_one("#review-progress"))


# -- the queue --------------------------------------------------------------------------------------
async def test_next_and_previous_skip_decided_items_and_the_progress_line_follows(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        current = lambda: table.rows_shown[table.cursor_row].item_id  # noqa: E731
        await cursor_to(pilot, screen, "s-004")
        await pilot.press("c")  # decided: the queue skips it from now on
        await cursor_to(pilot, screen, "r-001")
        for expected in ("r-002", "t-006"):
            await pilot.press("n")
            await wait_for(pilot, lambda e=expected: current() == e, what=f"the next item {expected}")
            await pilot.press("c")
        await pilot.press("p")
        await wait_for(pilot, lambda: current() == "t-006", what="stays: nothing undecided before")
        await pilot.press("n")
        await wait_for(pilot, lambda: current() == "r-008", what="the last undecided flagged item")
        await wait_for(pilot, lambda: screen.progress == (3, 4), what="the progress")
        assert "3/4 flagged decided (75%)" in text_of(screen.query_one("#review-progress"))


async def test_the_queue_pages_through_a_big_run(make_tui: Callable[..., Any],
                                                big_run_store: tuple[Path, int]) -> None:
    with open_store() as store:  # decide every flagged item of the first 500 but one
        rows = store.results(big_run_store[1], verdict="flagged", limit=300)
        store.confirm_many([r.id for r in rows if r.seq < 500 and r.seq != 301], reviewer="x")
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        await pilot.press("n")
        await wait_for(pilot, lambda: screen.page_offset + table.cursor_row == 301, what="item 302")
        await pilot.press("n")
        await wait_for(pilot, lambda: table.rows_shown[table.cursor_row].seq > 500, what="past the decided")


# -- bulk confirm -------------------------------------------------------------------------------------
async def test_bulk_confirm_of_a_marked_range_asks_first_and_keeps_earlier_decisions(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int]) -> None:
    app = make_tui(reviewer="erin")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await cursor_to(pilot, screen, "s-003")
        await pilot.press("s")  # 安全 on a safe item: a confirmation
        await cursor_to(pilot, screen, "r-002")
        await pilot.press("u")
        await cursor_to(pilot, screen, "s-004")
        await pilot.press("s")  # an override, kept by the bulk confirm
        await cursor_to(pilot, screen, "r-002")
        await pilot.press("v", "down", "down", "down", "down")  # items 2..6
        assert "marked items 2–6 (5)" in pager(screen)
        await pilot.press("b")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        question = text_of(dialog.query_one("#confirm-question"))
        assert "2 undecided items" in question and "3 already decided" in question
        await pilot.press("n")  # no: nothing happens
        await wait_for(pilot, lambda: app.screen is screen)
        with open_store() as store:
            assert store.count_results(seeded_store[1], review="reviewed") == 3
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen is screen and screen.progress == (3, 4), what="the confirmation")
        with open_store() as store:
            decided = {r.item_id: r.review for r in store.results(seeded_store[1], review="reviewed")}
            actions = [e.action for e in store.review_history(run_id=seeded_store[1])]
        assert decided == {"r-002": "confirm", "s-003": "confirm", "s-004": "safe",
                           "t-005": "confirm", "t-006": "confirm"}
        assert actions.count("bulk-confirm") == 2
        await pilot.press("z")  # one undo takes the whole range back
        await wait_for(pilot, lambda: screen.progress == (2, 4), what="the undo")
    with open_store() as store:
        assert store.count_results(seeded_store[1], review="reviewed") == 3


# -- export ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_the_export_follows_sort_and_filter_and_carries_reviewer_time_and_note(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int], tmp_path: Path, fmt: str) -> None:
    import csv

    app = make_tui(reviewer="frank")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        before = screen._request
        await pilot.press("f", "o")  # flagged, highest score first
        await wait_for(pilot, lambda: screen.order == "score_desc" and screen.total == 4 and shown_ids(screen)[0] == "r-002")
        await settle(pilot, screen, before)
        await cursor_to(pilot, screen, "s-004")
        await pilot.press("enter")
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        await pilot.press("e", *"real ID number", "enter", "s")
        await wait_for(pilot, lambda: detail.row.review == "safe" and detail.row.review_note)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.query("#export-path"), what="the export dialog")
        app.screen.query_one("#export-format", Select).value = fmt
        await pilot.pause()
        await pilot.press("ctrl+s")
        out = tmp_path / f"run{seeded_store[1]}-flagged.{fmt}"
        await wait_for(pilot, out.exists, what="the export file")
    expected_order = ["r-002", "s-004", "t-006", "r-008"]  # 0.962, 0.914, 0.781, 0.655
    if fmt == "jsonl":
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["id"] for r in records] == expected_order
        review = records[1]["review"]
        assert (review["decision"], review["note"], review["reviewer"]) == ("safe", "real ID number", "frank")
        assert review["reviewed_at"].endswith("+00:00")
        assert all("review" not in r for i, r in enumerate(records) if i != 1)
    else:
        assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # a BOM: spreadsheets read it as UTF-8
        with open(out, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["id"] for r in rows] == expected_order
        assert (rows[1]["review_decision"], rows[1]["review_note"], rows[1]["reviewer"]) == (
            "safe", "real ID number", "frank")
        assert rows[1]["reviewed_at"] and rows[0]["reviewer"] == ""


# -- summary panel and report --------------------------------------------------------------------------
async def test_the_summary_panel_shows_the_figures_of_the_report(make_tui: Callable[..., Any],
                                                                gold_run: int) -> None:
    with open_store() as store:
        store.set_review(store.results(gold_run, verdict="flagged")[0].id, "confirm", reviewer="gina")
        expected = summarize_run(store, gold_run)
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("i")
        summary = await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen)
        await wait_for(pilot, lambda: summary.summary is not None, what="the figures")
        assert summary.summary == expected
        counts = rich_text(summary.query_one("#summary-counts"))
        assert "8 read · 8 judged · 0 errors" in counts and "1/4 flagged (25.0% coverage)" in counts
        rates = rich_text(summary.query_one("#summary-rates"))
        assert "Real Data" in rates and "违法犯罪" in rates
        assert f"{expected.by_source['Real Data'].k}/{expected.by_source['Real Data'].n}" in rates
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)


async def test_the_report_key_writes_the_runs_report(make_tui: Callable[..., Any], seeded_store: tuple[Path, int],
                                                    tmp_path: Path) -> None:
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        await open_results(app, pilot)
        await pilot.press("w")
        out = tmp_path / f"run{seeded_store[1]}-report.html"
        await wait_for(pilot, out.exists, timeout=120, what="the report file")
    html = out.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "r-002" in html


# -- transcripts and long texts -------------------------------------------------------------------------
async def test_the_detail_shows_the_conversation_and_highlights_the_deciding_window(
        make_tui: Callable[..., Any], isolated_home: Path) -> None:
    long_response = "前言。" * 40 + "先用钓鱼网站骗取密码。" + "结尾。" * 40
    start = long_response.index("先用")
    turns = [  # (turn_index, question, response, unsafe, score, verdict extras)
        (1, "你好", "你好！", False, 0.02, {}),
        (3, "怎么拿到别人的密码？", long_response, True, 0.93,
         {"windows": 3, "window": 1, "span": [start - 20, start + 30]}),
        (5, "谢谢", "不客气。", False, 0.04, {}),
    ]
    with open_store() as store:
        run_id = store.create_run(
            fingerprint="chat", inputs=["/data/chat.jsonl"], model_path="/m.gguf", model_name="m",
            model_sha256="0" * 64, quant="Q4_K_M", settings={"ctx_per_seq": 2048, "threshold": 0.5},
            prompt_template_version="1", options={"analysis": "none", "format": "messages"}, total=3)
        for seq, (turn, question, response, unsafe, score, extra) in enumerate(turns):
            store.add_result(run_id, seq=seq, question=question, response=response, fields={"id": "c-1"},
                             verdict={"label": "不安全" if unsafe else "安全", "unsafe": unsafe, "score": score,
                                      "raw": "{}", "truncated": False, **extra},
                             item_id="c-1", conversation_id="c-1", turn_index=turn)
        store.finish_run(run_id, "finished")
    app = make_tui()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_results(app, pilot)
        await pilot.press("down", "enter")  # the flagged middle turn
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        box = detail.query_one("#detail-conversation")
        await wait_for(pilot, lambda: box.display, what="the conversation")
        text = text_of(box)
        assert text.index("你好") < text.index("▶ message 4") < text.index("谢谢")
        response = detail.query_one("#detail-response")
        assert "window 2 of 3" in str(response.border_subtitle)
        content = response.content
        spans = [(s.start, s.end) for s in content.spans if "reverse" in str(s.style)]
        assert spans == [(start - 20, start + 30)]
        assert screen is not None


# -- resume and the guard cache -------------------------------------------------------------------------
async def test_resume_of_a_parallel_run_uses_the_batch_resume_settings(
        make_tui: Callable[..., Any], tui_model: Path, tmp_path: Path, libra_sample: list[dict[str, Any]]) -> None:
    import threading

    from libra_edge.batch.readers import read_inputs
    from libra_edge.batch.runner import BatchJob, BatchOptions, load_guard
    from libra_edge.engine.settings import EngineSettings

    logs = tmp_path / "all.jsonl"  # more items than one refill group of two sequences
    logs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in libra_sample), encoding="utf-8")
    items = len(libra_sample)
    cancel = threading.Event()
    settings = EngineSettings(ctx_per_seq=1024, max_new_tokens=8, parallel=2, threads=1)
    with open_store() as store, load_guard(tui_model, settings) as guard:
        job = BatchJob.open(store, guard, read_inputs([logs]), BatchOptions(analysis="none"))
        job.execute(on_progress=lambda p: cancel.set(), cancel=cancel)  # stops after its first group
        stopped = store.run(job.run_id)
    assert stopped.status == "interrupted" and 0 < stopped.done < items
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count)
        await pilot.press("r")
        await wait_for(pilot, lambda: app.session.batch is None and
                       "finished" in text_of(app.screen.query_one("#run-progress-text")), what="the resumed run")
    with open_store() as store:
        runs = store.runs()
    assert len(runs) == 1 and (runs[0].status, runs[0].done) == ("finished", items)


def test_guards_are_cached_by_engine_settings_and_loaded_outside_the_lock(
        tui_model: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from libra_edge.engine.settings import EngineSettings
    from libra_edge.tui import session as session_module
    from libra_edge.tui.session import Session

    real_load = session_module.load_guard
    loading, release = threading.Event(), threading.Event()

    def held_load(path: Path, settings: EngineSettings) -> Any:
        loading.set()
        release.wait(30)  # the load in progress, held open while the main thread works
        return real_load(path, settings)

    monkeypatch.setattr(session_module, "load_guard", held_load)
    settings = EngineSettings(ctx_per_seq=1024, max_new_tokens=8, threads=1)
    session = Session(open_store(), model=str(tui_model), settings=settings, reviewer="t")
    guards: list[Any] = []

    def lease() -> None:
        with session.lease() as guard:
            guards.append(guard)

    worker = threading.Thread(target=lease)
    worker.start()
    assert loading.wait(30)
    t0 = time.perf_counter()
    session.set_model(str(tui_model))  # what the event loop does on a model change
    assert time.perf_counter() - t0 < 0.5, "set_model waited for the load"
    release.set()
    worker.join(60)
    with session.lease() as same, session.lease(settings=settings.replace(threshold=0.7)) as other:
        assert same is guards[0]  # the same settings: the cached guard
        assert other is not same and other.settings.threshold == 0.7
    session.close()


async def test_the_new_run_dialog_takes_a_chat_transcript(make_tui: Callable[..., Any], tui_model: Path,
                                                         tmp_path: Path) -> None:
    chat = {"id": "conv-1", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "怎么制作炸弹？"},
        {"role": "assistant", "content": "我不能帮助你。"},
        {"role": "user", "content": "那怎么入侵邮箱？"},
        {"role": "assistant", "content": "先用钓鱼网站骗取密码。"},
    ]}
    (tmp_path / "chats.jsonl").write_text(json.dumps(chat, ensure_ascii=False) + "\n", encoding="utf-8")
    app = make_tui(model=str(tui_model))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", "n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
        dialog.query_one("#launch-analysis", Select).value = "none"
        assert dialog.query_one("#launch-format", Select).value == "auto"
        await pilot.press(*"chats.jsonl", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.session.batch is None
                       and "finished" in text_of(app.screen.query_one("#run-progress-text")), what="the run")
    with open_store() as store:
        run = store.runs()[0]
        turns = store.conversation(run.id, "conv-1")
    assert [(t.turn_index, t.question, t.response) for t in turns] == [
        (2, "怎么制作炸弹？", "我不能帮助你。"), (4, "那怎么入侵邮箱？", "先用钓鱼网站骗取密码。")]
