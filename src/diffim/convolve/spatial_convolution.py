"""The spatially varying convolution of an image plane and of a masked image.

``K(x, y) = sum_p P_p(x, y) K_p`` is evaluated at each output pixel, so the image costs one
tiled correlation per spatial term and the variance ``var ⋆ K²`` one per term of the
squared kernel's polynomial of twice the order (`_squared_kernel_terms`); the convention
and the measurements are in the notes of `diffim.convolve`.  `convolve_masked_image` also
spreads the mask, flags the footprints of non-finite inputs NO_DATA, marks the border, and
can subtract the convolved image from another one in place.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import DiffimValueError, MaskedPixelsWarning
from ..image import MASK_DTYPE, MaskedImage, MaskPlanes
from ..spatial import SpatialFunction, SpatialKernel, term_powers
from .masks import MASK_STRIPE_ROWS, _box_or, spread_mask
from .tiles import (
    _add_non_negative,
    _assign,
    _assign_non_negative,
    _correlate_valid_tiled,
    _float_dtype,
    _Store,
    _subtract,
    resolve_workers,
)

__all__ = ["convolve_image", "convolve_masked_image"]


def _product_1d(a: int, b: int, kind: str) -> list[tuple[int, float]]:
    """Return the product of the 1-d terms of degree ``a`` and ``b`` as (degree, weight)."""
    if kind == "polynomial":
        return [(a + b, 1.0)]
    return [(a + b, 0.5), (abs(a - b), 0.5)]  # T_a T_b = (T_{a+b} + T_{|a-b|}) / 2


def _squared_kernel_terms(kernel: SpatialKernel) -> tuple[SpatialFunction, np.ndarray]:
    """Return ``(F, L)`` with ``K(x, y)² = sum_m F_m(x, y) L_m`` elementwise, exactly.

    ``F`` is the order-``2n`` polynomial of the kernel's kind and box; ``L_m`` gathers the
    products ``K_p K_q`` whose ``P_p P_q`` contain the term ``F_m``.
    """
    function = kernel.function
    double = SpatialFunction(function.kind, 2 * function.order, function.bbox)
    index = {powers: m for m, powers in enumerate(term_powers(double.order))}
    powers = term_powers(function.order)
    expansion = np.zeros((len(powers), len(powers), len(index)))
    for p, (xp, yp) in enumerate(powers):
        for q, (xq, yq) in enumerate(powers):
            for x_power, x_weight in _product_1d(xp, xq, function.kind):
                for y_power, y_weight in _product_1d(yp, yq, function.kind):
                    expansion[p, q, index[(x_power, y_power)]] += x_weight * y_weight
    terms = kernel.term_kernels()
    return double, np.einsum("pqm,pij,qij->mij", expansion, terms, terms)


def _spatial_correlate(
    plane: np.ndarray,
    function: SpatialFunction,
    kernels: np.ndarray,
    xy0: tuple[int, int],
    out: np.ndarray,
    workers: int,
    store: _Store = _assign,
) -> None:
    """Write ``sum_m F_m(x, y) (plane ⋆ kernels[m])`` over the valid region into ``out``.

    ``F_m`` are the terms of ``function`` at the parent pixel ``(x, y)`` of each output
    pixel (``plane[0, 0]`` is parent pixel ``xy0``); all-zero kernels are skipped.  The
    sum goes into ``out`` through ``store`` (see `_correlate_valid_tiled`).
    """
    c = kernels.shape[-1] // 2
    if min(out.shape) <= 0:
        return
    xs = xy0[0] + c + np.arange(out.shape[1], dtype=float)
    ys = xy0[1] + c + np.arange(out.shape[0], dtype=float)
    keep = [m for m in range(len(kernels)) if np.any(kernels[m])]
    factors = function.terms_separable(xs, ys)
    weights = [  # a factor equal to 1 everywhere (the constant term) costs nothing
        tuple(None if np.all(f == 1.0) else f.astype(plane.dtype) for f in factors[m])
        for m in keep
    ]
    x_powers = [term_powers(function.order)[m][0] for m in keep]  # terms sharing f(x)
    _correlate_valid_tiled(plane, kernels[keep], out, weights, workers, x_powers, store)


def _interior(shape: tuple[int, int], c: int) -> tuple[slice, slice]:
    return slice(c, max(shape[0] - c, c)), slice(c, max(shape[1] - c, c))


def convolve_image(
    image: np.ndarray,
    kernel: SpatialKernel,
    *,
    xy0: tuple[int, int] = (0, 0),
    workers: int | None = None,
) -> np.ndarray:
    """Convolve an image plane with a spatially varying kernel (no variance, no mask).

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        Finite pixel values (ADU or e-).
    kernel : SpatialKernel
        Applied as in `convolve_masked_image`.
    xy0 : tuple of int
        Parent coordinates ``(x0, y0)`` of ``image[0, 0]``.
    workers : int, optional
        Threads to use; all available cores by default.

    Returns
    -------
    numpy.ndarray, shape (ny, nx)
        ``sum_p P_p (image ⋆ K_p)``, NaN within ``size // 2`` of the edges; float32 for a
        float32 image, else float64.
    """
    image = np.asarray(image)
    image = image.astype(_float_dtype(image), copy=False)
    out = np.full_like(image, np.nan)
    interior = _interior(image.shape, kernel.half_width)
    function, kernels = kernel.function, kernel.term_kernels()
    _spatial_correlate(image, function, kernels, xy0, out[interior], resolve_workers(workers))
    return out


def _all_finite(plane: np.ndarray) -> bool:
    """Return whether every value of ``plane`` is finite, checked in stripes of
    `MASK_STRIPE_ROWS` rows: a whole-plane test held 8 MiB more at 2048²."""
    return all(
        np.isfinite(plane[start : start + MASK_STRIPE_ROWS]).all()
        for start in range(0, plane.shape[0], MASK_STRIPE_ROWS)
    )


def _finite_planes(masked_image: MaskedImage) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return image and variance with non-finite pixels set to 0, and where they were."""
    image, variance = masked_image.image, masked_image.variance
    if _all_finite(image) and _all_finite(variance):
        return image, variance, None
    bad = ~np.isfinite(image)
    bad |= ~np.isfinite(variance)
    msg = (
        f"{np.count_nonzero(bad)} pixels with non-finite image or variance were set to 0 "
        "and flagged NO_DATA, spread over the kernel footprint; mask them before convolving"
    )
    warnings.warn(msg, MaskedPixelsWarning, stacklevel=3)
    return np.where(bad, 0, image), np.where(bad, 0, variance), bad


def _border_slices(shape: tuple[int, int], c: int) -> list[tuple[slice, slice]]:
    """Return slices that cover the pixels closer than ``c`` to an edge, without overlap."""
    ny, nx = shape
    top, left = min(c, ny), min(c, nx)
    bottom, right = max(ny - c, top), max(nx - c, left)
    rows = slice(top, bottom)
    return [
        (slice(0, top), slice(None)),
        (slice(bottom, ny), slice(None)),
        (rows, slice(0, left)),
        (rows, slice(right, nx)),
    ]


def _convolved_mask(
    masked_image: MaskedImage,
    bad: np.ndarray | None,
    planes: MaskPlanes,
    c: int,
    spread_bits: int | None,
    copy_edge: bool,
    workers: int,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """Spread the mask, flag non-finite inputs' footprints NO_DATA, and mark the border.

    With ``into`` (not with ``copy_edge``) all of it is ORed into that mask.
    """
    mask = spread_mask(masked_image.mask, c, spread_bits, workers=workers, into=into)
    no_data = MASK_DTYPE(0)
    if bad is not None:
        no_data = MASK_DTYPE(1 << planes.add("NO_DATA"))
        np.bitwise_or(mask, no_data, out=mask, where=_box_or(bad, c, workers))
    if c == 0:
        return mask
    if copy_edge:
        edge = MASK_DTYPE(1 << planes.add("EDGE"))
        for rows, cols in _border_slices(mask.shape, c):
            mask[rows, cols] = masked_image.mask[rows, cols] | edge
            if bad is not None:
                mask[rows, cols] |= np.where(bad[rows, cols], no_data, 0)
    else:
        no_data = MASK_DTYPE(1 << planes.add("NO_DATA"))
        for rows, cols in _border_slices(mask.shape, c):
            mask[rows, cols] |= no_data
    return mask


def convolve_masked_image(
    masked_image: MaskedImage,
    kernel: SpatialKernel,
    *,
    spread_mask_bits: int | None = None,
    copy_edge: bool = False,
    workers: int | None = None,
    subtract_from: MaskedImage | None = None,
) -> MaskedImage:
    """Convolve a masked image with a spatially varying kernel (afw's convolve, exactly).

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), variance (image units squared) and mask to convolve.
    kernel : SpatialKernel
        ``K(x, y) = sum_p P_p(x, y) K_p``, evaluated at each *output* pixel's parent
        coordinates ``(x0 + col, y0 + row)``; applied as a correlation (see `diffim.convolve`).
    spread_mask_bits : int, optional
        Mask bits ORed over the full kernel box (the Alard-Lupton basis is non-zero
        everywhere); all bits by default.  Other bits are copied from the input pixel.
    copy_edge : bool
        Border pixels (closer than ``c = size // 2`` to an edge) get the input pixels with
        the EDGE bit added (afw ``doCopyEdge=True``) instead of image NaN, variance +inf and
        the NO_DATA bit added to the spread mask (afw's default, which replaces the mask).
    workers : int, optional
        Threads to use; all available cores by default.
    subtract_from : MaskedImage, optional
        An image of the same shape and origin (e.g. the science image; it keeps its own
        dtype) from which to subtract the convolved image in its own planes, instead of
        returning a new one: its image becomes ``subtract_from - T ⋆ K`` (NaN on the border), its
        variance gains ``var ⋆ K²`` (+inf on the border), its mask is ORed with the
        convolved mask, and it is returned.  This saves a whole image (48 MiB at 2048²
        float32); ``copy_edge`` must then be False.

    Returns
    -------
    MaskedImage
        New image of the input's dtype, box, origin and (copied) mask planes: image
        ``sum_p P_p (T ⋆ K_p)``, variance ``sum_{p,q} P_p P_q (var ⋆ K_p K_q)`` clipped at
        0 (FFT round-off), mask as above; or ``subtract_from``, updated.

    Warns
    -----
    MaskedPixelsWarning
        If some image or variance pixels are NaN or infinite.  They are treated as NO_DATA
        input pixels: set to 0 before the transforms, and NO_DATA is set on every output
        pixel whose kernel footprint covers one (whatever ``spread_mask_bits`` says).
    """
    if not isinstance(kernel, SpatialKernel):
        msg = f"kernel must be a SpatialKernel, got {type(kernel).__name__}"
        raise DiffimValueError(msg)
    if spread_mask_bits is not None and spread_mask_bits < 0:
        msg = f"spread_mask_bits must be a non-negative bit mask, got {spread_mask_bits}"
        raise DiffimValueError(msg)
    workers, c = resolve_workers(workers), kernel.half_width
    image, variance, bad = _finite_planes(masked_image)
    interior, xy0 = _interior(image.shape, c), masked_image.xy0
    if subtract_from is None:
        fill = (masked_image.image, masked_image.variance) if copy_edge else (np.nan, np.inf)
        out_image, out_variance = np.empty_like(image), np.empty_like(variance)
        out_image[...], out_variance[...] = fill
        store_image, store_variance = _assign, _assign_non_negative
    else:
        _check_subtract_from(masked_image, subtract_from, copy_edge)
        out_image, out_variance = subtract_from.image, subtract_from.variance
        for rows, cols in _border_slices(image.shape, c):
            out_image[rows, cols], out_variance[rows, cols] = np.nan, np.inf
        store_image, store_variance = _subtract, _add_non_negative
    terms = kernel.term_kernels()
    _spatial_correlate(
        image, kernel.function, terms, xy0, out_image[interior], workers, store_image
    )
    squared_function, squared_terms = _squared_kernel_terms(kernel)
    _spatial_correlate(
        variance,
        squared_function,
        squared_terms,
        xy0,
        out_variance[interior],
        workers,
        store_variance,
    )
    planes = masked_image.planes.copy()
    into = None if subtract_from is None else subtract_from.mask
    mask = _convolved_mask(
        masked_image, bad, planes, c, spread_mask_bits, copy_edge, workers, into
    )
    if subtract_from is None:
        return MaskedImage(out_image, mask, out_variance, xy0=masked_image.xy0, planes=planes)
    subtract_from.planes = subtract_from.planes.merged(planes)
    return subtract_from


def _check_subtract_from(
    masked_image: MaskedImage, subtract_from: MaskedImage, copy_edge: bool
) -> None:
    """Raise DiffimValueError unless ``subtract_from`` can take the difference in place."""
    if copy_edge:
        msg = "subtract_from needs copy_edge=False: the border of a difference has no data"
        raise DiffimValueError(msg)
    same = (subtract_from.shape, subtract_from.xy0) == (masked_image.shape, masked_image.xy0)
    if not same:
        msg = (
            f"subtract_from must match the convolved image: shape {masked_image.shape}, "
            f"origin {masked_image.xy0}; got {subtract_from.shape}, {subtract_from.xy0}"
        )
        raise DiffimValueError(msg)
    planes = ("image", "variance", "mask")
    if any(
        np.may_share_memory(getattr(subtract_from, a), getattr(masked_image, b))
        for a in planes
        for b in planes
    ):
        msg = (
            "subtract_from shares pixels with the image being convolved, which the "
            "tiles would overwrite before they read them; pass a copy"
        )
        raise DiffimValueError(msg)
