"""diffim: PSF-matched difference imaging in the Alard-Lupton tradition.

>>> import diffim
>>> result = diffim.subtract("science.fits", "template.fits")  # doctest: +SKIP
>>> result.subtractedExposure  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that ``import diffim`` and the
``diffim`` command load only the modules they need: the FITS reader, the simulator and the
Task each pull in a different part of astropy and scipy.
"""

import logging
from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__
from .errors import (
    DiffimError,
    DiffimValueError,
    InsufficientKernelSourcesError,
    NoKernelCandidatesError,
)

if TYPE_CHECKING:
    from .config import ImagePsfMatchConfig, PsfMatchConfigAL, PsfMatchConfigDF
    from .image import BBox, Exposure, MaskedImage, MaskPlanes
    from .io import from_ccddata, read_exposure, to_ccddata, write_exposure
    from .simulate import simulate_pair
    from .subtraction import subtract
    from .task import ImagePsfMatchTask

__all__ = [
    "BBox",
    "DiffimError",
    "DiffimValueError",
    "Exposure",
    "ImagePsfMatchConfig",
    "ImagePsfMatchTask",
    "InsufficientKernelSourcesError",
    "MaskPlanes",
    "MaskedImage",
    "NoKernelCandidatesError",
    "PsfMatchConfigAL",
    "PsfMatchConfigDF",
    "__version__",
    "from_ccddata",
    "read_exposure",
    "simulate_pair",
    "subtract",
    "to_ccddata",
    "write_exposure",
]

#: Public name -> the submodule that defines it, imported on first access.
_LAZY_NAMES = {
    "ImagePsfMatchConfig": "config",
    "PsfMatchConfigAL": "config",
    "PsfMatchConfigDF": "config",
    "BBox": "image",
    "Exposure": "image",
    "MaskedImage": "image",
    "MaskPlanes": "image",
    "from_ccddata": "io",
    "read_exposure": "io",
    "to_ccddata": "io",
    "write_exposure": "io",
    "simulate_pair": "simulate",
    "ImagePsfMatchTask": "task",
    "subtract": "subtraction",
}
#: Submodules reachable as attributes (``diffim.io``) without an explicit import.
_SUBMODULES = frozenset(
    {
        "basis",
        "batch",
        "candidates",
        "cli",
        "config",
        "convolve",
        "decorrelate",
        "diagnostics",
        "errors",
        "fit",
        "fitswcs",
        "fwhm",
        "image",
        "io",
        "progress",
        "psf",
        "results",
        "simulate",
        "solve",
        "sources",
        "spatial",
        "stars",
        "stats",
        "subtraction",
        "task",
        "warp",
    }
)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, _SUBMODULES)


logging.getLogger("diffim").addHandler(logging.NullHandler())
