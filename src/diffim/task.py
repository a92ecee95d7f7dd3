"""`ImagePsfMatchTask`: PSF-match a template to a science image and subtract (Alard-Lupton).

The public methods keep ip_diffim's names and arguments (``matchMaskedImages``,
``subtractMaskedImages``, ...); results are returned by name in frozen dataclasses whose
fields are ip_diffim's (``matchedImage``, ``psfMatchingKernel``, ``backgroundModel``,
``kernelCellSet``, ``subtractedMaskedImage``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import stars
from ._version import __version__
from .basis import (
    BasisList,
    generate_alard_lupton_basis,
    make_kernel_basis,
    make_regularization_matrix,
)
from .candidates import (
    KernelCandidate,
    SpatialCellSet,
    candidate_rating,
    remove_sky_slope,
    stamp_box,
)
from .config import ImagePsfMatchConfig
from .convolve import convolve_masked_image
from .errors import (
    DeconvolutionWarning,
    DiffimValueError,
    InsufficientKernelSourcesError,
    KernelSolutionError,
    MaskedPixelsWarning,
    NotRegisteredError,
    PoorlyConstrainedWarning,
)
from .fit import (
    FitResult,
    FitSettings,
    fit_spatial_kernel,
    select_basis_by_bic,
)
from .image import BBox, Exposure, MaskedImage
from .results import (
    ExposureMatchResult,
    ExposureSubtractResult,
    MatchResult,
    SubtractResult,
    extended,
)
from .solve import Regularization
from .sources import (
    CROWDING_TESTS,
    select_kernel_sources,
)
from .spatial import SpatialKernel, n_spatial_terms
from .stars import PairFwhm, exposure_fwhm
from .stats import difference_statistics

if TYPE_CHECKING:  # imported where used: astropy.table, the PSF models and warping are slow
    from astropy.table import Table


__all__ = [
    "ExposureMatchResult",
    "ExposureSubtractResult",
    "ImagePsfMatchTask",
    "MatchResult",
    "PairFwhm",
    "SubtractResult",
    "exposure_fwhm",
]

#: Grid (per axis) on which the kernel sum's range over the field is reported.
KERNEL_SUM_GRID = 16


def _kernel_sums_on_grid(kernel: SpatialKernel, bbox: BBox) -> np.ndarray:
    """Return the kernel's sum on a `KERNEL_SUM_GRID` x `KERNEL_SUM_GRID` grid over ``bbox``."""
    grid_x = np.linspace(bbox.x_min, bbox.x_max, KERNEL_SUM_GRID)
    grid_y = np.linspace(bbox.y_min, bbox.y_max, KERNEL_SUM_GRID)
    return kernel.sum_at(*np.meshgrid(grid_x, grid_y))


def _positions(candidate_list: Any) -> np.ndarray:
    """Return the ``(n, 2)`` parent ``(x, y)`` positions of a candidate list."""
    columns = getattr(candidate_list, "colnames", None)
    if columns is not None:
        for x_name, y_name in (("x", "y"), ("xcentroid", "ycentroid"), ("X", "Y")):
            if x_name in columns and y_name in columns:
                return np.column_stack(
                    [
                        np.asarray(candidate_list[x_name], float),
                        np.asarray(candidate_list[y_name], float),
                    ]
                )
        msg = f"candidate table needs x and y columns; it has {columns}"
        raise DiffimValueError(msg)
    items = list(candidate_list)
    if not items:
        return np.empty((0, 2))
    if isinstance(items[0], dict):
        items = [(item["x"], item["y"]) for item in items]
    positions = np.asarray(items, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 2:
        msg = (
            "candidateList must be a table with x/y columns, a list of (x, y) pairs or of dicts "
            f"with 'x' and 'y'; got an array of shape {positions.shape}"
        )
        raise DiffimValueError(msg)
    return positions


def _sanitize(masked_image: MaskedImage, name: str) -> MaskedImage:
    """Check a masked image; mask non-finite pixels as NO_DATA (on a copy) with a warning."""
    bad = ~np.isfinite(masked_image.image) | ~np.isfinite(masked_image.variance)
    if np.any(masked_image.variance[~bad] < 0):
        msg = f"the {name} image has negative variance values; fix its variance plane"
        raise DiffimValueError(msg)
    if not bad.any():
        return masked_image
    if bad.all():
        msg = f"every pixel of the {name} image is NaN or infinite"
        raise DiffimValueError(msg)
    warnings.warn(
        f"{int(bad.sum())} non-finite pixels of the {name} image were masked as NO_DATA",
        MaskedPixelsWarning,
        stacklevel=3,
    )
    clean = masked_image.copy()
    clean.image[bad] = 0.0
    clean.variance[bad] = 0.0
    clean.set_mask_plane("NO_DATA", bad)
    return clean


#: A delta-function stamp reaches at least this many kernel half-widths h from the star, so
#: its fit region (the stamp less h on each side) reaches 2 h: a star shifted by any kernel
#: pixel keeps its core in the fit region (see `ImagePsfMatchTask._build_cell_set`).
DF_STAMP_KERNEL_HALF_WIDTHS = 3

#: Fewer isolated stars than this and `getSelectSources` also takes blended ones.
MIN_ISOLATED_SOURCES = 30

#: Fewest fit-region pixels per unknown of a single-kernel fit for an edge-shrunk stamp.
MIN_PIXELS_PER_PARAMETER = 4

#: An order is kept only with more than this many candidates per spatial term (ip_diffim
#: calls a spatial model with fewer "poorly constrained", spec §3.11).
CANDIDATES_PER_SPATIAL_TERM = 2


def _affordable_orders(orders: dict[str, int], n_candidates: int) -> dict[str, int]:
    """Lower spatial orders that ``n_candidates`` stars cannot constrain.

    An order is kept when there are more than CANDIDATES_PER_SPATIAL_TERM candidates per
    polynomial term; otherwise it drops to the highest order that has them, and one
    `PoorlyConstrainedWarning` names every lowered field (a sparse field then gets a stable
    low-order fit instead of an unstable high-order one).
    """
    affordable = {}
    for name, order in orders.items():
        while order > 0 and CANDIDATES_PER_SPATIAL_TERM * n_spatial_terms(order) >= n_candidates:
            order -= 1
        affordable[name] = order
    lowered = [
        f"{name} lowered from {orders[name]} to {order}"
        for name, order in affordable.items()
        if order < orders[name]
    ]
    if lowered:
        warnings.warn(
            f"only {n_candidates} kernel candidates: {', '.join(lowered)} "
            f"(more than {CANDIDATES_PER_SPATIAL_TERM} candidates per spatial term are needed); "
            "provide more stars to fit higher orders",
            PoorlyConstrainedWarning,
            stacklevel=5,
        )
    return affordable


def _check_usable(masked_image: MaskedImage, name: str, bad_bits: int) -> None:
    if np.all(masked_image.mask & bad_bits):
        msg = f"every pixel of the {name} image is masked with a bad plane"
        raise DiffimValueError(msg)


class ImagePsfMatchTask:
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

    def _n_fit_parameters(self) -> int:
        """Unknowns of one candidate's fit: basis kernels plus the background, if fitted."""
        cfg = self.config.kernel.active
        if cfg.kernelBasisSet == "alard-lupton":
            n_basis = sum(n_spatial_terms(degree) for degree in cfg.alardDegGauss)
        else:
            n_basis = cfg.kernelSize**2
        return n_basis + int(cfg.fitForBackground)

    def stamp_half_width(self, kernel_size: int) -> int:
        """Half-width (pixels) of a kernel candidate's stamp for a kernel of this size.

        With a delta-function basis the stamp is at least `DF_STAMP_KERNEL_HALF_WIDTHS`
        kernel half-widths wide on each side of the star (see `_build_cell_set`).
        """
        cfg = self.config.kernel.active
        detection = cfg.detectionConfig
        if detection.scaleByFwhm:
            half_width = int(detection.fpGrowKernelScaling * kernel_size + 0.5)
        else:
            half_width = int(detection.fpGrowPix)
        if cfg.kernelBasisSet == "delta-function":
            half_width = max(half_width, DF_STAMP_KERNEL_HALF_WIDTHS * (kernel_size // 2))
        return half_width

    def _build_cell_set(
        self,
        template: MaskedImage,
        science: MaskedImage,
        positions: np.ndarray,
        kernel_size: int,
        n_parameters: int,
    ) -> tuple[SpatialCellSet, dict[str, int]]:
        """Cut stamps around the positions, vet them, and fill a cell set (spec §1.10, §3.5).

        Stamps shrunk at the image edge are kept only while their fit region (the stamp less
        the kernel half-width on each side) has ``MIN_PIXELS_PER_PARAMETER`` pixels for each
        of the ``n_parameters`` unknowns of a single-kernel fit, or is as large as a full
        stamp's (a delta-function basis has more unknowns than pixels and relies on its
        regularization).

        With a delta-function basis each stamp also loses the slope of its local sky
        (`remove_sky_slope`, fitted outside half the stamp's half-width), and the stamps
        are larger (`stamp_half_width`).  Each kernel pixel carries a copy of the template,
        its sky included, into the model; where the fit region is barely larger than the
        kernel, a broad pedestal in the kernel smears the star almost uniformly over it and
        is then nearly degenerate with the constant background, and a template sky gradient
        lets that pedestal fit a differential gradient: the kernel sum came out anywhere in
        0.5-1.3 for a true 1.1.
        """
        cfg = self.config.kernel.active
        vet_bits = template.bitmask(list(cfg.detectionConfig.badMaskPlanes))
        rating_bits = science.bitmask(list(cfg.badMaskPlanes))
        half_width = self.stamp_half_width(kernel_size)
        min_fit_side = int(np.ceil(np.sqrt(MIN_PIXELS_PER_PARAMETER * n_parameters)))
        min_half_width = min(half_width, kernel_size // 2 + (min_fit_side + 1) // 2)
        image_box = template.bbox
        cell_set = SpatialCellSet(image_box, cfg.sizeCellX, cfg.sizeCellY)
        dropped = {"outside": 0, "edge": 0, "masked": 0, "no signal": 0}
        n_inserted = 0  # len(cell_set) counts every cell's candidates: slow inside the loop
        for x, y in positions:
            if not image_box.contains_point(x, y):
                dropped["outside"] += 1
                continue
            box = stamp_box(x, y, half_width, image_box)
            if box.is_empty or box.width // 2 < min_half_width:
                dropped["edge"] += 1
                continue
            template_stamp, science_stamp = template[box], science[box]
            if np.any((template_stamp.mask | science_stamp.mask) & vet_bits):
                dropped["masked"] += 1
                continue
            if cfg.kernelBasisSet == "delta-function":
                inner_radius = 0.5 * (box.width // 2)
                template_stamp = remove_sky_slope(template_stamp, inner_radius)
                science_stamp = remove_sky_slope(science_stamp, inner_radius)
            rating = candidate_rating(science_stamp, rating_bits, cfg.candidateCoreRadius)
            if not np.isfinite(rating):
                dropped["no signal"] += 1
                continue
            cell_set.insert(
                KernelCandidate(
                    float(x),
                    float(y),
                    template_stamp,
                    science_stamp,
                    rating,
                    candidate_id=n_inserted,
                )
            )
            n_inserted += 1
        if n_inserted == 0:
            details = ", ".join(f"{n} {why}" for why, n in dropped.items() if n)
            raise InsufficientKernelSourcesError(
                0, 1, f"{len(positions)} positions given; dropped: {details}"
            )
        return cell_set, dropped

    def _fit_settings(self, science: MaskedImage, n_candidates: int) -> FitSettings:
        cfg = self.config.kernel.active
        orders = {"spatialKernelOrder": cfg.spatialKernelOrder}
        if cfg.fitForBackground:
            orders["spatialBgOrder"] = cfg.spatialBgOrder
        orders = _affordable_orders(orders, n_candidates)
        return FitSettings(
            n_star_per_cell=cfg.nStarPerCell,
            max_spatial_iterations=cfg.maxSpatialIterations,
            fit_background=cfg.fitForBackground,
            model_type=cfg.spatialModelType,
            kernel_order=orders["spatialKernelOrder"],
            background_order=orders.get("spatialBgOrder", cfg.spatialBgOrder),
            constant_first_term=(
                cfg.kernelBasisSet == "alard-lupton" or cfg.usePcaForSpatialKernel
            ),
            single_kernel_clipping=cfg.singleKernelClipping,
            kernel_sum_clipping=cfg.kernelSumClipping,
            spatial_kernel_clipping=cfg.spatialKernelClipping,
            residual_mean_max=cfg.candidateResidualMeanMax,
            residual_std_max=cfg.candidateResidualStdMax,
            max_ksum_sigma=cfg.maxKsumSigma,
            check_condition_number=cfg.checkConditionNumber,
            max_condition_number=cfg.maxConditionNumber,
            condition_number_type=cfg.conditionNumberType,
            use_core_stats=cfg.useCoreStats,
            core_radius=cfg.candidateCoreRadius,
            constant_variance_weighting=cfg.constantVarianceWeighting,
            iterate_single_kernel=cfg.iterateSingleKernel,
            bad_mask_bits=science.bitmask(list(cfg.badMaskPlanes)),
            use_pca=cfg.usePcaForSpatialKernel,
            subtract_mean_for_pca=cfg.subtractMeanForPca,
            n_principal_components=cfg.numPrincipalComponents,
        )

    def _bic_basis(
        self,
        basis: BasisList,
        stamps: tuple,
        template_fwhm: float | None,
        science_fwhm: float | None,
    ) -> BasisList:
        """Choose the Alard-Lupton polynomial degrees by BIC (spec §3.13).

        Every degree combination with ``1 <= d_i <= alardDegGauss[i]`` is tried on a
        throw-away cell set of the same candidates.
        """
        cfg = self.config.kernel.active
        if cfg.kernelBasisSet != "alard-lupton":
            return basis
        template, science, positions, n_parameters = stamps
        scratch, _ = self._build_cell_set(
            template, science, positions, basis.kernel_size, n_parameters
        )
        choices = itertools.product(*(range(1, degree + 1) for degree in cfg.alardDegGauss))
        bases = {
            degrees: generate_alard_lupton_basis(
                cfg, template_fwhm, science_fwhm, basis_deg_gauss=degrees
            ).kernels
            for degrees in choices
        }
        best, _ = select_basis_by_bic(scratch, bases, self._fit_settings(science, len(scratch)))
        return generate_alard_lupton_basis(cfg, template_fwhm, science_fwhm, basis_deg_gauss=best)

    def _regularization(self) -> Regularization | None:
        """The delta-function basis's regularization (spec §3.4, §3.8), or None."""
        cfg = self.config.kernel.active
        if cfg.kernelBasisSet != "delta-function" or not cfg.useRegularization:
            return None
        if cfg.lambdaStepType == "log":
            grid = 10.0 ** np.arange(
                cfg.lambdaMin, cfg.lambdaMax + cfg.lambdaStep / 2, cfg.lambdaStep
            )
        else:
            grid = np.arange(cfg.lambdaMin, cfg.lambdaMax + cfg.lambdaStep / 2, cfg.lambdaStep)
        return Regularization(
            make_regularization_matrix(cfg),
            lambda_type=cfg.lambdaType,
            lambda_value=cfg.lambdaValue,
            lambda_scaling=cfg.lambdaScaling,
            lambda_grid=tuple(float(v) for v in grid if v > 0),
            max_condition_number=cfg.maxConditionNumber,
        )

    def _diagnose(self, fit: FitResult, settings: FitSettings, sums: np.ndarray) -> None:
        """Refuse a kernel whose sum (the flux ratio) is not positive everywhere; warn when
        the spatial system is ill-conditioned or has too few good candidates (spec §3.11).

        ``sums`` is the kernel sum on the `KERNEL_SUM_GRID` grid over the image.

        Raises
        ------
        KernelSolutionError
            If the spatial kernel's sum is zero or negative somewhere on the image: the
            two images cannot show the same stars (different fields, a wrong WCS).
        """
        if not np.all(sums > 0):
            msg = (
                f"the fitted PSF-matching kernel has a sum (flux ratio) of {sums.min():.3g} to "
                f"{sums.max():.3g} over the image, from {fit.n_good} good of "
                f"{sum(fit.rejected.values()) + fit.n_good} fitted candidates: a flux ratio must "
                "be positive, so the two images do not show the same stars; check that they "
                "cover the same field (their WCS) in the same band, or pass a candidateList"
            )
            raise KernelSolutionError(msg)
        condition = fit.solution.condition_number
        limit = self.config.kernel.active.maxSpatialConditionNumber
        if not 0 < condition <= limit:
            warnings.warn(
                f"the spatial kernel system is ill-conditioned (condition number "
                f"{condition:.3g}, limit maxSpatialConditionNumber={limit:.3g}); lower "
                "spatialKernelOrder or use more, better spread stars",
                PoorlyConstrainedWarning,
                stacklevel=4,
            )
        n_kernel_terms = n_spatial_terms(settings.kernel_order)
        if fit.n_good < n_kernel_terms:
            text = "underconstrained"
        elif fit.n_good <= 2 * n_kernel_terms:
            text = "poorly constrained"
        else:
            return
        warnings.warn(
            f"spatial kernel model is {text}: {fit.n_good} good candidates for "
            f"{n_kernel_terms} spatial terms per basis kernel; lower spatialKernelOrder or "
            "provide more stars",
            PoorlyConstrainedWarning,
            stacklevel=4,
        )

    def _metadata(
        self,
        basis: BasisList,
        fit: FitResult,
        cell_set: SpatialCellSet,
        dropped: dict[str, int],
        timings: dict[str, float],
        sums: np.ndarray,
    ) -> dict[str, Any]:
        kernel = fit.solution.kernel
        bbox = cell_set.bbox
        x_center, y_center = bbox.center
        status = cell_set.status_counts()
        metadata: dict[str, Any] = {
            "diffimVersion": __version__,
            "ALBasisNGauss": len(basis.sigmas),
            "ALBasisDegGauss": list(basis.degrees),
            "ALBasisSigGauss": [float(s) for s in basis.sigmas],
            "ALKernelSize": basis.kernel_size,
            "ALBasisMode": basis.mode,
            "spatialConditionNum": fit.solution.condition_number,
            "spatialKernelSum": kernel.sum_at(x_center, y_center),
            "kernelSumMin": float(sums.min()),
            "kernelSumMax": float(sums.max()),
            "kernelSumClippedMean": fit.kernel_sum_mean,
            "kernelSumClippedStd": fit.kernel_sum_std,
            "nCandidates": len(cell_set),
            "nCandidatesGood": status["GOOD"],
            "nCandidatesBad": status["BAD"],
            "nCandidatesUsedInSpatialFit": fit.solution.n_candidates,
            "nGoodSpatialAssessment": fit.n_good,
            "spatialResidualMean": fit.spatial_residual_mean,
            "spatialResidualStd": fit.spatial_residual_std,
            "spatialIterations": fit.iterations,
        }
        metadata.update({f"nRejected_{stage}": n for stage, n in fit.rejected.items()})
        metadata.update({f"nDropped_{why.replace(' ', '_')}": n for why, n in dropped.items()})
        metadata.update({f"time_{stage}": t for stage, t in timings.items()})
        return metadata

    # -- public API -----------------------------------------------------------------------
    def matchMaskedImages(
        self,
        templateMaskedImage: MaskedImage,
        scienceMaskedImage: MaskedImage,
        candidateList: Iterable[Any],
        templateFwhmPix: float | None = None,
        scienceFwhmPix: float | None = None,
    ) -> MatchResult:
        """PSF-match the template to the science image (spec §1.4).

        Parameters
        ----------
        templateMaskedImage : MaskedImage
            Image to convolve; same box as the science image.
        scienceMaskedImage : MaskedImage
            Image to match to.
        candidateList : table or sequence
            Kernel star positions in parent pixels: an astropy Table with ``x``/``y``
            columns, a list of ``(x, y)`` pairs, or a list of dicts with ``"x"``, ``"y"``.
        templateFwhmPix, scienceFwhmPix : float, optional
            PSF FWHMs in pixels, used to size the Alard-Lupton basis; the config's sigmas
            and ``kernelSize`` are used when either is missing.

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
        basis = self.makeKernelBasisList(templateFwhmPix, scienceFwhmPix)
        n_parameters = self._n_fit_parameters()
        cell_set, dropped = self._build_cell_set(
            template, science, positions, basis.kernel_size, n_parameters
        )
        if self.config.kernel.active.useBicForKernelBasis:
            basis = self._bic_basis(
                basis,
                (template, science, positions, n_parameters),
                templateFwhmPix,
                scienceFwhmPix,
            )
        self.log.info("%d kernel candidates in %d cells", len(cell_set), len(cell_set.cells))
        timings = {"candidates": time.perf_counter() - started}
        settings = self._fit_settings(science, len(cell_set))
        fit = fit_spatial_kernel(cell_set, basis.kernels, settings, self._regularization())
        sums = _kernel_sums_on_grid(fit.solution.kernel, cell_set.bbox)
        self._diagnose(fit, settings, sums)
        timings["fit"] = time.perf_counter() - started - timings["candidates"]
        convolve_start = time.perf_counter()
        matched = convolve_masked_image(template, fit.solution.kernel)
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
            metadata=self._metadata(basis, fit, cell_set, dropped, timings, sums),
        )

    def getFwhmPix(self, psf: Any, position: tuple[float, float] | None = None) -> float:
        """Return the FWHM in pixels of a PSF model at ``position`` (default: its centre)."""
        if psf is None:
            msg = "no PSF model given; measure the FWHM from stars with diffim.fwhm.measure_fwhm"
            raise DiffimValueError(msg)
        return float(psf.fwhm() if position is None else psf.fwhm(*position))

    def _select_bad_bits(self, exposure: Exposure) -> int:
        """Mask bits that exclude pixels from kernel-star detection and stamps."""
        return stars.select_bad_bits(exposure, self.config)

    def detect_kernel_sources(
        self, exposure: Exposure, sigma: float | None = None, do_smooth: bool = True
    ) -> Table:
        """Detect the sources `getSelectSources` selects kernel stars from.

        See `diffim.stars.detect_kernel_sources`, run with this task's config.

        Returns
        -------
        astropy.table.Table
            A `diffim.sources.detect_sources` table (parent pixels).
        """
        return stars.detect_kernel_sources(exposure, self.config, sigma, do_smooth)

    def pair_fwhm(
        self,
        template: Exposure,
        science: Exposure,
        *,
        template_fwhm_pix: float | None = None,
        science_fwhm_pix: float | None = None,
        science_detections: Table | None = None,
        select_stars: bool = True,
    ) -> PairFwhm:
        """Return the template and science FWHMs, detecting at most the science image.

        See `diffim.stars.pair_fwhm` for the parameters; run with this task's config and log.

        Returns
        -------
        PairFwhm
        """
        return stars.pair_fwhm(
            template,
            science,
            self.config,
            self.log,
            template_fwhm_pix=template_fwhm_pix,
            science_fwhm_pix=science_fwhm_pix,
            science_detections=science_detections,
            select_stars=select_stars,
        )

    def getSelectSources(
        self,
        exposure: Exposure,
        sigma: float | None = None,
        doSmooth: bool = True,
        kernelSize: int | None = None,
        *,
        detections: Table | None = None,
    ) -> Table:
        """Detect and select kernel stars on an exposure (spec §1.7).

        Parameters
        ----------
        exposure : Exposure
            Image to search (normally the science image).
        sigma : float, optional
            Gaussian sigma (pixels) of the detection filter; default from the PSF.
        doSmooth : bool
            Filter the image with the PSF before thresholding.
        kernelSize : int, optional
            Size (pixels) of the kernel to be fitted: sets the stamp box that must be free of
            masked pixels and brighter neighbours; the config's ``kernelSize`` if omitted.
        detections : astropy.table.Table, optional
            The exposure's `detect_kernel_sources` table, to select from instead of
            detecting again (``sigma`` and ``doSmooth`` are then unused).

        Returns
        -------
        astropy.table.Table
            Kept stars, highest S/N first, with parent ``x``, ``y``, ``flux``, ``snr``, ...
        """
        if detections is None:
            detections = self.detect_kernel_sources(exposure, sigma, doSmooth)
        kernel_size = self.config.kernel.active.kernelSize if kernelSize is None else kernelSize
        options = {
            "stamp_half_width": self.stamp_half_width(kernel_size),
            "min_snr": self.config.selectMinSnr,
            "max_snr": self.config.selectMaxSnr,
            "saturation": exposure.saturation,
            "saturation_fraction": self.config.selectSaturationFraction,
            "bad_mask_bits": self._select_bad_bits(exposure),
            "detections": detections,
        }
        sources = select_kernel_sources(exposure.masked_image, **options)
        if len(sources) < MIN_ISOLATED_SOURCES:
            crowded = select_kernel_sources(
                exposure.masked_image, ignore_tests=CROWDING_TESTS, **options
            )
            if len(crowded) > len(sources):
                self.log.info(
                    "only %d isolated stars: using %d stars whether blended or not (crowded "
                    "or sparse field)",
                    len(sources),
                    len(crowded),
                )
                sources = crowded
        return sources

    def makeCandidateList(
        self,
        templateExposure: Exposure,
        scienceExposure: Exposure,
        kernelSize: int,
        candidateList: Any = None,
        *,
        scienceDetections: Table | None = None,
    ) -> Table:
        """Return the kernel stars whose stamps are usable in both images (spec §1.8).

        Stars come from ``candidateList`` (anything `matchMaskedImages` accepts) or are
        selected on the science exposure, from ``scienceDetections`` (its
        `detect_kernel_sources` table) when given.  The returned table has ``x``, ``y``
        columns.

        Raises
        ------
        InsufficientKernelSourcesError
            When no star gives a usable stamp; the message counts the reasons.
        """
        from astropy.table import Table  # lazy: astropy.table costs ~0.2 s to import

        sources = candidateList
        if sources is None:
            sources = self.getSelectSources(
                scienceExposure, kernelSize=kernelSize, detections=scienceDetections
            )
        positions = _positions(sources)
        n_parameters = self._n_fit_parameters()
        cell_set, _ = self._build_cell_set(
            templateExposure.masked_image,
            scienceExposure.masked_image,
            positions,
            kernelSize,
            n_parameters,
        )
        kept = sorted(cell_set.candidates(), key=lambda c: -c.rating)
        return Table(
            {
                "x": [c.x for c in kept],
                "y": [c.y for c in kept],
                "rating": [c.rating for c in kept],
            }
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
        scienceDetections: Table | None = None,
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
        scienceDetections : astropy.table.Table, optional
            The science image's `detect_kernel_sources` table; detected here if needed
            (see `pair_fwhm`).

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
            candidates = self.getSelectSources(
                scienceExposure, kernelSize=kernel_size, detections=fwhm.science_detections
            )
        result = self.matchMaskedImages(
            to_convolve.masked_image,
            reference.masked_image,
            candidates,
            templateFwhmPix=fwhm_convolved,
            scienceFwhmPix=fwhm_reference,
        )
        metadata = dict(result.metadata)
        metadata.update(
            {
                "templateFwhmPix": fwhm_template,
                "scienceFwhmPix": fwhm_science,
                "convolveTemplate": convolveTemplate,
            }
        )
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
        scienceDetections: Table | None = None,
        keep_matched: bool = True,
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

        Returns
        -------
        ExposureSubtractResult
        """
        match = self.matchExposures(
            templateExposure,
            scienceExposure,
            templateFwhmPix,
            scienceFwhmPix,
            candidateList,
            doWarping,
            convolveTemplate,
            scienceDetections=scienceDetections,
        )
        science = scienceExposure.masked_image
        matched = match.matchedImage if keep_matched else None
        if convolveTemplate:
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
            from .psf import GaussianPsf

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
        from .warp import same_grid, warp_exposure

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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
