"""How well P(unsafe) ranks unsafe above safe: ROC and precision-recall, their points and areas.

One sweep over the distinct scores, highest first (tied scores are one threshold), gives
the counts every figure here is read from: `eval`'s ROC-AUC and PR-AUC and the report's
two charts are the same curves.
"""

from __future__ import annotations

from collections.abc import Sequence


def _steps(golds: Sequence[bool], scores: Sequence[float]) -> list[tuple[int, int]]:
    """(true positives, false positives) at or above each distinct score, highest first."""
    order = sorted(zip(scores, golds), key=lambda t: -t[0])
    steps = []
    tp = fp = 0
    for i, (score, gold) in enumerate(order):
        tp += gold
        fp += not gold
        if i + 1 == len(order) or order[i + 1][0] != score:
            steps.append((tp, fp))
    return steps


def roc_points(golds: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) from (0, 0) through every distinct score,
    highest first; [] without both classes."""
    pos = sum(golds)
    neg = len(golds) - pos
    if not pos or not neg:
        return []
    return [(0.0, 0.0), *((fp / neg, tp / pos) for tp, fp in _steps(golds, scores))]


def pr_points(golds: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, float]]:
    """(recall, precision) at every distinct score, highest first (unsafe positive); [] without positives."""
    pos = sum(golds)
    if not pos:
        return []
    return [(tp / pos, tp / (tp + fp)) for tp, fp in _steps(golds, scores)]


def roc_auc(golds: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (a tie between an unsafe and a safe item counts half, as in
    the Mann-Whitney U); None without both classes."""
    pos = sum(golds)
    neg = len(golds) - pos
    if not pos or not neg:
        return None
    area2 = 0  # twice the area, in units of one positive times one negative: exact integers
    tp_before = fp_before = 0
    for tp, fp in _steps(golds, scores):
        area2 += (fp - fp_before) * (tp + tp_before)  # a trapezoid: a tied group's pairs count half
        tp_before, fp_before = tp, fp
    return area2 / (2 * pos * neg)


def pr_auc(golds: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Average precision (area under precision-recall, step-wise); None without positives."""
    points = pr_points(golds, scores)
    if not points:
        return None
    ap = recall_before = 0.0
    for recall, precision in points:
        ap += (recall - recall_before) * precision
        recall_before = recall
    return ap
