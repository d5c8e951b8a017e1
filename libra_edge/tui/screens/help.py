"""The `?` help screen: every key of the screen it was opened from, with what it does."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Label, Static, TextArea


@dataclass(frozen=True)
class KeyHelp:
    """One key: how it is written, what it does, and where it applies."""

    key: str
    description: str
    where: str


def _explanation(node: DOMNode, binding: Binding) -> str:
    """The binding's tooltip, else (for our actions without arguments) the action's docstring's
    first line, else the binding's description."""
    if binding.tooltip:
        return binding.tooltip
    name, _, arguments = binding.action.partition("(")
    method = getattr(node, f"action_{name.rsplit('.', 1)[-1]}", None)
    if not arguments and method is not None and getattr(method, "__module__", "").startswith("libra_edge"):
        doc = inspect.getdoc(method)
        if doc:
            return doc.splitlines()[0]
    return binding.description or name.replace("_", " ")


def _own(screen: Screen[object]) -> set[tuple[str, str]]:
    """(key, action) of the bindings the screen's class declares (not Textual's defaults)."""
    return {(b.key, b.action) for b in type(screen).BINDINGS if isinstance(b, Binding)}


def _where(node: DOMNode, binding: Binding, screen: Screen[object]) -> str:
    if node is screen:
        return "this screen" if (binding.key, binding.action) in _own(screen) else "any screen"
    if node is screen.app:
        return "everywhere"
    return type(node).__name__


def screen_keys(screen: Screen[object]) -> list[KeyHelp]:
    """The bindings active on `screen` now (its own, its focused widget's, the app's), except a
    text field's editing keys; the screen's own come first, in the order they are declared."""
    rows: list[KeyHelp] = []
    seen: set[tuple[str, str]] = set()
    actives = list(screen.active_bindings.values())
    own = _own(screen)
    rank = {id(screen): 0, id(screen.app): 3}

    def order(active: ActiveBinding) -> int:
        if active.node is screen and (active.binding.key, active.binding.action) not in own:
            return 2  # Textual's own screen keys (tab, copy) after the screen's and its widget's
        return rank.get(id(active.node), 1)

    actives.sort(key=order)
    for active in actives:
        node, binding = active.node, active.binding
        if isinstance(node, (Input, TextArea)):
            continue
        key = screen.app.get_key_display(binding)
        if (key, binding.action) in seen:
            continue
        seen.add((key, binding.action))
        rows.append(KeyHelp(key, _explanation(node, binding), _where(node, binding, screen)))
    return rows


class HelpScreen(ModalScreen[None]):
    """A table of keys; Esc, ? or q closes it."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, title: str, keys: list[KeyHelp]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(expand=True, show_edge=False, pad_edge=False, box=None, padding=(0, 2))
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does", ratio=1)
        table.add_column("where", style="dim", no_wrap=True)
        for k in self.keys:
            table.add_row(Text(k.key), Text(k.description), Text(k.where))
        with Vertical(id="help-dialog", classes="dialog"):
            yield Label(f"Keys: {self.title_text}  (esc closes)", classes="dialog-title")
            with VerticalScroll(id="help-keys"):
                yield Static(table)

    def action_close(self) -> None:
        """Back to the screen."""
        self.dismiss(None)
