"""The report as one self-contained HTML file: inline CSS and SVG, no script, nothing fetched."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from libra_edge import __version__
from libra_edge.report.charts import NO_MATPLOTLIB, matplotlib_available, report_charts
from libra_edge.report.stats import HISTOGRAM_BINS

if TYPE_CHECKING:
    from libra_edge.report.build import Report
    from libra_edge.report.stats import Rate

FOLD_CHARS = 360
"""Texts longer than this show their head; the rest unfolds on click."""


def _num(value: int | float) -> str:
    return f"{value:,}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _kappa(value: float | None) -> str:
    return "undefined (one label only)" if value is None else f"{value:.3f}"


def fold(text: str | None) -> Markup:
    """Escaped text; a long one folded behind a <details> toggle."""
    text = text or ""
    if len(text) <= FOLD_CHARS:
        return Markup('<span class="text">{}</span>').format(text)
    return Markup('<details><summary><span class="text">{}…</span> ({} more characters)</summary>'
                  '<span class="text">{}</span></details>').format(
        text[:FOLD_CHARS], f"{len(text) - FOLD_CHARS:,}", text)


def show(value: Any) -> Markup:
    """A provenance value: text as is, settings and lists as readable JSON."""
    if isinstance(value, (dict, list)):
        return Markup('<code class="text">{}</code>').format(json.dumps(value, ensure_ascii=False, indent=1))
    return escape(str(value))


def rate_cells(rate: Rate) -> Markup:
    """The table cells of one group's rate: judged, unsafe, rate, interval, qualified rate."""
    return Markup('<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>'
                  '<td class="num">{} – {}</td><td class="num">{}</td>').format(
        _num(rate.n), _num(rate.k), _pct(rate.rate), _pct(rate.low), _pct(rate.high),
        _pct(1 - rate.rate if rate.n else None))


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("libra_edge.report", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, score=_score, kappa=_kappa, g=lambda v: f"{v:g}",
                       f3=lambda v: f"{v:.3f}")
    env.globals.update(fold=fold, show=show, rate_cells=rate_cells)
    return env


def render_html(report: Report, *, charts: bool = True) -> str:
    """The report as HTML text (charts drawn when matplotlib is installed and `charts`)."""
    drawn = report_charts(report) if charts else {}
    note = ""
    if charts and not matplotlib_available():
        note = NO_MATPLOTLIB
    s = report.summary
    groups = [("source", s.by_source), ("category", s.by_category), ("sub-category", s.by_sub_category)]
    bins = [f"{i / HISTOGRAM_BINS:.2f}" for i in range(HISTOGRAM_BINS)]
    return _environment().get_template("report.html").render(
        r=report, s=s, charts=drawn, chart_note=note, groups=groups, bins=bins,
        tool=f"libra-edge {__version__}")
