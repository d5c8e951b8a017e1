"""Audit reports of batch runs: figures (`stats`), the authors' metrics (`metrics`), gates from
profile files (`profiles/`), the integrity digest (`digest`) and the HTML/Markdown/JSON files.

    from libra_edge.report import summarize_run, write_report
    summary = summarize_run(store, 3)                  # rates, Wilson intervals, histogram
    write_report(store, 3, "report.html")              # one offline file a reviewer can sign

matplotlib (the `report` extra) is imported only when an HTML report draws its charts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from libra_edge.errors import LibraError
from libra_edge.report.stats import Rate, RunSummary, summarize_run, wilson

if TYPE_CHECKING:
    from libra_edge.store import Store

ReportFormat = Literal["html", "json", "md"]
FORMATS: tuple[str, ...] = ("html", "json", "md")


def render_report(store: Store, run_id: int, *, fmt: str = "html", profile: str = "gbt45654",
                  threshold: float | None = None, max_items: int | None = 2000, charts: bool = True,
                  reviews_take_precedence: bool = True) -> str:
    """A run's report as text in `fmt` (html, json or md)."""
    from libra_edge.report.build import build_report

    if fmt not in FORMATS:
        raise LibraError(f"report format: expected html, json or md, got {fmt!r}")
    report = build_report(store, run_id, profile=profile, threshold=threshold, max_items=max_items,
                          reviews_take_precedence=reviews_take_precedence)
    if fmt == "json":
        return json.dumps(report.to_json(), ensure_ascii=False, indent=1) + "\n"
    if fmt == "md":
        from libra_edge.report.render_md import render_md

        return render_md(report)
    from libra_edge.report.render_html import render_html

    return render_html(report, charts=charts)


def write_report(store: Store, run_id: int, path: str | Path, *, fmt: str = "html", profile: str = "gbt45654",
                 threshold: float | None = None, max_items: int | None = 2000, charts: bool = True,
                 reviews_take_precedence: bool = True) -> Path:
    """Write a run's report to `path` atomically (it appears only once complete); returns the path."""
    text = render_report(store, run_id, fmt=fmt, profile=profile, threshold=threshold,
                         max_items=max_items, charts=charts, reviews_take_precedence=reviews_take_precedence)
    target = Path(path).expanduser()
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise LibraError(f"{target}: cannot write the report: {exc.strerror or exc}") from None
    return target


__all__ = ["FORMATS", "Rate", "RunSummary", "render_report", "summarize_run", "wilson", "write_report"]
