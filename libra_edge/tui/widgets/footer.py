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

It is compact, and when the keys still do not fit its width it leaves out the least
needed ones rather than let the last be cut mid-word: the command palette's key first,
then the app-wide keys (F1-F3, quit), then the screen's `FOOTER_SPARE` actions in that
order, then the screen's keys from the last. `? Keys` always stays: it lists them all.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from textual.binding import Binding
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, KeyGroup

HELP_ACTION = "help"  # the app's `?`: never left out, since it lists every key


class KeysFooter(Footer):
    """A Footer that rebuilds its key widgets only when the keys to show are not among them,
    and leaves out the least needed keys when they do not all fit."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("compact", True)
        super().__init__(**kwargs)
        self._shown: tuple[object, ...] | None = None
        self._wanted: set[int] | None = None
        """ids of the key widgets the screen's bindings show (None: every one)."""
        self.left_out: list[str] = []
        """Actions of the keys left out for want of width (the `?` screen still lists them)."""

    async def recompose(self) -> None:
        await super().recompose()
        self._wanted = None
        self.call_after_refresh(self._fit)

    def on_resize(self, event: Resize) -> None:
        self._fit()

    def _fit(self) -> None:
        """Show the wanted keys, leaving out the least needed until the rest fit the width."""
        if not self.is_attached or self.size.width <= 0 or self.query(KeyGroup):
            return
        keys = list(self.query_children(FooterKey))
        wanted = [w for w in keys if self._wanted is None or id(w) in self._wanted]
        widths = {id(w): self._key_width(w) for w in wanted}
        total = sum(widths.values())
        left_out: set[int] = set()
        for widget in self._drop_order(wanted):
            if total <= self.size.width:
                break
            left_out.add(id(widget))
            total -= widths[id(widget)]
        for widget in keys:
            show = id(widget) in widths and id(widget) not in left_out
            if widget.display != show:
                widget.display = show
        self.left_out = [w.action for w in wanted if id(w) in left_out]

    def _key_width(self, key: FooterKey) -> int:
        """Cells a key takes as Footer's and FooterKey's CSS lay it out, from its text: keys
        just built may not have their (compact) styles yet, so they cannot be measured."""
        description = cell_len(key.description)
        width = cell_len(key.key_display) + (description + 1 if description else 0)
        width += 1 if self.compact else 2  # compact: a margin after each key; else padding around the key
        if "-command-palette" in key.classes:
            width += 1 if self.compact else 2  # its left border (and its right padding)
        return width

    def _drop_order(self, wanted: list[FooterKey]) -> list[FooterKey]:
        """The wanted keys that may be left out, least needed first."""
        screen = self.screen
        spare: tuple[str, ...] = getattr(screen, "FOOTER_SPARE", ())
        app_actions = {binding.action for node, binding, _enabled, _tooltip in screen.active_bindings.values()
                       if node is self.app}

        def rank(item: tuple[int, FooterKey]) -> tuple[int, int]:
            position, widget = item
            if "-command-palette" in widget.classes:
                return 0, 0
            if widget.action in app_actions:
                return 1, position
            if widget.action in spare:
                return 2, spare.index(widget.action)
            return 3, -position

        droppable = [(i, w) for i, w in enumerate(wanted) if w.action != HELP_ACTION]
        return [w for _i, w in sorted(droppable, key=rank)]

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
        self._wanted = shown
        self._fit()
        return True
