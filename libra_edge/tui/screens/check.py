"""The Check screen: type a question and a response, judge them, watch the analysis stream in."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, TextArea

from libra_edge.tui.messages import AnalysisText, CheckDone, ModelReady, WorkFailed
from libra_edge.tui.session import model_label
from libra_edge.tui.widgets.analysis_view import AnalysisView
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.model_bar import ModelBar
from libra_edge.tui.widgets.timings_line import TimingsLine
from libra_edge.tui.widgets.verdict_badge import VerdictBadge

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

PLACEHOLDER = "ctrl+r judges the pair; in full mode the model's analysis appears here as it is written."


class CheckScreen(Screen[None]):
    """Question and response editors, the verdict badge, timings and the analysis."""

    BINDINGS = [
        Binding("ctrl+r", "run_check", "Check", priority=True),
        Binding("ctrl+t", "toggle_mode", "Fast/full", priority=True),
        Binding("ctrl+l", "clear", "Clear"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.fast = False

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        session = self.libra.session
        yield Header()
        yield ModelBar(session.model_choices(), session.model or session.default_model_name(), fast=self.fast)
        with Horizontal(id="pair"):
            question = TextArea(id="question", soft_wrap=True, show_line_numbers=False)
            question.border_title = "问题 question"
            yield question
            response = TextArea(id="response", soft_wrap=True, show_line_numbers=False)
            response.border_title = "回答 response"
            yield response
        with Horizontal(id="verdict-line"):
            yield VerdictBadge()
            yield TimingsLine(markup=False)
        with Vertical(id="analysis-box"):
            yield AnalysisView(id="analysis")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = "Check"
        self.query_one(AnalysisView).set_text(PLACEHOLDER, placeholder=True)
        self.query_one(ModelBar).set_state(f"{self.libra.session.model_name()} · not loaded yet")
        self.query_one("#question", TextArea).focus()
        self.watch(self.app, "active_model", self._active_model_changed, init=False)

    # -- actions -------------------------------------------------------------------------
    def action_run_check(self) -> None:
        """Judge the pair in the editors (ctrl+r)."""
        question = self.query_one("#question", TextArea).text
        response = self.query_one("#response", TextArea).text
        if not question.strip() or not response.strip():
            self.notify("type a question and a response first", severity="warning")
            return
        self.query_one(VerdictBadge).show_busy()
        self.query_one(TimingsLine).show(None)
        view = self.query_one(AnalysisView)
        view.set_text("" if not self.fast else "(fast mode: no analysis)", placeholder=self.fast)
        self.check(question, response, analysis=not self.fast)

    def action_toggle_mode(self) -> None:
        """Switch between fast (verdict only) and full (verdict + analysis) mode (ctrl+t)."""
        self.fast = not self.fast
        self.query_one(ModelBar).set_fast(self.fast)

    def action_clear(self) -> None:
        """Empty both editors and the verdict."""
        self.query_one("#question", TextArea).text = ""
        self.query_one("#response", TextArea).text = ""
        self.query_one(VerdictBadge).show_none()
        self.query_one(TimingsLine).show(None)
        self.query_one(AnalysisView).set_text(PLACEHOLDER, placeholder=True)
        self.query_one("#question", TextArea).focus()

    # -- the worker ----------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="check")
    def check(self, question: str, response: str, *, analysis: bool) -> None:
        """Load the model if needed and judge the pair, streaming the analysis as messages."""
        session = self.libra.session
        try:
            def stream(text: str) -> None:
                self.post_message(AnalysisText(text))

            with session.lease() as guard:
                self.post_message(ModelReady(model_label(str(guard.info.path)), guard.info.quant))
                verdict = guard.check(question, response, analysis=analysis, on_text=stream)
        except Exception as exc:  # shown as a notification, never a traceback
            self.post_message(WorkFailed.of("check", exc))
            return
        self.post_message(CheckDone(verdict))

    # -- handlers ------------------------------------------------------------------------
    @on(ModelReady)
    def _model_ready(self, event: ModelReady) -> None:
        self.query_one(ModelBar).set_state(f"{event.name} ({event.quant}) · loaded")

    @on(AnalysisText)
    def _analysis_text(self, event: AnalysisText) -> None:
        self.query_one(AnalysisView).append(event.text)

    @on(CheckDone)
    def _check_done(self, event: CheckDone) -> None:
        v = event.verdict
        self.query_one(VerdictBadge).show_verdict(v.label, v.unsafe, v.score)
        self.query_one(TimingsLine).show(v.timings, truncated=v.truncated)
        view = self.query_one(AnalysisView)
        if v.analysis is not None:
            view.set_text(v.analysis)  # the parsed text: escapes resolved, nothing missing

    @on(WorkFailed)
    def _failed(self, event: WorkFailed) -> None:
        self.query_one(VerdictBadge).show_none()
        self.query_one(ModelBar).set_state("error: see the notification")
        self.notify(event.message, title=f"{event.action} failed", severity="error", timeout=8)

    @on(ModelBar.ModelChosen)
    def _model_chosen(self, event: ModelBar.ModelChosen) -> None:
        self.libra.active_model = event.spec

    @on(ModelBar.ModeChosen)
    def _mode_chosen(self, event: ModelBar.ModeChosen) -> None:
        self.fast = event.fast

    def _active_model_changed(self, spec: str | None) -> None:
        bar = self.query_one(ModelBar)
        session = self.libra.session
        bar.set_model(session.model_choices(), spec or session.default_model_name())
        bar.set_state(f"{session.model_name()} · not loaded yet")
