"""The footer of every screen: Textual's Footer, rebuilt only when it must be.

Textual's Footer removes and mounts all its key widgets whenever the screen says its
bindings may have changed: on every focus move, and many times while a screen is being
mounted. Opening a 10,000-item run's results rebuilt it 17 times (about 0.6 s of the 2.5 s
it took under a profiler on a 2-core VM) for the same keys each time. Moving the focus
between the results table and the search box changes the keys (Textual drops the letter
keys while a text field has the focus, since typing goes there): each move rebuilt the
footer, about half of the move's 0.15-0.3 s.

`KeysFooter` skips a rebuild when the shown keys, their state and tooltips are unchanged,
and when the keys now shown are some of the key widgets it already has (in the same
order and enabled state) it hides the others and updates the tooltips in place.
"""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, KeyGroup


class KeysFooter(Footer):
    """A Footer that rebuilds its key widgets only when the keys to show are not among them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[object, ...] | None = None

    def bindings_changed(self, screen: Screen[Any]) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            keys = self._keys(screen)
            if keys == self._shown and self._bindings_ready:
                return
            self._shown = keys
            if self._bindings_ready and self._update_in_place(screen):
                return
        super().bindings_changed(screen)

    def _keys(self, screen: Screen[Any]) -> tuple[object, ...]:
        """What compose() would draw: each shown binding with its state and tooltip."""
        return tuple(
            (binding.key, binding.key_display, binding.description, binding.action, binding.group,
             enabled, tooltip, binding.show)
            for _node, binding, enabled, tooltip in screen.active_bindings.values()
            if binding.show or binding.action == "command_palette"
        )

    def _update_in_place(self, screen: Screen[Any]) -> bool:
        """Show the screen's keys by hiding, showing and updating the key widgets there are.

        Follows Footer.compose: one key per action (the first binding for it), in the
        order of the screen's bindings, then the command palette's key. False (rebuild)
        when the keys are grouped, one of them has no widget in the right order, or one
        was enabled or disabled since.
        """
        if self.query(KeyGroup):
            return False
        keys = list(self.query_children(FooterKey))
        widgets = [w for w in keys if "-command-palette" not in w.classes]
        palette = [w for w in keys if "-command-palette" in w.classes]
        wanted: dict[str, tuple[Binding, bool, str]] = {}
        for _node, binding, enabled, tooltip in screen.active_bindings.values():
            if binding.show:
                if binding.group is not None:
                    return False
                wanted.setdefault(binding.action, (binding, enabled, tooltip))
        updates: list[tuple[FooterKey, bool, str]] = []
        position = 0
        for binding, enabled, tooltip in wanted.values():
            display = self.app.get_key_display(binding)
            while position < len(widgets) and (
                    (widgets[position].key, widgets[position].key_display, widgets[position].description,
                     widgets[position].action) != (binding.key, display, binding.description, binding.action)):
                position += 1
            if position == len(widgets):
                return False
            updates.append((widgets[position], enabled, tooltip))
            position += 1
        palette_binding = screen.active_bindings.get(self.app.COMMAND_PALETTE_BINDING)
        palette_wanted = bool(self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE and palette_binding)
        if palette_wanted != bool(palette):
            return False
        if palette and palette_binding is not None:
            _node, binding, enabled, _tooltip = palette_binding
            updates.append((palette[0], enabled, binding.tooltip or binding.description))
        # A key is made enabled or disabled when it is built (a click on a disabled one rings
        # the bell): a key whose state changed means a rebuild.
        if any(widget.has_class("-disabled") == enabled for widget, enabled, _tooltip in updates):
            return False
        shown = {id(widget) for widget, _enabled, _tooltip in updates}
        for widget in widgets:
            widget.display = id(widget) in shown
        for widget, _enabled, tooltip in updates:
            if (widget.tooltip or "") != (tooltip or ""):
                widget.tooltip = tooltip or None
        return True
