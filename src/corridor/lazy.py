"""Package attributes imported from their modules on first use (PEP 562).

`corridor run` imports the parts of `corridor.audit` and `corridor.policy` it needs, not
everything their packages re-export (renderers, reports, the policy model...): every
module imported is start-up time, and in the gateway process memory.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where` maps each re-exported name to the
    submodule that defines it. A name found is bound in the package, so the next lookup
    is a plain one."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
