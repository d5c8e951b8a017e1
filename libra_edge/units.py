"""Human-readable quantities shared by the CLI and the TUI."""

from __future__ import annotations


def human_size(n: int | None, missing: str = "?") -> str:
    """Bytes as B / KB / MB / GB (decimal units, as disks are sold); `missing` when unknown."""
    if n is None:
        return missing
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
