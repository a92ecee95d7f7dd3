"""The task's kernel candidates: star positions, checked images, vetted stamps, a cell set.

What `ImagePsfMatchTask.matchMaskedImages` and `ImagePsfMatchTask.makeCandidateList` do
before any fit: read the candidate list's positions (`_positions`), check the two images
(`_sanitize`, `_check_usable`), and cut, vet and rate a stamp around each star into a
`SpatialCellSet` (`_build_cell_set`, spec §1.10, §3.5).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..candidates import (
    KernelCandidate,
    SpatialCellSet,
    candidate_rating,
    remove_sky_slope,
    stamp_box,
)
from ..errors import DiffimValueError, InsufficientKernelSourcesError, MaskedPixelsWarning
from ..image import MaskedImage, bits_set
from ..spatial import n_spatial_terms

if TYPE_CHECKING:
    from ..config import PsfMatchConfig

#: A delta-function stamp reaches at least this many kernel half-widths h from the star, so
#: its fit region (the stamp less h on each side) reaches 2 h: a star shifted by any kernel
#: pixel keeps its core in the fit region (see `_build_cell_set`).
DF_STAMP_KERNEL_HALF_WIDTHS = 3

#: Fewest fit-region pixels per unknown of a single-kernel fit for an edge-shrunk stamp.
MIN_PIXELS_PER_PARAMETER = 4


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
    bad = ~np.isfinite(masked_image.image)
    bad |= ~np.isfinite(masked_image.variance)
    negative = masked_image.variance < 0  # False for nan; -inf is in `bad`
    if negative.any() and np.any(negative & ~bad):
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


def _check_usable(masked_image: MaskedImage, name: str, bad_bits: int) -> None:
    """Refuse an image every pixel of which has one of ``bad_bits`` set."""
    if bits_set(masked_image.mask, bad_bits).all():
        msg = f"every pixel of the {name} image is masked with a bad plane"
        raise DiffimValueError(msg)


def _n_fit_parameters(cfg: PsfMatchConfig) -> int:
    """Unknowns of one candidate's fit: basis kernels plus the background, if fitted."""
    if cfg.kernelBasisSet == "alard-lupton":
        n_basis = sum(n_spatial_terms(degree) for degree in cfg.alardDegGauss)
    else:
        n_basis = cfg.kernelSize**2
    return n_basis + int(cfg.fitForBackground)


def _build_cell_set(
    cfg: PsfMatchConfig,
    template: MaskedImage,
    science: MaskedImage,
    positions: np.ndarray,
    kernel_size: int,
    half_width: int,
    n_parameters: int,
) -> tuple[SpatialCellSet, dict[str, int]]:
    """Cut stamps around the positions, vet them, and fill a cell set (spec §1.10, §3.5).

    ``cfg`` is the active kernel config and ``half_width`` the stamps' half-width for a
    kernel of ``kernel_size`` (`ImagePsfMatchTask.stamp_half_width`).

    Stamps shrunk at the image edge are kept only while their fit region (the stamp less
    the kernel half-width on each side) has ``MIN_PIXELS_PER_PARAMETER`` pixels for each
    of the ``n_parameters`` unknowns of a single-kernel fit, or is as large as a full
    stamp's (a delta-function basis has more unknowns than pixels and relies on its
    regularization).

    With a delta-function basis each stamp also loses the slope of its local sky
    (`remove_sky_slope`, fitted outside half the stamp's half-width), and the stamps
    are larger (`ImagePsfMatchTask.stamp_half_width`).  Each kernel pixel carries a copy of
    the template, its sky included, into the model; where the fit region is barely larger
    than the kernel, a broad pedestal in the kernel smears the star almost uniformly over
    it and is then nearly degenerate with the constant background, and a template sky
    gradient lets that pedestal fit a differential gradient: the kernel sum came out
    anywhere in 0.5-1.3 for a true 1.1.
    """
    vet_bits = template.bitmask(list(cfg.detectionConfig.badMaskPlanes))
    rating_bits = science.bitmask(list(cfg.badMaskPlanes))
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
