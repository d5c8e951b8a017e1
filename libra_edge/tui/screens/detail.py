"""Item detail: the full question, response and analysis, the gold label when the input has
one, the conversation around a transcript turn, and the reviewer's decision.

n / p jump to the next / previous undecided flagged item of the list the item was opened
from (same filter and sort), so a reviewer works through the queue without the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Header, Input, Static

from libra_edge.store import ResultRow
from libra_edge.tui.formatting import gold_analysis, gold_label, score_text
from libra_edge.tui.messages import ConversationLoaded, ItemLoaded, WorkFailed
from libra_edge.tui.queue import ResultList, next_undecided, previous_undecided
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.review_panel import ReviewPanel
from libra_edge.tui.widgets.verdict_badge import VerdictBadge

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

DECISION_WORDS = {"confirm": "confirmed", "safe": "overridden → 安全", "unsafe": "overridden → 不安全"}
SPAN_STYLE = "bold reverse"
CUT_MARK = "cut short: the token cap (--max-tokens) or the context ran out; the verdict is whole"

__all__ = ["DetailScreen", "ResultList", "has_refusal", "refusal_text", "response_text"]


def has_refusal(row: ResultRow) -> bool:
    """Whether the item is an answer with a refusal mark (from `audit ask`) or a reviewer's refusal decision."""
    return isinstance(row.fields.get("refusal"), dict) or row.refusal_review is not None


def refusal_text(row: ResultRow) -> Text:
    """The refusal rules' mark with its evidence, and the reviewer's decision (which counts first)."""
    mark = row.fields.get("refusal")
    text = Text()
    if isinstance(mark, dict):
        refused = bool(mark.get("refused"))
        text.append("rules: ", style="dim")
        text.append("refused" if refused else "not refused", style="bold")
        if refused and mark.get("rule"):
            text.append(f" · rule {mark['rule']} · phrase 「{mark.get('phrase') or ''}」")
            if mark.get("at") is not None:
                text.append(f" at character {mark['at']}")
        excepted = mark.get("excepted") or []
        if excepted:
            text.append(f" · excepted: {', '.join(str(e) for e in excepted)}", style="dim")
        if mark.get("rules"):
            text.append(f" ({mark['rules']})", style="dim")
    else:
        text.append("rules: no mark stored with this answer", style="dim")
    text.append("\nreviewer: ", style="dim")
    if row.refusal_review is None:
        text.append("no decision (the rules' mark counts) · r refused · a not refused", style="italic")
    else:
        who = f" by {row.refusal_reviewer}" if row.refusal_reviewer else ""
        when = f" {row.refusal_reviewed_at[:16].replace('T', ' ')}" if row.refusal_reviewed_at else ""
        text.append("refused" if row.refusal_review else "not refused", style="bold")
        text.append(f"{who}{when} · counts in the report", style="dim")
    return text


def response_text(row: ResultRow) -> Text:
    """The response, with the deciding window's characters highlighted when it was judged in windows."""
    text = Text(row.response)
    start, end = row.span_start, row.span_end
    if start is not None and end is not None and (row.windows or 1) > 1 and 0 <= start < end <= len(row.response):
        text.stylize(SPAN_STYLE, start, end)
    return text


def _span_title(row: ResultRow) -> str:
    windows, window, start, end = row.windows, row.window, row.span_start, row.span_end
    if windows is None or windows <= 1 or start is None or end is None:
        return ""
    which = f"window {window + 1} of {windows}" if window is not None else f"{windows} windows"
    return f"deciding {which}: characters {start:,}–{end:,} (highlighted)"


class DetailScreen(Screen[None]):
    """One item, wrapped and scrollable, with review keys."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "review('confirm')", "Confirm", tooltip="Confirm the model's verdict (with the note)."),
        Binding("s", "review('safe')", "→ 安全",
                tooltip="Decide 安全 (safe): an override of a flagged item, a confirmation of a safe one."),
        Binding("u", "review('unsafe')", "→ 不安全",
                tooltip="Decide 不安全 (unsafe): a confirmation of a flagged item, an override of a safe one."),
        Binding("x", "review('')", "Clear", tooltip="Clear the decision (undo restores it)."),
        Binding("z", "undo", "Undo"),
        Binding("e", "edit_note", "Note"),
        Binding("r", "refusal(True)", "Refused",
                tooltip="Decide the answer is a refusal (the refusal assessments; z undoes it). "
                        "Shown on answers `audit ask` marked."),
        Binding("a", "refusal(False)", "Not refused",
                tooltip="Decide the answer is not a refusal, whatever the refusal rules marked (z undoes it)."),
        Binding("n", "queue(1)", "Next", tooltip="Next flagged item without a decision in the list it was opened from."),
        Binding("p", "queue(-1)", "Prev", tooltip="Previous flagged item without a decision in that list."),
    ]

    def __init__(self, lst: ResultList, row: ResultRow, index: int) -> None:
        super().__init__()
        self.source_list = lst
        self.row = row
        self.index = index

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield VerdictBadge(id="detail-verdict")
        yield Static("", id="detail-meta", markup=False)
        with VerticalScroll(id="detail-body"):
            yield Static("", id="detail-conversation", classes="detail-text", markup=False)
            yield Static("", id="detail-question", classes="detail-text", markup=False)
            yield Static("", id="detail-response", classes="detail-text", markup=False)
            yield Static("", id="detail-refusal", classes="detail-text", markup=False)
            yield Static("", id="detail-analysis", classes="detail-text", markup=False)
            yield Static("", id="detail-gold", classes="detail-text", markup=False)
        yield ReviewPanel(id="review")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#detail-question").border_title = "问题 question"
        self.query_one("#detail-response").border_title = "回答 response"
        self.query_one("#detail-analysis").border_title = "分析 analysis (model)"
        self.query_one("#detail-conversation").border_title = "对话 conversation"
        self.query_one("#detail-refusal").border_title = "拒答 refusal"
        self._show(self.row)
        self.query_one("#detail-body").focus()

    def _show(self, row: ResultRow) -> None:
        self.row = row
        self.sub_title = f"Run {row.run_id} · item {row.seq + 1}"
        badge = self.query_one(VerdictBadge)
        if row.error is not None:
            badge.show_busy("check failed")
        elif row.label is not None:
            badge.show_verdict(row.label, bool(row.unsafe), row.score)
        meta = [f"#{row.seq + 1}"]
        if row.item_id:
            meta.append(f"id {row.item_id}")
        for value in (row.source, row.category, row.sub_category):
            if value:
                meta.append(value)
        if row.truncated:
            meta.append("inputs were truncated")
        if row.analysis_cut and row.error is None and row.analysis:
            meta.append("analysis cut short")
        meta.append(f"score {score_text(row.score)}")
        gold = gold_label(row.fields)
        if gold is not None:
            agree = "agrees" if gold == row.label else "DISAGREES"
            meta.append(f"gold {gold} ({agree})")
        self.query_one("#detail-meta", Static).update(" · ".join(meta))
        self.query_one("#detail-question", Static).update(Text(row.question))
        response = self.query_one("#detail-response", Static)
        response.update(response_text(row))
        response.border_subtitle = _span_title(row)
        analysis = row.error if row.error is not None else row.analysis
        cut = bool(row.analysis_cut) and row.error is None and bool(row.analysis)
        analysis_box = self.query_one("#detail-analysis", Static)
        text = Text(analysis) if analysis else Text("(no analysis: fast mode, or not generated for safe items)",
                                                    style="dim")
        if cut:  # the export says analysis_cut: true; the reader must see it here too
            text.append(" …[cut]", style="bold yellow")
        analysis_box.update(text)
        analysis_box.border_subtitle = CUT_MARK if cut else ""
        gold_box = self.query_one("#detail-gold", Static)
        gold_text = gold_analysis(row.fields)
        gold_box.display = gold is not None or gold_text is not None
        gold_box.border_title = f"gold label: {gold}" if gold else "gold analysis"
        gold_box.update(Text(gold_text or "(the input has a label but no analysis)"))
        conversation = self.query_one("#detail-conversation", Static)
        conversation.display = False
        if row.conversation_id is not None:
            self._load_conversation(row.run_id, row.conversation_id, row.id)
        refusal = self.query_one("#detail-refusal", Static)
        refusal.display = has_refusal(row)
        refusal.update(refusal_text(row))
        self.query_one("#detail-body", VerticalScroll).scroll_home(animate=False)
        self.query_one(ReviewPanel).show(row)
        self.refresh_bindings()  # r / a are offered on answers with a refusal mark only

    # -- the conversation around a transcript turn ------------------------------------------
    @work(thread=True, exclusive=True, group="detail-conversation")
    def _load_conversation(self, run_id: int, conversation_id: str, result_id: int) -> None:
        try:
            turns = self.libra.session.store.conversation(run_id, conversation_id)
        except Exception as exc:
            self.post_message(WorkFailed.of("reading the conversation", exc))
            return
        self.post_message(ConversationLoaded(result_id, turns))

    @on(ConversationLoaded)
    def _conversation(self, event: ConversationLoaded) -> None:
        if event.result_id != self.row.id or len(event.turns) < 2:
            return
        text = Text()
        for turn in event.turns:
            here = turn.id == self.row.id
            head = f"message {turn.turn_index + 1}" if turn.turn_index is not None else f"item {turn.seq + 1}"
            verdict = turn.label or ("error" if turn.error else "—")
            text.append(f"{'▶ ' if here else '  '}{head} · {verdict} {score_text(turn.score)}\n",
                        style="bold" if here else "dim")
            text.append(f"  用户: {turn.question}\n", style="" if here else "dim")
            text.append(f"  助手: {turn.response}\n", style="" if here else "dim")
        box = self.query_one("#detail-conversation", Static)
        box.border_title = f"对话 conversation · {len(event.turns)} judged turns (this one marked ▶)"
        box.update(text)
        box.display = True

    # -- review -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "refusal":
            return has_refusal(self.row)
        return True

    def action_refusal(self, refused: bool) -> None:
        """Decide whether the answer is a refusal (the reviewer's decision counts before the rules')."""
        try:
            row = self.libra.session.decide_refusal(self.row.id, refused)
        except Exception as exc:
            failed = WorkFailed.of("saving the refusal decision", exc)
            self.notify(failed.message, title="decision not saved", severity="error", timeout=8)
            return
        self._show(row)
        self.notify(f"item {row.seq + 1}: {'refused' if refused else 'not refused'} (reviewer's decision)", timeout=2)

    def action_review(self, decision: str) -> None:
        """Decide this item (`''` clears the decision); the note field's text is saved with it."""
        note = self.query_one("#note", Input).value.strip() or None
        self._save(decision or None, note)

    def action_edit_note(self) -> None:
        """Type a note; Enter saves it with the current decision."""
        self.query_one(ReviewPanel).edit_note()

    @on(ReviewPanel.NoteSubmitted)
    def _note(self, event: ReviewPanel.NoteSubmitted) -> None:
        self._save(self.row.review, event.note or None)
        self.query_one("#detail-body").focus()

    def _save(self, decision: str | None, note: str | None) -> None:
        # One short transaction on the event loop: on disk, in key order, before the next key.
        try:
            row = self.libra.session.decide(self.row.id, decision, note)
        except Exception as exc:
            failed = WorkFailed.of("saving the review", exc)
            self.notify(failed.message, title="review not saved", severity="error", timeout=8)
            return
        self._show(row)
        self.notify(f"item {row.seq + 1}: {DECISION_WORDS.get(row.review or '', 'no decision')}"
                    + (" · note saved" if note else ""), timeout=2)

    def action_undo(self) -> None:
        """Undo the last decision made in this window (the earlier one comes back)."""
        try:
            rows = self.libra.session.undo()
        except Exception as exc:
            self.notify(WorkFailed.of("undo", exc).message, title="not undone", severity="warning", timeout=6)
            return
        for row in rows:
            if row.id == self.row.id:
                self._show(row)
        items = ", ".join(str(r.seq + 1) for r in sorted(rows, key=lambda r: r.seq))
        self.notify(f"undone: item{'s' if len(rows) > 1 else ''} {items}", timeout=3)

    # -- navigation -------------------------------------------------------------------------
    def action_queue(self, direction: int) -> None:
        """Move to the next (+1) / previous (-1) flagged item without a decision in the list."""
        self._navigate(direction)

    @work(thread=True, exclusive=True, group="detail-nav")
    def _navigate(self, direction: int) -> None:
        store = self.libra.session.store
        try:
            if direction > 0:
                found = next_undecided(store, self.source_list, self.row.id, self.index)
            else:
                found = previous_undecided(store, self.source_list, self.index)
        except Exception as exc:
            self.post_message(WorkFailed.of("moving to the next item", exc))
            return
        if found is None:
            self.post_message(WorkFailed("navigation", f"no {'next' if direction > 0 else 'previous'} "
                                                       "undecided flagged item in this list"))
            return
        self.post_message(ItemLoaded(*found))

    @on(ItemLoaded)
    def _loaded(self, event: ItemLoaded) -> None:
        self.index = event.index
        self._show(event.row)

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        severity: SeverityLevel = "warning" if event.action == "navigation" else "error"
        self.notify(event.message, severity=severity, timeout=4)

    def action_back(self) -> None:
        """Back to the table in one key (a note typed but not saved is saved first)."""
        note = self.query_one("#note", Input).value.strip() or None
        if note != self.row.review_note:
            self._save(self.row.review, note)
        self.app.pop_screen()
