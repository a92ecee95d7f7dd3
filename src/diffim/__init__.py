"""diffim: PSF-matched difference imaging in the Alard-Lupton tradition.

>>> import diffim
>>> result = diffim.subtract("science.fits", "template.fits")  # doctest: +SKIP
>>> result.subtractedExposure  # doctest: +SKIP
"""

import logging

from ._version import __version__
from .config import ImagePsfMatchConfig, PsfMatchConfigAL, PsfMatchConfigDF
from .errors import (
    DiffimError,
    DiffimValueError,
    InsufficientKernelSourcesError,
    NoKernelCandidatesError,
)
from .image import BBox, Exposure, MaskedImage, MaskPlanes
from .io import from_ccddata, read_exposure, to_ccddata, write_exposure
from .simulate import simulate_pair
from .task import ImagePsfMatchTask, subtract

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

logging.getLogger("diffim").addHandler(logging.NullHandler())
