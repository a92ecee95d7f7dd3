"""The top-level config: `ImagePsfMatchConfig`, its `KernelChoice`, and `config_documentation`.

`KernelChoice` holds both kernel configs and the name of the active one;
`ImagePsfMatchConfig` adds the task's own fields (mode and kernel-star selection) and
resolves bare kernel field names in overrides to the active kernel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..errors import DiffimConfigError
from .base import ConfigBase, _FieldSpec, _specs
from .fields import _unknown_field, param
from .psf_match import PsfMatchConfigAL, PsfMatchConfigDF


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


def config_documentation(config: ConfigBase | None = None) -> str:
    """Return commented YAML of ``config`` (default: ``ImagePsfMatchConfig()``).

    This is the text ``diffim config`` prints; it loads back to an equal config.
    """
    return (ImagePsfMatchConfig() if config is None else config).describe()
