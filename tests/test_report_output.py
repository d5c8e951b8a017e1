"""`libra-edge report` as a user meets it: where each format goes, what it never overwrites,
the file's mode, one item numbering, gates that fail whatever the sample size, and a
report made without matplotlib."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from libra_edge.store import Store, open_store
from tests.report_runs import SAFE, UNSAFE, Spec, make_run


@pytest.fixture
def store(isolated_home: Path) -> Store:
    """The test home's own results database (the one the CLI opens too)."""
    with open_store() as s:
        yield s


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """The current folder the commands run in (empty: the home is beside it)."""
    folder = tmp_path / "here"
    folder.mkdir()
    return folder


def report(cli: list[str], env: dict[str, str], *args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, "report", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          umask=umask, timeout=120)


def small_failing_run(store: Store) -> int:
    """24 judged items, 3 safe: qualified 12.5%, Wilson 95% 4.3%-31.0% (the issue's run)."""
    return make_run(store, [Spec(0.9, question=f"问题{i}") for i in range(21)] + [Spec(0.1)] * 3)


def gate_rows(md: str) -> dict[str, str]:
    """Gate name -> its Markdown table row."""
    section = md.split("## Gates", 1)[1].split("## Results", 1)[0]
    return {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ") and "**" in line}


def test_a_rate_whose_whole_interval_misses_fails_whatever_the_sample_size(store: Store, here: Path,
                                                                             cli: list[str], cli_env: dict[str, str]) -> None:
    run = small_failing_run(store)
    done = report(cli, cli_env, str(run), "--format", "md", cwd=here)
    assert done.returncode == 0, done.stderr
    rows = gate_rows(done.stdout)
    rate = rows["Qualified rate (classification model)"]
    assert "**FAIL**" in rate and "12.50% (3/24)" in rate
    assert "FAIL whatever the sample size: even the interval's upper bound 31.00% misses 90%" in rate
    size = rows["Sample size"]
    assert "**FAIL**" in size and "more items will not pass" in size
    data = json.loads(report(cli, cli_env, str(run), "--format", "json", cwd=here).stdout)
    assert [(g["outcome"], g["short_of_n"]) for g in data["gates"]] == [("FAIL", False), ("FAIL", True)]
    assert data["gates"][1]["value"] == pytest.approx(0.3101, abs=1e-4)  # the upper bound it was judged on


def test_a_rate_whose_interval_straddles_the_threshold_is_not_enough_data(store: Store, here: Path,
                                                                         cli: list[str], cli_env: dict[str, str]) -> None:
    # 95 of 100 safe: Wilson 95% 88.8%-97.8% holds 90%: more items could go either way.
    straddles = make_run(store, [Spec(0.1)] * 95 + [Spec(0.9)] * 5)
    # 200 of 200 safe: the interval clears 90%, but the rule wants 1,000 judged.
    clears = make_run(store, [Spec(0.1)] * 200)
    for run in (straddles, clears):
        data = json.loads(report(cli, cli_env, str(run), "--format", "json", cwd=here).stdout)
        assert [g["outcome"] for g in data["gates"]] == ["FAIL", "NOT ENOUGH DATA"]
        assert "more items will not pass" not in data["gates"][0]["detail"]


def test_text_formats_without_o_go_to_stdout_and_write_no_file(store: Store, here: Path,
                                                               cli: list[str], cli_env: dict[str, str]) -> None:
    run = small_failing_run(store)
    md = report(cli, cli_env, str(run), "--format", "md", cwd=here)
    assert md.returncode == 0 and md.stdout.startswith(f"# Libra-Guard audit report — run {run}"), md.stderr
    js = report(cli, cli_env, str(run), "--format", "json", cwd=here)
    assert js.returncode == 0 and json.loads(js.stdout)["summary"]["judged"] == 24
    assert list(here.iterdir()) == []  # nothing written into the current folder


def test_html_without_o_is_a_file_here_that_is_never_replaced(store: Store, here: Path,
                                                              cli: list[str], cli_env: dict[str, str]) -> None:
    run = small_failing_run(store)
    first = report(cli, cli_env, str(run), cwd=here)
    target = here / f"run-{run}-report.html"
    assert first.returncode == 0, first.stderr
    assert f"wrote run-{run}-report.html" in first.stderr and first.stdout == ""
    target.write_text("a reviewer's signed copy", encoding="utf-8")
    again = report(cli, cli_env, str(run), cwd=here)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "exists; not replaced" in again.stderr and "-o" in again.stderr
    assert target.read_text(encoding="utf-8") == "a reviewer's signed copy"
    assert [p.name for p in here.iterdir()] == [target.name]  # no temporary file left behind
    named = report(cli, cli_env, str(run), "-o", str(target), cwd=here)  # named: replaced
    assert named.returncode == 0, named.stderr
    assert "audit report" in target.read_text(encoding="utf-8")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_report_files_take_the_mode_the_umask_gives(store: Store, here: Path, cli: list[str],
                                                    cli_env: dict[str, str], umask: int, mode: int) -> None:
    run = small_failing_run(store)
    for name in ("r.md", "r.html"):
        done = report(cli, cli_env, str(run), "-o", name, cwd=here, umask=umask)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE((here / name).stat().st_mode) == mode, name


def test_items_are_numbered_from_1_in_every_format_as_in_the_tui(store: Store, here: Path,
                                                                  cli: list[str], cli_env: dict[str, str]) -> None:
    # The first item (position 0) is flagged and overridden by a reviewer.
    run = make_run(store, [Spec(0.9, question="第一个问题"), Spec(0.1), Spec(0.8)])
    first = next(r for r in store.results(run) if r.seq == 0)
    store.set_review(first.id, "safe", "fiction")
    md = report(cli, cli_env, str(run), "--format", "md", cwd=here).stdout
    assert "- **#1** item-0 " in md and "- **#3** item-2 " in md and "**#0**" not in md
    assert "| 1 | item-0 | 0.900 | unsafe | safe | fiction |" in md  # the overrides table
    html = report(cli, cli_env, str(run), "-o", "-", cwd=here).stdout
    assert re.search(r'<div class="meta">#1 · id item-0', html) and "#0 · id" not in html
    data = json.loads(report(cli, cli_env, str(run), "--format", "json", cwd=here).stdout)
    assert [(i["seq"], i["item"]) for i in data["flagged_items"]] == [(0, 1), (2, 3)]
    assert [(o["seq"], o["item"]) for o in data["summary"]["overrides"]] == [(0, 1)]


def test_without_matplotlib_the_charts_are_left_out_with_a_word(store: Store, tmp_path: Path,
                                                                 cli: list[str], cli_env: dict[str, str]) -> None:
    # A `matplotlib` that cannot be imported, first on the path: as if it were not installed.
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("No module named \'matplotlib\'")\n', encoding="utf-8")
    env = dict(cli_env, PYTHONPATH=os.pathsep.join(filter(None, [str(stub.parent), cli_env.get("PYTHONPATH")])))
    run = make_run(store, [Spec(0.9, "Real Data", gold=UNSAFE), Spec(0.1, "Synthetic Data", gold=SAFE)] * 5)
    out = tmp_path / "out"
    out.mkdir()
    done = report(cli, env, str(run), "-o", "audit.html", cwd=out)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert ("libra-edge: note: charts omitted: matplotlib is not installed "
            "(pip install 'libra-edge[report]' adds them") in done.stderr
    html = (out / "audit.html").read_text(encoding="utf-8")
    assert "<svg" not in html
    assert "Note: charts omitted: matplotlib is not installed (pip install &#39;libra-edge[report]&#39; adds them" in html
    # With matplotlib (the dev extra) the same command draws them and says nothing of it.
    drawn = report(cli, cli_env, str(run), "-o", "audit.html", cwd=out)
    assert drawn.returncode == 0 and "charts omitted" not in drawn.stderr
    assert "<svg" in (out / "audit.html").read_text(encoding="utf-8")
