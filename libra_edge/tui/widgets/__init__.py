"""Widgets of the TUI, one per file, grouped by the screen area they draw."""
