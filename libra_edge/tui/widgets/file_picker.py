"""A directory tree that lists only folders and the batch input formats."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.widgets import DirectoryTree

from libra_edge.batch.readers import SUFFIX_FORMATS


class InputFileTree(DirectoryTree):
    """Folders plus .json / .jsonl / .csv / .parquet files; hidden entries left out."""

    DEFAULT_CSS = """
    InputFileTree { height: 1fr; border: round $primary 50%; }
    """

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [
            p for p in paths
            if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in SUFFIX_FORMATS)
        ]
