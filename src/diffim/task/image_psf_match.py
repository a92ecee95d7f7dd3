"""`ImagePsfMatchTask`: PSF-match a template to a science image and subtract (Alard-Lupton).

The task validates its inputs and config, builds the kernel candidates (`.cell_set`),
sets up and runs the core fit (`.fit_settings`, `diffim.fit`), checks the kernel and
assembles the results and their metadata (`.qa`).  Its kernel-star methods
(``getSelectSources``, ``makeCandidateList``, ...) are inherited from `.kernel_stars`.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..basis import BasisList, make_kernel_basis
from ..config import ImagePsfMatchConfig
from ..convolve import convolve_masked_image
from ..errors import DeconvolutionWarning, DiffimValueError, NotRegisteredError
from ..fit import fit_spatial_kernel
from ..image import Exposure, MaskedImage
from ..results import (
    ExposureMatchResult,
    ExposureSubtractResult,
    MatchResult,
    SubtractResult,
    extended,
)
from ..stats import difference_statistics
from .cell_set import _build_cell_set, _check_usable, _n_fit_parameters, _positions, _sanitize
from .fit_settings import _bic_basis, _fit_settings, _regularization
from .kernel_stars import _KernelStarMethods
from .qa import _diagnose, _flatten, _kernel_sums_on_grid, _metadata

if TYPE_CHECKING:  # imported where used: astropy.table, the PSF models and warping are slow
    from astropy.table import Table

    from ..catalog import SourceCatalog


class ImagePsfMatchTask(_KernelStarMethods):
    """Match the PSF of a template image to that of a science image, and subtract.

    Parameters
    ----------
    config : ImagePsfMatchConfig, optional
        Settings; validated and deep-copied (later changes to the caller's object do not
        affect the task).

    Examples
    --------
    >>> from diffim.config import ImagePsfMatchConfig
    >>> config = ImagePsfMatchConfig()
    >>> config.kernel.active.spatialKernelOrder = 1
    >>> task = ImagePsfMatchTask(config)
    """

    ConfigClass = ImagePsfMatchConfig

    def __init__(self, config: ImagePsfMatchConfig | None = None) -> None:
        config = ImagePsfMatchConfig() if config is None else copy.deepcopy(config)
        config.validate()
        self.config = config
        self.log = logging.getLogger("diffim.task")

    # -- building blocks ------------------------------------------------------------------
    def makeKernelBasisList(
        self, targetFwhmPix: float | None = None, referenceFwhmPix: float | None = None
    ) -> BasisList:
        """Return the kernel basis for PSFs of the given FWHMs (pixels), spec §1.9."""
        basis = make_kernel_basis(self.config.kernel.active, targetFwhmPix, referenceFwhmPix)
        self.log.info(
            "kernel basis: %d kernels of %d px (%s mode)",
            len(basis.kernels),
            basis.kernel_size,
            basis.mode,
        )
        return basis

    # -- public API -----------------------------------------------------------------------
    def matchMaskedImages(
        self,
        templateMaskedImage: MaskedImage,
        scienceMaskedImage: MaskedImage,
        candidateList: Iterable[Any],
        templateFwhmPix: float | None = None,
        scienceFwhmPix: float | None = None,
        *,
        subtract_from: MaskedImage | None = None,
    ) -> MatchResult:
        """PSF-match the template to the science image (spec §1.4).

        Parameters
        ----------
        templateMaskedImage : MaskedImage
            Image to convolve; same box as the science image.
        scienceMaskedImage : MaskedImage
            Image to match to.
        candidateList : table or sequence
            Kernel star positions in parent pixels: an astropy Table or `SourceCatalog`
            with ``x``/``y`` columns, a list of ``(x, y)`` pairs, or a list of dicts with
            ``"x"``, ``"y"``.
        templateFwhmPix, scienceFwhmPix : float, optional
            PSF FWHMs in pixels, used to size the Alard-Lupton basis; the config's sigmas
            and ``kernelSize`` are used when either is missing.
        subtract_from : MaskedImage, optional
            An image of the same box (the science image, when it is no longer needed)
            that receives ``subtract_from - T ⋆ K`` in its own planes
            (`diffim.convolve.convolve_masked_image`); the result's ``matchedImage`` is
            then None.  No matched image is allocated: 48 MiB less for 2048² float32.

        Returns
        -------
        MatchResult

        Raises
        ------
        DiffimValueError
            Empty candidate list, images of different boxes, unusable pixels.
        InsufficientKernelSourcesError
            No position gives a usable stamp.
        NoKernelCandidatesError
            The fitting stages rejected every candidate.
        """
        started = time.perf_counter()
        positions = _positions(candidateList if candidateList is not None else [])
        if len(positions) == 0:
            msg = "candidate list is empty: give kernel star positions (x, y)"
            raise DiffimValueError(msg)
        if templateMaskedImage.bbox != scienceMaskedImage.bbox:
            msg = (
                f"input images have different boxes: template {templateMaskedImage.bbox}, "
                f"science {scienceMaskedImage.bbox}; warp or crop them onto one pixel grid"
            )
            raise DiffimValueError(msg)
        template = _sanitize(templateMaskedImage, "template")
        science = _sanitize(scienceMaskedImage, "science")
        for masked_image, name in ((template, "template"), (science, "science")):
            _check_usable(masked_image, name, masked_image.bitmask(["NO_DATA"]))
        cfg = self.config.kernel.active
        basis = self.makeKernelBasisList(templateFwhmPix, scienceFwhmPix)
        half_width = self.stamp_half_width(basis.kernel_size)
        n_parameters = _n_fit_parameters(cfg)
        cell_set, dropped = _build_cell_set(
            cfg, template, science, positions, basis.kernel_size, half_width, n_parameters
        )
        if cfg.useBicForKernelBasis:
            stamps = (template, science, positions, half_width, n_parameters)
            basis = _bic_basis(cfg, basis, stamps, templateFwhmPix, scienceFwhmPix)
        self.log.info("%d kernel candidates in %d cells", len(cell_set), len(cell_set.cells))
        timings = {"candidates": time.perf_counter() - started}
        settings = _fit_settings(cfg, science, len(cell_set))
        fit = fit_spatial_kernel(cell_set, basis.kernels, settings, _regularization(cfg))
        sums = _kernel_sums_on_grid(fit.solution.kernel, cell_set.bbox)
        _diagnose(fit, settings, sums, cfg.maxSpatialConditionNumber)
        timings["fit"] = time.perf_counter() - started - timings["candidates"]
        convolve_start = time.perf_counter()
        matched = convolve_masked_image(template, fit.solution.kernel, subtract_from=subtract_from)
        if subtract_from is not None:
            matched = None
        timings["convolve"] = time.perf_counter() - convolve_start
        self.log.info(
            "kernel fitted in %.2f s, template convolved in %.2f s",
            timings["fit"],
            timings["convolve"],
        )
        return MatchResult(
            matchedImage=matched,
            psfMatchingKernel=fit.solution.kernel,
            backgroundModel=fit.solution.background,
            kernelCellSet=cell_set,
            metadata=_metadata(basis, fit, cell_set, dropped, timings, sums),
        )

    def matchExposures(
        self,
        templateExposure: Exposure,
        scienceExposure: Exposure,
        templateFwhmPix: float | None = None,
        scienceFwhmPix: float | None = None,
        candidateList: Any = None,
        doWarping: bool = True,
        convolveTemplate: bool = True,
        *,
        scienceDetections: SourceCatalog | Table | None = None,
        subtract_from: MaskedImage | None = None,
    ) -> ExposureMatchResult:
        """PSF-match two exposures (spec §1.3).

        Parameters
        ----------
        templateExposure, scienceExposure : Exposure
            The images; they must share the science pixel grid.
        templateFwhmPix, scienceFwhmPix : float, optional
            PSF FWHMs in pixels; from the PSF models, or measured from stars.
        candidateList : optional
            Kernel star positions (parent pixels); selected on the science image if None.
        doWarping : bool
            Allow warping the template onto the science grid.
        convolveTemplate : bool
            Convolve the template (True) or the science image (False).
        scienceDetections : SourceCatalog or astropy.table.Table, optional
            The science image's `detect_kernel_sources` table; detected here if needed
            (see `pair_fwhm`).
        subtract_from : MaskedImage, optional
            See `matchMaskedImages`; the result's ``matchedImage`` and ``matchedExposure``
            are then None.

        Returns
        -------
        ExposureMatchResult
        """
        warped = self.registered_template(templateExposure, scienceExposure, doWarping)
        fwhm = self.pair_fwhm(
            warped,
            scienceExposure,
            template_fwhm_pix=templateFwhmPix,
            science_fwhm_pix=scienceFwhmPix,
            science_detections=scienceDetections,
            select_stars=candidateList is None,
        )
        fwhm_template, fwhm_science = fwhm.template_fwhm_pix, fwhm.science_fwhm_pix
        if convolveTemplate:
            to_convolve, reference = warped, scienceExposure
            fwhm_convolved, fwhm_reference = fwhm_template, fwhm_science
        else:
            to_convolve, reference = scienceExposure, warped
            fwhm_convolved, fwhm_reference = fwhm_science, fwhm_template
        if fwhm_convolved > fwhm_reference * 1.02:
            warnings.warn(
                f"the convolved image's PSF (FWHM {fwhm_convolved:.2f} px) is broader than the "
                f"other's ({fwhm_reference:.2f} px): the kernel has to deconvolve; convolve "
                "the other image instead (mode='auto')",
                DeconvolutionWarning,
                stacklevel=2,
            )
        candidates = candidateList
        if candidates is None:  # matchMaskedImages vets their stamps (makeCandidateList's job)
            kernel_size = self.makeKernelBasisList(fwhm_convolved, fwhm_reference).kernel_size
            candidates = self._select_kernel_sources(
                scienceExposure, kernel_size, fwhm.science_detections
            )
        result = self.matchMaskedImages(
            to_convolve.masked_image,
            reference.masked_image,
            candidates,
            templateFwhmPix=fwhm_convolved,
            scienceFwhmPix=fwhm_reference,
            subtract_from=subtract_from,
        )
        metadata = dict(result.metadata)
        metadata.update(
            {
                "templateFwhmPix": fwhm_template,
                "scienceFwhmPix": fwhm_science,
                "convolveTemplate": convolveTemplate,
            }
        )
        matched_exposure = None
        if result.matchedImage is not None:
            matched_exposure = Exposure(
                result.matchedImage,
                wcs=scienceExposure.stored_wcs,  # a WCS still unread stays unread
                psf=None,
                gain=None,
                saturation=None,
                zero_point=scienceExposure.zero_point,
                filter_name=templateExposure.filter_name,
            )
        return extended(
            result,
            ExposureMatchResult,
            metadata=metadata,
            warpedExposure=warped,
            matchedExposure=matched_exposure,
            convolveTemplate=convolveTemplate,
        )

    def subtractExposures(
        self,
        templateExposure: Exposure,
        scienceExposure: Exposure,
        templateFwhmPix: float | None = None,
        scienceFwhmPix: float | None = None,
        candidateList: Any = None,
        doWarping: bool = True,
        convolveTemplate: bool = True,
        *,
        scienceDetections: SourceCatalog | Table | None = None,
        keep_matched: bool = True,
        overwrite_science: bool = False,
    ) -> ExposureSubtractResult:
        """PSF-match two exposures and subtract (spec §1.5).

        The difference is always science minus template, in science photometric units:
        ``I - (K ⋆ T) - B`` when the template is convolved, and ``(K ⋆ I + B - T) / κ(x, y)``
        when the science image is, with ``κ(x, y)`` the kernel sum over the field.
        Arguments are those of `matchExposures`, plus:

        Parameters
        ----------
        keep_matched : bool
            If False, the difference is computed in the matched image's own planes, which
            saves one image of memory (48 MiB for 2048² float32), and the result's
            ``matchedImage`` and ``matchedExposure`` are None.
        overwrite_science : bool
            With ``keep_matched=False`` and the template convolved, compute the difference
            in the science exposure's own planes, tile by tile as the template is
            convolved, so that no matched image is ever allocated (48 MiB less again).  The
            science exposure's pixels (and the science stamps of the result's kernel
            candidates, views of them) are overwritten: for a caller that no longer needs
            them (the command line, which read them from a file).  Otherwise ignored.

        Returns
        -------
        ExposureSubtractResult
        """
        science = scienceExposure.masked_image
        in_place = overwrite_science and convolveTemplate and not keep_matched
        match = self.matchExposures(
            templateExposure,
            scienceExposure,
            templateFwhmPix,
            scienceFwhmPix,
            candidateList,
            doWarping,
            convolveTemplate,
            scienceDetections=scienceDetections,
            subtract_from=science if in_place else None,
        )
        matched = match.matchedImage if keep_matched else None
        if in_place:  # science - T ⋆ K already
            difference = science
            match.backgroundModel.add_to(difference.image, science.bbox, scale=-1.0)
        elif convolveTemplate:
            if keep_matched:
                difference = science - match.matchedImage
            else:
                difference = science.subtract_into(match.matchedImage)
            match.backgroundModel.add_to(difference.image, science.bbox, scale=-1.0)
        else:
            difference = match.matchedImage.copy() if keep_matched else match.matchedImage
            match.backgroundModel.add_to(difference.image, science.bbox)
            difference -= match.warpedExposure.masked_image
            kernel_sum = match.psfMatchingKernel.sum_image(science.bbox, science.dtype)
            difference.image /= kernel_sum
            difference.variance /= kernel_sum**2
        metadata = dict(match.metadata)
        metadata.update(difference_statistics(difference, self.config.kernel.active.badMaskPlanes))
        metadata["DIRECTION"] = "convolveTemplate" if convolveTemplate else "convolveScience"
        metadata["DIFFSIGN"] = "science - template"
        metadata["CONFIG"] = " ".join(
            f"{key}={value}" for key, value in _flatten(self.config.to_dict()).items()
        )
        subtracted = scienceExposure.with_pixels(difference)
        subtracted.metadata.update(metadata)
        # the difference has the PSF of the image that was not convolved
        unconvolved = scienceExposure if convolveTemplate else match.warpedExposure
        fwhm = metadata["scienceFwhmPix" if convolveTemplate else "templateFwhmPix"]
        if unconvolved.psf is None:
            from ..psf import GaussianPsf

            subtracted.psf = GaussianPsf.from_fwhm(fwhm)
        else:
            subtracted.psf = unconvolved.psf
        return extended(
            match,
            ExposureSubtractResult,
            metadata=metadata,
            subtractedExposure=subtracted,
            matchedImage=matched,
            matchedExposure=match.matchedExposure if keep_matched else None,
        )

    def registered_template(
        self, template: Exposure, science: Exposure, do_warping: bool
    ) -> Exposure:
        """Return the template on the science pixel grid, warped if needed (spec §1.3 step 1).

        Raises
        ------
        NotRegisteredError
            If the grids differ and ``do_warping`` is False.
        NoOverlapError
            If the two images do not overlap.
        """
        from ..warp import same_grid, warp_exposure

        warping = self.config.kernel.active.warpingConfig
        if same_grid(template, science):
            return template
        if not do_warping:
            msg = (
                "Input images not registered: the template and science pixel grids differ; "
                "allow warping (doWarping=True) or resample the template first"
            )
            raise NotRegisteredError(msg)
        return warp_exposure(
            template,
            science,
            kernel=warping.warpingKernelName,
            mask_kernel=warping.maskWarpingKernelName,
            grow_full_mask=tuple(warping.growFullMask),
            interp_length=warping.interpLength,
        )

    def subtractMaskedImages(
        self,
        templateMaskedImage: MaskedImage,
        scienceMaskedImage: MaskedImage,
        candidateList: Iterable[Any],
        templateFwhmPix: float | None = None,
        scienceFwhmPix: float | None = None,
    ) -> SubtractResult:
        """PSF-match the template and subtract it from the science image (spec §1.6).

        The difference is ``science - template ⋆ K - B`` with masked-image semantics:
        variances add and masks are ORed.  Parameters are those of `matchMaskedImages`.

        Returns
        -------
        SubtractResult
        """
        match = self.matchMaskedImages(
            templateMaskedImage,
            scienceMaskedImage,
            candidateList,
            templateFwhmPix,
            scienceFwhmPix,
        )
        difference = scienceMaskedImage - match.matchedImage
        match.backgroundModel.add_to(difference.image, difference.bbox, scale=-1.0)
        metadata = dict(match.metadata)
        metadata.update(difference_statistics(difference, self.config.kernel.active.badMaskPlanes))
        return extended(match, SubtractResult, metadata=metadata, subtractedMaskedImage=difference)
