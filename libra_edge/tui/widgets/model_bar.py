"""The check screen's top line: which model, which mode (fast/full), and the engine's state."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, Select, Static

MODES = (("full: verdict + analysis", "full"), ("fast: verdict only", "fast"))


class ModelBar(Horizontal):
    """Model menu, mode menu and a status text; posts `ModelChosen` / `ModeChosen`."""

    DEFAULT_CSS = """
    ModelBar { height: 1; padding: 0 1; margin-bottom: 1; }
    ModelBar > Label { padding: 0 1 0 0; color: $text-muted; }
    ModelBar > #model { width: 40; margin-right: 2; }
    ModelBar > #mode { width: 30; margin-right: 2; }
    ModelBar > #engine-state { width: 1fr; color: $text-muted; }
    """

    @dataclass
    class ModelChosen(Message):
        """The user picked another model (an installed name or a GGUF path)."""

        spec: str

    @dataclass
    class ModeChosen(Message):
        """The user picked fast or full mode."""

        fast: bool

    def __init__(self, choices: list[tuple[str, str]], model: str | None, *, fast: bool) -> None:
        """`model`: the spec in use — the chosen one, else the default model's name (None: none)."""
        super().__init__()
        self._choices = choices
        self._model = model
        self._fast = fast

    def compose(self) -> ComposeResult:
        yield Label("model")
        specs = [spec for _, spec in self._choices]
        yield Select(
            [(Text(label), spec) for label, spec in self._choices], value=self._model if self._model in specs else Select.NULL,
            prompt="no model installed (see F3)", compact=True, id="model",
        )
        yield Label("mode")
        yield Select(MODES, value="fast" if self._fast else "full", allow_blank=False, compact=True, id="mode")
        yield Static("", id="engine-state", markup=False)

    def set_state(self, text: str) -> None:
        """Say what the engine is doing (loading, ready, checking)."""
        self.query_one("#engine-state", Static).update(text)

    def set_fast(self, fast: bool) -> None:
        """Show the mode (after the ctrl+t toggle)."""
        self.query_one("#mode", Select).value = "fast" if fast else "full"

    def set_model(self, choices: list[tuple[str, str]], model: str | None) -> None:
        """Refresh the model menu (after a change on the Models screen)."""
        select = self.query_one("#model", Select)
        with select.prevent(Select.Changed):
            select.set_options([(Text(label), spec) for label, spec in choices])
            specs = [spec for _, spec in choices]
            if model in specs:
                select.value = model

    @on(Select.Changed, "#model")
    def _model_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.NULL:
            self.post_message(self.ModelChosen(str(event.value)))

    @on(Select.Changed, "#mode")
    def _mode_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.ModeChosen(event.value == "fast"))
