"""The Textual application and `make_app`, the factory the CLI and the tests share."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.reactive import var

from libra_edge.engine.settings import EngineSettings
from libra_edge.store import open_store
from libra_edge.tui.screens.check import CheckScreen
from libra_edge.tui.screens.help import HelpScreen, screen_keys
from libra_edge.tui.screens.models import ModelsScreen
from libra_edge.tui.screens.runs import RunsScreen
from libra_edge.tui.session import Session


class LibraApp(App[None]):
    """Three areas, one key each: Check (F1), Runs (F2), Models (F3); ? lists the keys; ctrl+q quits."""

    TITLE = "libra-edge"
    CSS_PATH = "app.tcss"
    MODES = {"check": CheckScreen, "runs": RunsScreen, "models": ModelsScreen}
    DEFAULT_MODE = "check"
    BINDINGS = [
        Binding("f1", "switch_mode('check')", "Check", priority=True),
        Binding("f2", "switch_mode('runs')", "Runs", priority=True),
        Binding("f3", "switch_mode('models')", "Models", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("question_mark", "help", "Keys"),
    ]

    active_model: var[str | None] = var(None)
    """The model of checks and new runs: an installed name, a GGUF path, or None (the default)."""

    def __init__(self, session: Session, *, start_dir: Path) -> None:
        super().__init__()
        self.session = session
        self.start_dir = start_dir
        self.set_reactive(LibraApp.active_model, session.model)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast. Never parsed as markup: messages carry file paths, user text and errors."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def action_help(self) -> None:
        """List every key of the screen on display, with what it does."""
        if isinstance(self.screen, HelpScreen):
            return
        title = self.screen.sub_title or type(self.screen).__name__
        self.push_screen(HelpScreen(title, screen_keys(self.screen)))

    def watch_active_model(self, spec: str | None) -> None:
        self.session.set_model(spec)

    def on_unmount(self) -> None:
        # A batch in progress stops after its current item and is recorded as interrupted.
        self.session.close()


def make_app(
    *,
    model: str | None = None,
    db_path: str | Path | None = None,
    settings: EngineSettings | None = None,
    start_dir: Path | None = None,
    reviewer: str | None = None,
) -> LibraApp:
    """The TUI on the results database `db_path` (default: the user's), using `model`.

    `model` is a GGUF path or an installed name (None: the configured default); nothing
    is loaded until the first check or run. `start_dir` is where the file picker and
    exports start (default: the current directory). `reviewer` names who records review
    decisions (default: $LIBRA_EDGE_REVIEWER, else the OS user). Raises LibraError if the
    database cannot be opened.
    """
    store = open_store(db_path)
    session = Session(store, model=model, settings=settings or EngineSettings(), reviewer=reviewer)
    return LibraApp(session, start_dir=(start_dir or Path.cwd()).resolve())
