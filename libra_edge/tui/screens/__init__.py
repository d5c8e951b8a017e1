"""The TUI's screens: check, runs, results, item detail, models, and their dialogs."""
