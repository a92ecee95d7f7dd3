"""The PSF widths and stars a subtraction starts from: one detection of the science image.

`pair_fwhm` measures both images' FWHMs from a single sep detection of the science image
(the template's is fitted at the science stars), and that detection also gives the kernel
stars.  `ImagePsfMatchTask.pair_fwhm` and `ImagePsfMatchTask.detect_kernel_sources` call
these functions with the task's config.  The detections travel as a `SourceCatalog`
(`_detect_kernel_sources`), so that a subtraction never imports astropy.table; the public
`detect_kernel_sources` returns them as an astropy Table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ImagePsfMatchConfig
from .errors import InsufficientKernelSourcesError
from .fwhm import FIT_STAMP_FWHM, measure_fwhm, measure_fwhm_forced
from .image import Exposure
from .sources import FWHM_PER_SIGMA, _detect_sources, _select_kernel_sources

if TYPE_CHECKING:  # astropy.table costs ~0.1 s to import
    from astropy.table import Table

    from .catalog import SourceCatalog

__all__ = [
    "PairFwhm",
    "detect_kernel_sources",
    "exposure_fwhm",
    "pair_fwhm",
    "select_bad_bits",
]


@dataclass(frozen=True, slots=True)
class PairFwhm:
    """What `pair_fwhm` returns.

    Attributes
    ----------
    template_fwhm_pix, science_fwhm_pix : float
        PSF FWHMs in pixels.
    science_detections : SourceCatalog, astropy.table.Table or None
        The science image's `detect_kernel_sources` table (the one given to `pair_fwhm`,
        else a `SourceCatalog` of the same columns), to select the kernel stars from;
        None when no detection was needed.
    """

    template_fwhm_pix: float
    science_fwhm_pix: float
    science_detections: SourceCatalog | Table | None = None


def select_bad_bits(exposure: Exposure, config: ImagePsfMatchConfig) -> int:
    """Mask bits that exclude pixels from kernel-star detection and stamps."""
    planes = config.kernel.active.detectionConfig.badMaskPlanes
    return exposure.masked_image.bitmask([*planes, "BAD", "CR"])


def detect_kernel_sources(
    exposure: Exposure,
    config: ImagePsfMatchConfig,
    sigma: float | None = None,
    do_smooth: bool = True,
) -> Table:
    """Detect the sources `ImagePsfMatchTask.getSelectSources` selects kernel stars from.

    The threshold is the config's ``selectDetectionThreshold``; the matched filter is a Gaussian of
    ``sigma`` pixels, else of the exposure's PSF FWHM, else sep's 3x3 kernel (and none
    of these when ``do_smooth`` is False).  The same table also serves to measure the
    FWHM of an exposure without a PSF model (`exposure_fwhm`), so that a subtraction
    detects on the science image only once.

    Returns
    -------
    astropy.table.Table
        A `diffim.sources.detect_sources` table (parent pixels).
    """
    return _detect_kernel_sources(exposure, config, sigma, do_smooth).to_table()


def _detect_kernel_sources(
    exposure: Exposure,
    config: ImagePsfMatchConfig,
    sigma: float | None = None,
    do_smooth: bool = True,
) -> SourceCatalog:
    """Return `detect_kernel_sources`'s table as a `SourceCatalog` (same parameters)."""
    fwhm = None
    if do_smooth:
        fwhm = sigma * FWHM_PER_SIGMA if sigma is not None else None
        if fwhm is None and exposure.psf is not None:
            fwhm = float(exposure.psf.fwhm(*exposure.bbox.center))
    return _detect_sources(
        exposure.masked_image,
        threshold_sigma=config.selectDetectionThreshold,
        fwhm_pix=fwhm,
        bad_mask_bits=select_bad_bits(exposure, config),
    )


def pair_fwhm(
    template: Exposure,
    science: Exposure,
    config: ImagePsfMatchConfig,
    log: logging.Logger,
    *,
    template_fwhm_pix: float | None = None,
    science_fwhm_pix: float | None = None,
    science_detections: SourceCatalog | Table | None = None,
    select_stars: bool = True,
) -> PairFwhm:
    """Return the template and science FWHMs, detecting at most the science image.

    A FWHM not given is that of the exposure's PSF model, or is measured from stars:
    the science image is detected once (`detect_kernel_sources`, unless
    ``science_detections`` is given), and that table serves its FWHM, the kernel stars
    (when ``select_stars``) and the template FWHM, measured at the science stars on the
    registered template.  A template detection is made only when those fail.

    Parameters
    ----------
    template, science : Exposure
        The template, registered to the science pixel grid, and the science image.
    config : ImagePsfMatchConfig
        Detection threshold and bad mask planes.
    log : logging.Logger
        Where to report measured FWHMs.
    template_fwhm_pix, science_fwhm_pix : float, optional
        Known FWHMs (pixels).
    science_detections : SourceCatalog or astropy.table.Table, optional
        The science image's `detect_kernel_sources` table, if made already.
    select_stars : bool
        Whether kernel stars will be selected on the science image: the detection
        that needs is then made even when its FWHM is known.

    Returns
    -------
    PairFwhm
    """
    detections = science_detections
    science_needs = science_fwhm_pix is None and science.psf is None
    template_needs = template_fwhm_pix is None and template.psf is None
    if detections is None and (science_needs or (template_needs and select_stars)):
        detections = _detect_kernel_sources(science, config)
    fwhm_science = science_fwhm_pix
    if fwhm_science is None:
        fwhm_science = exposure_fwhm(science, "science", log, detections=detections)
    fwhm_template = template_fwhm_pix
    if fwhm_template is None:
        stars = None
        if template_needs and detections is not None:
            stars = _select_kernel_sources(
                science.masked_image,
                stamp_half_width=math.ceil(FIT_STAMP_FWHM * fwhm_science),
                saturation=science.saturation,
                bad_mask_bits=detections.meta.get("bad_mask_bits"),
                detections=detections,
            )
        fwhm_template = exposure_fwhm(
            template, "template", log, stars=stars, fwhm_guess=fwhm_science
        )
    return PairFwhm(fwhm_template, fwhm_science, detections)


def exposure_fwhm(
    exposure: Exposure,
    name: str,
    log: logging.Logger,
    *,
    detections: SourceCatalog | Table | None = None,
    stars: SourceCatalog | Table | None = None,
    fwhm_guess: float | None = None,
) -> float:
    """FWHM (pixels) of an exposure's PSF at its centre, measured from stars if it has none.

    Parameters
    ----------
    exposure : Exposure
        The image; its PSF model is used when it has one.
    name : str
        What to call the image in the log.
    log : logging.Logger
        Where to report a measured FWHM.
    detections : SourceCatalog or astropy.table.Table, optional
        A `diffim.sources.detect_sources` table of this exposure (such as
        `detect_kernel_sources` gives) to measure from instead of
        detecting again.
    stars, fwhm_guess : optional
        Stars found on another image of the same pixel grid (e.g. the science stars, for the
        warped template) and that image's FWHM (pixels): the FWHM is then measured at their
        positions (`diffim.fwhm.measure_fwhm_forced`), without a detection.

    Either way, should too few stars give a profile fit, the exposure is detected again
    at `measure_fwhm`'s own threshold.

    Raises
    ------
    InsufficientKernelSourcesError
        If the exposure has no PSF model and fewer than 3 stars can be fitted.
    """
    if exposure.psf is not None:
        return float(exposure.psf.fwhm(*exposure.bbox.center))
    image, saturation = exposure.masked_image, exposure.saturation
    attempts = []
    if stars is not None and fwhm_guess is not None:
        options = {"sources": stars, "fwhm_pix": fwhm_guess}
        attempts.append(("at the other image's stars", measure_fwhm_forced, options))
    if detections is not None:
        attempts.append(("from its stars", measure_fwhm, {"detections": detections}))
    for how, measure, options in attempts:
        try:
            fwhm = measure(image, saturation=saturation, **options)
        except InsufficientKernelSourcesError as error:
            log.info("%s: %s; trying another way to measure the FWHM", name, error)
        else:
            log.info("%s has no PSF model; FWHM measured %s: %.2f px", name, how, fwhm)
            return fwhm
    fwhm = measure_fwhm(image, saturation=saturation)
    log.info("%s has no PSF model; FWHM measured from its stars: %.2f px", name, fwhm)
    return fwhm
