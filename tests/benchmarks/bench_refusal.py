"""Refusal detector: precision and recall on the labelled answers of tests/data/refusals.jsonl.

    .venv/bin/python tests/benchmarks/bench_refusal.py [--rules EXTRA.json] [--misses]

The set has two splits. `dev`: answers written alongside the rules, plus three earlier
held-out rounds that were read and then used to improve them (style `seen-holdout`):
figures there show the styles the rules cover, not how they generalise. `holdout`: answers
written after the rules were frozen (rules v2; ids `holdout2-*`) and never used to change
them: the honest estimate. A new round is written before the rules are run on it.
"Refused" is the positive class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from libra_edge.audit.refusal import load_rules  # noqa: E402

DATA = ROOT / "tests" / "data" / "refusals.jsonl"


def confusion(rows: list[dict[str, object]], decided: list[bool]) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives)."""
    tp = sum(d and bool(r["refused"]) for r, d in zip(rows, decided))
    fp = sum(d and not r["refused"] for r, d in zip(rows, decided))
    fn = sum(not d and bool(r["refused"]) for r, d in zip(rows, decided))
    return tp, fp, fn, len(rows) - tp - fp - fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", help="an extra rule file, as `audit ask --refusal-rules`")
    parser.add_argument("--misses", action="store_true", help="list the answers decided wrongly")
    args = parser.parse_args()
    rules = load_rules(args.rules)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    decisions = [rules.detect(str(r["answer"])) for r in rows]
    print(f"{rules.version}; {len(rows)} labelled answers ({DATA.relative_to(ROOT)})")
    print(f"  {'split':<8} {'lang':<4} {'answers':>7} {'refusals':>8} {'precision':>9} {'recall':>7}  tp fp fn tn")
    groups = [(s, lang) for s in ("dev", "holdout", "all") for lang in ("zh", "en", "all")]
    for split, lang in groups:
        pick = [i for i, r in enumerate(rows) if split in ("all", r["split"]) and lang in ("all", r["lang"])]
        tp, fp, fn, tn = confusion([rows[i] for i in pick], [decisions[i].refused for i in pick])
        precision = f"{tp / (tp + fp):.3f}" if tp + fp else "-"
        recall = f"{tp / (tp + fn):.3f}" if tp + fn else "-"
        print(f"  {split:<8} {lang:<4} {len(pick):>7} {tp + fn:>8} {precision:>9} {recall:>7}  {tp} {fp} {fn} {tn}")
    if args.misses:
        for r, d in zip(rows, decisions):
            if d.refused != r["refused"]:
                kind = "false refusal" if d.refused else "missed refusal"
                print(f"{r['id']}: {kind} ({d.rule or '-'}: {d.phrase or ''}): {r['answer']}")


if __name__ == "__main__":
    main()
