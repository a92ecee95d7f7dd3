"""The task's kernel stars: stamp size, detection, FWHMs, selection and candidate list.

`_KernelStarMethods` holds the methods of `ImagePsfMatchTask` that find the stars a kernel
is fitted to (ip_diffim's ``getFwhmPix``, ``getSelectSources``, ``makeCandidateList``) and
run `diffim.stars` with the task's config; the task inherits them.  The public methods
return astropy Tables; the task's own subtraction path selects through
`_select_kernel_sources`, which returns a `SourceCatalog` and imports no astropy.table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import stars
from ..errors import DiffimValueError
from ..sources import CROWDING_TESTS, _select_kernel_sources
from ..stars import PairFwhm
from .cell_set import DF_STAMP_KERNEL_HALF_WIDTHS, _build_cell_set, _n_fit_parameters, _positions

if TYPE_CHECKING:  # imported where used: astropy.table is slow
    import logging

    from astropy.table import Table

    from ..catalog import SourceCatalog
    from ..config import ImagePsfMatchConfig
    from ..image import Exposure

#: Fewer isolated stars than this and `getSelectSources` also takes blended ones.
MIN_ISOLATED_SOURCES = 30


class _KernelStarMethods:
    """Kernel-star methods of `ImagePsfMatchTask`, which sets ``config`` and ``log``."""

    config: ImagePsfMatchConfig
    log: logging.Logger

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
        science_detections: SourceCatalog | Table | None = None,
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
        detections: SourceCatalog | Table | None = None,
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
        detections : astropy.table.Table or SourceCatalog, optional
            The exposure's `detect_kernel_sources` table, to select from instead of
            detecting again (``sigma`` and ``doSmooth`` are then unused).

        Returns
        -------
        astropy.table.Table
            Kept stars, highest S/N first, with parent ``x``, ``y``, ``flux``, ``snr``, ...
        """
        if detections is None:
            detections = stars._detect_kernel_sources(exposure, self.config, sigma, doSmooth)
        return self._select_kernel_sources(exposure, kernelSize, detections).to_table()

    def _select_kernel_sources(
        self,
        exposure: Exposure,
        kernel_size: int | None,
        detections: SourceCatalog | Table | None,
    ) -> SourceCatalog:
        """Return `getSelectSources`'s stars as a `SourceCatalog`; detected with the
        default filter when ``detections`` is None."""
        if detections is None:
            detections = stars._detect_kernel_sources(exposure, self.config)
        if kernel_size is None:
            kernel_size = self.config.kernel.active.kernelSize
        options = {
            "stamp_half_width": self.stamp_half_width(kernel_size),
            "min_snr": self.config.selectMinSnr,
            "max_snr": self.config.selectMaxSnr,
            "saturation": exposure.saturation,
            "saturation_fraction": self.config.selectSaturationFraction,
            "bad_mask_bits": self._select_bad_bits(exposure),
            "detections": detections,
        }
        sources = _select_kernel_sources(exposure.masked_image, **options)
        if len(sources) < MIN_ISOLATED_SOURCES:
            crowded = _select_kernel_sources(
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
        scienceDetections: SourceCatalog | Table | None = None,
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
            sources = self._select_kernel_sources(scienceExposure, kernelSize, scienceDetections)
        positions = _positions(sources)
        cfg = self.config.kernel.active
        cell_set, _ = _build_cell_set(
            cfg,
            templateExposure.masked_image,
            scienceExposure.masked_image,
            positions,
            kernelSize,
            self.stamp_half_width(kernelSize),
            _n_fit_parameters(cfg),
        )
        kept = sorted(cell_set.candidates(), key=lambda c: -c.rating)
        return Table(
            {
                "x": [c.x for c in kept],
                "y": [c.y for c in kept],
                "rating": [c.rating for c in kept],
            }
        )
