"""Refusal detection: decisions with their evidence, user rules, and precision/recall on a labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from libra_edge.audit.refusal import load_rules
from libra_edge.errors import InputError

# Floors under the figures measured by tests/benchmarks/bench_refusal.py (README): `dev` holds
# the answers the rules were written against (and three earlier held-out rounds, since read and
# used to improve them); `holdout` (64 answers) was written after rules v2 were frozen. On it the
# rules measured precision 0.917, recall 0.344: these floors keep that from getting worse.
FLOORS = {"dev": (0.98, 0.95), "holdout": (0.90, 0.30)}


def labelled(reference_dir: Path) -> list[dict[str, object]]:
    lines = (reference_dir / "refusals.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_labelled_set_has_200_answers_of_both_kinds_in_both_languages(reference_dir: Path) -> None:
    rows = labelled(reference_dir)
    assert len(rows) >= 200
    for lang in ("zh", "en"):
        kinds = {bool(r["refused"]) for r in rows if r["lang"] == lang}
        assert kinds == {True, False}
    tricky = [r for r in rows if not r["refused"] and r["style"] in ("apology-answer", "disclaimer", "contains-neg")]
    assert len(tricky) >= 50  # answers that apologise, disclaim or say 不能/无法 and still answer


@pytest.mark.parametrize("split", ["dev", "holdout"])
def test_precision_and_recall_stay_above_their_floors(reference_dir: Path, split: str) -> None:
    rules = load_rules()
    rows = [r for r in labelled(reference_dir) if r["split"] == split]
    decided = [rules.detect(str(r["answer"])).refused for r in rows]
    tp = sum(d and bool(r["refused"]) for r, d in zip(rows, decided))
    fp = sum(d and not r["refused"] for r, d in zip(rows, decided))
    fn = sum(not d and bool(r["refused"]) for r, d in zip(rows, decided))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    floor_p, floor_r = FLOORS[split]
    assert precision >= floor_p and recall >= floor_r, (split, precision, recall)


def test_a_refusal_comes_with_the_rule_and_phrase_that_matched() -> None:
    decision = load_rules().detect("抱歉，我不能提供制作爆炸物的方法。")
    assert decision.refused
    assert decision.rule == "zh-first-person-decline" and decision.phrase == "我不能提供" and decision.at == 3
    assert decision.evidence()["phrase"] == "我不能提供"


def test_a_limitation_after_a_matched_phrase_is_an_answer_and_says_why() -> None:
    decision = load_rules().detect("我无法提供实时天气数据，不过昆明四季如春。")
    assert not decision.refused
    assert decision.excepted == ("zh-first-person-decline:zh-limitation",)


def test_curly_apostrophes_and_full_width_letters_do_not_hide_a_refusal() -> None:
    assert load_rules().detect("I’m sorry, but I can’t assist with that.").refused
    assert load_rules().detect("Ｉ ｃａｎ'ｔ ｈｅｌｐ with that").refused


def test_a_refusal_said_late_in_a_long_answer_does_not_count() -> None:
    answer = "春节的习俗很多，" * 30 + "我不能替你决定怎么过，我不能提供更多。"
    assert not load_rules().detect(answer).refused


def test_an_empty_answer_is_a_refusal() -> None:
    assert load_rules().detect("  \n").rule == "empty"


def test_a_team_file_adds_rules_and_exceptions_and_disables_shipped_ones(tmp_path: Path) -> None:
    extra = tmp_path / "team.json"
    extra.write_text(json.dumps({"rules": [{"id": "team-pass", "pattern": "这题跳过"}],
                                 "exceptions": [{"id": "team-weather", "pattern": "天气"}],
                                 "disable": ["zh-change-topic"]}, ensure_ascii=False), encoding="utf-8")
    rules = load_rules(extra)
    assert rules.detect("这题跳过。").rule == "team-pass"
    assert not rules.detect("我们换个话题吧。").refused
    assert not rules.detect("我不能提供天气预报。").refused
    assert "team.json (sha256 " in rules.version


@pytest.mark.parametrize(("content", "message"), [
    ({"rules": [{"id": "bad", "pattern": "(unclosed"}]}, "'bad': bad regular expression"),
    ({"disable": ["no-such-rule"]}, "\"disable\" names no shipped rule: no-such-rule"),
    ({"rules": [{"pattern": "x"}]}, "rules[1] needs an \"id\" and a \"pattern\""),
])
def test_a_bad_team_file_is_one_clear_error(tmp_path: Path, content: object, message: str) -> None:
    extra = tmp_path / "team.json"
    extra.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InputError, match="team.json") as caught:
        load_rules(extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)
