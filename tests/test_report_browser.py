"""The HTML report in headless Chromium with networking disabled: it renders offline, without
console errors, requests nothing but its own file, and shows the run's figures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from libra_edge.report import write_report
from libra_edge.store import open_store
from tests.report_browser import visit
from tests.report_runs import SAFE, UNSAFE, Spec, make_run, result_id


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    """A 1,200-item run (all the report's sections: gold labels, reviews, errors) and its report."""
    with open_store(tmp_path / "results.db") as store:
        specs = []
        for i in range(1200):
            score = ((i * 37) % 100) / 100
            specs.append(Spec(None if i == 7 else score, ("Real Data", "Synthetic Data", "Translated Data")[i % 3],
                              ("违法犯罪", "偏见歧视", "隐私侵犯", "身心健康")[i % 4],
                              gold=UNSAFE if (score >= 0.5) != (i % 13 == 0) else SAFE,
                              question=f"问题 {i}", response=f"回答 {i} <script>alert(1)</script>"))
        run = make_run(store, specs, threshold=0.9)
        store.set_review(result_id(store, run, 9), "unsafe", "the model missed the insult")
        return write_report(store, run, tmp_path / "report.html")


def test_the_report_renders_offline_with_no_console_errors_and_no_requests(report_file: Path,
                                                                            tmp_path: Path) -> None:
    started = time.monotonic()
    seen = visit(report_file, tmp_path / "first-screen.png", tmp_path / "chromium-profile")
    assert time.monotonic() - started < 60
    assert seen.console_errors == []
    assert seen.requests == [report_file.resolve().as_uri()]  # the file itself, nothing else
    assert seen.screenshot.stat().st_size > 10_000
    assert seen.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_visible_page_holds_the_runs_figures(report_file: Path, tmp_path: Path) -> None:
    seen = visit(report_file, tmp_path / "shot.png", tmp_path / "profile")
    text = seen.text
    # Scores (37 i mod 100)/100 take each of 0.00..0.99 twelve times: 120 at or above the
    # run's threshold 0.9. Item 7 failed (its 0.59 was not flagged anyway), so 120 of 1,199
    # judged are flagged; the reviewer adds item 9 (0.33): 121 unsafe, 10.09%; qualified 89.91%.
    assert "1,200" in text and "1,199" in text and "Libra-Guard audit report" in text
    assert "10.09%" in text and "89.91%" in text
    assert "Translated Data" in text and "违法犯罪" in text
    assert "PASS" in text and "FAIL" in text  # enough judged; the qualified rate is short of 90%
    assert "F1-Unsafe" in text and "the model missed the insult" in text
    assert "<script>alert(1)</script>" in text  # user text shown as text, never run
