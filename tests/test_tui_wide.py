"""The TUI on a 160-column terminal (and narrower): a footer whose keys are whole, texts that
take the width the other columns do not need, how a run was judged, and a cut analysis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from libra_edge.store import Store, open_store
from libra_edge.tui.screens.detail import CUT_MARK, DetailScreen
from libra_edge.tui.screens.results import ResultsScreen
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.results_table import ResultsTable
from libra_edge.tui.widgets.runs_table import RunsTable
from tests.fixtures.tui import seed_run, text_of, wait_for

pytestmark = pytest.mark.anyio
WIDE = (160, 45)
QUESTION = "请问在什么情况下可以合法地获取他人的个人信息并且用于商业目的呢？" * 2
RESPONSE = "根据相关法律法规，未经本人同意收集和使用个人信息是违法的，应当遵守个人信息保护法的规定。" * 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def long_text_run(store: Store, *, cut: bool = False) -> int:
    """Three flagged items with long Chinese texts, short ids, one source and category."""
    run = store.create_run(
        fingerprint=f"long-{cut}", inputs=["/data/long.jsonl"], model_path="/models/guard.gguf", model_name="guard",
        model_sha256="0" * 64, quant="Q4_K_M", settings={"threshold": 0.5, "max_new_tokens": 24},
        prompt_template_version="1", options={"analysis": "all"}, total=3)
    for seq in range(3):
        analysis = "回答说明了收集个人信息的违法性，并且" if cut and seq == 0 else "回答说明了违法性。"
        store.add_result(run, seq=seq, question=QUESTION, response=RESPONSE,
                         fields={"id": f"q{seq}", "question": QUESTION, "response": RESPONSE},
                         verdict={"label": "不安全", "unsafe": True, "score": 0.9, "analysis": analysis,
                                  "raw": json.dumps({"答案": "不安全", "分析": analysis}, ensure_ascii=False),
                                  "analysis_cut": cut and seq == 0},
                         item_id=f"q{seq}", source="Real Data", category="隐私")
    store.finish_run(run, "finished")
    return run


async def open_results(app: Any, pilot: Any) -> ResultsScreen:
    """F2, Enter on the first (newest) run, wait for its first page."""
    await pilot.press("f2")
    await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count,
                   what="runs listed")
    await pilot.press("enter")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen, what="results")
    await wait_for(pilot, lambda: screen.query_one(ResultsTable).row_count and screen.total, what="first page")
    await pilot.pause(0.2)
    return screen


def footer_keys(screen: Any) -> list[FooterKey]:
    return [k for k in screen.query_one(KeysFooter).query_children(FooterKey) if k.display]


def assert_whole(screen: Any) -> list[str]:
    """Every key shown lies inside the footer, none over another; the keys' descriptions."""
    footer = screen.query_one(KeysFooter)
    keys = sorted(footer_keys(screen), key=lambda k: k.region.x)
    assert footer.max_scroll_x == 0  # nothing runs past the right edge
    for key in keys:
        assert footer.region.x <= key.region.x and key.region.right <= footer.region.right, key.description
    for left, right in zip(keys, keys[1:]):
        assert left.region.right <= right.region.x, (left.description, right.description)
    return [k.description for k in keys]


@pytest.mark.parametrize("width", [160, 100])
async def test_the_results_footer_shows_whole_keys_and_always_the_key_list(
        make_tui: Callable[..., Any], seeded_store: tuple[Path, int], width: int) -> None:
    app = make_tui()
    async with app.run_test(size=(width, 45)) as pilot:
        screen = await open_results(app, pilot)
        shown = assert_whole(screen)
        assert "Keys" in shown  # `?` lists whatever had to be left out
        for needed in ("Back", "Flagged", "Search", "Confirm", "→安全", "→不安全", "Undo", "Next"):
            assert needed in shown, (width, shown)
        if width == 160:  # only app-wide keys (F1-F3, quit, the palette) make room at 160
            assert {"Export", "Summary", "Decision", "Source", "Category", "Min score", "All", "Sort"} <= set(shown)
        left_out = screen.query_one(KeysFooter).left_out
        assert left_out and all(action not in shown for action in left_out)
        # The narrower terminal leaves out the filter keys (the filter bar shows them) first.
        if width == 100:
            assert "min_score" in left_out and "clear_filters" in left_out


async def test_question_and_response_take_the_width_the_other_columns_leave(
        make_tui: Callable[..., Any], isolated_home: Path) -> None:
    with open_store() as store:
        long_text_run(store)
    app = make_tui()
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        row = [str(cell) for cell in table.get_row_at(0)]
        question, response = row[-2], row[-1]
        # The id, source and category columns are as wide as their cells ("q0", "Real Data",
        # "隐私" and their headers): what they do not need goes to the texts.
        assert row[1] == "q0" and row[5] == "Real Data" and row[6] == "隐私"
        assert QUESTION.startswith(question.rstrip("…")) and RESPONSE.startswith(response.rstrip("…"))
        assert len(question.rstrip("…")) >= 18 and len(response.rstrip("…")) >= 27, (question, response)
        widths = [column.width for column in table.columns.values()]
        assert sum(widths) + 2 * len(widths) + 2 <= WIDE[0]  # and the row still fits the terminal


async def test_a_fast_run_says_it_wrote_no_analysis(make_tui: Callable[..., Any], isolated_home: Path) -> None:
    with open_store() as store:
        seed_run(store)  # analyses of every item
        seed_run(store, 3, analysis="none", input_name="spot-check.csv")  # --fast: the newest, listed first
    app = make_tui()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.screen.query(RunsTable) and app.screen.query_one(RunsTable).row_count == 2)
        info = app.screen.query_one("#run-info", Static)
        await wait_for(pilot, lambda: "run 2" in text_of(info), what="the fast run's details")
        fast = text_of(info)
        assert "fast: verdicts and scores, no analysis" in fast and "max tokens" not in fast
        await pilot.press("down")
        await wait_for(pilot, lambda: "run 1" in text_of(info), what="the full run's details")
        assert "analysis of every item, max tokens 256" in text_of(info)


async def test_an_analysis_cut_by_max_tokens_is_marked_in_the_item_view(
        make_tui: Callable[..., Any], isolated_home: Path) -> None:
    with open_store() as store:
        long_text_run(store, cut=True)
    app = make_tui()
    async with app.run_test(size=WIDE) as pilot:
        await open_results(app, pilot)
        await pilot.press("enter")  # item 1: its analysis was cut
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen, what="the item")
        analysis = detail.query_one("#detail-analysis", Static)
        assert text_of(analysis).endswith("…[cut]") and analysis.border_subtitle == CUT_MARK
        assert "analysis cut short" in text_of(detail.query_one("#detail-meta", Static))
        await pilot.press("escape", "down", "enter")  # item 2: whole
        detail = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.row.seq == 1 and
                                app.screen, what="item 2")
        analysis = detail.query_one("#detail-analysis", Static)
        assert "[cut]" not in text_of(analysis) and not analysis.border_subtitle
        assert "analysis cut short" not in text_of(detail.query_one("#detail-meta", Static))


async def test_the_number_column_fits_the_numbers_shown_in_any_order(
        make_tui: Callable[..., Any], isolated_home: Path) -> None:
    from tests.fixtures.tui import seed_run_bulk

    with open_store() as store:
        seed_run_bulk(store, 1200)
    app = make_tui()
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_results(app, pilot)
        table = screen.query_one(ResultsTable)
        before = screen._request
        await pilot.press("o")  # highest score first: item numbers up to 1,200 on the first page
        await wait_for(pilot, lambda: screen._request > before and table.row_count, what="sorted")
        await pilot.pause(0.2)
        widest = max(len(str(r.seq + 1)) for r in table.rows_shown)
        assert widest == 4 and list(table.columns.values())[0].width >= widest + 1  # and a marked range's ▌
        assert all(str(table.get_row_at(i)[0]) == str(r.seq + 1) for i, r in enumerate(table.rows_shown))
