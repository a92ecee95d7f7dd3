"""Kernel candidates (stamps around stars) and the spatial cells that hold them.

A `KernelCandidate` pairs a template stamp and a science stamp around one star; its
per-star kernel solutions and its status (GOOD / BAD, with the reason) are recorded on it as
the fit proceeds.  A `SpatialCellSet` tiles the image with cells so that the spatial fit is
constrained by the best few stars of every region (spec §1.10, §3.5, §3.6, §3.9).
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import DiffimValueError
from .image import BBox, MaskedImage
from .stats import median_robust_std, normalized_pixels

__all__ = [
    "CandidateStatus",
    "KernelCandidate",
    "KernelSolution",
    "SpatialCell",
    "SpatialCellSet",
    "candidate_rating",
    "remove_sky_slope",
    "stamp_box",
]

#: Iterations and threshold (robust sigmas) of the clipped plane fit in `remove_sky_slope`.
SKY_SLOPE_ITERATIONS = 3
SKY_SLOPE_CLIP = 3.0

log = logging.getLogger(__name__)


class CandidateStatus(enum.Enum):
    """Status of a kernel candidate."""

    UNKNOWN = "UNKNOWN"
    GOOD = "GOOD"
    BAD = "BAD"


@dataclass(frozen=True)
class KernelSolution:
    """One candidate's least-squares kernel.

    Parameters
    ----------
    coefficients : numpy.ndarray, shape (n_basis,)
        Weights of the basis kernels.
    background : float
        Differential background under the stamp, in science image units (0 if not fitted).
    kernel_image : numpy.ndarray, shape (size, size)
        ``sum_i coefficients[i] * basis[i]``, in the stamps' precision (float32 for float32
        stamps).
    normal_matrix, normal_vector : numpy.ndarray
        Unregularised normal equations ``M`` and ``b`` (background last when fitted); the
        spatial fit sums them over candidates.
    condition_number : float
        Condition number of ``M`` (``nan`` when not computed).
    kernel_sum_error : float
        1σ uncertainty of the kernel sum from the least-squares covariance ``M⁻¹``.
    convolved_template : numpy.ndarray or None
        The fit's model ``T ⋆ K`` (science units, without the background) over the fit
        region (the stamp less the kernel half-width on each side), formed from the design
        columns; None when the fit had none (a delta-function basis), and in the solutions
        a fit stores on its candidates: it serves only their single-kernel assessment.
    """

    coefficients: np.ndarray
    background: float
    kernel_image: np.ndarray
    normal_matrix: np.ndarray
    normal_vector: np.ndarray
    condition_number: float = float("nan")
    kernel_sum_error: float = float("nan")
    convolved_template: np.ndarray | None = None

    @property
    def kernel_sum(self) -> float:
        """Sum of the kernel image: the science/template flux ratio at this star."""
        return float(self.kernel_image.sum())


@dataclass(eq=False)
class KernelCandidate:
    """A star usable for kernel fitting.

    Parameters
    ----------
    x, y : float
        Star position in parent pixel coordinates.
    template, science : MaskedImage
        Stamps of the same box in both images (views of the parents).
    rating : float
        Sort key within a cell (higher is visited first); the core S/N (spec §3.6).
    candidate_id : int
        Unique number within its cell set.

    Attributes
    ----------
    status, rejected_by, reason
        GOOD / BAD / UNKNOWN, and for BAD the stage and the reason.
    solutions : dict
        ``"ORIG"``: the fit with the original basis; ``"PCA"``: the latest PCA-basis fit.
    residuals : dict
        ``(mean, std)`` of ``D / σ`` on the stamp, per stage (``"singleKernel"``,
        ``"spatial"``).
    """

    x: float
    y: float
    template: MaskedImage
    science: MaskedImage
    rating: float
    candidate_id: int = 0
    status: CandidateStatus = CandidateStatus.UNKNOWN
    reason: str = ""
    rejected_by: str = ""
    solutions: dict[str, KernelSolution] = field(default_factory=dict)
    residuals: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def is_built(self) -> bool:
        """True once a kernel has been fitted to this candidate."""
        return "ORIG" in self.solutions

    @property
    def recent(self) -> KernelSolution:
        """The latest solution: the PCA-basis one if present, else the original."""
        if "PCA" in self.solutions:
            return self.solutions["PCA"]
        if "ORIG" in self.solutions:
            return self.solutions["ORIG"]
        msg = f"candidate {self.candidate_id} at ({self.x:.1f}, {self.y:.1f}) has no kernel yet"
        raise DiffimValueError(msg)

    def reject(self, stage: str, reason: str) -> None:
        """Mark the candidate BAD, recording the stage and the reason."""
        self.status = CandidateStatus.BAD
        self.rejected_by = stage
        self.reason = reason
        log.debug(
            "candidate %d (%.1f, %.1f) rejected by %s: %s",
            self.candidate_id,
            self.x,
            self.y,
            stage,
            reason,
        )

    def __repr__(self) -> str:
        return (
            f"KernelCandidate(id={self.candidate_id}, x={self.x:.2f}, y={self.y:.2f}, "
            f"rating={self.rating:.3g}, status={self.status.value}"
            + (
                f", rejected_by={self.rejected_by!r}, reason={self.reason!r})"
                if self.reason
                else ")"
            )
        )


def candidate_rating(science: MaskedImage, bad_mask_bits: int, core_radius: int) -> float:
    """Return the mean S/N per pixel in the core of a science stamp (spec §3.6).

    Parameters
    ----------
    science : MaskedImage
        Science stamp.
    bad_mask_bits : int
        Pixels with any of these bits are ignored.
    core_radius : int
        The core is the ``(2 r + 1)²`` box centred on the stamp centre.

    Returns
    -------
    float
        ``mean(image / sqrt(variance))`` over the usable core pixels; ``nan`` if none.
    """
    ny, nx = science.shape
    rows = slice(max(ny // 2 - core_radius, 0), ny // 2 + core_radius + 1)
    cols = slice(max(nx // 2 - core_radius, 0), nx // 2 + core_radius + 1)
    values, _ = normalized_pixels(
        science.image[rows, cols], science.variance[rows, cols], science.mask[rows, cols],
        bad_mask_bits,
    )  # fmt: skip
    return float(np.mean(values)) if values.size else float("nan")


def remove_sky_slope(stamp: MaskedImage, inner_radius: float) -> MaskedImage:
    """Return a copy of a stamp with the slope of its local sky removed.

    A plane ``c + gx·dx + gy·dy`` (``dx, dy`` pixel offsets from the stamp centre) is fitted
    by least squares to the pixels farther than ``inner_radius`` from the centre, clipping
    those more than `SKY_SLOPE_CLIP` robust sigmas (median absolute deviation) from it
    (neighbouring stars, cosmic rays) for `SKY_SLOPE_ITERATIONS` passes; ``gx·dx + gy·dy``
    is subtracted from the image.  The level at the centre is kept, so a background fitted
    to the flattened stamp is still the background at the star.

    Parameters
    ----------
    stamp : MaskedImage
        A candidate stamp (square, odd side, centred on the star); not modified.
    inner_radius : float
        Pixels closer than this to the centre (the star) are not used, in pixels.

    Returns
    -------
    MaskedImage
        A new image plane (same dtype) sharing the mask and variance planes of ``stamp``;
        ``stamp`` itself when fewer than 3 pixels lie outside ``inner_radius``.

    Notes
    -----
    A delta-function kernel needs this (see `diffim.task.cell_set`): a sky gradient in the template
    is carried into the model by every kernel pixel, so a broad pedestal in the kernel
    (whose convolution with the star is nearly flat over the stamp) can fit a difference
    of sky gradients that a constant background cannot, at the cost of a wrong kernel sum.
    """
    ny, nx = stamp.shape
    dy, dx = np.indices(stamp.shape, dtype=float)
    dx -= nx // 2
    dy -= ny // 2
    outer = np.hypot(dx, dy) > inner_radius
    if np.count_nonzero(outer) < 3:
        return stamp
    design = np.stack([np.ones(np.count_nonzero(outer)), dx[outer], dy[outer]], axis=1)
    values = stamp.image[outer].astype(float)
    keep = np.ones(values.size, dtype=bool)
    for _ in range(SKY_SLOPE_ITERATIONS):
        plane, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residuals = values - design @ plane
        _, spread = median_robust_std(residuals[keep])
        # a noise-free sky has zero spread: keep what the plane fits to rounding
        tolerance = max(SKY_SLOPE_CLIP * spread, 1e-9 * np.max(np.abs(values)))
        keep = np.abs(residuals) <= tolerance
        if np.count_nonzero(keep) < 3:
            break
    image = stamp.image - (plane[1] * dx + plane[2] * dy).astype(stamp.dtype)
    return MaskedImage(image, stamp.mask, stamp.variance, xy0=stamp.xy0, planes=stamp.planes)


def stamp_box(x: float, y: float, half_width: int, bounds: BBox) -> BBox:
    """Return the stamp box around a star, shrunk symmetrically where it leaves ``bounds``.

    Parameters
    ----------
    x, y : float
        Star position (parent pixels); the box is centred on the nearest pixel.
    half_width : int
        Pixels on each side of the centre before shrinking.
    bounds : BBox
        The image box the stamp must fit in.

    Returns
    -------
    BBox
        The (possibly empty) box, still centred on the star's pixel (spec §3.5).
    """
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    overflow = max(
        bounds.x_min - (cx - half_width),
        (cx + half_width) - bounds.x_max,
        bounds.y_min - (cy - half_width),
        (cy + half_width) - bounds.y_max,
        0,
    )
    half = half_width - overflow
    if half < 0:
        return BBox(cx, cy, 0, 0)
    return BBox.from_corners(cx - half, cy - half, cx + half, cy + half)


def _rating_order(candidate: KernelCandidate) -> float:
    """Sort key of candidates: best (highest) rating first, non-finite ratings last."""
    return -candidate.rating if math.isfinite(candidate.rating) else math.inf


@dataclass
class SpatialCell:
    """One cell of a `SpatialCellSet`: a box and its candidates, best rating first."""

    bbox: BBox
    candidates: list[KernelCandidate] = field(default_factory=list)

    def insert(self, candidate: KernelCandidate) -> None:
        """Add a candidate, keeping the list sorted by decreasing rating (NaN last), after
        any candidate of equal rating."""
        bisect.insort(self.candidates, candidate, key=_rating_order)

    def visit(self, n_per_cell: int) -> Iterator[KernelCandidate]:
        """Yield the first ``n_per_cell`` candidates that are not BAD when reached.

        A candidate that turns BAD while being visited still counts toward ``n_per_cell``;
        ``n_per_cell = -1`` visits every candidate that is not BAD.
        """
        count = 0
        for candidate in self.candidates:
            if 0 <= n_per_cell <= count:
                return
            if candidate.status is CandidateStatus.BAD:
                continue
            count += 1
            yield candidate

    def n_usable(self) -> int:
        """Number of candidates that are not BAD."""
        return sum(c.status is not CandidateStatus.BAD for c in self.candidates)


class SpatialCellSet:
    """A grid of cells of ``size_x × size_y`` pixels covering ``bbox``.

    Cells tile the box from its lower-left corner; the last row and column are truncated
    at the box edge.

    Parameters
    ----------
    bbox : BBox
        Region covered, in parent pixel coordinates.
    size_x, size_y : int
        Cell size in pixels (``sizeCellX``, ``sizeCellY``).
    """

    def __init__(self, bbox: BBox, size_x: int, size_y: int) -> None:
        if size_x < 1 or size_y < 1:
            msg = f"cell size must be positive, got {size_x} x {size_y}"
            raise DiffimValueError(msg)
        self.bbox = bbox
        self.size_x, self.size_y = size_x, size_y
        self.n_x = max(1, -(-bbox.width // size_x))
        self.n_y = max(1, -(-bbox.height // size_y))
        self.cells = [
            SpatialCell(
                BBox.from_corners(
                    bbox.x_min + i * size_x,
                    bbox.y_min + j * size_y,
                    min(bbox.x_min + (i + 1) * size_x - 1, bbox.x_max),
                    min(bbox.y_min + (j + 1) * size_y - 1, bbox.y_max),
                )
            )
            for j in range(self.n_y)
            for i in range(self.n_x)
        ]

    def insert(self, candidate: KernelCandidate) -> None:
        """Put a candidate into the cell containing its nearest pixel.

        Raises
        ------
        DiffimValueError
            If the candidate lies outside the cell set's box.
        """
        ix = int(np.floor(candidate.x + 0.5)) - self.bbox.x_min
        iy = int(np.floor(candidate.y + 0.5)) - self.bbox.y_min
        if not (0 <= ix < self.bbox.width and 0 <= iy < self.bbox.height):
            msg = (
                f"candidate at ({candidate.x:.1f}, {candidate.y:.1f}) lies outside the cell "
                f"set box {self.bbox}"
            )
            raise DiffimValueError(msg)
        self.cells[(iy // self.size_y) * self.n_x + ix // self.size_x].insert(candidate)

    def visit(self, n_per_cell: int) -> Iterator[KernelCandidate]:
        """Yield, cell by cell, the candidates `SpatialCell.visit` selects."""
        for cell in self.cells:
            yield from cell.visit(n_per_cell)

    def candidates(self) -> Iterator[KernelCandidate]:
        """Yield every candidate, whatever its status."""
        for cell in self.cells:
            yield from cell.candidates

    def __len__(self) -> int:
        return sum(len(cell.candidates) for cell in self.cells)

    def n_usable(self) -> int:
        """Number of candidates that are not BAD."""
        return sum(cell.n_usable() for cell in self.cells)

    def status_counts(self) -> dict[str, int]:
        """Number of candidates per status (GOOD, BAD, UNKNOWN)."""
        counts = dict.fromkeys((s.value for s in CandidateStatus), 0)
        for candidate in self.candidates():
            counts[candidate.status.value] += 1
        return counts

    def rejections_by_stage(self) -> dict[str, int]:
        """Number of BAD candidates per rejecting stage."""
        counts: dict[str, int] = {}
        for candidate in self.candidates():
            if candidate.status is CandidateStatus.BAD:
                counts[candidate.rejected_by] = counts.get(candidate.rejected_by, 0) + 1
        return counts

    def extend(self, candidates: Iterable[KernelCandidate]) -> None:
        """Insert several candidates."""
        for candidate in candidates:
            self.insert(candidate)

    def __repr__(self) -> str:
        return (
            f"SpatialCellSet(bbox={self.bbox}, cells={self.n_x}x{self.n_y}, "
            f"candidates={len(self)}, status={self.status_counts()})"
        )
