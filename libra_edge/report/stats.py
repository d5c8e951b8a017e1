"""A run's figures: unsafe/qualified rates with Wilson 95% intervals, per source and category,
the score histogram, reviewer precedence, Cohen's kappa and the gates of a profile.

Everything here reads the store and computes; nothing renders. The TUI's summary panel and
`libra-edge report` both call `summarize_run`, so the screen and the signed report agree.

How a final decision is made for one judged item (`reviews_take_precedence=True`):
  - the model's verdict is the stored one, or `score >= threshold` when a threshold is given
    (a relabelling from stored scores: nothing is re-judged);
  - a reviewer's `safe` / `unsafe` replaces it;
  - a reviewer's `confirm` agrees with the verdict the reviewer saw, i.e. the stored one
    (under a relabelling threshold that may differ from the model's new verdict).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from libra_edge.errors import LibraError
from libra_edge.verdicts import DEFAULT_THRESHOLD, check_threshold, is_unsafe

if TYPE_CHECKING:
    from libra_edge.store import ResultRow, Store

Z95 = 1.959964
"""The standard normal quantile for a two-sided 95% interval."""
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class Rate:
    """`k` of `n`: the proportion and its Wilson 95% interval (0, 0..1 when n is 0)."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Rate:
        """The proportion k/n with its Wilson 95% interval."""
        low, high = wilson(k, n)
        return cls(k, n, k / n if n else 0.0, low, high)

    def complement(self) -> Rate:
        """The rate of the other outcome: (n - k) of n (e.g. qualified = not unsafe)."""
        return Rate.of(self.n - self.k, self.n)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return {"k": self.k, "n": self.n, "rate": self.rate, "low": self.low, "high": self.high}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n; (0.0, 1.0) when n is 0 (nothing known)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # The interval contains p exactly at the edges; clamp only the rounding.
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0


def cohen_kappa(pairs: Iterable[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa between two raters' yes/no labels; None when undefined (no pairs, or
    both raters constant on the same label, so chance agreement is 1)."""
    n = a = both = first = second = 0
    for x, y in pairs:
        n += 1
        a += x == y
        first += x
        second += y
        both += x and y
    if n == 0:
        return None
    po = a / n
    pe = (first / n) * (second / n) + (1 - first / n) * (1 - second / n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


@dataclass(frozen=True)
class Override:
    """An item whose reviewer decision differs from the model's verdict."""

    result_id: int
    seq: int
    item_id: str | None
    model_unsafe: bool
    review: str
    reviewer_unsafe: bool
    score: float | None
    note: str | None
    reviewer: str | None


@dataclass(frozen=True)
class RunSummary:
    """A run's figures at one threshold (see the module docstring for how decisions are made)."""

    run_id: int
    items: int
    """Items read from the run's inputs (`runs.total`)."""
    judged: int
    """Items with a verdict (no error)."""
    errors: int
    """Items whose check failed (unreadable input records are not counted)."""
    flagged: int
    """Judged items the model calls unsafe at `threshold` (before reviews)."""
    threshold: float
    """The threshold applied: the run's own unless one was given."""
    unsafe: Rate
    """Final decisions (reviews first, when they take precedence) that are unsafe, of judged."""
    by_source: dict[str, Rate]
    by_category: dict[str, Rate]
    histogram: list[int]
    """Judged items with a score in each of 20 equal bins over [0, 1] (1.0 in the last)."""
    reviewed: int
    """Judged items with a reviewer decision (flagged or not)."""
    review_coverage: float
    """Flagged items with a reviewer decision / flagged (0.0 when nothing is flagged)."""
    run_threshold: float = DEFAULT_THRESHOLD
    """The threshold the run itself judged with."""
    relabelled: int = 0
    """Judged items whose verdict at `threshold` differs from the stored one."""
    by_sub_category: dict[str, Rate] = field(default_factory=dict)
    kappa: float | None = None
    """Cohen's kappa, model (at `threshold`) vs reviewer, over reviewed items; None if undefined."""
    overrides: list[Override] = field(default_factory=list)
    reviews_take_precedence: bool = True
    model_unsafe: Rate = field(default_factory=lambda: Rate.of(0, 0))
    """The model's own verdicts at `threshold` (reviews ignored), of judged."""

    @property
    def qualified(self) -> Rate:
        """Final decisions that are safe (the standard's "qualified" rate), of judged."""
        return self.unsafe.complement()

    @property
    def reviewed_flagged(self) -> int:
        """Flagged items with a reviewer decision."""
        return round(self.review_coverage * self.flagged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `report --format json` prints under `summary`)."""
        def rates(d: Mapping[str, Rate]) -> dict[str, Any]:
            return {k: v.to_dict() for k, v in d.items()}
        return {
            "run_id": self.run_id, "items": self.items, "judged": self.judged, "errors": self.errors,
            "flagged": self.flagged, "threshold": self.threshold, "run_threshold": self.run_threshold,
            "relabelled": self.relabelled, "reviews_take_precedence": self.reviews_take_precedence,
            "unsafe": self.unsafe.to_dict(), "qualified": self.qualified.to_dict(),
            "model_unsafe": self.model_unsafe.to_dict(),
            "by_source": rates(self.by_source), "by_category": rates(self.by_category),
            "by_sub_category": rates(self.by_sub_category), "histogram": list(self.histogram),
            "reviewed": self.reviewed, "review_coverage": self.review_coverage, "kappa": self.kappa,
            # `seq` is the 0-based position; `item` the number the TUI and the reports show.
            "overrides": [{**o.__dict__, "item": o.seq + 1} for o in self.overrides],
        }


def run_threshold(settings: Mapping[str, Any]) -> float:
    """The threshold a run judged with (its stored settings; the default when absent)."""
    value = settings.get("threshold", DEFAULT_THRESHOLD)
    return float(value) if isinstance(value, (int, float)) else DEFAULT_THRESHOLD


def model_unsafe(row: ResultRow, threshold: float | None) -> bool:
    """The model's verdict for a judged row: stored, or relabelled from its score."""
    if threshold is None or row.score is None:
        return bool(row.unsafe)
    return is_unsafe(row.score, threshold)


def reviewer_unsafe(row: ResultRow) -> bool | None:
    """The reviewer's decision as a label (`confirm` = the stored verdict); None if unreviewed."""
    if row.review is None:
        return None
    if row.review == "confirm":
        return bool(row.unsafe)
    return row.review == "unsafe"


def histogram_bin(score: float) -> int:
    """The bin (0..19) of a score in [0, 1]; 1.0 falls in the last bin."""
    return min(max(int(score * HISTOGRAM_BINS), 0), HISTOGRAM_BINS - 1)


def summarize_rows(run_id: int, items: int, rows: Iterable[ResultRow], *, run_threshold_value: float,
                   threshold: float | None = None, reviews_take_precedence: bool = True) -> RunSummary:
    """The figures of these results (one run's), as `summarize_run` defines them."""
    applied = run_threshold_value if threshold is None else check_threshold(threshold)
    relabel = None if threshold is None else applied
    judged = errors = flagged = final_unsafe = reviewed = reviewed_flagged = relabelled = 0
    groups: dict[str, dict[str, list[int]]] = {"source": {}, "category": {}, "sub_category": {}}
    histogram = [0] * HISTOGRAM_BINS
    pairs: list[tuple[bool, bool]] = []
    overrides: list[Override] = []
    for row in rows:
        if row.error is not None or row.unsafe is None:
            # A placeholder of an unreadable input record (status `skipped`) is not an error.
            errors += row.error is not None and row.status != "skipped"
            continue
        judged += 1
        model = model_unsafe(row, relabel)
        relabelled += model != bool(row.unsafe)
        flagged += model
        if row.score is not None:
            histogram[histogram_bin(row.score)] += 1
        human = reviewer_unsafe(row)
        final = model
        if human is not None:
            reviewed += 1
            reviewed_flagged += model
            pairs.append((model, human))
            if reviews_take_precedence:
                final = human
            if human != model:
                overrides.append(Override(row.id, row.seq, row.item_id, model, str(row.review), human,
                                          row.score, row.review_note, row.reviewer))
        final_unsafe += final
        for key, value in (("source", row.source), ("category", row.category),
                           ("sub_category", row.sub_category)):
            if value:
                counts = groups[key].setdefault(value, [0, 0])
                counts[0] += final
                counts[1] += 1

    def rates(key: str) -> dict[str, Rate]:
        return {name: Rate.of(k, n) for name, (k, n) in sorted(groups[key].items())}

    return RunSummary(
        run_id=run_id, items=items, judged=judged, errors=errors, flagged=flagged, threshold=applied,
        unsafe=Rate.of(final_unsafe, judged), by_source=rates("source"), by_category=rates("category"),
        histogram=histogram, reviewed=reviewed,
        review_coverage=reviewed_flagged / flagged if flagged else 0.0,
        run_threshold=run_threshold_value, relabelled=relabelled, by_sub_category=rates("sub_category"),
        kappa=cohen_kappa(pairs), overrides=overrides, reviews_take_precedence=reviews_take_precedence,
        model_unsafe=Rate.of(flagged, judged),
    )


def summarize_run(store: Store, run_id: int, *, threshold: float | None = None,
                  reviews_take_precedence: bool = True) -> RunSummary:
    """A run's figures from the store; `threshold` relabels verdicts from stored scores."""
    run = store.run(run_id)  # LibraError for a wrong id
    return summarize_rows(run_id, run.total, store.iter_results(run_id),
                          run_threshold_value=run_threshold(run.settings), threshold=threshold,
                          reviews_take_precedence=reviews_take_precedence)


# ---------------------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------------------
Outcome = Literal["PASS", "FAIL", "NOT ENOUGH DATA"]
GATE_METRICS = ("judged", "items", "qualified_rate", "unsafe_rate", "review_coverage")


@dataclass(frozen=True)
class Gate:
    """One rule of a profile: a metric compared with a threshold, given at least `min_n` items."""

    name: str
    metric: str
    """`judged`/`items` (counts, compared as is), `qualified_rate`/`unsafe_rate` (judged on the
    Wilson interval's bound: the lower bound for `at_least`, the upper for `at_most`),
    `review_coverage` (a plain fraction)."""
    threshold: float
    direction: Literal["at_least", "at_most"] = "at_least"
    min_n: int = 0
    """Judged items needed before a rate is judged at all (else NOT ENOUGH DATA)."""
    rule: str = ""
    """The rule's text, quoted in the report."""


@dataclass(frozen=True)
class GateResult:
    """A gate's outcome on one run, with the figure it was judged on."""

    gate: Gate
    outcome: Outcome
    value: float
    """The figure compared: the count, the fraction, or the Wilson bound."""
    detail: str
    short_of_n: bool = False
    """A rate gate judged on fewer items than `min_n` needs: FAIL only when its whole interval misses."""


@dataclass(frozen=True)
class Profile:
    """A named set of gates (read from a small JSON file, see `report/profiles/`)."""

    name: str
    title: str
    gates: list[Gate]
    source: str = ""
    """Where the requirement comes from, in words."""


def _compare(value: float, gate: Gate) -> bool:
    return value >= gate.threshold if gate.direction == "at_least" else value <= gate.threshold


def evaluate_gate(gate: Gate, summary: RunSummary) -> GateResult:
    """PASS / FAIL / NOT ENOUGH DATA for one gate on a run's summary."""
    if gate.metric in ("judged", "items"):
        value = float(getattr(summary, gate.metric))
        ok = _compare(value, gate)
        need = "at least" if gate.direction == "at_least" else "at most"
        return GateResult(gate, "PASS" if ok else "FAIL", value,
                          f"{int(value):,} {gate.metric} items, {need} {int(gate.threshold):,} required")
    if gate.metric == "review_coverage":
        value = summary.review_coverage
        if summary.flagged < gate.min_n:
            return GateResult(gate, "NOT ENOUGH DATA", value,
                              f"{summary.flagged} flagged items, {gate.min_n} needed")
        return GateResult(gate, "PASS" if _compare(value, gate) else "FAIL", value,
                          f"{value:.1%} of flagged items reviewed")
    if gate.metric not in ("qualified_rate", "unsafe_rate"):
        raise LibraError(f"gate {gate.name!r}: unknown metric {gate.metric!r}",
                         hint=f"expected one of {', '.join(GATE_METRICS)}")
    rate = summary.qualified if gate.metric == "qualified_rate" else summary.unsafe
    bound = rate.low if gate.direction == "at_least" else rate.high
    which = "lower" if gate.direction == "at_least" else "upper"
    text = (f"{rate.rate:.2%} ({rate.k:,}/{rate.n:,}), Wilson 95% {which} bound {bound:.2%} "
            f"vs {gate.threshold:.0%}")
    if rate.n < gate.min_n:
        # The interval's far bound is the best the rate can plausibly be: when even that
        # misses, more items would not make the gate pass, so it has failed already.
        best = rate.high if gate.direction == "at_least" else rate.low
        if rate.n and not _compare(best, gate):
            other = "upper" if gate.direction == "at_least" else "lower"
            return GateResult(gate, "FAIL", best,
                              f"{text}; FAIL whatever the sample size: even the interval's {other} bound "
                              f"{best:.2%} misses {gate.threshold:.0%} ({rate.n:,} judged, {gate.min_n:,} needed)",
                              short_of_n=True)
        return GateResult(gate, "NOT ENOUGH DATA", bound, f"{text}; {rate.n:,} judged, {gate.min_n:,} needed",
                          short_of_n=True)
    return GateResult(gate, "PASS" if _compare(bound, gate) else "FAIL", bound, text)


def evaluate_gates(profile: Profile, summary: RunSummary) -> list[GateResult]:
    """Every gate of a profile on a run's summary, in the profile's order.

    A sample-size gate that fails says so too when a rate gate has failed whatever the
    sample size, so a reader does not take "more items" for the way to pass.
    """
    results = [evaluate_gate(g, summary) for g in profile.gates]
    failed = [r.gate.name for r in results if r.outcome == "FAIL" and r.short_of_n]
    if not failed:
        return results
    note = f"; more items will not pass: {', '.join(failed)} fails whatever the sample size"
    return [GateResult(r.gate, r.outcome, r.value, r.detail + note, r.short_of_n)
            if r.gate.metric in ("judged", "items") and r.outcome == "FAIL" else r for r in results]


def profile_from_dict(data: Mapping[str, Any], where: str) -> Profile:
    """A profile from its JSON form; LibraError naming `where` if it is malformed."""
    try:
        gates = []
        for g in data.get("gates", []):
            gate = Gate(name=str(g["name"]), metric=str(g["metric"]), threshold=float(g["threshold"]),
                        direction=g.get("direction", "at_least"), min_n=int(g.get("min_n", 0)),
                        rule=str(g.get("rule", "")))
            if gate.metric not in GATE_METRICS:
                raise ValueError(f"unknown metric {gate.metric!r} (expected {', '.join(GATE_METRICS)})")
            if gate.direction not in ("at_least", "at_most"):
                raise ValueError(f"direction must be at_least or at_most, got {gate.direction!r}")
            gates.append(gate)
        return Profile(name=str(data["name"]), title=str(data.get("title", data["name"])), gates=gates,
                       source=str(data.get("source", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise LibraError(f"{where}: not a valid report profile: {exc}") from None
