"""Configuration of PSF matching: validated dataclasses with ip_diffim's field names.

Every field is declared once, with its default, a one-line documentation string and its
checks (``param(default, doc, min=..., odd=True, ...)``); validation, dictionary/YAML/TOML
round trips, command-line overrides and ``diffim config`` all read that one declaration.

>>> config = ImagePsfMatchConfig()
>>> config.kernel.name, config.kernel.active.kernelSize
('AL', 21)
>>> config.apply_overrides(["kernel.name=DF", "kernelSize=19"])
>>> config.kernel.active.kernelSize, config.kernel.active.maxConditionNumber
(19, 5000000.0)

Assignment checks the type (and the allowed values of a choice) at once; bounds, oddness
and cross-field rules are checked by `ConfigBase.validate`, which construction calls and
``ImagePsfMatchTask`` calls again, as in ``lsst.pex.config``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import numbers
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from .errors import DiffimConfigError

__all__ = [
    "BackgroundConfig",
    "ConfigBase",
    "DetectionConfig",
    "ImagePsfMatchConfig",
    "KernelChoice",
    "PsfMatchConfig",
    "PsfMatchConfigAL",
    "PsfMatchConfigDF",
    "WarpingConfig",
    "config_documentation",
    "param",
]

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
        from .io import atomic_write_text

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


def config_documentation(config: ConfigBase | None = None) -> str:
    """Return commented YAML of ``config`` (default: ``ImagePsfMatchConfig()``).

    This is the text ``diffim config`` prints; it loads back to an equal config.
    """
    return (ImagePsfMatchConfig() if config is None else config).describe()


# --------------------------------------------------------------------------------------------
# The configs


_PLANES = ("NO_DATA", "EDGE", "SAT")


@dataclass(kw_only=True)
class WarpingConfig(ConfigBase):
    """How the template is resampled onto the science pixel grid (afw ``WarperConfig``)."""

    _KERNELS: ClassVar[tuple[str, ...]] = (
        "bilinear",
        "lanczos2",
        "lanczos3",
        "lanczos4",
        "lanczos5",
        "nearest",
    )

    warpingKernelName: str = param(
        "lanczos3", "Interpolation kernel for the image and variance.", choices=_KERNELS
    )
    maskWarpingKernelName: str = param(
        "bilinear", "Interpolation kernel for the mask planes.", choices=_KERNELS
    )
    interpLength: int = param(10, "Distance (pixels) over which the WCS is interpolated.", min=0)
    cacheSize: int = param(1000000, "Size of the warping-kernel cache (0 = none).", min=0)
    growFullMask: tuple[str, ...] = param(
        ("EDGE",), "Mask planes grown by the full warping kernel rather than the mask kernel."
    )


@dataclass(kw_only=True)
class BackgroundConfig(ConfigBase):
    """Background subtraction before kernel-star detection (meas_algorithms defaults)."""

    binSize: int = param(128, "Size of the background superpixels (pixels).", min=1)
    algorithm: Literal[
        "CONSTANT",
        "LINEAR",
        "NATURAL_SPLINE",
        "CUBIC_SPLINE",
        "CUBIC_SPLINE_PERIODIC",
        "AKIMA_SPLINE",
        "AKIMA_SPLINE_PERIODIC",
    ] = param("AKIMA_SPLINE", "Interpolation between superpixels.")
    statisticsProperty: Literal["MEANCLIP", "MEAN", "MEDIAN"] = param(
        "MEANCLIP", "Statistic of each superpixel."
    )
    undersampleStyle: Literal["THROW_EXCEPTION", "REDUCE_INTERP_ORDER", "INCREASE_NXNYSAMPLE"] = (
        param("REDUCE_INTERP_ORDER", "What to do with too few superpixels.")
    )
    useApprox: bool = param(True, "Fit a Chebyshev approximation instead of interpolating.")
    approxOrderX: int = param(6, "Order of the Chebyshev approximation in x.", min=0)
    approxOrderY: int = param(-1, "Order in y; -1 means the same as approxOrderX.", min=-1)
    weighting: bool = param(True, "Weight the approximation by the superpixel variance.")
    ignoredPixelMask: tuple[str, ...] = param(
        ("BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"),
        "Mask planes ignored when measuring the background.",
    )


@dataclass(kw_only=True)
class DetectionConfig(ConfigBase):
    """Kernel-candidate footprints (legacy ``PsfMatchConfig.detectionConfig``)."""

    detThreshold: float = param(10.0, "Detection threshold for kernel candidates.", min=3.0)
    detThresholdType: Literal["value", "stdev", "variance", "pixel_stdev"] = param(
        "pixel_stdev", "Units of detThreshold."
    )
    detOnTemplate: bool = param(True, "Detect candidates on the template (else the science).")
    badMaskPlanes: tuple[str, ...] = param(
        _PLANES, "Mask planes that reject a candidate if set anywhere in its stamp."
    )
    fpNpixMin: int = param(5, "Minimum number of pixels in a candidate footprint.", min=5)
    fpNpixMax: int = param(500, "Maximum footprint size; larger ones shrink to a core.", max=500)
    fpGrowKernelScaling: float = param(
        1.0, "With scaleByFwhm: stamp half-size = int(this * kernelSize + 0.5).", min=1.0
    )
    fpGrowPix: int = param(30, "Stamp half-size (pixels) when not scaleByFwhm.", min=10)
    scaleByFwhm: bool = param(True, "Scale the stamp size with the kernel size.")


@dataclass(kw_only=True)
class PsfMatchConfig(ConfigBase):
    """Settings shared by the Alard-Lupton and delta-function kernels (ip_diffim §2.3)."""

    #: The kernelBasisSet a subclass requires (None: any).
    _basis_family: ClassVar[str | None] = None

    warpingConfig: WarpingConfig = dataclasses.field(
        default_factory=WarpingConfig, metadata={"doc": "Resampling of the template."}
    )
    detectionConfig: DetectionConfig = dataclasses.field(
        default_factory=DetectionConfig, metadata={"doc": "Kernel-candidate footprints."}
    )
    afwBackgroundConfig: BackgroundConfig = dataclasses.field(
        default_factory=BackgroundConfig,
        metadata={"doc": "Background model used before detecting kernel stars."},
    )
    useAfwBackground: bool = param(False, "Subtract afwBackgroundConfig's model (unused).")
    fitForBackground: bool = param(
        False, "Fit a differential background: a constant per stamp, a polynomial in space."
    )
    kernelBasisSet: Literal["alard-lupton", "delta-function"] = param(
        "alard-lupton", "Kernel basis family."
    )
    kernelSize: int = param(
        21, "Kernel width and height (pixels); AL derives it from the FWHMs.", min=1, odd=True
    )
    scaleByFwhm: bool = param(True, "AL: derive basis sigmas and kernel size from the FWHMs.")
    kernelSizeFwhmScaling: float = param(
        6.0, "Kernel size = this times the largest basis sigma.", min=1.0
    )
    kernelSizeMin: int = param(21, "Smallest kernel size when scaling.", min=1, odd=True)
    kernelSizeMax: int = param(35, "Largest kernel size when scaling.", min=1, odd=True)
    spatialModelType: Literal["chebyshev1", "polynomial"] = param(
        "chebyshev1", "Spatial functions of the kernel coefficients and background."
    )
    spatialKernelOrder: int = param(
        2, "Polynomial order of the kernel's spatial variation.", min=0
    )
    spatialBgOrder: int = param(1, "Polynomial order of the spatial background.", min=0)
    sizeCellX: int = param(128, "SpatialCell width (pixels).", min=32)
    sizeCellY: int = param(128, "SpatialCell height (pixels).", min=32)
    nStarPerCell: int = param(
        3, "Candidates used per cell; -1 means all (ip_diffim HEAD: 5).", min=1, sentinel=-1
    )
    maxSpatialIterations: int = param(3, "Spatial fit/reject iterations.", min=1, max=5)
    usePcaForSpatialKernel: bool = param(False, "PCA-reduce the basis before the spatial fit.")
    subtractMeanForPca: bool = param(True, "Subtract the mean kernel before PCA.")
    numPrincipalComponents: int = param(
        5, "Number of PCA basis kernels, including the mean.", min=3
    )
    singleKernelClipping: bool = param(True, "Reject candidates with bad single-kernel residuals.")
    kernelSumClipping: bool = param(True, "Reject candidates whose kernel sum is an outlier.")
    spatialKernelClipping: bool = param(True, "Reject candidates badly fit by the spatial model.")
    checkConditionNumber: bool = param(
        False, "Reject candidates with cond(M) > maxConditionNumber."
    )
    badMaskPlanes: tuple[str, ...] = param(
        _PLANES, "Mask planes ignored in residual statistics and the core S/N."
    )
    candidateResidualMeanMax: float = param(
        0.25, "Largest |mean| of a candidate's difference / sigma.", min=0.0
    )
    candidateResidualStdMax: float = param(
        1.5, "Largest std of a candidate's difference / sigma.", min=0.0
    )
    useCoreStats: bool = param(False, "Residual statistics from the core box only.")
    candidateCoreRadius: int = param(3, "Core box half-size: (2r+1)^2 pixels.", min=1)
    maxKsumSigma: float = param(3.0, "Kernel-sum clipping threshold (sigma).", min=0.0)
    maxConditionNumber: float = param(
        5.0e7, "Largest candidate condition number (AL 5e7, DF 5e6).", min=0.0
    )
    conditionNumberType: Literal["SVD", "EIGENVALUE"] = param(
        "EIGENVALUE", "Condition number from singular values or eigenvalues."
    )
    maxSpatialConditionNumber: float = param(
        1.0e10, "Spatial-solution condition number above which a warning is issued.", min=0.0
    )
    iterateSingleKernel: bool = param(False, "Re-fit each candidate with the diffim variance.")
    constantVarianceWeighting: bool = param(True, "Weight each stamp by its median variance.")
    calculateKernelUncertainty: bool = param(False, "Kernel uncertainties (not implemented).")
    useBicForKernelBasis: bool = param(False, "Choose AL polynomial degrees by BIC.")

    def _check_rules(self, prefix: str) -> None:
        super()._check_rules(prefix)
        if self.kernelSizeMin > self.kernelSizeMax:
            msg = (
                f"{prefix}kernelSizeMin={self.kernelSizeMin} is larger than "
                f"{prefix}kernelSizeMax={self.kernelSizeMax}; lower one or raise the other"
            )
            raise DiffimConfigError(msg)
        family = self._basis_family
        if family is not None and self.kernelBasisSet != family:
            msg = (
                f"{prefix}kernelBasisSet={self.kernelBasisSet!r} but {type(self).__name__} "
                f"builds {family!r} kernels; select the other family with kernel.name"
            )
            raise DiffimConfigError(msg)


@dataclass(kw_only=True)
class PsfMatchConfigAL(PsfMatchConfig):
    """Alard-Lupton basis: Gaussians times polynomials (ip_diffim §2.4)."""

    _basis_family: ClassVar[str | None] = "alard-lupton"

    kernelBasisSet: Literal["alard-lupton", "delta-function"] = _redefault(
        PsfMatchConfig, "kernelBasisSet", default="alard-lupton"
    )
    maxConditionNumber: float = _redefault(PsfMatchConfig, "maxConditionNumber", default=5.0e7)
    alardNGauss: int = param(3, "Number of Gaussians.", min=1)
    alardDegGauss: tuple[int, ...] = param(
        (4, 2, 2), "Polynomial degree of each Gaussian.", min=0, length_of="alardNGauss"
    )
    alardSigGauss: tuple[float, ...] = param(
        (0.7, 1.5, 3.0),
        "Gaussian sigmas (pixels) when not scaling by FWHM.",
        gt=0.0,
        length_of="alardNGauss",
    )
    alardGaussBeta: float = param(2.0, "Ratio of successive sigmas when scaling.", gt=0.0)
    alardMinSig: float = param(0.7, "Smallest sigma (pixels) when convolving.", min=0.25)
    alardDegGaussDeconv: int = param(3, "Legacy deconvolution degree (unused).", min=1)
    alardMinSigDeconv: float = param(0.4, "Smallest sigma (pixels) when deconvolving.", min=0.25)
    alardNGaussDeconv: int = param(3, "Legacy deconvolution Gaussians (unused).", min=1)


@dataclass(kw_only=True)
class PsfMatchConfigDF(PsfMatchConfig):
    """Delta-function basis, optionally regularised (ip_diffim §2.5)."""

    _basis_family: ClassVar[str | None] = "delta-function"

    kernelBasisSet: Literal["alard-lupton", "delta-function"] = _redefault(
        PsfMatchConfig, "kernelBasisSet", default="delta-function"
    )
    maxConditionNumber: float = _redefault(PsfMatchConfig, "maxConditionNumber", default=5.0e6)
    usePcaForSpatialKernel: bool = _redefault(
        PsfMatchConfig, "usePcaForSpatialKernel", default=True
    )
    subtractMeanForPca: bool = _redefault(PsfMatchConfig, "subtractMeanForPca", default=True)
    useBicForKernelBasis: bool = _redefault(PsfMatchConfig, "useBicForKernelBasis", default=False)
    useRegularization: bool = param(True, "Add lambda * H to each candidate's normal matrix.")
    regularizationType: Literal["centralDifference", "forwardDifference"] = param(
        "centralDifference", "Form of the regularization matrix H."
    )
    centralRegularizationStencil: Literal[5, 9] = param(9, "Laplacian stencil: 5 or 9 points.")
    forwardRegularizationOrders: tuple[int, ...] = param(
        (1, 2), "Forward-difference orders penalised (each 1..3).", min=1, max=3
    )
    regularizationBorderPenalty: float = param(
        3.0, "Penalty on the kernel's border pixels.", min=0.0
    )
    lambdaType: Literal["absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk"] = (
        param("absolute", "How the regularization strength lambda is chosen.")
    )
    lambdaValue: float = param(0.2, "Lambda for lambdaType='absolute'.")
    lambdaScaling: float = param(1e-4, "Lambda = this * tr(M)/tr(H) for lambdaType='relative'.")
    lambdaStepType: Literal["log", "linear"] = param("log", "Lambda scan spacing.")
    lambdaMin: float = param(-1.0, "Lambda scan start (log10 for 'log').")
    lambdaMax: float = param(2.0, "Lambda scan end (log10 for 'log').")
    lambdaStep: float = param(0.1, "Lambda scan step (log10 for 'log').", gt=0.0)

    def _check_rules(self, prefix: str) -> None:
        super()._check_rules(prefix)
        if self.lambdaMin > self.lambdaMax:
            msg = f"{prefix}lambdaMin={self.lambdaMin} is above {prefix}lambdaMax={self.lambdaMax}"
            raise DiffimConfigError(msg)
        if self.regularizationType == "forwardDifference" and not (
            self.forwardRegularizationOrders
        ):
            msg = f"{prefix}forwardRegularizationOrders is empty; give orders among 1, 2, 3"
            raise DiffimConfigError(msg)


@dataclass(kw_only=True)
class KernelChoice(ConfigBase):
    """Both kernel configs and which one is active (``config.kernel.name = "DF"``).

    Unlike the bare `PsfMatchConfig` (whose ``fitForBackground`` default is ip_diffim's
    legacy ``False``, for sky-subtracted inputs), the kernels of an `ImagePsfMatchConfig`
    fit a differential background by default, as ip_diffim's newer AlardLuptonSubtractTask
    does: images that still contain sky, or sky residuals, then subtract cleanly.
    """

    name: Literal["AL", "DF"] = param("AL", "Active kernel family: AL or DF.")
    AL: PsfMatchConfigAL = dataclasses.field(
        default_factory=lambda: PsfMatchConfigAL(fitForBackground=True),
        metadata={"doc": "Alard-Lupton kernel settings."},
    )
    DF: PsfMatchConfigDF = dataclasses.field(
        default_factory=lambda: PsfMatchConfigDF(fitForBackground=True),
        metadata={"doc": "Delta-function kernel settings."},
    )

    @property
    def active(self) -> PsfMatchConfigAL | PsfMatchConfigDF:
        """The selected kernel config, ``self.AL`` or ``self.DF``."""
        return self[self.name]

    def __getitem__(self, name: str) -> PsfMatchConfigAL | PsfMatchConfigDF:
        if name == "AL":
            return self.AL
        if name == "DF":
            return self.DF
        msg = f"kernel choice {name!r} is not 'AL' or 'DF'"
        raise DiffimConfigError(msg)


@dataclass(kw_only=True)
class ImagePsfMatchConfig(ConfigBase):
    """Configuration of ``ImagePsfMatchTask``.

    Bare field names in `apply_overrides` that are not fields of this class resolve to
    ``kernel.active``, so ``kernelSize=25`` sets the active kernel's size.
    """

    kernel: KernelChoice = dataclasses.field(
        default_factory=KernelChoice,
        metadata={"doc": "Kernel family (kernel.name) and its settings."},
    )
    mode: Literal["convolveTemplate", "convolveScience", "auto"] = param(
        "auto", "Which image is convolved; auto convolves the one with the narrower PSF."
    )
    selectDetectionThreshold: float = param(
        10.0, "Detection threshold of kernel stars (sigma of the background noise).", gt=0.0
    )
    selectMinSnr: float = param(10.0, "Smallest S/N of a kernel star.", min=0.0)
    selectMaxSnr: float = param(
        1000.0,
        "Largest S/N of a kernel star; brighter stars have residuals dominated by PSF-model "
        "errors and fail residual clipping (saturation is checked separately).",
        gt=0.0,
    )
    selectSaturationFraction: float = param(
        0.8, "Reject stars whose peak exceeds this fraction of the saturation level.", gt=0, max=1
    )

    def _check_rules(self, prefix: str) -> None:
        super()._check_rules(prefix)
        if self.selectMinSnr >= self.selectMaxSnr:
            msg = (
                f"{prefix}selectMinSnr={self.selectMinSnr} must be below "
                f"{prefix}selectMaxSnr={self.selectMaxSnr}"
            )
            raise DiffimConfigError(msg)

    @classmethod
    def _placement_hint(cls, key: str) -> str:
        if key in _specs(PsfMatchConfigAL) or key in _specs(PsfMatchConfigDF):
            return f"{key} is a kernel field: write it under kernel.AL or kernel.DF"
        return ""

    def _resolve(self, key: str) -> tuple[ConfigBase, _FieldSpec]:
        head = key.split(".", 1)[0]
        if head in _specs(type(self)):
            return super()._resolve(key)
        if head in _specs(type(self.kernel.active)):
            return super()._resolve("kernel.active." + key)
        candidates = [*_specs(type(self)), *_specs(type(self.kernel.active))]
        raise _unknown_field(key, candidates, "ImagePsfMatchConfig or kernel.active")
