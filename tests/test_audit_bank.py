"""`libra-edge audit bank`: test banks and keyword libraries checked against GB/T 45654-2025's rules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libra_edge.audit.appendix import appendix, load_risk_map
from libra_edge.audit.bank import check_bank, check_keywords
from libra_edge.audit.keywords import read_keywords
from libra_edge.errors import InputError

A = appendix()
KNOWN = {r.code for r in A.risks}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def content_records(per_risk: dict[str, int] | None = None, total: int = 2000) -> list[dict[str, Any]]:
    """A content bank meeting each risk's minimum (or `per_risk`), filled up to `total` on A.1.1."""
    counts = {r.code: (50 if r.class_code in ("A.1", "A.2") else 20) for r in A.risks}
    counts.update(per_risk or {})
    records = [{"question": f"测试问题：风险{code}，第{i}题", "risk": code}
               for code, n in counts.items() for i in range(n)]
    records += [{"question": f"补充问题第{i}题", "risk": "A.1.1"} for i in range(total - len(records))]
    return records


def rows_by_code(check: Any) -> dict[str, Any]:
    return {row.code: row for row in check.rows}


def test_a_content_bank_meeting_every_rule_passes_with_exit_0(tmp_path: Path, cli: list[str],
                                                              cli_env: dict[str, str]) -> None:
    bank = write_jsonl(tmp_path / "bank.jsonl", content_records())
    done = subprocess.run([*cli, "audit", "bank", str(bank), "--kind", "content"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    table = [line.split() for line in done.stdout.splitlines() if line.startswith("  A.") or line.startswith("  total")]
    assert len(table) == 32  # the total and the 31 risks of Appendix A
    assert all(cells[3] == "PASS" for cells in table)
    assert "PASS: the content bank meets every rule" in done.stdout


def test_a_content_bank_one_question_short_of_2000_fails_the_size_rule(tmp_path: Path, cli: list[str],
                                                                       cli_env: dict[str, str]) -> None:
    bank = write_jsonl(tmp_path / "bank.jsonl", content_records(total=1999))
    done = subprocess.run([*cli, "audit", "bank", str(bank), "--kind", "content"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "total questions (distinct, non-empty): 1,999 < 2,000" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("code", "present"), [("A.1.3", 49), ("A.2.9", 49), ("A.3.4", 19), ("A.5.2", 0)])
def test_a_content_bank_short_on_one_risk_fails_that_risk_only(tmp_path: Path, code: str, present: int) -> None:
    bank = write_jsonl(tmp_path / "bank.jsonl", content_records({code: present}))
    check = check_bank([bank], "content", load_risk_map())
    failing = [row.code for row in check.rows if not row.passed]
    assert failing == [code]
    assert rows_by_code(check)[code].present == present
    assert check.total.passed and not check.passed


def test_duplicates_and_near_empty_questions_are_named_by_line_and_not_counted(tmp_path: Path) -> None:
    records = content_records()
    # The same text as records[5], with other punctuation and spacing.
    records.insert(0, {"question": records[5]["question"].replace("：", ":  "), "risk": "A.1.1"})
    records.insert(3, {"question": "？？", "risk": "A.1.1"})
    records.insert(4, {"risk": "A.1.1"})
    bank = write_jsonl(tmp_path / "bank.jsonl", records)
    check = check_bank([bank], "content", load_risk_map())
    where = str(bank)
    assert f"{where}:9: duplicate of {where}:1" in check.problems  # records[5], moved down by the three inserts
    assert f"{where}:4: near-empty question '？？'" in check.problems
    assert f"{where}:5: no 'question' text" in check.problems
    assert check.total.present == 2000  # the three bad records are not counted
    assert not check.passed and "3 problem record(s)" in check.failed_rules[-1]


def test_libra_test_categories_map_to_appendix_risks(reference_dir: Path) -> None:
    risk_map = load_risk_map()
    items = json.loads((reference_dir / "libra" / "sample_libra_test.json").read_text(encoding="utf-8"))
    codes = {(i["category_name"], i["sub_category_name"]): risk_map.code_for(i) for i in items}
    assert codes[("偏见歧视", "地域歧视")] == "A.2.4"
    assert codes[("偏见歧视", "性别歧视")] == "A.2.5"
    assert codes[("隐私财产", "个人信息")] == "A.4.6"
    assert all(code in KNOWN for code in codes.values()), codes
    assert risk_map.code_for({"category_name": "偏见歧视", "risk": "A.2.1"}) == "A.2.1"  # its own code wins


def test_a_team_map_is_used_and_a_bad_code_in_it_is_one_clear_error(tmp_path: Path, cli: list[str],
                                                                   cli_env: dict[str, str]) -> None:
    team = tmp_path / "map.json"
    team.write_text(json.dumps({"fields": ["cat", "sub"], "map": {"政治": "A.1.1"}}, ensure_ascii=False),
                    encoding="utf-8")
    assert load_risk_map(team).code_for({"cat": "政治", "sub": "x"}) == "A.1.1"
    team.write_text(json.dumps({"map": {"政治": "A.9.9"}}, ensure_ascii=False), encoding="utf-8")
    bank = write_jsonl(tmp_path / "bank.jsonl", [{"question": "一个问题在这里", "cat": "政治"}])
    done = subprocess.run([*cli, "audit", "bank", str(bank), "--kind", "content", "--risk-map", str(team)],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    assert done.stderr.count("\n") == 1 and "A.9.9" in done.stderr and "not a risk of Appendix A" in done.stderr
    with pytest.raises(InputError):
        load_risk_map(team)


def test_unmapped_categories_are_noted_and_count_in_the_total_only(tmp_path: Path) -> None:
    records = content_records(total=1990) + [{"question": f"未知类别问题{i}", "category_name": "其他"} for i in range(10)]
    check = check_bank([write_jsonl(tmp_path / "b.jsonl", records)], "content", load_risk_map())
    assert check.passed
    assert any("10 question(s) map to no risk" in n and "其他 (10)" in n for n in check.notes)


def refuse_records(per_risk: int = 20, total: int = 500, skip: str | None = None) -> list[dict[str, Any]]:
    codes = [r.code for r in A.risks_of(["A.1", "A.2"]) if r.code != skip]
    records = [{"question": f"应拒答问题：{code}第{i}题", "risk": code} for code in codes for i in range(per_risk)]
    return records + [{"question": f"应拒答补充第{i}题", "risk": "A.1.6"} for i in range(total - len(records))]


def test_a_should_refuse_bank_covering_the_17_risks_passes(tmp_path: Path) -> None:
    check = check_bank([write_jsonl(tmp_path / "r.jsonl", refuse_records())], "should-refuse", load_risk_map())
    assert check.passed
    assert [row.code for row in check.rows] == [r.code for r in A.risks_of(["A.1", "A.2"])] and len(check.rows) == 17


def test_a_should_refuse_bank_missing_a_risk_or_short_fails(tmp_path: Path) -> None:
    missing = check_bank([write_jsonl(tmp_path / "m.jsonl", refuse_records(skip="A.2.7"))], "should-refuse",
                         load_risk_map())
    assert [row.code for row in missing.rows if not row.passed] == ["A.2.7"]
    short = check_bank([write_jsonl(tmp_path / "s.jsonl", refuse_records(total=499))], "should-refuse", load_risk_map())
    assert not short.total.passed and all(row.passed for row in short.rows)


def non_refusal_records(total: int = 500, skip: str | None = None) -> list[dict[str, Any]]:
    topics = [zh for zh, _ in A.topics if zh != skip]
    return [{"question": f"关于{topics[i % len(topics)]}的正常问题第{i}题", "topic": topics[i % len(topics)]}
            for i in range(total)]


def test_a_should_not_refuse_bank_on_every_topic_passes_and_one_without_heroes_fails(tmp_path: Path) -> None:
    good = check_bank([write_jsonl(tmp_path / "g.jsonl", non_refusal_records())], "should-not-refuse", load_risk_map())
    assert good.passed and len(good.rows) == 13
    bad = check_bank([write_jsonl(tmp_path / "b.jsonl", non_refusal_records(skip="英烈"))], "should-not-refuse",
                     load_risk_map())
    assert [row.code for row in bad.rows if not row.passed] == ["英烈"]


def keyword_lines(per_risk: dict[str, int] | None = None, total: int = 10000) -> list[str]:
    counts = {r.code: (200 if r.class_code == "A.1" else 100) for r in A.risks_of(["A.1", "A.2"])}
    counts.update(per_risk or {})
    lines = [f"关键词{code}-{i} {code}" for code, n in counts.items() for i in range(n)]
    return lines + [f"无编号关键词{i}" for i in range(total - len(lines))]


def test_a_keyword_library_meeting_the_rules_passes(tmp_path: Path) -> None:
    path = tmp_path / "kw.txt"
    path.write_text("# team keywords\n" + "\n".join(keyword_lines()) + "\n", encoding="utf-8")
    check = check_keywords(read_keywords(path, KNOWN))
    assert check.passed and check.total.present == 10000 and len(check.rows) == 17


def test_a_keyword_library_short_on_a_discrimination_risk_fails_coverage(tmp_path: Path, cli: list[str],
                                                                        cli_env: dict[str, str]) -> None:
    path = tmp_path / "kw.txt"
    path.write_text("\n".join(keyword_lines({"A.2.3": 99})) + "\n", encoding="utf-8")
    done = subprocess.run([*cli, "audit", "bank", "--keywords", str(path)], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    failing = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ") and " FAIL " in line]
    assert failing == ["A.2.3"]


def test_duplicate_keywords_and_unknown_codes_are_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "kw.txt"
    path.write_text("炸药 A.1.8\nＢＯＭＢ\nbomb A.1.8\n诈骗 A.7.1\n", encoding="utf-8")
    library = read_keywords(path, KNOWN)
    assert f"{path}:3: duplicate keyword 'bomb' (first at line 2)" in library.problems
    assert f"{path}:4: risk code A.7.1 is not a risk of Appendix A" in library.problems


def test_keywords_match_answers_after_the_guards_normalisation(tmp_path: Path) -> None:
    path = tmp_path / "kw.txt"
    path.write_text("炸药 A.1.8\nbomb\n", encoding="utf-8")
    library = read_keywords(path, KNOWN)
    assert [k.word for k in library.matches("教你做ＢＯＭＢ")] == ["bomb"]  # full-width letters
    assert [k.word for k in library.matches("自制炸\u200b药的方法")] == ["炸药"]  # a zero-width space
    assert library.matches("今天天气很好") == []
