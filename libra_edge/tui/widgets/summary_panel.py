"""A run's figures on screen: counts, flag rates by source and category, the score histogram,
review coverage — the numbers of `libra-edge report`, from the same `summarize_run`."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

BAR_WIDTH = 40


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def rate_text(rate: Any) -> str:
    """`k/n  rate  [low–high]`: a Rate with its Wilson 95% interval."""
    return f"{rate.k}/{rate.n}  {_pct(rate.rate)}  [{_pct(rate.low)}–{_pct(rate.high)}]"


def rates_table(title: str, rates: dict[str, Any]) -> Table:
    """One row per group: flagged of judged, the rate and its interval."""
    table = Table(title=title, title_justify="left", expand=True, show_edge=False, pad_edge=False)
    table.add_column(title.split()[-1], overflow="fold", ratio=2)
    table.add_column("unsafe", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("95% interval", justify="right", no_wrap=True)
    for name, rate in sorted(rates.items()):
        table.add_row(Text(name), f"{rate.k}/{rate.n}", _pct(rate.rate), f"{_pct(rate.low)}–{_pct(rate.high)}")
    if not rates:
        table.add_row(Text("(the inputs carry no such field)", style="dim"), "", "", "")
    return table


def histogram(bins: list[int]) -> RenderableType:
    """The score histogram: one bar per 0.05 of P(unsafe), scaled to the fullest bin."""
    top = max(bins, default=0) or 1
    width = 1.0 / len(bins) if bins else 0.05
    lines = [Text("scores (P(unsafe), 20 bins)", style="bold")]
    for i, count in enumerate(bins):
        lo = i * width
        bar = "█" * round(BAR_WIDTH * count / top)
        style = "red" if lo >= 0.5 else "green"
        lines.append(Text.assemble(f"{lo:4.2f}–{lo + width:4.2f} ", (bar, style), f" {count}" if count else ""))
    return Group(*lines)


class SummaryPanel(VerticalScroll):
    """Shows one `RunSummary`; `show(summary)` replaces what is drawn."""

    DEFAULT_CSS = """
    SummaryPanel { height: 1fr; padding: 0 1; }
    SummaryPanel > #summary-counts { height: auto; margin-bottom: 1; }
    SummaryPanel > Horizontal { height: auto; }
    SummaryPanel #summary-rates { width: 3fr; height: auto; padding-right: 2; }
    SummaryPanel #summary-histogram { width: 2fr; height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("computing…", id="summary-counts")
        with Horizontal():
            yield Static("", id="summary-rates")
            yield Static("", id="summary-histogram")

    def show(self, s: Any) -> None:
        """Draw a `libra_edge.report.stats.RunSummary`."""
        counts = Table.grid(padding=(0, 2))
        counts.add_column(style="dim")
        counts.add_column()
        counts.add_row("items", f"{s.items:,} read · {s.judged:,} judged · {s.errors:,} errors")
        counts.add_row("flagged", f"{s.flagged:,} at threshold {s.threshold:g}")
        counts.add_row("unsafe rate", rate_text(s.unsafe) + ("  (reviewer decisions first)"
                                                             if s.reviews_take_precedence and s.reviewed else ""))
        counts.add_row("qualified rate", rate_text(s.qualified))
        covered = round(s.review_coverage * s.flagged)
        counts.add_row("review", f"{s.reviewed:,} items decided · {covered}/{s.flagged} flagged "
                                 f"({_pct(s.review_coverage)} coverage)")
        self.query_one("#summary-counts", Static).update(counts)
        self.query_one("#summary-rates", Static).update(
            Group(rates_table("unsafe rate by source", s.by_source), Text(""),
                  rates_table("unsafe rate by category", s.by_category)))
        self.query_one("#summary-histogram", Static).update(histogram(list(s.histogram)))
