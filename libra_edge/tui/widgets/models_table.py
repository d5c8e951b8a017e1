"""The installed models: name, quant, size, context, parameters and sha256."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from libra_edge.models.registry import InstalledModel
from libra_edge.tui.formatting import human_size

COLUMNS = ("", "name", "quant", "size", "context", "params", "sha256")


class ModelsTable(DataTable[object]):
    """One row per installed model; the active one is marked ●, the default ★."""

    DEFAULT_CSS = """
    ModelsTable { height: 1fr; }
    """
    BINDINGS = [Binding("enter", "select_cursor", "Use model")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.models: list[InstalledModel] = []

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name or "mark")

    def show_models(self, models: list[InstalledModel], *, active: str | None, default: str | None) -> None:
        """Replace the rows, marking the active and the default model."""
        row = self.cursor_row
        self.clear()
        self.models = list(models)
        for m in models:
            mark = ("●" if m.name == active else " ") + ("★" if m.name == default else " ")
            if m.manifest is None:
                self.add_row(Text(mark), Text(m.name), Text(m.problem or "unreadable manifest", style="red"),
                             "", "", "", "", key=m.name)
                continue
            man = m.manifest
            cells = (
                mark, m.name, man.quant, human_size(man.size),
                "—" if man.context_length is None else f"{man.context_length:,}",
                "—" if man.n_params is None else f"{man.n_params / 1e6:,.0f}M",
                man.sha256[:16] + "…",
            )
            self.add_row(*(Text(c) for c in cells), key=m.name)  # Text: never parsed as markup
        if models:
            self.move_cursor(row=min(row, len(models) - 1))

    @property
    def selected(self) -> InstalledModel | None:
        """The model under the cursor."""
        if not self.models or not 0 <= self.cursor_row < len(self.models):
            return None
        return self.models[self.cursor_row]
