"""diffim: PSF-matched difference imaging in the Alard-Lupton tradition."""

import logging

from .errors import (
    DiffimError,
    DiffimValueError,
    InsufficientKernelSourcesError,
    NoKernelCandidatesError,
)
from .image import BBox, Exposure, MaskedImage, MaskPlanes

from ._version import __version__

__all__ = [
    "BBox",
    "DiffimError",
    "DiffimValueError",
    "Exposure",
    "InsufficientKernelSourcesError",
    "MaskPlanes",
    "MaskedImage",
    "NoKernelCandidatesError",
    "__version__",
]

logging.getLogger("diffim").addHandler(logging.NullHandler())
