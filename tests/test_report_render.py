"""`libra-edge report`: the HTML/Markdown/JSON files, their figures, and `--verify`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from libra_edge.report import render_report, write_report
from libra_edge.report import charts as charts_module
from libra_edge.report.digest import digest_run, read_marker
from libra_edge.store import Store, open_store
from tests.report_runs import SAFE, UNSAFE, Spec, make_large_run, make_run, result_id


@pytest.fixture
def store(isolated_home: Path) -> Store:
    """The test home's own results database (the one the CLI opens too)."""
    with open_store() as s:
        yield s


def audit_run(store: Store) -> int:
    """40 items over two sources and categories, gold labels, one error, one long response."""
    specs = []
    for i in range(40):
        source = "Real Data" if i % 2 else "Synthetic Data"
        category = "违法犯罪" if i % 4 < 2 else "偏见歧视"
        score = (i % 10) / 10 + 0.05
        gold = UNSAFE if score > 0.4 else SAFE
        if i in (3, 17):
            gold = SAFE if gold == UNSAFE else UNSAFE  # two mistakes of the model
        response = "很长的回答。" * 200 if i == 9 else f"回答<{i}> & \"引号\""
        specs.append(Spec(score, source, category, gold=gold, question=f"问题 {i}", response=response))
    specs.append(Spec(None, "Real Data", "违法犯罪"))
    return make_run(store, specs)


def visible_text(html: str) -> str:
    body = re.sub(r"<(style|svg)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_the_html_report_holds_the_runs_figures(store: Store, tmp_path: Path) -> None:
    run = audit_run(store)
    path = write_report(store, run, tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    text = visible_text(html)
    assert f"audit report — run {run}" in text
    assert "41 items" in text and "libra-guard-test" in text
    # 40 judged; scores .05 .15 ... .95 repeat: 20 of 40 at or above 0.5 -> 50.00%.
    assert "50.00%" in text and "35.20% – 64.80%" in text  # Wilson 95% of 20/40
    assert "Real Data" in text and "违法犯罪" in text
    # 40 < 1,000 judged, and even the interval's upper bound (64.80% qualified) misses 90%.
    assert "FAIL whatever the sample size" in text
    assert html.count('<span class="outcome FAIL">FAIL</span>') == 2 and "outcome NOT-ENOUGH-DATA" not in html
    assert "F1-Unsafe" in text and "Confusion matrix" in text and "ROC-AUC" in text
    assert "Flagged items (20)" in text


def test_user_text_is_escaped_and_long_text_folded(store: Store, tmp_path: Path) -> None:
    html = write_report(store, audit_run(store), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "回答&lt;19&gt; &amp; &#34;引号&#34;" in html
    assert "回答<19>" not in html
    assert "<details><summary>" in html and "more characters" in html


def test_the_html_is_self_contained(store: Store, tmp_path: Path) -> None:
    html = write_report(store, audit_run(store), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, flags=re.I)
    assert "@import" not in html and "url(" not in html.replace("url(#", "")
    assert "<link" not in html.lower()


def test_charts_are_inline_svg_from_matplotlib(store: Store, tmp_path: Path) -> None:
    # matplotlib is in the dev extra: without it this fails, it is not skipped.
    html = write_report(store, audit_run(store), tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.count("<svg") >= 4  # histogram, per source, per category, ROC, PR
    assert "Matplotlib" in html and "<?xml" not in html


def test_without_matplotlib_the_report_omits_charts_with_a_note(store: Store, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(charts_module, "matplotlib_available", lambda: False)
    monkeypatch.setattr("libra_edge.report.render_html.matplotlib_available", lambda: False)
    html = write_report(store, audit_run(store), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<svg" not in html
    assert "charts omitted: matplotlib is not installed" in html
    assert "50.00%" in html


def test_json_and_markdown_carry_the_same_figures(store: Store) -> None:
    run = audit_run(store)
    data = json.loads(render_report(store, run, fmt="json"))
    assert data["summary"]["unsafe"]["k"] == 20 and data["summary"]["judged"] == 40
    assert [g["outcome"] for g in data["gates"]] == ["FAIL", "FAIL"]  # 50% safe: no sample size passes
    assert data["gold_metrics"]["n"] == 40
    assert data["provenance"]["model sha256"] == "ab" * 32
    md = render_report(store, run, fmt="md")
    assert "| all | 40 | 20 | 50.00% | 35.20% – 64.80% | 50.00% |" in md
    assert "| Qualified rate (classification model) | **FAIL** |" in md


def test_a_report_at_another_threshold_names_both(store: Store) -> None:
    run = audit_run(store)
    data = json.loads(render_report(store, run, fmt="json", threshold=0.3))
    assert data["summary"]["threshold"] == 0.3 and data["summary"]["run_threshold"] == 0.5
    assert data["summary"]["flagged"] == 28  # .35 .45 ... .95: 7 of every 10
    assert any("relabelled from stored scores at threshold 0.3" in n for n in data["notes"])
    html = render_report(store, run, threshold=0.3)
    assert "threshold 0.3 (run used 0.5)" in visible_text(html)


def test_reviews_appear_with_kappa_and_overrides(store: Store) -> None:
    run = audit_run(store)
    store.set_review(result_id(store, run, 9), "safe", "fiction, no instructions")
    store.set_review(result_id(store, run, 19), "confirm")
    data = json.loads(render_report(store, run, fmt="json"))
    assert data["summary"]["unsafe"]["k"] == 19
    assert [(o["seq"], o["review"]) for o in data["summary"]["overrides"]] == [(9, "safe")]
    text = visible_text(render_report(store, run))
    assert "Cohen's kappa" in text and "fiction, no instructions" in text


def test_verify_accepts_an_unchanged_run(store: Store, tmp_path: Path) -> None:
    run = audit_run(store)
    for fmt in ("html", "md", "json"):
        path = write_report(store, run, tmp_path / f"r.{fmt}", fmt=fmt)
        assert read_marker(path) == digest_run(store, run)


def test_verify_detects_a_changed_verdict(store: Store, tmp_path: Path) -> None:
    run = audit_run(store)
    before = digest_run(store, run)
    row = store.results(run)[5]
    store.add_result(run, seq=row.seq, question=row.question, response=row.response, fields=row.fields,
                     verdict={"label": UNSAFE, "unsafe": True, "score": 0.99, "raw": "{}"})
    assert digest_run(store, run).sha256 != before.sha256


def test_verify_detects_a_changed_review(store: Store) -> None:
    run = audit_run(store)
    before = digest_run(store, run)
    rid = result_id(store, run, 2)
    store.set_review(rid, "unsafe")
    after_review = digest_run(store, run)
    assert after_review.sha256 != before.sha256
    store.set_review(rid, "unsafe", "a note added later")
    assert digest_run(store, run).sha256 != after_review.sha256


def test_report_and_verify_on_the_command_line(store: Store, tmp_path: Path, cli: list[str],
                                               cli_env: dict[str, str]) -> None:
    run = audit_run(store)
    out = tmp_path / "audit.html"
    done = subprocess.run([*cli, "report", str(run), "-o", str(out)], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 1000
    ok = subprocess.run([*cli, "report", "--verify", str(out)], capture_output=True, text=True, env=cli_env)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    store.set_review(result_id(store, run, 0), "unsafe")
    changed = subprocess.run([*cli, "report", "--verify", str(out)], capture_output=True, text=True, env=cli_env)
    assert changed.returncode == 1 and "CHANGED" in changed.stdout


def test_command_line_mistakes_are_one_line_errors(store: Store, tmp_path: Path, cli: list[str],
                                                   cli_env: dict[str, str]) -> None:
    run = audit_run(store)
    cases = [
        (["report", "99"], "no run 99"),
        (["report", str(run), "--threshold", "2"], "--threshold: must be between 0 and 1"),
        (["report", str(run), "--profile", "nope"], "no profile named 'nope'"),
        (["report", "--verify", str(tmp_path / "missing.html")], "cannot read"),
        (["report"], "give the RUN"),
    ]
    for argv, message in cases:
        done = subprocess.run([*cli, *argv], capture_output=True, text=True, env=cli_env)
        assert done.returncode != 0, argv
        assert message in done.stderr and done.stderr.count("\n") == 1, (argv, done.stderr)


@pytest.mark.slow
def test_a_10000_item_run_report_stays_under_a_few_megabytes(tmp_path: Path) -> None:
    # Time is measured by tests/benchmarks/bench_report.py; only the size is bounded here.
    with open_store(tmp_path / "big.db") as big:
        run = make_large_run(big, 10_000)
        path = write_report(big, run, tmp_path / "big.html")
    assert path.stat().st_size < 5_000_000
    assert "10,000" in path.read_text(encoding="utf-8")


def test_the_report_core_imports_no_tui_plotting_or_llama(cli: list[str]) -> None:
    code = ("import sys, libra_edge.report, libra_edge.report.build, libra_edge.report.stats, "
            "libra_edge.audit.sample, libra_edge.cli.report, libra_edge.cli.audit; "
            "print(sorted(m for m in ('textual', 'matplotlib', 'llama_cpp', 'ray') if m in sys.modules))")
    done = subprocess.run([cli[0], "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_runs_with_nothing_judged_still_render_in_every_format(store: Store) -> None:
    empty = make_run(store, [], finish=False)
    failed = make_run(store, [Spec(None), Spec(None)])
    for run in (empty, failed):
        for fmt in ("html", "md", "json"):
            assert "libra-edge-integrity v1" in render_report(store, run, fmt=fmt)
    data = json.loads(render_report(store, failed, fmt="json"))
    assert (data["summary"]["judged"], data["summary"]["errors"]) == (0, 2)
    assert [g["outcome"] for g in data["gates"]] == ["FAIL", "NOT ENOUGH DATA"]
    assert json.loads(render_report(store, empty, fmt="json"))["gates"] == []


def test_an_export_relabelled_at_a_new_threshold_matches_the_report(store: Store, tmp_path: Path, cli: list[str],
                                                                   cli_env: dict[str, str]) -> None:
    run = audit_run(store)
    out = tmp_path / "strict.jsonl"
    done = subprocess.run([*cli, "report", str(run), "--threshold", "0.3", "--export", str(out)],
                          capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "relabelled at threshold 0.3 (the run judged at 0.5): 8 verdicts changed" in done.stderr
    assert not (Path.cwd() / f"run-{run}-report.html").exists()  # --export alone writes no report
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    stored = store.results(run)
    assert len(rows) == 41 and [r["id"] for r in rows] == [s.fields["id"] for s in stored]
    for row, before in zip(rows, stored):
        verdict = row["verdict"]
        if before.score is None:  # the failed item stays failed
            assert verdict["status"] == "failed" and row["critic"] == ""
            continue
        assert verdict["score"] == before.score and verdict["threshold"] == 0.3  # nothing re-judged
        assert verdict["unsafe"] == (before.score >= 0.3)
        assert json.loads(row["critic"])["答案"] == verdict["label"] == (UNSAFE if verdict["unsafe"] else SAFE)
    # The same count the report flags at that threshold, and what `eval` reads from the file.
    report = json.loads(render_report(store, run, fmt="json", threshold=0.3))
    assert sum(r["verdict"]["unsafe"] is True for r in rows) == report["summary"]["flagged"] == 28
    unchanged = subprocess.run([*cli, "report", str(run), "--export", str(tmp_path / "same.csv")],
                               capture_output=True, text=True, env=cli_env)
    assert unchanged.returncode == 0 and "at the run's threshold 0.5" in unchanged.stderr
