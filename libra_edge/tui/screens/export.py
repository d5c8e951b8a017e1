"""The export dialog: format (JSONL or CSV) and the file to write the listed items to, in the
order they are listed, with each decision's reviewer, time and note."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

FORMATS = (("JSONL (input fields + critic + verdict + review)", "jsonl"), ("CSV (the same, flattened)", "csv"))
ORDER_WORDS = {"seq": "in input order", "score_desc": "highest score first", "score_asc": "lowest score first"}


@dataclass(frozen=True)
class ExportRequest:
    """Where and how to export."""

    path: Path
    format: str


class ExportScreen(ModalScreen[ExportRequest | None]):
    """Format menu and path field; Enter or ctrl+s writes, Esc cancels."""

    BINDINGS = [
        Binding("ctrl+s", "export", "Export", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, folder: Path, stem: str, count: int, order: str = "seq") -> None:
        super().__init__()
        self.folder = folder
        self.stem = stem
        self.count = count
        self.order = order

    def compose(self) -> ComposeResult:
        with Vertical(id="export-dialog", classes="dialog"):
            yield Label(f"Export the {self.count:,} items of the current filter, "
                        f"{ORDER_WORDS.get(self.order, self.order)}", classes="dialog-title")
            with Horizontal(classes="dialog-row"):
                yield Label("format", classes="dialog-label")
                yield Select(FORMATS, value="jsonl", allow_blank=False, id="export-format")
            with Horizontal(classes="dialog-row"):
                yield Label("file", classes="dialog-label")
                yield Input(str(self.folder / f"{self.stem}.jsonl"), id="export-path")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export (ctrl+s)", variant="primary", id="export-go")
                yield Button("Cancel (esc)", id="export-cancel")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(Select.Changed, "#export-format")
    def _format_changed(self, event: Select.Changed) -> None:
        # Keep the extension in step with the format unless the user chose another name.
        field = self.query_one("#export-path", Input)
        path = Path(field.value)
        if path.suffix in (".jsonl", ".csv"):
            field.value = str(path.with_suffix(f".{event.value}"))

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-go")
    def action_export(self) -> None:
        """Close the dialog with the request (the results screen writes the file)."""
        raw = self.query_one("#export-path", Input).value.strip()
        if not raw:
            self.notify("give a file name", severity="warning")
            return
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.folder / path
        if path.is_dir():
            self.notify(f"{path}: is a folder, give a file name", severity="error")
            return
        self.dismiss(ExportRequest(path, str(self.query_one("#export-format", Select).value)))

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        """Close without writing."""
        self.dismiss(None)
