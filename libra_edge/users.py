"""Who runs this process: the one lookup of the operating-system user's name."""

from __future__ import annotations

import getpass


def os_user(fallback: str = "unknown") -> str:
    """The OS user's login name, or FALLBACK when this environment has none (a container's uid
    without a password-database entry, no $USER/$LOGNAME)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises KeyError or OSError, by platform
        return fallback
