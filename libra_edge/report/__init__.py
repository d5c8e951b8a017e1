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
import secrets
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
                 reviews_take_precedence: bool = True, replace: bool = True) -> Path:
    """Write a run's report to `path` atomically (it appears only once complete); returns the path.

    The file's mode follows the umask, as any file the user makes (a report is meant to be
    passed on). `replace=False` refuses to replace an existing file (a LibraError).
    """
    target = Path(path).expanduser()
    if not replace and target.exists():
        raise _exists(target)
    text = render_report(store, run_id, fmt=fmt, profile=profile, threshold=threshold,
                         max_items=max_items, charts=charts, reviews_take_precedence=reviews_take_precedence)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_beside(target)
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        if replace:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    except OSError as exc:
        raise LibraError(f"{target}: cannot write the report: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return target


def _exists(target: Path) -> LibraError:
    return LibraError(f"{target}: exists; not replaced",
                      hint="name it with -o to replace it, or -o - for stdout")


def _create_beside(target: Path) -> Path:
    """A new empty file beside `target`, made with mode 0666 less the umask.

    tempfile.mkstemp would make it 0600 whatever the umask: a report nobody else can read.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def _link_new(tmp: Path, target: Path) -> None:
    """Give the complete file its name only if no file has that name (never a replacement)."""
    try:
        os.link(tmp, target)  # atomic, and fails when the name is taken
    except FileExistsError:
        raise _exists(target) from None
    except OSError:  # a filesystem without hard links
        if target.exists():
            raise _exists(target) from None
        os.replace(tmp, target)


__all__ = ["FORMATS", "Rate", "RunSummary", "render_report", "summarize_run", "wilson", "write_report"]
