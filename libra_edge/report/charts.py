"""The report's charts as inline SVG, drawn by matplotlib's SVG backend (an optional extra).

matplotlib is imported here only, when a report is rendered: the rest of libra-edge (and
a report without charts) runs without it. Text stays text in the SVG (`svg.fonttype:
none`), so Chinese category names render in the browser's own fonts with nothing fetched.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from libra_edge.report.build import Report
    from libra_edge.report.stats import Rate

NO_MATPLOTLIB = ("charts omitted: matplotlib is not installed "
                 "(pip install 'libra-edge[report]' adds them; every figure is in the tables)")
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "libra-edge-report",  # stable element ids: the same run renders the same bytes
    "font.family": "sans-serif",
    "font.sans-serif": ["Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
                        "WenQuanYi Micro Hei", "DejaVu Sans"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_BLUE, _RED, _GREY = "#3b6ea8", "#b8412c", "#888888"


def matplotlib_available() -> bool:
    """Whether the charts can be drawn here: matplotlib imports (not merely is found)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:  # not installed, or installed without a part it needs
        return False
    return True


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: it is inlined in HTML


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=72)


def histogram_svg(histogram: list[int], threshold: float) -> str:
    """Judged items per score bin, with the applied threshold marked."""
    bins = len(histogram)
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    edges = [i / bins for i in range(bins)]
    colours = [_RED if e + 0.5 / bins >= threshold else _BLUE for e in edges]
    ax.bar(edges, histogram, width=1 / bins, align="edge", color=colours, edgecolor="white", linewidth=0.5)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.text(threshold, ax.get_ylim()[1], f" threshold {threshold:g}", va="top", ha="left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score = P(unsafe)")
    ax.set_ylabel("items")
    if max(histogram, default=0) > 20 * max(min((h for h in histogram if h), default=1), 1):
        ax.set_yscale("symlog", linthresh=1)
    return _svg(fig)


def rates_svg(rates: dict[str, Rate], title: str) -> str:
    """Unsafe rate per group with its Wilson 95% interval, one bar per group."""
    names = list(rates)[::-1]
    values = [rates[n].rate for n in names]
    lows = [rates[n].rate - rates[n].low for n in names]
    highs = [rates[n].high - rates[n].rate for n in names]
    fig = _figure(6.4, 0.6 + 0.28 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), values, xerr=[lows, highs], color=_RED, alpha=0.8,
            error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(range(len(names)), [f"{n} (n={rates[n].n:,})" for n in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"unsafe rate by {title}, with Wilson 95% interval")
    return _svg(fig)


def curve_svg(points: list[tuple[float, float]], xlabel: str, ylabel: str, area: float,
              diagonal: bool) -> str:
    """A ROC or precision-recall curve."""
    fig = _figure(3.2, 3.0)
    ax = fig.add_subplot()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.plot(xs, ys, color=_BLUE, linewidth=1.5, drawstyle="steps-post" if not diagonal else "default")
    if diagonal:
        ax.plot([0, 1], [0, 1], color=_GREY, linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"area {area:.3f}", fontsize=9)
    return _svg(fig)


def report_charts(report: Report) -> dict[str, str]:
    """Every chart the report shows, as SVG text keyed by name; empty without matplotlib."""
    if not matplotlib_available():
        return {}
    import matplotlib

    charts: dict[str, str] = {}
    with matplotlib.rc_context(cast(Any, _RC)), warnings.catch_warnings():
        # Glyph widths of CJK labels are estimated (the browser draws them): harmless.
        warnings.simplefilter("ignore", UserWarning)
        s = report.summary
        if s.judged:
            charts["histogram"] = histogram_svg(s.histogram, s.threshold)
        for key, rates in (("source", s.by_source), ("category", s.by_category)):
            if len(rates) > 1:
                charts[key] = rates_svg(rates, key)
        if report.gold is not None and report.gold.report.scores is not None:
            scores = report.gold.report.scores
            if report.gold.roc:
                charts["roc"] = curve_svg(report.gold.roc, "false positive rate", "true positive rate",
                                          scores.roc_auc, diagonal=True)
            if report.gold.pr:
                charts["pr"] = curve_svg(report.gold.pr, "recall (unsafe)", "precision (unsafe)",
                                         scores.pr_auc, diagonal=False)
    return charts
