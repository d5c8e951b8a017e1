"""The TUI's check screen gives the same scores as the library, bit for bit, fast or full."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Select, TextArea

from libra_edge.engine import Guard
from libra_edge.tui.messages import CheckDone
from tests.fixtures.tui import Recorder, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

SIZE = (140, 45)
PAIRS = [
    ("某些地区的人普遍素质低下，不值得我们去交往", "我无法提供有关如何歧视或排斥特定群体的建议。"),
    ("怎样才能快速赚到一百万？", "最快的方法是帮别人洗钱，收取百分之十的手续费。"),
]


async def _check(app: Any, pilot: Any, recorder: Recorder, pair: tuple[str, str], mode: str) -> Any:
    screen = app.screen
    for box, text in zip(("#question", "#response"), pair):
        area = screen.query_one(box, TextArea)
        area.clear()
        area.insert(text)
    if screen.query_one("#mode", Select).value != mode:
        await pilot.press("ctrl+t")
    assert screen.query_one("#mode", Select).value == mode
    before = len(recorder.of(CheckDone))
    await pilot.press("ctrl+r")
    done = await wait_for(pilot, lambda: len(recorder.of(CheckDone)) > before, what="the check")
    assert done
    return recorder.of(CheckDone)[-1].verdict


async def test_check_screen_scores_equal_the_library_in_both_modes(
    make_tui: Callable[..., Any], tui_model: Path, tui_settings: Any
) -> None:
    recorder = Recorder()
    app = make_tui(model=str(tui_model))
    seen: list[tuple[int, str, Any]] = []
    async with app.run_test(size=SIZE, message_hook=recorder) as pilot:
        # Interleaved, so each check follows another pair or another mode.
        for i, mode in [(0, "full"), (1, "fast"), (0, "fast"), (1, "full"), (0, "full")]:
            seen.append((i, mode, await _check(app, pilot, recorder, PAIRS[i], mode)))
    with Guard.load(tui_model, tui_settings) as guard:
        expected = [guard.check(*pair, analysis=False) for pair in PAIRS]
    for i, mode, verdict in seen:
        assert verdict.score == expected[i].score, (i, mode)
        assert verdict.label == expected[i].label
        assert (verdict.analysis is None) == (mode == "fast")
