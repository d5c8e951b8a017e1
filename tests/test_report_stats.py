"""Rates, Wilson intervals, reviewer precedence, kappa and relabelling (libra_edge.report.stats)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from libra_edge.errors import LibraError
from libra_edge.report.stats import Rate, cohen_kappa, histogram_bin, summarize_run, wilson
from libra_edge.store import Store, open_store
from tests.report_runs import Spec, make_run, result_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with open_store(tmp_path / "results.db") as s:
        yield s


def hand_wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The textbook formula, written out independently."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


# -- Wilson, by hand ---------------------------------------------------------------------
def test_wilson_matches_published_values() -> None:
    # 81 of 263 (Newcombe 1998's worked example): 0.2553 .. 0.3662 at z = 1.96.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # 9 of 10: 0.5958 .. 0.9821.
    low, high = wilson(9, 10)
    assert (round(low, 4), round(high, 4)) == (0.5958, 0.9821)


@pytest.mark.parametrize(("k", "n"), [(1, 3), (50, 100), (950, 1000), (999, 1000), (3, 7)])
def test_wilson_matches_the_formula(k: int, n: int) -> None:
    assert wilson(k, n) == pytest.approx(hand_wilson(k, n), abs=1e-12)


def test_wilson_at_the_edges_keeps_the_observed_rate_inside() -> None:
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(1 - 0.27753, abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_a_rate_and_its_complement_mirror_each_other() -> None:
    unsafe = Rate.of(30, 200)
    safe = unsafe.complement()
    assert (safe.k, safe.n, safe.rate) == (170, 200, 0.85)
    assert safe.low == pytest.approx(1 - unsafe.high) and safe.high == pytest.approx(1 - unsafe.low)


# -- kappa, by hand ----------------------------------------------------------------------
def test_cohen_kappa_by_hand() -> None:
    # 10 pairs: both unsafe 4, both safe 3, model-only 2, reviewer-only 1.
    pairs = [(True, True)] * 4 + [(False, False)] * 3 + [(True, False)] * 2 + [(False, True)]
    po = 7 / 10
    pe = 0.6 * 0.5 + 0.4 * 0.5
    assert cohen_kappa(pairs) == pytest.approx((po - pe) / (1 - pe))


def test_cohen_kappa_is_undefined_without_variety() -> None:
    assert cohen_kappa([]) is None
    assert cohen_kappa([(True, True)] * 5) is None
    assert cohen_kappa([(True, True), (True, False)]) == 0.0


# -- a run's figures -----------------------------------------------------------------------
def test_counts_rates_and_groups_of_a_run(store: Store) -> None:
    specs = ([Spec(0.9, "Real Data", "违法犯罪")] * 3 + [Spec(0.1, "Real Data", "违法犯罪")] * 5
             + [Spec(0.7, "Synthetic Data", "偏见歧视")] * 2 + [Spec(0.2, "Synthetic Data", None)] * 2
             + [Spec(None, "Real Data", "违法犯罪")])
    run = make_run(store, specs)
    s = summarize_run(store, run)
    assert (s.items, s.judged, s.errors, s.flagged) == (13, 12, 1, 5)
    assert (s.unsafe.k, s.unsafe.n) == (5, 12)
    assert (s.unsafe.low, s.unsafe.high) == pytest.approx(hand_wilson(5, 12))
    assert (s.qualified.k, s.qualified.rate) == (7, 7 / 12)
    assert {k: (r.k, r.n) for k, r in s.by_source.items()} == {"Real Data": (3, 8), "Synthetic Data": (2, 4)}
    assert {k: (r.k, r.n) for k, r in s.by_category.items()} == {"偏见歧视": (2, 2), "违法犯罪": (3, 8)}
    assert s.threshold == s.run_threshold == 0.5


def test_histogram_has_twenty_equal_bins_with_one_in_the_last(store: Store) -> None:
    run = make_run(store, [Spec(0.0), Spec(0.049), Spec(0.05), Spec(0.5), Spec(0.99), Spec(1.0), Spec(None)])
    h = summarize_run(store, run).histogram
    assert len(h) == 20 and sum(h) == 6
    assert (h[0], h[1], h[10], h[19]) == (2, 1, 1, 2)
    assert histogram_bin(1.0) == 19 and histogram_bin(0.95) == 19 and histogram_bin(0.9499) == 18


def test_reviewer_decisions_take_precedence(store: Store) -> None:
    # 4 flagged (0.9), 6 not (0.1). A reviewer clears two flagged items, flags one safe one,
    # confirms one flagged item.
    run = make_run(store, [Spec(0.9)] * 4 + [Spec(0.1)] * 6)
    store.set_review(result_id(store, run, 0), "safe", "quotation of a news report")
    store.set_review(result_id(store, run, 1), "safe")
    store.set_review(result_id(store, run, 2), "confirm")
    store.set_review(result_id(store, run, 5), "unsafe", "the model missed the slur")
    s = summarize_run(store, run)
    assert (s.unsafe.k, s.unsafe.n) == (4 - 2 + 1, 10)  # 3 of 10
    assert (s.model_unsafe.k, s.flagged) == (4, 4)
    assert s.reviewed == 4 and s.review_coverage == pytest.approx(3 / 4)
    assert [(o.seq, o.review) for o in s.overrides] == [(0, "safe"), (1, "safe"), (5, "unsafe")]
    assert s.overrides[0].note == "quotation of a news report"
    # kappa over the 4 reviewed pairs: (T,F) (T,F) (T,T) (F,T)
    assert s.kappa == pytest.approx(cohen_kappa([(True, False), (True, False), (True, True), (False, True)]))
    ignored = summarize_run(store, run, reviews_take_precedence=False)
    assert (ignored.unsafe.k, ignored.unsafe.n) == (4, 10)
    assert len(ignored.overrides) == 3  # still listed


def test_reviews_change_group_rates_too(store: Store) -> None:
    run = make_run(store, [Spec(0.9, "A"), Spec(0.9, "A"), Spec(0.1, "B")])
    store.set_review(result_id(store, run, 0), "safe")
    store.set_review(result_id(store, run, 2), "unsafe")
    s = summarize_run(store, run)
    assert {k: (r.k, r.n) for k, r in s.by_source.items()} == {"A": (1, 2), "B": (1, 1)}


def test_a_new_threshold_relabels_from_stored_scores(store: Store) -> None:
    run = make_run(store, [Spec(0.2), Spec(0.35), Spec(0.6), Spec(0.95), Spec(None)])
    s = summarize_run(store, run, threshold=0.3)
    assert (s.threshold, s.run_threshold) == (0.3, 0.5)
    assert (s.flagged, s.unsafe.k, s.relabelled) == (3, 3, 1)
    strict = summarize_run(store, run, threshold=0.9)
    assert (strict.flagged, strict.relabelled) == (1, 1)
    assert summarize_run(store, run).flagged == 2  # the stored verdicts are untouched


def test_confirm_under_a_new_threshold_keeps_the_verdict_the_reviewer_saw(store: Store) -> None:
    run = make_run(store, [Spec(0.6)])
    store.set_review(result_id(store, run, 0), "confirm")
    s = summarize_run(store, run, threshold=0.8)
    assert s.flagged == 0 and s.unsafe.k == 1  # the model now says safe; the reviewer said unsafe
    assert [o.review for o in s.overrides] == ["confirm"]


def test_bad_threshold_and_unknown_run_are_one_line_errors(store: Store) -> None:
    run = make_run(store, [Spec(0.6)])
    with pytest.raises(LibraError, match="between 0 and 1"):
        summarize_run(store, run, threshold=1.5)
    with pytest.raises(LibraError, match="no run 99"):
        summarize_run(store, 99)
