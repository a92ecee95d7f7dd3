"""What `ImagePsfMatchTask` returns: the match and subtraction results.

Frozen dataclasses whose fields keep ip_diffim's names (``matchedImage``,
``psfMatchingKernel``, ``backgroundModel``, ``kernelCellSet``, ``subtractedMaskedImage``),
each extending the previous one, and the ``write*`` methods of the exposure result.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .candidates import SpatialCellSet
from .image import Exposure, MaskedImage
from .spatial import SpatialBackground, SpatialKernel

__all__ = ["ExposureMatchResult", "ExposureSubtractResult", "MatchResult", "SubtractResult"]


@dataclass(frozen=True, slots=True)
class MatchResult:
    """What `ImagePsfMatchTask.matchMaskedImages` returns.

    Attributes
    ----------
    matchedImage : MaskedImage
        The template convolved with the spatial kernel (background not added); a border of
        the kernel half-width is NaN, variance +inf, flagged NO_DATA.
    psfMatchingKernel : SpatialKernel
        The spatially varying kernel; ``psfMatchingKernel.image_at(x, y)``,
        ``psfMatchingKernel.sum_at(x, y)``.
    backgroundModel : SpatialBackground
        Differential background ``B(x, y)`` (zero unless ``fitForBackground``).
    kernelCellSet : SpatialCellSet
        Candidates with their status, solutions and residuals.
    metadata : dict
        QA numbers (spec §1.11 and counts of candidates per stage).
    """

    matchedImage: MaskedImage
    psfMatchingKernel: SpatialKernel
    backgroundModel: SpatialBackground
    kernelCellSet: SpatialCellSet
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubtractResult(MatchResult):
    """What `ImagePsfMatchTask.subtractMaskedImages` returns: `MatchResult` plus the difference.

    Attributes
    ----------
    subtractedMaskedImage : MaskedImage
        ``science - matchedImage - backgroundModel``.
    """

    subtractedMaskedImage: MaskedImage | None = None


@dataclass(frozen=True, slots=True)
class ExposureMatchResult(MatchResult):
    """What `ImagePsfMatchTask.matchExposures` returns: `MatchResult` plus exposures.

    Attributes
    ----------
    warpedExposure : Exposure
        The template on the science pixel grid (the input template if no warp was needed).
    matchedExposure : Exposure
        The convolved image as an exposure with the science WCS (the convolved *science*
        image when the science image was convolved).
    convolveTemplate : bool
        Which image was convolved.
    """

    warpedExposure: Exposure | None = None
    matchedExposure: Exposure | None = None
    convolveTemplate: bool = True


@dataclass(frozen=True, slots=True)
class ExposureSubtractResult(ExposureMatchResult):
    """What `ImagePsfMatchTask.subtractExposures` returns: plus the difference exposure.

    Attributes
    ----------
    subtractedExposure : Exposure
        The difference ``science - template`` in science photometric units, with the
        science WCS and PSF; its ``metadata`` holds the QA numbers and the configuration.

    ``matchedImage`` and ``matchedExposure`` are None when the subtraction was asked not to
    keep them (``keep_matched=False``).
    """

    subtractedExposure: Exposure | None = None

    def __repr__(self) -> str:
        m = self.metadata
        direction = "template" if self.convolveTemplate else "science"
        return (
            f"<ExposureSubtractResult {self.subtractedExposure.shape[1]}x"
            f"{self.subtractedExposure.shape[0]} px, {direction} convolved, kernel sum "
            f"{m.get('spatialKernelSum', float('nan')):.4f}, "
            f"{m.get('nCandidatesUsedInSpatialFit', 0)}/{m.get('nCandidates', 0)} candidates "
            f"used, D/σ robust std {m.get('diffimResidualRobustStd', float('nan')):.3f}>"
        )

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the difference (LSST-style IMAGE/MASK/VARIANCE, QA in the header)."""
        from .io import write_exposure

        write_exposure(self.subtractedExposure, path, overwrite=overwrite)

    def write_matched(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the PSF-matched (convolved) image."""
        from .io import write_exposure

        write_exposure(self.matchedExposure, path, overwrite=overwrite)

    def write_background(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the fitted differential background ``B(x, y)`` as an image (image units)."""
        from .io import write_exposure

        bbox = self.subtractedExposure.bbox
        image = self.backgroundModel.image(bbox, self.subtractedExposure.masked_image.dtype)
        write_exposure(MaskedImage(image, xy0=(bbox.x_min, bbox.y_min)), path, overwrite=overwrite)

    def write_kernel(
        self, path: str | os.PathLike, *, grid: int = 5, overwrite: bool = False
    ) -> None:
        """Write the kernel on a ``grid × grid`` raster over the field as one FITS cube.

        The primary HDU holds the cube ``(grid², size, size)``; the ``POSITIONS`` table
        gives each plane's parent ``x``, ``y`` and kernel sum.
        """
        from astropy.io import fits
        from astropy.table import Table

        from .io import atomic_write_hdulist

        bbox = self.subtractedExposure.bbox
        xs = np.linspace(bbox.x_min, bbox.x_max, grid)
        ys = np.linspace(bbox.y_min, bbox.y_max, grid)
        positions = [(x, y) for y in ys for x in xs]
        cube = np.array([self.psfMatchingKernel.image_at(x, y) for x, y in positions])
        primary = fits.PrimaryHDU(cube.astype(np.float32))
        primary.header["KSIZE"] = (self.psfMatchingKernel.size, "kernel width (pixels)")
        primary.header["DIRECTN"] = "template" if self.convolveTemplate else "science"
        table = fits.BinTableHDU(
            Table(
                {
                    "x": [p[0] for p in positions],
                    "y": [p[1] for p in positions],
                    "kernel_sum": cube.sum(axis=(1, 2)),
                }
            ),
            name="POSITIONS",
        )
        atomic_write_hdulist(fits.HDUList([primary, table]), path, overwrite=overwrite)


def extended(result: MatchResult, cls: type, **fields: Any) -> Any:
    """Return a ``cls`` (a subclass of ``result``'s class) with ``result``'s fields, some
    replaced or added by ``fields``."""
    kept = {item.name: getattr(result, item.name) for item in dataclasses.fields(result)}
    return cls(**(kept | fields))
