"""`diffim.subtract`: one call from two images (paths, exposures, masked images) to a
difference.

It adds to `ImagePsfMatchTask` what a user of the whole pipeline needs: reading the inputs,
registering the template, measuring both FWHMs once (`diffim.stars`), choosing which image
to convolve (`choose_convolve_template`) and, on request, decorrelating the difference.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ImagePsfMatchConfig
from .errors import DiffimValueError
from .image import Exposure, MaskedImage
from .results import ExposureSubtractResult
from .stats import clipped_mean_std, difference_statistics
from .task import ImagePsfMatchTask

if TYPE_CHECKING:
    from astropy.table import Table

    from .catalog import SourceCatalog
    from .psf import ImagePsf

__all__ = ["as_exposure", "choose_convolve_template", "subtract"]


def choose_convolve_template(mode: str, template_fwhm: float, science_fwhm: float) -> bool:
    """Return True when the template is the image to convolve.

    Parameters
    ----------
    mode : {"auto", "convolveTemplate", "convolveScience"}
        ``auto`` convolves the image with the narrower PSF, so that the kernel never has to
        deconvolve.
    template_fwhm, science_fwhm : float
        PSF FWHMs in pixels.
    """
    if mode == "auto":
        return template_fwhm <= science_fwhm
    return mode == "convolveTemplate"


def as_exposure(image: Any, name: str) -> Exposure:
    """Accept an Exposure, a MaskedImage, an astropy CCDData or a FITS path."""
    from .io import from_ccddata, read_exposure

    if isinstance(image, Exposure):
        return image
    if isinstance(image, MaskedImage):
        return Exposure(image)
    if type(image).__name__ == "CCDData":
        return from_ccddata(image)
    if isinstance(image, str | os.PathLike):
        return read_exposure(image)
    msg = (
        f"the {name} must be a FITS path, an Exposure, a MaskedImage or a CCDData, "
        f"got {type(image).__name__}"
    )
    raise DiffimValueError(msg)


def subtract(
    science: Any,
    template: Any,
    *,
    config: ImagePsfMatchConfig | None = None,
    mode: str | None = None,
    candidateList: Any = None,
    decorrelate: bool = False,
    warp: bool = True,
    keep_matched: bool = True,
    overwrite_science: bool = False,
    science_detections: SourceCatalog | Table | None = None,
    **overrides: Any,
) -> ExposureSubtractResult:
    """Subtract ``template`` from ``science`` in one call.

    Parameters
    ----------
    science, template : str, os.PathLike, Exposure, MaskedImage or astropy.nddata.CCDData
        The two images; paths are read with `diffim.io.read_exposure`.
    config : ImagePsfMatchConfig, optional
        Base configuration (defaults if omitted).
    mode : {"auto", "convolveTemplate", "convolveScience"}, optional
        Which image to convolve; the config's ``mode`` (``auto``) if omitted.
    candidateList : optional
        Kernel star positions (parent pixels); selected on the science image if omitted.
    warp : bool
        Resample the template onto the science grid when their WCSs differ; if False such
        a pair raises `NotRegisteredError`.
    decorrelate : bool
        Whiten the difference's noise, correlated by the convolution (Alard-Lupton
        afterburner, `diffim.decorrelate.decorrelate_difference`); the variance plane is
        updated and ``DECORR`` is set in the metadata.
    keep_matched : bool
        Keep the PSF-matched image in the result; False computes the difference in its
        planes instead, saving one image of memory (see
        `ImagePsfMatchTask.subtractExposures`).
    overwrite_science : bool
        With ``keep_matched=False``, compute the difference in the science image's own
        planes, overwriting them: no matched image is allocated at all (see
        `ImagePsfMatchTask.subtractExposures`).  Ignored with ``decorrelate``, which needs
        the science variance, and when the science image is convolved.
    science_detections : SourceCatalog or astropy.table.Table, optional
        The science image's `ImagePsfMatchTask.detect_kernel_sources` table, if already
        made (the command line detects before it reads the template, which lowers its
        peak memory); detected here otherwise.
    **overrides
        Configuration fields, e.g. ``kernelSize=25, spatialKernelOrder=1``.

    Returns
    -------
    ExposureSubtractResult
        ``result.subtractedExposure`` is science minus template in science units.

    Examples
    --------
    >>> import diffim
    >>> result = diffim.subtract("science.fits", "template.fits", spatialKernelOrder=1)
    ... # doctest: +SKIP
    """
    config = ImagePsfMatchConfig() if config is None else copy.deepcopy(config)
    if overrides:
        config.apply_overrides([f"{key}={value!r}" for key, value in overrides.items()])
    science_exposure = as_exposure(science, "science")
    template_exposure = as_exposure(template, "template")
    task = ImagePsfMatchTask(config)
    log = task.log
    warped = task.registered_template(template_exposure, science_exposure, do_warping=warp)
    fwhm = task.pair_fwhm(
        warped,
        science_exposure,
        science_detections=science_detections,
        select_stars=candidateList is None,
    )
    template_fwhm, science_fwhm = fwhm.template_fwhm_pix, fwhm.science_fwhm_pix
    convolve_template = choose_convolve_template(mode or config.mode, template_fwhm, science_fwhm)
    log.info(
        "FWHM template %.2f px, science %.2f px: convolving the %s",
        template_fwhm,
        science_fwhm,
        "template" if convolve_template else "science image",
    )
    result = task.subtractExposures(
        warped,
        science_exposure,
        templateFwhmPix=template_fwhm,
        scienceFwhmPix=science_fwhm,
        candidateList=candidateList,
        convolveTemplate=convolve_template,
        scienceDetections=fwhm.science_detections,
        keep_matched=keep_matched,
        overwrite_science=overwrite_science and not decorrelate,
    )
    if decorrelate:
        _decorrelate(result, science_exposure, config.kernel.active.badMaskPlanes)
    return result


def _decorrelated_psf(psf: Any, result: ExposureSubtractResult, science: Exposure) -> ImagePsf:
    """The PSF of a decorrelated difference: the difference's PSF convolved with ``φ``."""
    from scipy.ndimage import convolve as convolve_image

    from .decorrelate import decorrelation_kernel
    from .psf import ImagePsf

    center = result.subtractedExposure.bbox.center
    planes = [science.masked_image, result.warpedExposure.masked_image]
    if not result.convolveTemplate:
        planes.reverse()
    unconvolved, convolved = (
        clipped_mean_std(plane.variance[np.isfinite(plane.variance) & (plane.mask == 0)])[0]
        for plane in planes
    )
    psf_image = psf.kernel_image(*center)
    phi = decorrelation_kernel(
        result.psfMatchingKernel.image_at(*center),
        variance_unconvolved=unconvolved,
        variance_convolved=convolved,
        size=psf_image.shape[0],
    )
    image = convolve_image(psf_image, phi, mode="constant")
    return ImagePsf(image / image.sum())


def _decorrelate(
    result: ExposureSubtractResult, science: Exposure, bad_mask_planes: Iterable[str]
) -> None:
    """Replace the result's difference by its decorrelated version (in place)."""
    from .decorrelate import decorrelate_difference

    exposure = result.subtractedExposure
    kernel_sum = None
    if not result.convolveTemplate:
        kernel_sum = result.psfMatchingKernel.sum_image(exposure.bbox)
    exposure.masked_image = decorrelate_difference(
        exposure.masked_image,
        result.psfMatchingKernel,
        science_variance=science.masked_image,
        template_variance=result.warpedExposure.masked_image,
        template_matched=result.convolveTemplate,
        kernel_sum=kernel_sum,
    )
    exposure.psf = _decorrelated_psf(exposure.psf, result, science)
    exposure.metadata["DECORR"] = True
    result.metadata["DECORR"] = True
    result.metadata.update(difference_statistics(exposure.masked_image, bad_mask_planes))
    exposure.metadata.update(
        {key: result.metadata[key] for key in ("diffimResidualMedian", "diffimResidualRobustStd")}
    )
