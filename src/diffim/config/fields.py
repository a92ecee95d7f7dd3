"""Declaring a config field, and checking one value against its declaration.

`param` declares a field once, with its default, its one-line documentation and its checks
(`CHECKS`); `_redefault` re-declares an inherited field with a new default. The helpers
below convert one value to a field's type, check one value against the field's bounds and
oddness, and build the error for an unknown field name; `diffim.config.base` applies them
to whole configs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import DiffimConfigError

if TYPE_CHECKING:
    from .base import _FieldSpec

#: Checks understood by `param`; on list fields min/max/gt/odd apply to every item.
CHECKS = frozenset({"min", "max", "gt", "odd", "choices", "length_of", "sentinel"})


def param(default: Any, doc: str, **checks: Any) -> Any:
    """Declare a config field with its default, documentation and checks.

    Parameters
    ----------
    default : object
        Default value (immutable: lists are tuples). Sub-configs are declared with
        ``dataclasses.field(default_factory=SubConfig, metadata={"doc": ...})``.
    doc : str
        One-line description, shown in error messages and by ``diffim config``.
    **checks
        ``min``/``max`` (inclusive), ``gt`` (exclusive minimum), ``odd=True``, ``choices``
        (a collection of allowed values; `typing.Literal` annotations give them too),
        ``length_of`` (name of the integer field this list's length must equal) and
        ``sentinel`` (a special value exempt from min/max, e.g. -1 meaning "all").

    Returns
    -------
    dataclasses.Field
        The field, with ``doc`` and the checks in its metadata.
    """
    unknown = set(checks) - CHECKS
    if unknown:
        msg = f"unknown field check(s) {sorted(unknown)}; known: {sorted(CHECKS)}"
        raise TypeError(msg)
    return dataclasses.field(default=default, metadata={"doc": doc, **checks})


def _redefault(base: type, name: str, *, default: Any) -> Any:
    """Re-declare field ``name`` of ``base`` with a new default (ip_diffim's ``setDefaults``)."""
    return dataclasses.field(default=default, metadata=base.__dataclass_fields__[name].metadata)


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _coerce_scalar(path: str, value: Any, kind: type, doc: str) -> Any:
    """Return ``value`` converted to ``kind`` (int, float, bool or str), or raise."""
    if kind is bool and isinstance(value, bool):
        return value
    if not isinstance(value, bool):
        if kind is int and isinstance(value, numbers.Integral):
            return int(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind is float and isinstance(value, numbers.Real):
            return float(value)
    if kind is str and isinstance(value, str):
        return value
    msg = f"{path}={value!r} must be {_KIND_NAMES[kind]} ({doc})"
    raise DiffimConfigError(msg)


def _check_bounds(path: str, value: Any, spec: _FieldSpec) -> None:
    """Check min/max/gt/odd on a scalar (or on one item of a list field)."""
    checks = spec.metadata
    if "sentinel" in checks and value == checks["sentinel"]:
        return
    problem = None
    if isinstance(value, float) and math.isnan(value):
        problem = "is not a number"
    elif "min" in checks and value < checks["min"]:
        problem = f"is below its minimum {checks['min']}"
    elif "max" in checks and value > checks["max"]:
        problem = f"is above its maximum {checks['max']}"
    elif "gt" in checks and value <= checks["gt"]:
        problem = f"must be greater than {checks['gt']}"
    elif checks.get("odd") and value % 2 != 1:
        problem = "must be odd"
    if problem is not None:
        msg = f"{path}={value!r} {problem} ({spec.doc})"
        raise DiffimConfigError(msg)


def _unknown_field(
    key: str, candidates: Iterable[str], where: str, hint: str = ""
) -> DiffimConfigError:
    """Return the error for an unknown field name, suggesting the nearest names."""
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not hint:
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "see `diffim config`"
    return DiffimConfigError(f"unknown config field {key!r} in {where}; {hint}")
