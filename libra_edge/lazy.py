"""Package names imported from their modules on first use (PEP 562), so importing a package is cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def module_getattr(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for PACKAGE: `name` comes from `PACKAGE.<where[name]>`, once."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
