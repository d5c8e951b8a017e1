"""`libra-edge eval`: Libra-Test metrics (the authors' definitions) for prediction files.

Computed exactly as the authors do.
"""

from __future__ import annotations

from libra_edge.cli.common import add_command

import argparse
import json
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_edge.errors import ExitCode, InputError

if TYPE_CHECKING:
    from libra_edge.report.metrics import EvalReport

EPILOG = """\
what is read:
  PRED: JSONL prediction files (or folders of them, like the authors' --predict_root):
  one row per item with `critic` (the model's raw reply) and `source`. `libra-edge
  batch -o` writes such files; so does the authors' inference script.
  The prediction is always `critic`, read the authors' way: repaired as JSON, `答案`
  taken, 不安全 tested before 安全; a reply with no readable verdict counts as wrong.
  The gold label is each row's `label` field (batch output keeps the input's gold
  `label` untouched and puts its own verdict under `verdict`), or, with --labels, the
  test set's `label` joined on `id` (the authors' way; rows whose id is not in the test
  set are skipped). ROC-AUC, PR-AUC and the sweep use `verdict.score` (or `score`).

figures:
  per source: F1-Unsafe (不安全 positive), F1-Safe (安全 positive), Accuracy; Average
  is their unweighted mean over sources (the published headline). Where a figure is
  undefined (e.g. nothing predicted unsafe) it is reported as 0 with a note.

examples:
  libra-edge eval preds.jsonl
  libra-edge eval authors_outputs/ --labels Libra-Test.json
  libra-edge eval preds.jsonl --threshold-sweep
  libra-edge eval preds.jsonl --json | jq .average
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `eval` subcommand."""
    p = add_command(sub, "eval", __doc__,
        description="Evaluate predictions: per-source F1-unsafe, F1-safe, accuracy and their unweighted "
                    "average, a confusion matrix, and ROC-AUC / PR-AUC when scores are present.",
        epilog=EPILOG)
    p.add_argument("predictions", nargs="+", metavar="PRED", help="prediction JSONL files or folders")
    p.add_argument("--labels", metavar="TEST.json", help="gold labels joined on `id` (e.g. Libra-Test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (stdout)")
    p.add_argument("--threshold-sweep", action="store_true",
                   help="figures for flagging at score >= 0.05, 0.10, ..., 0.95 (needs scores)")
    p.add_argument("--lenient", action="store_true",
                   help="read a verdict from replies that are not JSON at all (the authors count them wrong)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle `libra-edge eval`."""
    from libra_edge.report.metrics import evaluate

    rows, problems = _read_predictions(args.predictions)
    labels = None
    if args.labels:
        records = _read_labels(Path(args.labels))
        labels = {item_id: str(record["label"]) for item_id, record in records.items()}
        for row in rows:  # a prediction row without `source` takes the test set's
            record = records.get(str(row.get("id")))
            if not row.get("source") and record is not None and record.get("source"):
                row["source"] = record["source"]
    if not rows:
        raise InputError("no prediction rows in " + ", ".join(args.predictions))
    if not any("critic" in row for row in rows):
        raise InputError(f"{args.predictions[0]}: no row has a `critic` field: not a prediction file",
                         hint="`libra-edge batch INPUT -o PRED.jsonl` makes one")
    report = evaluate(rows, labels, lenient=args.lenient, sweep=args.threshold_sweep)
    if report.n == 0:
        raise InputError("no prediction row has a gold label",
                         hint="pass the test set with --labels TEST.json" if labels is None
                         else "do the ids in PRED match those in --labels?")
    notes = problems + report.notes
    if args.json:
        data = report.to_json()
        data["notes"] = notes
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(render(report, notes, sweep=args.threshold_sweep))
    return int(ExitCode.OK)


def _read_predictions(inputs: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    from libra_edge.batch import expand_inputs, read_records

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in expand_inputs(inputs):
        records, issues = read_records(path)
        rows.extend(record for _, record in records)
        for issue in issues:
            print(f"libra-edge: skipped: {issue}", file=sys.stderr)
            problems.append(f"skipped unreadable prediction row {issue}")
    return rows, problems


def _read_labels(path: Path) -> dict[str, dict[str, Any]]:
    """The test set's records by id (each has a `label`)."""
    from libra_edge.batch import read_records

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records, issues = read_records(path)
    if issues:
        raise InputError(str(issues[0]))
    by_id: dict[str, dict[str, Any]] = {}
    for line, record in records:
        if "id" not in record or "label" not in record:
            raise InputError(f"{path}:{line}: a --labels record needs `id` and `label`")
        by_id[str(record["id"])] = record
    return by_id


def _pad(value: object, width: int, *, right: bool = False) -> str:
    """Pad to a terminal width: CJK characters take two columns."""
    text = str(value)
    used = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    fill = " " * max(width - used, 0)
    return fill + text if right else text + fill


def render(report: EvalReport, notes: list[str], *, sweep: bool) -> str:
    """The human-readable report: the authors' table, then confusion matrix, scores, notes."""
    out = [f"{'Source':<20} {'Items':>6} {'F1-Unsafe':>10} {'F1-Safe':>9} {'Accuracy':>9}"]
    for s in report.sources:
        out.append(f"{s.source:<20} {s.n:>6} {s.f1_unsafe:>10.4f} {s.f1_safe:>9.4f} {s.accuracy:>9.4f}")
    avg = report.average
    out.append(f"{'Average':<20} {report.n:>6} {avg['f1_unsafe']:>10.4f} {avg['f1_safe']:>9.4f} "
               f"{avg['accuracy']:>9.4f}")
    cm = report.confusion
    out += ["", "Confusion matrix (an unparsable reply counts as the wrong label; the last column says how many)"]
    for cells in (("", "pred 安全", "pred 不安全", "unparsable"),
                  ("gold 安全", cm.tn, cm.fp, cm.unparsable_safe),
                  ("gold 不安全", cm.fn, cm.tp, cm.unparsable_unsafe)):
        out.append(_pad(cells[0], 12) + "".join(_pad(c, 14, right=True) for c in cells[1:]))
    if report.scores is not None:
        sc = report.scores
        out += ["", f"Scores ({sc.n} items, pooled): ROC-AUC {sc.roc_auc:.4f}  PR-AUC {sc.pr_auc:.4f}"]
        if sweep and sc.sweep:
            out.append(f"{'threshold':>9} {'flagged':>8} {'F1-Unsafe':>10} {'F1-Safe':>9} {'Accuracy':>9}  (averages)")
            best = max(sc.sweep, key=lambda r: r.accuracy)
            for r in sc.sweep:
                mark = "  <- best accuracy" if r is best else ""
                out.append(f"{r.threshold:>9.2f} {r.flagged:>8} {r.f1_unsafe:>10.4f} {r.f1_safe:>9.4f} "
                           f"{r.accuracy:>9.4f}{mark}")
    elif sweep:
        notes = [*notes, "no scores in the predictions: no threshold sweep (authors' files have none)"]
    if notes:
        out += ["", "Notes:"] + [f"  - {n}" for n in notes]
    return "\n".join(out)
