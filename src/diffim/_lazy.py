"""Names of a package imported from its modules on first access (PEP 562).

``diffim`` and ``diffim.batch`` re-export names from modules that pull in numpy, astropy or
Dask; importing the package itself stays cheap, and each name's module is imported only
when the name is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, names: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Return a package's module-level ``__getattr__`` and ``__dir__``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    names : mapping of str to str
        Each lazily imported name and the module (relative to the package) defining it.
    submodules : iterable of str
        Modules reachable as attributes of the package without an explicit import.
    """
    submodules = frozenset(submodules)

    def getattr_(name: str) -> object:
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        module = names.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(f".{module}", package), name)
        vars(sys.modules[package])[name] = value  # later look-ups skip __getattr__
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return getattr_, dir_
