"""The report as Markdown (no charts: the histogram and rates are tables)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from libra_edge import __version__
from libra_edge.report.stats import HISTOGRAM_BINS

if TYPE_CHECKING:
    from libra_edge.report.build import Report
    from libra_edge.report.stats import Rate

FOLD_CHARS = 360


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _cell(value: Any) -> str:
    """Table-safe text: one line, pipes and Markdown markup escaped."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    for ch in "\\|*_`[]<>#":
        text = text.replace(ch, "\\" + ch)
    return text


def _fold(text: str | None) -> str:
    text = text or ""
    return _cell(text if len(text) <= FOLD_CHARS else text[:FOLD_CHARS] + f"… ({len(text) - FOLD_CHARS:,} more characters)")


def _rate_row(name: str, rate: Rate) -> str:
    return (f"| {_cell(name)} | {rate.n:,} | {rate.k:,} | {_pct(rate.rate)} | {_pct(rate.low)} – {_pct(rate.high)} "
            f"| {_pct(1 - rate.rate) if rate.n else '–'} |")


def render_md(report: Report) -> str:
    """The report as Markdown text."""
    r, s = report, report.summary
    out = [f"# Libra-Guard audit report — run {r.run.id}", "",
           f"Model **{_cell(r.run.model_name)}** · {s.items:,} items · threshold {s.threshold:g}"
           + (f" (run used {s.run_threshold:g})" if s.threshold != s.run_threshold else "")
           + f" · generated {r.generated_at} by {_cell(r.generated_by)} with libra-edge {__version__}", "",
           "| items | judged | errors | flagged | qualified rate (95% CI) | unsafe rate (95% CI) |",
           "|---:|---:|---:|---:|---:|---:|",
           f"| {s.items:,} | {s.judged:,} | {s.errors:,} | {s.flagged:,} "
           f"| {_pct(s.qualified.rate)} ({_pct(s.qualified.low)} – {_pct(s.qualified.high)}) "
           f"| {_pct(s.unsafe.rate)} ({_pct(s.unsafe.low)} – {_pct(s.unsafe.high)}) |", ""]
    out += [f"> Note: {_cell(n)}" for n in r.notes] + ([""] if r.notes else [])
    out += [f"## Gates: {_cell(r.profile.title)}", ""]
    if r.gates:
        out += ["| gate | outcome | figure | rule |", "|---|---|---|---|"]
        out += [f"| {_cell(g.gate.name)} | **{g.outcome}** | {_cell(g.detail)} | {_cell(g.gate.rule)} |" for g in r.gates]
    else:
        out.append("No gates.")
    out += ["", "## Results", "",
            "Rates count final decisions" + (" (reviewer decisions take precedence)" if s.reviews_take_precedence else "")
            + " among judged items; intervals are Wilson 95%.", ""]
    header = "| {} | judged | unsafe | unsafe rate | 95% CI | qualified rate |\n|---|---:|---:|---:|---:|---:|"
    out += [header.format("group"), _rate_row("all", s.unsafe), ""]
    for title, rates in (("source", s.by_source), ("category", s.by_category), ("sub-category", s.by_sub_category)):
        if rates:
            out += [f"### By {title}", "", header.format(title)]
            out += [_rate_row(name, rate) for name, rate in rates.items()] + [""]
    out += ["### Score histogram", "", "| score bin | items |", "|---|---:|"]
    out += [f"| {i / HISTOGRAM_BINS:.2f}–{(i + 1) / HISTOGRAM_BINS:.2f} | {h:,} |" for i, h in enumerate(s.histogram)]
    if s.reviewed:
        kappa = "undefined" if s.kappa is None else f"{s.kappa:.3f}"
        out += ["", "## Reviewer decisions", "",
                f"{s.reviewed:,} reviewed; {s.reviewed_flagged:,} of {s.flagged:,} flagged "
                f"({_pct(s.review_coverage)} coverage); Cohen's kappa {kappa}; {len(s.overrides)} override(s).", ""]
        if s.overrides:
            out += ["| # | id | score | model | reviewer | note |", "|---:|---|---:|---|---|---|"]
            out += [f"| {o.seq + 1} | {_cell(o.item_id or '')} | {'' if o.score is None else f'{o.score:.3f}'} "
                    f"| {'unsafe' if o.model_unsafe else 'safe'} | {o.review} | {_cell(o.note or '')} |"
                    for o in s.overrides]
    if r.gold is not None:
        e = r.gold.report
        out += ["", "## Against gold labels (the authors' metrics)", "",
                "| source | n | F1-Unsafe | F1-Safe | Accuracy |", "|---|---:|---:|---:|---:|"]
        out += [f"| {_cell(m.source)} | {m.n:,} | {_pct(m.f1_unsafe)} | {_pct(m.f1_safe)} | {_pct(m.accuracy)} |"
                for m in e.sources]
        out.append(f"| **Average** | | {_pct(e.average['f1_unsafe'])} | {_pct(e.average['f1_safe'])} "
                   f"| {_pct(e.average['accuracy'])} |")
        c = e.confusion
        out += ["", f"Confusion (不安全 positive): TP {c.tp:,} · FN {c.fn:,} · FP {c.fp:,} · TN {c.tn:,}"]
        if e.scores is not None:
            out.append(f"ROC-AUC {e.scores.roc_auc:.3f} · PR-AUC {e.scores.pr_auc:.3f}")
    out += ["", f"## Flagged items ({r.flagged_total:,})", "",
            "Numbered from 1 in input order, as the TUI numbers them.", ""]
    for it in r.flagged:
        review = it.review or "none"
        out += [f"- **#{it.seq + 1}** {_cell(it.item_id or '')} score {'' if it.score is None else f'{it.score:.3f}'}, "
                f"model {'unsafe' if it.model_unsafe else 'safe'}, review {review}"
                + (f" — {_cell(it.review_note)}" if it.review_note else ""),
                f"  - Q: {_fold(it.question)}", f"  - R: {_fold(it.response)}"]
        if it.analysis:
            out.append(f"  - Analysis: {_fold(it.analysis)}")
    out += ["", "## Provenance", "", "| | |", "|---|---|"]
    for key, value in r.provenance:
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        out.append(f"| {key} | {_cell(text)} |")
    out += ["", "## Integrity", "", f"`{r.integrity.marker}`", "",
            "Check it: `libra-edge report --verify THIS_FILE.md`", ""]
    return "\n".join(out)
