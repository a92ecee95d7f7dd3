"""The base class of every config: its schema, validation, dict/YAML/TOML and overrides.

`_specs` reads a config dataclass's fields once (type, list item type, allowed values and
the checks declared with `diffim.config.fields.param`); `ConfigBase` uses it to validate,
to convert to and from nested dictionaries and YAML/TOML files, to describe itself as
commented YAML and to apply ``field=value`` overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from ..errors import DiffimConfigError
from .fields import _check_bounds, _coerce_scalar, _unknown_field
from .formats import _file_format, _parse_override, _toml_dumps, _yaml_value

# --------------------------------------------------------------------------------------------
# The schema of a config class, and type coercion


@dataclass(frozen=True)
class _FieldSpec:
    """What a field holds: ``kind`` (int, float, bool, str, tuple or a config class)."""

    name: str
    kind: type
    item: type | None
    choices: tuple[Any, ...] | None
    metadata: Mapping[str, Any]

    @property
    def doc(self) -> str:
        return self.metadata["doc"]

    @property
    def nested(self) -> bool:
        return isinstance(self.kind, type) and issubclass(self.kind, ConfigBase)


@functools.cache
def _specs(cls: type) -> dict[str, _FieldSpec]:
    """Return the field specifications of config class ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    specs = {}
    for field in dataclasses.fields(cls):
        hint, item, choices = hints[field.name], None, field.metadata.get("choices")
        origin = typing.get_origin(hint)
        if origin is Literal:
            choices = typing.get_args(hint)
            hint = type(choices[0])
        elif origin is tuple:
            hint, item = tuple, typing.get_args(hint)[0]
        specs[field.name] = _FieldSpec(
            field.name, hint, item, None if choices is None else tuple(choices), field.metadata
        )
    return specs


def _coerce(path: str, value: Any, spec: _FieldSpec) -> Any:
    """Return ``value`` converted to the type of field ``spec`` (lists become tuples)."""
    if spec.nested:
        if isinstance(value, spec.kind):
            return value
        if isinstance(value, Mapping):
            return spec.kind._from_dict(value, path + ".")
        msg = f"{path} must be a {spec.kind.__name__} or a mapping, got {value!r}"
        raise DiffimConfigError(msg)
    if spec.kind is tuple:
        if not isinstance(value, list | tuple):
            msg = f"{path}={value!r} must be a list ({spec.doc})"
            raise DiffimConfigError(msg)
        return tuple(
            _coerce_scalar(f"{path}[{i}]", v, spec.item, spec.doc) for i, v in enumerate(value)
        )
    value = _coerce_scalar(path, value, spec.kind, spec.doc)
    if spec.choices is not None and value not in spec.choices:
        msg = f"{path}={value!r} is not one of {list(spec.choices)} ({spec.doc})"
        raise DiffimConfigError(msg)
    return value


# --------------------------------------------------------------------------------------------
# The base class: validation, serialization and overrides


class ConfigBase:
    """Behaviour shared by every config dataclass (validation, dict/YAML/TOML, overrides)."""

    def __post_init__(self) -> None:
        self.validate()

    def __setattr__(self, name: str, value: Any) -> None:
        specs = _specs(type(self))
        if name not in specs:
            raise _unknown_field(name, specs, type(self).__name__)
        super().__setattr__(name, _coerce(name, value, specs[name]))

    def validate(self) -> None:
        """Check every field and the cross-field rules.

        Raises
        ------
        DiffimConfigError
            Naming the first bad field (its dotted path), the value and the rule.
        """
        self._validate("")

    def _validate(self, prefix: str) -> None:
        for spec in _specs(type(self)).values():
            path = prefix + spec.name
            value = _coerce(path, getattr(self, spec.name), spec)
            if spec.nested:
                value._validate(path + ".")
                continue
            for i, item in enumerate(value if spec.kind is tuple else (value,)):
                _check_bounds(f"{path}[{i}]" if spec.kind is tuple else path, item, spec)
            if "length_of" in spec.metadata:
                expected = getattr(self, spec.metadata["length_of"])
                if len(value) != expected:
                    msg = (
                        f"{path} has {len(value)} entries but {prefix}"
                        f"{spec.metadata['length_of']}={expected}; give one per Gaussian"
                    )
                    raise DiffimConfigError(msg)
        self._check_rules(prefix)

    def _check_rules(self, prefix: str) -> None:
        """Check cross-field rules; subclasses extend this."""

    # -- dictionaries and files ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the config as nested dictionaries of plain values (lists for tuples)."""
        out: dict[str, Any] = {}
        for name in _specs(type(self)):
            value = getattr(self, name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a config from (possibly partial) nested dictionaries; missing keys keep defaults.

        Raises
        ------
        DiffimConfigError
            For an unknown key (with the nearest field names) or a bad value.
        """
        return cls._from_dict(data, "")

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], prefix: str, base: Any = None) -> Self:
        """Build from ``data``; missing keys come from ``base`` (the parent's default value
        of this field, so a partial file keeps e.g. the task's ``fitForBackground=True``)."""
        if not isinstance(data, Mapping):
            msg = f"{prefix or cls.__name__} must be a mapping of field names, got {data!r}"
            raise DiffimConfigError(msg)
        specs = _specs(cls)
        defaults = cls() if base is None else base
        kwargs = {}
        for key, value in data.items():
            if key not in specs:
                hint = cls._placement_hint(str(key))
                raise _unknown_field(prefix + str(key), specs, cls.__name__, hint)
            if specs[key].nested and isinstance(value, Mapping):
                kwargs[key] = specs[key].kind._from_dict(
                    value, prefix + key + ".", base=getattr(defaults, key)
                )
            else:
                kwargs[key] = _coerce(prefix + key, value, specs[key])
        if base is not None:
            kwargs = {name: getattr(base, name) for name in specs} | kwargs
        try:
            return cls(**kwargs)
        except DiffimConfigError as err:
            if not prefix:
                raise
            raise DiffimConfigError(prefix + str(err)) from err

    @classmethod
    def _placement_hint(cls, key: str) -> str:
        """Return advice for a key that belongs elsewhere in the hierarchy ("" if none)."""
        return ""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config to a ``.yaml``/``.yml`` (commented) or ``.toml`` file.

        The file is written to a temporary name first and then moved into place.
        """
        from ..io import atomic_write_text

        path = Path(path)
        text = self.describe() if _file_format(path) == "yaml" else _toml_dumps(self.to_dict())
        atomic_write_text(path, text, overwrite=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a config written by `save` (or by hand) from a YAML or TOML file."""
        path = Path(path)
        fmt = _file_format(path)
        text = path.read_text(encoding="utf-8")
        import yaml  # only for config files and overrides: not on the default path

        try:
            data = yaml.safe_load(text) if fmt == "yaml" else tomllib.loads(text)
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
            msg = f"cannot parse {path} as {fmt.upper()}: {err}"
            raise DiffimConfigError(msg) from err
        try:
            return cls.from_dict({} if data is None else data)
        except DiffimConfigError as err:
            msg = f"{path}: {err}"
            raise DiffimConfigError(msg) from err

    def describe(self) -> str:
        """Return the config as YAML with each field's documentation as a comment.

        The text loads back (`load`, or ``from_dict(yaml.safe_load(text))``) to an equal config.
        """
        name = type(self).__name__
        header = [f"# diffim {name}; every field with its default and meaning."]
        return "\n".join([*header, *_yaml_lines(self, 0)]) + "\n"

    # -- overrides -----------------------------------------------------------------------

    def apply_overrides(self, overrides: str | Iterable[str]) -> None:
        """Apply ``"field=value"`` overrides in order, then validate; all or nothing.

        Parameters
        ----------
        overrides : str or iterable of str
            Each ``dotted.field=value``; values are parsed as YAML (``true``, ``25``,
            ``[4, 2, 2]``, ``1e-4``) and converted to the field's type.

        Raises
        ------
        DiffimConfigError
            For a malformed override, an unknown field (with suggestions) or a bad value;
            the config is left unchanged.
        """
        trial = copy.deepcopy(self)
        for item in [overrides] if isinstance(overrides, str) else overrides:
            key, sep, text = item.partition("=")
            if not sep:
                msg = f"override {item!r} is not of the form field=value, e.g. kernelSize=25"
                raise DiffimConfigError(msg)
            target, spec = trial._resolve(key.strip())
            try:
                setattr(target, spec.name, _parse_override(text, spec))
            except DiffimConfigError as err:
                msg = f"override {item!r}: {err}"
                raise DiffimConfigError(msg) from err
        trial.validate()
        self.__dict__.update(trial.__dict__)

    def _resolve(self, key: str) -> tuple[ConfigBase, _FieldSpec]:
        """Return the config holding dotted field ``key`` and that field's spec."""
        from .image_psf_match import KernelChoice  # a subclass of ConfigBase: not importable above

        target: Any = self
        *parents, name = key.split(".")
        for part in parents:
            specs = _specs(type(target))
            if isinstance(target, KernelChoice) and part == "active":
                target = target.active
            elif part in specs and specs[part].nested:
                target = getattr(target, part)
            else:
                raise _unknown_field(key, specs, type(target).__name__)
        specs = _specs(type(target))
        if name not in specs:
            raise _unknown_field(key, specs, type(target).__name__)
        return target, specs[name]


def _yaml_lines(config: ConfigBase, depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for spec in _specs(type(config)).values():
        value = getattr(config, spec.name)
        if isinstance(value, ConfigBase):
            lines.append(f"{pad}{spec.name}:  # {spec.doc}")
            lines.extend(_yaml_lines(value, depth + 1))
        else:
            lines.append(f"{pad}{spec.name}: {_yaml_value(value)}  # {spec.doc}")
    return lines
