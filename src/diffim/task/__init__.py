"""`ImagePsfMatchTask`: PSF-match a template to a science image and subtract (Alard-Lupton).

The public methods keep ip_diffim's names and arguments (``matchMaskedImages``,
``subtractMaskedImages``, ...); results are returned by name in frozen dataclasses whose
fields are ip_diffim's (``matchedImage``, ``psfMatchingKernel``, ``backgroundModel``,
``kernelCellSet``, ``subtractedMaskedImage``).

Modules: `.image_psf_match` (the task), `.kernel_stars` (its kernel-star methods),
`.cell_set` (candidate positions, image checks, stamps and their cell set),
`.fit_settings` (spatial orders, fit settings, regularization, BIC choice of the basis) and
`.qa` (kernel checks and result metadata).
"""

from ..results import (
    ExposureMatchResult,
    ExposureSubtractResult,
    MatchResult,
    SubtractResult,
)
from ..stars import PairFwhm, exposure_fwhm
from .cell_set import DF_STAMP_KERNEL_HALF_WIDTHS as DF_STAMP_KERNEL_HALF_WIDTHS
from .cell_set import MIN_PIXELS_PER_PARAMETER as MIN_PIXELS_PER_PARAMETER
from .fit_settings import CANDIDATES_PER_SPATIAL_TERM as CANDIDATES_PER_SPATIAL_TERM
from .image_psf_match import ImagePsfMatchTask
from .kernel_stars import MIN_ISOLATED_SOURCES as MIN_ISOLATED_SOURCES
from .qa import KERNEL_SUM_GRID as KERNEL_SUM_GRID

__all__ = [
    "ExposureMatchResult",
    "ExposureSubtractResult",
    "ImagePsfMatchTask",
    "MatchResult",
    "PairFwhm",
    "SubtractResult",
    "exposure_fwhm",
]
