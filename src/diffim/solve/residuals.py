"""Residuals of kernel fits: each candidate's difference ``I - (K ⋆ T + b)`` over its fit
region, its variance and usable pixels, and the statistics of ``D / σ`` (spec §3.9).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..candidates import KernelCandidate
from ..convolve import correlate_valid_pairs, correlate_valid_stack
from ._stamps import _batches, _crop

__all__ = [
    "candidate_residuals",
    "residual_statistics",
    "residual_statistics_of",
    "residuals_of",
]


#: Stamp-sized arrays `_residual_batches` holds per candidate, which sizes its batches
#: (`BATCH_VALUES`): with 4, a batch of 283 43² stamps made 31 MB of transients.
RESIDUAL_PLANES = 16


def _residual_batches(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    bad_mask_bits: int,
    convolved_templates: Sequence[np.ndarray | None] | None = None,
) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, difference, variance, usable)`` for batches of same-shape stamps.

    The template stamps and variances of a batch are correlated with their ``K`` and
    ``K²`` in one FFT; the arrays have shape ``(len(indices), ny, nx)``.  Where every
    candidate of a batch has its ``T ⋆ K`` in ``convolved_templates`` (a single-kernel
    fit's model), only the variances are correlated.
    """
    # ~16 stamp-sized arrays per candidate: its stamps and kernels, their spectra and
    # products, the science planes, the difference, its variance and the bad pixels
    for indices in _batches(candidates, RESIDUAL_PLANES):
        batch = [candidates[i] for i in indices]
        n = len(batch)
        kernels = np.stack([kernel_images[i] for i in indices])
        half_width = kernels.shape[1] // 2
        models = (
            [None] * n
            if convolved_templates is None
            else [convolved_templates[i] for i in indices]
        )
        if any(model is None for model in models):
            stamps = np.stack(
                [c.template.image for c in batch] + [c.template.variance for c in batch]
            )
            squares = np.concatenate([kernels, kernels**2]).astype(stamps.dtype)  # float32 FFTs
            convolved = correlate_valid_pairs(stamps, squares)
            models, convolved_variance = convolved[:n], convolved[n:]
        else:
            stamps = np.stack([c.template.variance for c in batch])
            convolved_variance = correlate_valid_pairs(stamps, (kernels**2).astype(stamps.dtype))
        science_image, science_variance, science_mask = (
            _crop(np.stack([getattr(c.science, plane) for c in batch]), half_width)
            for plane in ("image", "variance", "mask")
        )
        offsets = np.array([backgrounds[i] for i in indices])[:, None, None]
        difference = science_image - np.asarray(models) - offsets
        variance = convolved_variance + science_variance
        bad = (science_mask & bad_mask_bits) != 0
        template_bad = (np.stack([c.template.mask for c in batch]) & bad_mask_bits) != 0
        if template_bad.any():
            box = np.ones((1, *kernels.shape[1:]))
            bad |= correlate_valid_stack(template_bad.astype(float), box)[:, 0] > 0.5
        yield indices, difference, variance, ~bad


def residuals_of(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    bad_mask_bits: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Return each candidate's difference ``I - (K ⋆ T + b)`` over its fit region.

    Returns
    -------
    list of (difference, variance, usable)
        Per candidate: the difference (science units), its variance
        ``var_I + K² ⋆ var_T``, and ``usable``, False where a bad-plane bit of the science
        pixel, or of any template pixel under the kernel footprint, is set.
    """
    results: list = [None] * len(candidates)
    for indices, difference, variance, usable in _residual_batches(
        candidates, kernel_images, backgrounds, bad_mask_bits
    ):
        for row, index in enumerate(indices):
            results[index] = (difference[row], variance[row], usable[row])
    return results


def candidate_residuals(
    candidate: KernelCandidate, kernel_image: np.ndarray, background: float, bad_mask_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one candidate's ``(difference, variance, usable)``; see `residuals_of`."""
    return residuals_of([candidate], [kernel_image], [background], bad_mask_bits)[0]


def residual_statistics_of(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    *,
    bad_mask_bits: int,
    core_radius: int | None = None,
    convolved_templates: Sequence[np.ndarray | None] | None = None,
) -> list[tuple[float, float, int]]:
    """Return the mean and standard deviation of ``D / σ`` on candidates (spec §3.9 step 2).

    Parameters
    ----------
    candidates : sequence of KernelCandidate
        The stamps.
    kernel_images : sequence of numpy.ndarray
        Per candidate, the kernel image applied to its template stamp.
    backgrounds : sequence of float
        Per candidate, the background subtracted with it.
    bad_mask_bits : int
        Pixels flagged with these bits are ignored.
    core_radius : int, optional
        If given, use only the ``(2 r + 1)²`` core box around each stamp centre.
    convolved_templates : sequence of numpy.ndarray or None, optional
        Per candidate, its ``T ⋆ K`` over the fit region if known (a single-kernel fit's
        `KernelSolution.convolved_template`), which spares correlating its template.

    Returns
    -------
    list of (mean, std, n)
        Mean and standard deviation (``nan`` when fewer than two pixels are usable) and
        the number of pixels used, per candidate.
    """
    statistics: list = [None] * len(candidates)
    for indices, difference, variance, usable in _residual_batches(
        candidates, kernel_images, backgrounds, bad_mask_bits, convolved_templates
    ):
        if core_radius is not None:
            ny, nx = difference.shape[1:]
            core = np.zeros((ny, nx), dtype=bool)
            core[
                max(ny // 2 - core_radius, 0) : ny // 2 + core_radius + 1,
                max(nx // 2 - core_radius, 0) : nx // 2 + core_radius + 1,
            ] = True
            usable &= core
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized = difference / np.sqrt(variance)
            usable &= np.isfinite(normalized) & (variance > 0)
            n = usable.sum(axis=(1, 2))
            mean = np.where(usable, normalized, 0.0).sum(axis=(1, 2)) / n
            deviations = np.where(usable, normalized - mean[:, None, None], 0.0)
            std = np.sqrt((deviations**2).sum(axis=(1, 2)) / (n - 1))
        for row, index in enumerate(indices):
            if n[row] < 2:
                statistics[index] = (float("nan"), float("nan"), int(n[row]))
            else:
                statistics[index] = (float(mean[row]), float(std[row]), int(n[row]))
    return statistics


def residual_statistics(
    candidate: KernelCandidate,
    kernel_image: np.ndarray,
    background: float,
    *,
    bad_mask_bits: int,
    core_radius: int | None = None,
) -> tuple[float, float, int]:
    """Return ``(mean, std, n)`` of ``D / σ`` on one candidate; see `residual_statistics_of`."""
    return residual_statistics_of(
        [candidate], [kernel_image], [background],
        bad_mask_bits=bad_mask_bits, core_radius=core_radius,
    )[0]  # fmt: skip
