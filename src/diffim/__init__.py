"""diffim: PSF-matched difference imaging in the Alard-Lupton tradition."""

import logging

from .errors import (
    DiffimError,
    DiffimValueError,
    InsufficientKernelSourcesError,
    NoKernelCandidatesError,
)
from .image import BBox, Exposure, MaskedImage, MaskPlanes

__version__ = "0.1.0"

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
