"""The new-run dialog: type, paste or pick an input file (or folder), its format and the analysis mode.

The path field has the focus when the dialog opens: a path typed or pasted there (quotes
and a `file://` prefix, as file managers paste them, are dropped) starts the run on
Enter; the tree below is for browsing (Tab reaches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Select

from libra_edge.tui.widgets.file_picker import InputFileTree

FORMATS = (
    ("detect (pairs or chat transcripts)", "auto"),
    ("question/response pairs", "pairs"),
    ("chat transcripts: OpenAI messages", "messages"),
    ("chat transcripts: ShareGPT conversations", "conversations"),
)

ANALYSIS = (
    ("analysis for flagged items (fast check first)", "flagged"),
    ("analysis for every item", "all"),
    ("no analysis: verdict and score only", "none"),
)


@dataclass(frozen=True)
class LaunchRequest:
    """What the dialog returns: the input path and the analysis mode."""

    path: Path
    analysis: str
    format: str = "auto"


def typed_path(raw: str) -> str:
    """A path as typed or pasted: surrounding quotes and a `file://` prefix removed."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    if text.startswith("file://"):
        text = text[len("file://"):]
    return text.strip()


class LaunchScreen(ModalScreen[LaunchRequest | None]):
    """Path field (focused) + file tree + format and analysis menus; Enter or ctrl+s starts, Esc cancels."""

    BINDINGS = [
        Binding("ctrl+s", "start", "Start run", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, start_dir: Path) -> None:
        super().__init__()
        self.start_dir = start_dir

    def compose(self) -> ComposeResult:
        with Vertical(id="launch-dialog", classes="dialog"):
            yield Label("New batch run: type or paste the path of a .jsonl / .json / .csv / .parquet file "
                        "or a folder, or pick one below", classes="dialog-title")
            with Horizontal(classes="dialog-row"):
                yield Label("input", classes="dialog-label")
                yield Input(placeholder=f"path of the input file or folder (relative to {self.start_dir})",
                            id="launch-path")
            yield InputFileTree(self.start_dir, id="launch-tree")
            with Horizontal(classes="dialog-row"):
                yield Label("format", classes="dialog-label")
                yield Select(FORMATS, value="auto", allow_blank=False, id="launch-format")
            with Horizontal(classes="dialog-row"):
                yield Label("analysis", classes="dialog-label")
                yield Select(ANALYSIS, value="flagged", allow_blank=False, id="launch-analysis")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="launch-start")
                yield Button("Cancel (esc)", id="launch-cancel")

    def on_mount(self) -> None:
        self.query_one("#launch-path", Input).focus()

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#launch-path", Input).value = str(event.path)
        self.query_one("#launch-start", Button).focus()

    @on(DirectoryTree.DirectorySelected)
    def _dir_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#launch-path", Input).value = str(event.path)

    @on(Input.Submitted, "#launch-path")
    @on(Button.Pressed, "#launch-start")
    def action_start(self) -> None:
        """Start the run on the chosen path."""
        raw = typed_path(self.query_one("#launch-path", Input).value)
        if not raw:
            self.notify("choose an input file first", severity="warning")
            return
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.start_dir / path
        if not path.exists():
            self.notify(f"{path}: no such file or folder", severity="error")
            return
        analysis = str(self.query_one("#launch-analysis", Select).value)
        self.dismiss(LaunchRequest(path, analysis, str(self.query_one("#launch-format", Select).value)))

    @on(Button.Pressed, "#launch-cancel")
    def action_cancel(self) -> None:
        """Close without starting anything."""
        self.dismiss(None)
