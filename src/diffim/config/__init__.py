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

The package is split by concept: `fields` (`param` and the checks of one value), `formats`
(override values, YAML and TOML text, file suffixes), `base` (`ConfigBase`: the schema of a
config class, validation, dict/YAML/TOML round trips and overrides), `psf_match`
(`PsfMatchConfig`, `PsfMatchConfigAL`, `PsfMatchConfigDF` and their `WarpingConfig`,
`DetectionConfig` and `BackgroundConfig`) and `image_psf_match` (`ImagePsfMatchConfig`,
`KernelChoice`, `config_documentation`). Every public name is re-exported here: import
from ``diffim.config``.
"""

from .base import ConfigBase
from .fields import CHECKS, param  # noqa: F401 - CHECKS: a constant of diffim.config, not in __all__
from .image_psf_match import ImagePsfMatchConfig, KernelChoice, config_documentation
from .psf_match import (
    BackgroundConfig,
    DetectionConfig,
    PsfMatchConfig,
    PsfMatchConfigAL,
    PsfMatchConfigDF,
    WarpingConfig,
)

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
