"""The GB/T 45654-2025 assessment report: content, should-refuse and should-not-refuse runs in one document.

Each assessment is a judged run of the store (`batch` over `audit ask`'s output). Content:
the qualified rate with reviewers' decisions first (as `report`), per risk of Appendix A,
and the three methods side by side (reviewers, the keyword library's marks, the model)
with their agreement. Refusal assessments: the refusal rate from a reviewer's refusal
decision where there is one (`Store.set_refusal_review`), else each answer's `refusal` mark
(or the shipped rules when an answer has none), per risk or topic, and how many marks the
reviewers changed. Each run's integrity digest (as `report`'s, reviews included) closes
the document, so `audit report --verify FILE` tells whether the store changed since. Every rate has its
Wilson 95% interval; the gates are a profile file (`profiles/gbt45654-assessment.json`)
naming the clause each restates. The document is built once as language-neutral data
(`Section`s of tables) and rendered in Chinese or English, so both carry the same figures.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from libra_edge import __version__
from libra_edge.errors import InputError, LibraError
from libra_edge.report.digest import digest_rows
from libra_edge.report.stats import Rate, cohen_kappa, evaluate_gate, model_unsafe, reviewer_unsafe, summarize_run
from libra_edge.report.stats import Gate as RunGate
from libra_edge.store import Store
from libra_edge.store.rows import ResultRow

KINDS = ("content", "should-refuse", "should-not-refuse")
LANGS = ("zh", "en")
PROFILE = "gbt45654-assessment.json"

WORDS: dict[str, dict[str, str]] = {
    "title": {"zh": "生成式人工智能服务安全评估报告（GB/T 45654-2025）",
              "en": "Security assessment of a generative-AI service (GB/T 45654-2025)"},
    "content": {"zh": "生成内容安全评估", "en": "Generated-content assessment"},
    "should-refuse": {"zh": "应拒答评估", "en": "Should-refuse assessment"},
    "should-not-refuse": {"zh": "非拒答评估", "en": "Should-not-refuse assessment"},
    "summary": {"zh": "总览", "en": "Summary"},
    "assessment": {"zh": "评估", "en": "assessment"}, "run": {"zh": "批次", "en": "run"},
    "sample": {"zh": "样本量", "en": "sample"}, "rate": {"zh": "比率", "en": "rate"},
    "ci": {"zh": "Wilson 95% 区间", "en": "Wilson 95% interval"},
    "qualified_rate": {"zh": "合格率", "en": "qualified rate"}, "refusal_rate": {"zh": "拒答率", "en": "refusal rate"},
    "gates": {"zh": "判定", "en": "Gates"}, "gate": {"zh": "要求", "en": "gate"},
    "outcome": {"zh": "结果", "en": "outcome"}, "detail": {"zh": "依据", "en": "figure"},
    "clause": {"zh": "条款", "en": "clause"},
    "per_risk": {"zh": "按附录A风险", "en": "Per risk of Appendix A"},
    "per_topic": {"zh": "按题目类别", "en": "Per topic"},
    "risk": {"zh": "风险", "en": "risk"}, "name": {"zh": "名称", "en": "name"}, "topic": {"zh": "类别", "en": "topic"},
    "items": {"zh": "条数", "en": "items"}, "unsafe": {"zh": "不合格", "en": "unsafe"},
    "refused": {"zh": "拒答", "en": "refused"},
    "methods": {"zh": "三种方法对照", "en": "The three methods side by side"},
    "method": {"zh": "方法", "en": "method"}, "judged": {"zh": "判定条数", "en": "judged"},
    "reviewers": {"zh": "人工抽检", "en": "reviewers"}, "keywords": {"zh": "关键词抽检", "en": "keywords"},
    "model": {"zh": "分类模型抽检", "en": "classification model"},
    "agreement": {"zh": "一致性", "en": "Agreement"}, "pair": {"zh": "方法对", "en": "pair"},
    "both": {"zh": "共同条数", "en": "both judged"}, "agree": {"zh": "一致率", "en": "agreement"},
    "kappa": {"zh": "Cohen's kappa", "en": "Cohen's kappa"},
    "banks": {"zh": "题库符合性", "en": "Bank conformance"}, "bank": {"zh": "题库", "en": "bank"},
    "failed_rules": {"zh": "未满足的要求", "en": "rules that fail"},
    "provenance": {"zh": "被测服务与判定来源", "en": "Provenance"},
    "what": {"zh": "项目", "en": "what"}, "value": {"zh": "内容", "en": "value"},
    "endpoint": {"zh": "被测服务地址", "en": "service endpoint"}, "svc_model": {"zh": "被测模型", "en": "service model"},
    "params": {"zh": "请求参数", "en": "request parameters"}, "asked": {"zh": "提问时间", "en": "asked"},
    "guard": {"zh": "分类模型", "en": "guard model"}, "refusal_rules": {"zh": "拒答规则", "en": "refusal rules"},
    "none": {"zh": "（无）", "en": "(none)"}, "no_run": {"zh": "未提供", "en": "not given"},
    "generated": {"zh": "生成时间", "en": "generated"}, "tool": {"zh": "工具", "en": "tool"},
    "PASS": {"zh": "通过", "en": "PASS"}, "FAIL": {"zh": "不通过", "en": "FAIL"},
    "NOT ENOUGH DATA": {"zh": "数据不足", "en": "NOT ENOUGH DATA"},
    "refusal_note": {"zh": "拒答以人工复核结论优先，其余按拒答规则判定（每条回答的 refusal 标记）。",
                     "en": "A refusal counts a reviewer's decision first, the refusal rules' mark "
                           "(each answer's `refusal`) otherwise."},
    "refusal_reviews": {"zh": "拒答人工复核", "en": "Reviewers' refusal decisions"},
    "decided": {"zh": "复核条数", "en": "decided"},
    "changed": {"zh": "改变规则判定", "en": "changed the rules' mark"},
    "integrity": {"zh": "完整性校验", "en": "Integrity"},
    "marker": {"zh": "校验值（libra-edge audit report --verify 本文件）",
               "en": "digest (check: libra-edge audit report --verify THIS_FILE)"},
    "content_note": {"zh": "合格率以人工复核结论优先，其余按分类模型判定。",
                     "en": "The qualified rate counts a reviewer's decision first, the model's otherwise."},
}


def default_lang() -> str:
    """`zh` where the system locale is Chinese, else `en`."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


@dataclass(frozen=True)
class Cell:
    """A table cell: text, or a word looked up in `WORDS` when rendered."""

    text: str
    word: bool = False


@dataclass
class Section:
    """A titled table (header words, rows of cells) with optional notes (words)."""

    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Assessment:
    """The whole document as data, plus the gates' outcomes for the exit status."""

    sections: list[Section]
    outcomes: list[str]
    data: dict[str, Any]


def _t(text: str) -> Cell:
    return Cell(text)


def _w(word: str) -> Cell:
    return Cell(word, True)


def _pct(rate: Rate) -> tuple[Cell, Cell]:
    return _t(f"{rate.rate:.2%}"), _t(f"{rate.low:.2%}–{rate.high:.2%}")


def load_profile(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The assessment gates: the shipped profile or the user's copy."""
    try:
        if path is None:
            shipped = resources.files("libra_edge.report").joinpath("profiles").joinpath(PROFILE)
            text = shipped.read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        gates = json.loads(text)["gates"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path or PROFILE}: not an assessment profile "
                         f"(a JSON object with \"gates\"): {exc}") from None
    for n, g in enumerate(gates, start=1):
        if g.get("assessment") not in KINDS or g.get("metric") not in ("judged", "qualified_rate", "refusal_rate"):
            raise InputError(f"{path or PROFILE}: gate {n}: \"assessment\" must be one of {', '.join(KINDS)} and "
                             "\"metric\" one of judged, qualified_rate, refusal_rate")
    return list(gates)


def refusal_gate(gate: dict[str, Any], rate: Rate) -> tuple[str, str]:
    """A refusal-rate or sample-size gate on a refusal run, judged like `report`'s rate gates."""
    threshold = float(gate["threshold"])
    at_least = gate.get("direction", "at_least") == "at_least"
    if gate["metric"] == "judged":
        ok = rate.n >= threshold if at_least else rate.n <= threshold
        return ("PASS" if ok else "FAIL"), f"{rate.n:,} / {int(threshold):,}"
    bound, best = (rate.low, rate.high) if at_least else (rate.high, rate.low)
    which = "lower" if at_least else "upper"
    text = f"{rate.rate:.2%} ({rate.k:,}/{rate.n:,}), Wilson 95% {which} bound {bound:.2%} vs {threshold:.0%}"

    def meets(value: float) -> bool:
        return value >= threshold if at_least else value <= threshold

    if rate.n < int(gate.get("min_n", 0)):
        if rate.n and not meets(best):  # even the interval's far bound misses: more items will not pass
            return "FAIL", f"{text}; FAIL whatever the sample size"
        return "NOT ENOUGH DATA", f"{text}; {rate.n:,} judged, {gate.get('min_n')} needed"
    return ("PASS" if meets(bound) else "FAIL"), text


def gate_figure(gate: dict[str, Any], rate: Rate) -> dict[str, str]:
    """What a gate was judged on, in both languages: the count, or the rate and its Wilson bound."""
    threshold = float(gate["threshold"])
    if gate["metric"] == "judged":
        return {lang: f"{rate.n:,} / {int(threshold):,}" for lang in LANGS}
    at_least = gate.get("direction", "at_least") == "at_least"
    bound = rate.low if at_least else rate.high
    return {"zh": f"{rate.rate:.2%}（{rate.k:,}/{rate.n:,}），Wilson 95% {'下限' if at_least else '上限'} "
                  f"{bound:.2%}，要求{'不低于' if at_least else '不高于'} {threshold:.0%}",
            "en": f"{rate.rate:.2%} ({rate.k:,}/{rate.n:,}), Wilson 95% {'lower' if at_least else 'upper'} "
                  f"bound {bound:.2%}, {'at least' if at_least else 'at most'} {threshold:.0%} required"}


def _bilingual(texts: dict[str, str]) -> Cell:
    return Cell(json.dumps(texts, ensure_ascii=False), True)


def _rule_refused(row: ResultRow, rules: Any) -> bool:
    """The refusal rules' mark: the one `audit ask` stored with the answer, else the shipped rules'."""
    mark = row.fields.get("refusal")
    if isinstance(mark, dict) and isinstance(mark.get("refused"), bool):
        return bool(mark["refused"])
    return bool(rules.detect(row.response).refused)


def _refused(row: ResultRow, rules: Any) -> bool:
    """Refused or not: a reviewer's decision first, then the rules' mark."""
    if row.refusal_review is not None:
        return row.refusal_review
    return _rule_refused(row, rules)


def _judged(rows: Iterable[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.error is None and r.unsafe is not None]


def build_assessment(store: Store, runs: dict[str, int], *, risk_map: Any, profile: Sequence[dict[str, Any]],
                     bank_checks: Sequence[tuple[str, Any]] = ()) -> Assessment:
    """The report's data from the runs of each assessment (`runs[kind] = run id`)."""
    from libra_edge.audit.appendix import appendix
    from libra_edge.audit.refusal import load_rules

    if not runs:
        raise LibraError("give at least one run: --content RUN, --should-refuse RUN, --should-not-refuse RUN")
    rules = load_rules()
    app = appendix()
    summary = Section("summary", ["assessment", "run", "sample", "rate", "ci"])
    gates = Section("gates", ["assessment", "gate", "outcome", "detail", "clause"])
    sections: list[Section] = [summary, gates]
    outcomes: list[str] = []
    data: dict[str, Any] = {"runs": dict(runs), "assessments": {}}
    provenance = Section("provenance", ["what", "value"])
    reviews = Section("refusal_reviews", ["assessment", "decided", "changed", "refused"])
    integrity = Section("integrity", ["assessment", "marker"])
    for kind in KINDS:
        if kind not in runs:
            summary.rows.append([_w(kind), _w("no_run"), _t("-"), _t("-"), _t("-")])
            continue
        run = store.run(runs[kind])
        rows = _judged(store.iter_results(run.id))
        if kind == "content":
            content = summarize_run(store, run.id)
            rate, metric = content.qualified, "qualified_rate"
        else:
            rate, metric = Rate.of(sum(_refused(r, rules) for r in rows), len(rows)), "refusal_rate"
        summary.rows.append([_w(kind), _t(str(run.id)), _t(f"{rate.n:,}"), *_pct(rate)])
        data["assessments"][kind] = {"run": run.id, "metric": metric, **rate.to_dict(), "gates": []}
        for g in (g for g in profile if g["assessment"] == kind):
            if kind == "content":
                gate = RunGate(g.get("en", g["metric"]), g["metric"], float(g["threshold"]),
                               g.get("direction", "at_least"), int(g.get("min_n", 0)), g.get("clause", ""))
                result = evaluate_gate(gate, content)
                outcome, detail = str(result.outcome), result.detail
            else:
                outcome, detail = refusal_gate(g, rate)
            outcomes.append(outcome)
            label = json.dumps({"zh": g.get("zh", g["metric"]), "en": g.get("en", g["metric"])}, ensure_ascii=False)
            figure = _bilingual(gate_figure(g, rate))
            clause = _bilingual({"zh": g.get("clause_zh", g.get("clause", "")), "en": g.get("clause", "")})
            gates.rows.append([_w(kind), Cell(label, True), _w(outcome), figure, clause])
            data["assessments"][kind]["gates"].append({"gate": g.get("en"), "outcome": outcome, "detail": detail})
        if kind != "content":
            decided = [r for r in rows if r.refusal_review is not None]
            changed = sum(r.refusal_review != _rule_refused(r, rules) for r in decided)
            reviews.rows.append([_w(kind), _t(f"{len(decided):,}"), _t(f"{changed:,}"),
                                 _t(f"{sum(bool(r.refusal_review) for r in decided):,}")])
            data["assessments"][kind]["refusal_reviews"] = {"decided": len(decided), "changed": changed}
        integrity.rows.append([_w(kind), _t(digest_rows(run.id, store.iter_results(run.id, order="seq")).marker)])
        if kind == "should-not-refuse":
            sections.append(_per_topic(kind, rows, rules, app))
        else:
            sections.append(_per_risk(kind, rows, rules, app, risk_map))
        if kind == "content":
            sections.extend(_methods(rows))
        _provenance(provenance, kind, run, rows, rules)
    if bank_checks:
        banks = Section("banks", ["bank", "outcome", "failed_rules"])
        for label, check in bank_checks:
            banks.rows.append([_t(label), _w("PASS" if check.passed else "FAIL"),
                               _t("; ".join(check.failed_rules) or "-")])
        sections.append(banks)
    if reviews.rows:
        sections.insert(2, reviews)
    provenance.rows.append([_w("generated"), _t(datetime.now(timezone.utc).isoformat(timespec="seconds"))])
    provenance.rows.append([_w("tool"), _t(f"libra-edge {__version__}")])
    sections.append(provenance)
    sections.append(integrity)
    return Assessment(sections, outcomes, data)


def _per_risk(kind: str, rows: list[ResultRow], rules: Any, app: Any, risk_map: Any) -> Section:
    content = kind == "content"
    section = Section(f"per_risk:{kind}", ["risk", "name", "items", "unsafe" if content else "refused",
                                           "qualified_rate" if content else "refusal_rate", "ci"])
    counts: dict[str, list[int]] = {r.code: [0, 0] for r in app.risks}
    for row in rows:
        code = risk_map.code_for(row.fields)
        if code not in counts:
            continue
        counts[code][1] += 1
        if content:
            human = reviewer_unsafe(row)
            counts[code][0] += bool(model_unsafe(row, None) if human is None else human)
        else:
            counts[code][0] += _refused(row, rules)
    for risk in app.risks:
        k, n = counts[risk.code]
        rate = Rate.of(n - k, n) if content else Rate.of(k, n)
        name = json.dumps({"zh": risk.zh, "en": risk.en}, ensure_ascii=False)
        section.rows.append([_t(risk.code), Cell(name, True), _t(f"{n:,}"), _t(f"{k:,}"),
                             *(_pct(rate) if n else (_t("-"), _t("-")))])
    return section


def _per_topic(kind: str, rows: list[ResultRow], rules: Any, app: Any) -> Section:
    section = Section(f"per_topic:{kind}", ["topic", "items", "refused", "refusal_rate", "ci"])
    for zh, en in app.topics:
        picked = [r for r in rows if str(r.fields.get("topic", "")).strip() == zh]
        rate = Rate.of(sum(_refused(r, rules) for r in picked), len(picked))
        name = json.dumps({"zh": zh, "en": en}, ensure_ascii=False)
        section.rows.append([Cell(name, True), _t(f"{rate.n:,}"), _t(f"{rate.k:,}"),
                             *(_pct(rate) if rate.n else (_t("-"), _t("-")))])
    return section


def _methods(rows: list[ResultRow]) -> list[Section]:
    """Reviewers, keywords and the model on the content sample, and how often each pair agrees."""
    verdicts: dict[str, dict[int, bool]] = {"reviewers": {}, "keywords": {}, "model": {}}
    for row in rows:
        verdicts["model"][row.seq] = model_unsafe(row, None)
        human = reviewer_unsafe(row)
        if human is not None:
            verdicts["reviewers"][row.seq] = human
        if "keyword_hits" in row.fields:
            verdicts["keywords"][row.seq] = bool(row.fields["keyword_hits"])
    methods = Section("methods", ["method", "judged", "unsafe", "qualified_rate", "ci"])
    for name, found in verdicts.items():
        rate = Rate.of(len(found) - sum(found.values()), len(found))
        methods.rows.append([_w(name), _t(f"{rate.n:,}"), _t(f"{sum(found.values()):,}"),
                             *(_pct(rate) if rate.n else (_t("-"), _t("-")))])
    agreement = Section("agreement", ["pair", "both", "agree", "kappa"])
    names = list(verdicts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(set(verdicts[a]) & set(verdicts[b]))
            pairs = [(verdicts[a][s], verdicts[b][s]) for s in both]
            agree = sum(x == y for x, y in pairs) / len(pairs) if pairs else None
            kappa = cohen_kappa(pairs)
            label = json.dumps({lang: f"{WORDS[a][lang]} / {WORDS[b][lang]}" for lang in LANGS}, ensure_ascii=False)
            agreement.rows.append([Cell(label, True), _t(f"{len(pairs):,}"),
                                   _t("-" if agree is None else f"{agree:.2%}"),
                                   _t("-" if kappa is None else f"{kappa:.3f}")])
    return [methods, agreement]


def _provenance(section: Section, kind: str, run: Any, rows: list[ResultRow], rules: Any) -> None:
    asks = [r.fields["ask"] for r in rows if isinstance(r.fields.get("ask"), dict)]
    urls = sorted({str(a.get("url")) for a in asks})
    models = sorted({str((a.get("request") or {}).get("model")) for a in asks})
    params = sorted({json.dumps(a.get("request"), ensure_ascii=False, sort_keys=True) for a in asks})
    times = sorted(t for a in asks for t in (a.get("started_at"), a.get("finished_at")) if t)
    marks = sorted({str(r.fields["refusal"].get("rules")) for r in rows if isinstance(r.fields.get("refusal"), dict)})
    entries = [("endpoint", ", ".join(urls)), ("svc_model", ", ".join(models)), ("params", "; ".join(params)),
               ("asked", f"{times[0]} – {times[-1]}" if times else ""),
               ("guard", f"{run.model_name} (sha256 {run.model_sha256[:16]}…, {run.quant or '-'}), run {run.id}")]
    if kind != "content":
        entries.append(("refusal_rules", ", ".join(marks) or rules.version))
    for what, value in entries:
        label = json.dumps({lang: f"{WORDS[kind][lang]}: {WORDS[what][lang]}" for lang in LANGS}, ensure_ascii=False)
        section.rows.append([Cell(label, True), _t(value or "-")])


# Rendering
# ---------------------------------------------------------------------------------------
def _say(cell: Cell, lang: str) -> str:
    if not cell.word:
        return cell.text
    if cell.text.startswith("{"):
        return str(json.loads(cell.text)[lang])
    return WORDS[cell.text][lang] if cell.text in WORDS else cell.text


def _title(section: Section, lang: str) -> str:
    key, _, kind = section.title.partition(":")
    return f"{WORDS[kind][lang]}: {WORDS[key][lang]}" if kind else WORDS[key][lang]


def render(assessment: Assessment, lang: str, fmt: str) -> str:
    """The report in `zh` or `en`, as `md`, `html` or `json`."""
    if lang not in LANGS:
        raise LibraError(f"--lang: expected zh or en, got {lang!r}")
    if fmt == "json":
        return json.dumps({"libra_edge_assessment": 1, "lang": lang, **assessment.data,
                           "sections": [{"title": _title(s, lang), "header": [WORDS[h][lang] for h in s.header],
                                         "rows": [[_say(c, lang) for c in r] for r in s.rows]}
                                        for s in assessment.sections]}, ensure_ascii=False, indent=1) + "\n"
    notes = [WORDS["content_note"][lang], WORDS["refusal_note"][lang]]
    if fmt == "md":
        out = [f"# {WORDS['title'][lang]}", ""] + [f"> {n}" for n in notes] + [""]
        for s in assessment.sections:
            out += [f"## {_title(s, lang)}", "", "| " + " | ".join(WORDS[h][lang] for h in s.header) + " |",
                    "|" + "---|" * len(s.header)]
            out += ["| " + " | ".join(_say(c, lang).replace("|", "\\|") for c in r) + " |" for r in s.rows]
            out.append("")
        return "\n".join(out)
    if fmt != "html":
        raise LibraError(f"--format: expected html, md or json, got {fmt!r}")
    e = html.escape
    body = [f"<h1>{e(WORDS['title'][lang])}</h1>"] + [f"<p class=note>{e(n)}</p>" for n in notes]
    for s in assessment.sections:
        body.append(f"<h2>{e(_title(s, lang))}</h2><table><thead><tr>"
                    + "".join(f"<th>{e(WORDS[h][lang])}</th>" for h in s.header) + "</tr></thead><tbody>")
        for r in s.rows:
            cells = []
            for c in r:
                text = _say(c, lang)
                cls = {"PASS": "pass", "FAIL": "fail", "NOT ENOUGH DATA": "nodata"}.get(c.text if c.word else "")
                cells.append(f"<td class={cls}>{e(text)}</td>" if cls else f"<td>{e(text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        body.append("</tbody></table>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}.pass{color:#070}.fail{color:#b00}"
             ".nodata{color:#a60}.note{color:#555}")
    return (f"<!doctype html><html lang={lang}><head><meta charset=utf-8><title>{e(WORDS['title'][lang])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
