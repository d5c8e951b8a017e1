"""The Models screen: installed GGUF models with their manifest metadata; choose the active one."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static

from libra_edge.models import config, registry
from libra_edge.tui.formatting import human_size
from libra_edge.tui.messages import ModelsListed, WorkFailed
from libra_edge.tui.session import model_label
from libra_edge.tui.widgets.footer import KeysFooter
from libra_edge.tui.widgets.models_table import ModelsTable

if TYPE_CHECKING:
    from libra_edge.tui.app import LibraApp

NO_MODELS = (
    "No models installed. Offline: `libra-edge models import FILE.gguf`; "
    "online: `libra-edge models pull libra-guard-3b`; or start with --model FILE.gguf."
)


class ModelsScreen(Screen[None]):
    """Installed models; Enter uses one for checks and new runs, d also makes it the default."""

    BINDINGS = [
        Binding("d", "make_default", "Make default"),
        Binding("g", "refresh", "Refresh"),
    ]

    @property
    def libra(self) -> LibraApp:
        """The app, typed."""
        return cast("LibraApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="models-active", markup=False)
        yield ModelsTable(id="models-table")
        yield Static("", id="model-info", markup=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.sub_title = "Models"
        self.query_one(ModelsTable).focus()
        self.watch(self.app, "active_model", self._active_model_changed, init=False)

    def _active_model_changed(self, _spec: str | None) -> None:
        self.load_models()

    def on_screen_resume(self) -> None:
        self.load_models()

    @work(thread=True, exclusive=True, group="models")
    def load_models(self) -> None:
        """Read the manifests (no GGUF is opened)."""
        try:
            models = registry.installed_models()
        except Exception as exc:
            self.post_message(WorkFailed.of("listing models", exc))
            return
        self.post_message(ModelsListed(models))

    @on(ModelsListed)
    def _listed(self, event: ModelsListed) -> None:
        try:
            default = config.default_model_name()
        except Exception as exc:  # a broken config file: say so, still list the models
            self.notify(str(exc), severity="error")
            default = None
        active = self.libra.active_model
        self.query_one(ModelsTable).show_models(event.models, active=active or default, default=default)
        names = {m.name for m in event.models}
        line = self.query_one("#models-active", Static)
        if active and active not in names:
            line.update(f"active: {model_label(active)} (a file given with --model)")
        elif active or default:
            line.update(f"active: {active or default}")
        else:
            line.update("active: none chosen" if event.models else NO_MODELS)
        self._show_info()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_info()

    def _show_info(self) -> None:
        model = self.query_one(ModelsTable).selected
        info = self.query_one("#model-info", Static)
        if model is None:
            info.update("")
            return
        if model.manifest is None:
            info.update(f"{model.name}: {model.problem}")
            return
        m = model.manifest
        lines = [
            f"sha256 {m.sha256}",
            f"{m.architecture or '?'} · {m.quant} · {human_size(m.size)} · prompt template "
            f"{m.prompt_template_version} · origin {m.origin}",
        ]
        if m.source_repo:
            lines.append(f"from {m.source_repo}" + (f" @ {m.source_commit[:12]}" if m.source_commit else ""))
        info.update("\n".join(lines))

    # -- actions ----------------------------------------------------------------------------
    def action_use(self) -> None:
        """Use the selected model for checks and new runs (this session)."""
        model = self.query_one(ModelsTable).selected
        if model is None:
            return
        if model.manifest is None:
            self.notify(f"{model.name}: {model.problem}", severity="error")
            return
        self.libra.active_model = model.name
        self.notify(f"using {model.name}", timeout=2)

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_use()

    def action_make_default(self) -> None:
        """Use the selected model and record it as the default in the config file."""
        model = self.query_one(ModelsTable).selected
        if model is None:
            return
        try:
            config.set_default_model_name(model.name)
        except Exception as exc:
            self.notify(WorkFailed.of("saving the default", exc).message, severity="error")
            return
        self.libra.active_model = model.name
        self.notify(f"{model.name} is now the default model", timeout=3)
        self.load_models()

    def action_refresh(self) -> None:
        """Re-read the models folder."""
        self.load_models()
