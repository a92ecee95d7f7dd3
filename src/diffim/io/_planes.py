"""The planes of an exposure read from a file or a CCDData: mask, variance and NO_DATA.

An integer mask and its ``MP_`` cards become an int32 mask and its planes; a variance,
weight or sigma map becomes a variance; a missing variance is estimated from the gain or
the sky noise; pixels with a non-finite value or variance are masked ``NO_DATA``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import (
    DiffimError,
    DiffimIOError,
    DiffimValueError,
    MaskedPixelsWarning,
    VarianceEstimatedWarning,
)
from ..fitswcs import Notes
from ..image import DEFAULT_MASK_PLANES, MASK_DTYPE, MaskPlanes
from ..stats import median_robust_std
from ._layout import _planes_from_header


def _mask_from_array(
    array: np.ndarray,
    header: Mapping | None,
    label: str,
    *,
    default_planes: bool,
    copy: bool = True,
) -> tuple[np.ndarray, MaskPlanes]:
    """Return an int32 mask and its planes; without MP_ cards any non-zero value is BAD.

    With ``copy=False`` an int32 ``array`` (read from a file, owned by the caller) is
    returned as the mask itself, else the mask is always a new array.
    """
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
            msg = f"{label} holds non-integer values; a mask must hold integer bit planes"
            raise DiffimIOError(msg)
        array = array.astype(np.int64)
    try:
        planes = _planes_from_header(header)
    except DiffimValueError as exc:
        msg = f"{label} has invalid MP_ mask-plane cards: {exc}"
        raise DiffimIOError(msg) from exc
    if planes is None and not default_planes:
        bad = np.int32(1 << DEFAULT_MASK_PLANES["BAD"])
        return np.where(array != 0, bad, np.int32(0)).astype(MASK_DTYPE), MaskPlanes()
    limit = np.iinfo(MASK_DTYPE).max
    if array.size and (
        array.min() < 0 or (np.iinfo(array.dtype).max > limit and array.max() > limit)
    ):
        msg = f"{label} has values outside 0..2**31-1; mask bits 31 and above are not supported"
        raise DiffimIOError(msg)
    return array.astype(MASK_DTYPE, copy=copy), planes or MaskPlanes()


def _variance_from_map(
    array: np.ndarray,
    kind: str,
    label: str,
    error: type[DiffimError] = DiffimIOError,
    *,
    dtype: np.dtype | type = np.float64,
    copy: bool = True,
) -> np.ndarray:
    """Convert a variance, weight (inverse variance) or sigma map to a variance of ``dtype``.

    Weights and sigmas are converted in float64 and rounded once to ``dtype``.  With
    ``copy=False`` a variance ``array`` of ``dtype`` (read from a file, owned by the caller)
    is returned itself, else the result is always a new array.
    """
    with np.errstate(invalid="ignore"):
        n_negative = int(np.count_nonzero(array < 0))
    if n_negative:
        msg = f"{label}: {n_negative} {kind} values are negative; a {kind} must be >= 0"
        raise error(msg)
    if kind == "variance":
        return array.astype(dtype, copy=copy)
    values = array.astype(np.float64)
    if kind == "weight":
        with np.errstate(divide="ignore"):
            np.divide(1.0, values, out=values)
    else:
        np.multiply(values, values, out=values)
    return values.astype(dtype, copy=False)


def _pixel_noise(image: np.ndarray, usable: np.ndarray) -> float:
    """Robust per-pixel noise (image units) from differences of neighbouring pixels.

    ``1.4826 · MAD(Δ) / √2`` over horizontal and vertical neighbour pairs: unlike the spread
    of the pixel values it is not inflated by sky gradients or by a crowded field (measured:
    2.3× less bias on a simulated field with a sky gradient, 3× on a crowded bulge field).
    For noise correlated between neighbours (a resampled image) it reads low by ``1 - ρ``.
    """
    values = np.concatenate(
        [
            (image[:, 1:] - image[:, :-1])[usable[:, 1:] & usable[:, :-1]],
            (image[1:, :] - image[:-1, :])[usable[1:, :] & usable[:-1, :]],
        ],
        dtype=np.float64,
    )
    if values.size == 0:
        return 0.0
    _, robust_std = median_robust_std(values, overwrite_input=True)  # a copy of its own
    return float(robust_std / np.sqrt(2))


def _estimate_variance(
    image: np.ndarray, usable: np.ndarray, gain: float | None, read_noise: float, label: str
) -> tuple[np.ndarray, str, str]:
    """Return (variance, source, message) from the gain, or else from the sky noise."""
    if not usable.any():
        msg = f"{label} has no finite unmasked pixel; cannot estimate its variance"
        raise DiffimIOError(msg)
    from astropy.stats import sigma_clipped_stats

    _, sky, _ = sigma_clipped_stats(image[usable], sigma=3.0, stdfunc="mad_std")
    sky_sigma = _pixel_noise(image, usable)
    if gain is None:
        sky_variance = float(sky_sigma) ** 2
        msg = (
            f"{label} has no variance and no gain; using the robust sky noise squared "
            f"({sky_variance:.4g}) as a constant variance. Pass variance=, weight=, sigma= "
            "or gain= for a per-pixel variance"
        )
        return np.full(image.shape, sky_variance, dtype=image.dtype), "sky-noise", msg
    read_variance = (read_noise / gain) ** 2
    variance = np.maximum(image - sky, 0.0) / gain + read_variance + max(sky, 0.0) / gain
    msg = (
        f"{label} has no variance; estimated it as Poisson + read noise from gain {gain:g} "
        f"e-/ADU, read noise {read_noise:g} e- and sky {sky:.4g} ADU"
    )
    model_sky_variance = read_variance + max(sky, 0.0) / gain
    measured_sky_variance = float(sky_sigma) ** 2
    if not 0.5 <= measured_sky_variance / model_sky_variance <= 2.0:
        # A background-subtracted (or resampled) image: the sky term of the model is wrong,
        # the measured sky noise is right; sources keep their Poisson term.
        variance = np.maximum(image - sky, 0.0) / gain + measured_sky_variance
        msg += (
            f"; the measured sky variance {measured_sky_variance:.4g} differs from that "
            f"model's {model_sky_variance:.4g} by more than 2x (a background-subtracted or "
            "resampled image, or a wrong gain), so the measured sky variance plus the sources' "
            "Poisson term was used: pass variance= for an exact one"
        )
        return variance.astype(image.dtype), "gain+sky-noise", msg
    return variance.astype(image.dtype), "gain", msg


def _complete(
    image: np.ndarray,
    mask: np.ndarray,
    planes: MaskPlanes,
    variance: np.ndarray | None,
    *,
    label: str,
    gain: float | None,
    read_noise: float,
) -> tuple[np.ndarray, str | None, Notes]:
    """Estimate a missing variance and mask non-finite pixels as NO_DATA (image 0, var 0).

    Modifies ``image``, ``mask`` and ``planes`` in place; returns the variance, its
    estimated source (or None) and the warnings to issue.
    """
    notes: Notes = []
    source = None
    if variance is None:
        usable = np.isfinite(image) & (mask == 0)
        variance, source, message = _estimate_variance(image, usable, gain, read_noise, label)
        notes.append((message, VarianceEstimatedWarning))
    variance = variance.astype(image.dtype, copy=False)
    unusable = ~(np.isfinite(image) & np.isfinite(variance))
    if unusable.any():
        no_data = np.int32(1 << planes.add("NO_DATA"))
        n_new = int(np.count_nonzero(unusable & ((mask & no_data) == 0)))
        image[unusable], variance[unusable] = 0, 0
        mask[unusable] |= no_data
        if n_new:
            message = (
                f"{label}: {n_new} pixels have a non-finite value or variance (or zero "
                "weight); set them to 0 and masked them NO_DATA"
            )
            notes.append((message, MaskedPixelsWarning))
    return variance, source, notes


def _float_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` if it is float32 or float64, else a float64 copy (as MaskedImage)."""
    return image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
