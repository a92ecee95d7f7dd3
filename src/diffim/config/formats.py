"""Text forms of config values: override strings, YAML and TOML values, file suffixes.

These helpers need no config class: `diffim.config.base` calls them to parse
``field=value`` overrides, to choose a file's format from its suffix, and to write YAML
flow values and TOML documents. ``yaml`` is imported inside the functions that use it, so
that importing `diffim.config` does not load it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import DiffimConfigError

if TYPE_CHECKING:
    from .base import _FieldSpec


def _parse_override(text: str, spec: _FieldSpec) -> Any:
    """Parse an override value with YAML rules, tolerating ``1e-4`` and unquoted strings."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        msg = f"cannot parse {text!r} as a value for {spec.name}: {err}"
        raise DiffimConfigError(msg) from err
    if spec.kind is str and not isinstance(value, str):
        return text.strip()
    if spec.kind in (int, float) and isinstance(value, str):
        try:
            return spec.kind(value)
        except ValueError:
            return value  # rejected with the field's message by _coerce
    return value


def _file_format(path: Path) -> Literal["yaml", "toml"]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".toml":
        return "toml"
    msg = f"config file {str(path)!r} must end in .yaml, .yml or .toml"
    raise DiffimConfigError(msg)


def _yaml_value(value: Any) -> str:
    """Return one value in YAML flow style (``21``, ``[4, 2, 2]``, ``alard-lupton``)."""
    import yaml

    plain = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump([plain], default_flow_style=True, width=10**9).strip()[1:-1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    msg = f"cannot write {value!r} to TOML"
    raise DiffimConfigError(msg)


def _toml_dumps(data: Mapping[str, Any], table: str = "") -> str:
    """Write nested dictionaries of scalars and lists as TOML (tables after plain keys)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{table}.{key}" if table else key
            lines += ["", f"[{name}]", _toml_dumps(value, name).rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"
