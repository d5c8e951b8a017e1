"""What a report holds, gathered from the store in one pass: provenance, figures, gates,
the authors' metrics when gold labels are present, flagged items and the integrity digest.

The renderers (`render_html`, `render_md`, and `Report.to_json`) only lay this out.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from libra_edge import __version__
from libra_edge.errors import LibraError
from libra_edge.report.digest import Integrity, digest_rows
from libra_edge.report.metrics import EvalReport, evaluate
from libra_edge.report.curves import pr_points, roc_points
from libra_edge.report.stats import (
    GateResult,
    Profile,
    RunSummary,
    evaluate_gates,
    model_unsafe,
    profile_from_dict,
    reviewer_unsafe,
    run_threshold,
    summarize_rows,
)
from libra_edge.store.export import relabelled
from libra_edge.users import os_user
from libra_edge.verdicts import SAFE, UNSAFE

if TYPE_CHECKING:
    from libra_edge.store import ResultRow, RunRow, Store

DEFAULT_PROFILE = "gbt45654"
DEFAULT_MAX_ITEMS = 2000


def profile_names() -> list[str]:
    """The profiles shipped with libra-edge (files in `libra_edge/report/profiles/`)."""
    folder = resources.files("libra_edge.report").joinpath("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(spec: str) -> Profile:
    """A shipped profile by name (`gbt45654`, `none`) or a profile JSON file by path."""
    if spec in profile_names():
        text = resources.files("libra_edge.report").joinpath("profiles").joinpath(f"{spec}.json").read_text("utf-8")
        where = f"profile {spec}"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LibraError(f"--profile: no profile named {spec!r} and no such file",
                             hint=f"shipped: {', '.join(profile_names())}; or a JSON file of your own")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LibraError(f"{path}: cannot read: {exc.strerror or exc}") from None
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LibraError(f"{where}: line {exc.lineno}: not valid JSON") from None
    if not isinstance(data, dict):
        raise LibraError(f"{where}: a profile is a JSON object with `name` and `gates`")
    return profile_from_dict(data, where)


@dataclass(frozen=True)
class FlaggedItem:
    """One item listed in the report: flagged by the model or judged unsafe by a reviewer."""

    result_id: int
    seq: int
    item_id: str | None
    source: str | None
    category: str | None
    question: str
    response: str
    score: float | None
    analysis: str | None
    model_unsafe: bool
    review: str | None
    review_note: str | None
    reviewer: str | None


@dataclass(frozen=True)
class GoldMetrics:
    """The authors' metrics (via `report.metrics.evaluate`) plus the curves for the charts."""

    report: EvalReport
    roc: list[tuple[float, float]]
    pr: list[tuple[float, float]]


@dataclass(frozen=True)
class Report:
    """Everything a rendered report shows."""

    run: RunRow
    provenance: list[tuple[str, Any]]
    summary: RunSummary
    profile: Profile
    gates: list[GateResult]
    gold: GoldMetrics | None
    flagged: list[FlaggedItem]
    flagged_total: int
    integrity: Integrity
    generated_at: str
    generated_by: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (`report --format json`)."""
        gold = None
        if self.gold is not None:
            gold = {**self.gold.report.to_json(), "roc_curve": self.gold.roc, "pr_curve": self.gold.pr}
        return {
            "report": {"tool": f"libra-edge {__version__}", "generated_at": self.generated_at,
                       "generated_by": self.generated_by},
            "provenance": dict(self.provenance),
            "summary": self.summary.to_dict(),
            "profile": {"name": self.profile.name, "title": self.profile.title, "source": self.profile.source},
            "gates": [{"name": g.gate.name, "metric": g.gate.metric, "threshold": g.gate.threshold,
                       "direction": g.gate.direction, "min_n": g.gate.min_n, "rule": g.gate.rule,
                       "outcome": g.outcome, "value": g.value, "detail": g.detail,
                       "short_of_n": g.short_of_n} for g in self.gates],
            "gold_metrics": gold,
            "flagged_items": [{**item.__dict__, "item": item.seq + 1} for item in self.flagged],
            "flagged_total": self.flagged_total,
            "notes": self.notes,
            "integrity": {"version": self.integrity.version, "run_id": self.integrity.run_id,
                          "results": self.integrity.results, "sha256": self.integrity.sha256,
                          "marker": self.integrity.marker},
        }


def _file_digest(path: str) -> str:
    from libra_edge.models.digest import file_sha256

    try:
        return file_sha256(Path(path))
    except OSError:
        return "(file not found now)"


def provenance(store: Store, run: RunRow) -> list[tuple[str, Any]]:
    """What was run, with what, on what, when (in display order)."""
    from libra_edge.models.manifest import load_manifest, manifest_path_for

    repo = commit = None
    try:
        manifest = load_manifest(manifest_path_for(Path(run.model_path)))
        repo, commit = manifest.source_repo, manifest.source_commit or manifest.source_revision
    except LibraError:
        pass  # a model file used by path, without an installed manifest
    return [
        ("tool", f"libra-edge {__version__}"),
        ("run", run.id),
        ("status", run.status),
        ("model", run.model_name),
        ("model file", run.model_path),
        ("model sha256", run.model_sha256),
        ("quant", run.quant or "unknown"),
        ("source repo", repo or "unknown"),
        ("source commit", commit or "unknown"),
        ("engine settings", dict(run.settings)),
        ("prompt template version", run.prompt_template_version),
        ("batch options", dict(run.options)),
        ("inputs", [{"path": p, "sha256 (now)": _file_digest(p)} for p in run.inputs]),
        ("run fingerprint", run.fingerprint),
        ("started", run.started_at or run.created_at),
        ("finished", run.finished_at or "not finished"),
        ("run by", f"{run.user or 'unknown user'}@{run.host or 'unknown host'}"),
        # Which machine judged how many items, with which llama.cpp build (a cluster run,
        # or a run resumed elsewhere, may hold several; their scores differ slightly).
        ("judged on", [{"node": n.node, "host": n.host, "items": n.items, "llama.cpp build": n.build}
                       for n in store.run_nodes(run.id)] or "no item judged yet"),
    ]


def gold_rows(rows: Iterable[ResultRow], threshold: float | None = None) -> list[dict[str, Any]]:
    """The rows with a gold `label` as the authors' metric reads them: `critic` is the raw reply
    relabelled at THRESHOLD (`store.export.relabelled`, the text `report --export` writes),
    None for an item whose check failed."""
    out = []
    for row in rows:
        gold = row.fields.get("label")
        if gold not in (SAFE, UNSAFE):
            continue
        judged = row.error is None and row.unsafe is not None
        out.append({"id": row.item_id, "source": row.source, "label": gold,
                    "critic": relabelled(row, threshold).raw if judged else None, "score": row.score})
    return out


def build_report(store: Store, run_id: int, *, profile: str | Profile = DEFAULT_PROFILE,
                 threshold: float | None = None, reviews_take_precedence: bool = True,
                 max_items: int | None = DEFAULT_MAX_ITEMS) -> Report:
    """Gather a run's report from the store (one read of its results)."""
    run = store.run(run_id)
    prof = load_profile(profile) if isinstance(profile, str) else profile
    rows = list(store.iter_results(run_id, order="seq"))
    summary = summarize_rows(run_id, run.total, rows, run_threshold_value=run_threshold(run.settings),
                             threshold=threshold, reviews_take_precedence=reviews_take_precedence)
    relabel = None if threshold is None else summary.threshold
    notes: list[str] = []
    eval_rows = gold_rows(rows, relabel)
    flagged: list[FlaggedItem] = []
    flagged_total = 0
    for row in rows:
        judged = row.error is None and row.unsafe is not None
        model = model_unsafe(row, relabel) if judged else False
        if judged and (model or reviewer_unsafe(row)):
            flagged_total += 1
            if max_items is None or len(flagged) < max_items:
                flagged.append(FlaggedItem(row.id, row.seq, row.item_id, row.source, row.category,
                                           row.question, row.response, row.score, row.analysis, model,
                                           row.review, row.review_note, row.reviewer))
    if flagged_total > len(flagged):
        notes.append(f"{flagged_total - len(flagged):,} more flagged items are not listed (--max-items); "
                     f"`libra-edge` TUI or an export of run {run_id} has them all")
    gold_metrics = None
    if eval_rows:
        rep = evaluate(eval_rows, sweep=False)
        scored = [(r["label"] == UNSAFE, float(r["score"])) for r in eval_rows if r["score"] is not None]
        golds, scores = [g for g, _ in scored], [s for _, s in scored]
        gold_metrics = GoldMetrics(rep, roc_points(golds, scores), pr_points(golds, scores))
    if summary.threshold != summary.run_threshold:
        notes.append(f"verdicts relabelled from stored scores at threshold {summary.threshold:g} "
                     f"(the run judged at {summary.run_threshold:g}); {summary.relabelled:,} changed")
    if run.status != "finished":
        notes.append(f"run {run_id} is {run.status}: {run.total - run.done:,} of {run.total:,} items "
                     "have no result yet")
    return Report(
        run=run, provenance=provenance(store, run), summary=summary, profile=prof,
        gates=evaluate_gates(prof, summary) if summary.items >= 1 else [], gold=gold_metrics,
        flagged=flagged, flagged_total=flagged_total, integrity=digest_rows(run_id, rows),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        generated_by=f"{os_user()}@{socket.gethostname()}", notes=notes,
    )

