"""Convolution of masked images with spatially varying kernels, in afw's convention.

afw's "convolution" is a correlation: a kernel ``k`` of odd size ``2c + 1`` gives
``out[y, x] = sum_{j,i} in[y - c + j, x - c + i] k[j, i]`` (a delta at ``(c + dx, c + dy)``
gives ``out[y, x] = in[y + dy, x + dx]``).  ``K(x, y) = sum_p P_p(x, y) K_p`` is evaluated
at the *output* pixel, so ``T ⋆ K = sum_p P_p (T ⋆ K_p)`` and ``var ⋆ K² = sum_{p,q} P_p
P_q (var ⋆ K_p K_q)`` exactly: one correlation per spatial term, no kernel interpolation.

Design, measured on 2 cores (2048² float32, kernel 21, order 2; bench_convolve.py):

* Overlap-save tiles of ~340² on one thread per core beat one whole-image FFT per term
  by 4-8x (image terms 0.13 s against 1.08 s; all terms 1.0 against 4.5 CPU s): tile
  FFTs stay in cache, kernel spectra are computed once at the tile size, and no
  full-size complex array is ever held.
* The 21 products ``P_p P_q`` of order 2 span only the 15 order-4 terms of the same kind
  (``T_a T_b = (T_{a+b} + T_{|a-b|}) / 2``): the variance costs 15 exact correlations,
  so no coarser approximation is needed.
* Masks spread with a separable running OR (log-step shifts) of all bits at once, in
  row stripes on threads: 0.06 s for 4096² (1.6 s with per-bit ``maximum_filter1d``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from .errors import DiffimValueError, MaskedPixelsWarning
from .image import MASK_DTYPE, MaskedImage, MaskPlanes
from .spatial import SpatialFunction, SpatialKernel, term_powers

__all__ = [
    "convolve_image",
    "convolve_masked_image",
    "correlate_fft",
    "correlate_valid_pairs",
    "correlate_valid_stack",
    "delta_function_shifts",
    "resolve_workers",
    "spread_mask",
]

#: Target width in pixels of the valid output of one overlap-save tile; measured best of
#: 128-1024 for kernels 21-35 on 2048² and 4096² images (cache-sized FFTs, ~10% overlap).
TILE_STEP = 340
#: Rows per stripe when spreading masks (stripe plus halo stays in the L2 cache).
MASK_STRIPE_ROWS = 128
#: `correlate_valid_stack` uses im2col + matmul ("direct") from this many kernels on, FFTs
#: below.  For 27 kernels on 43² stamps direct is at best 1.1-1.4x faster, but it runs on
#: multithreaded OpenBLAS, whose small products slowed from 0.8 ms to 36 ms (median) with
#: the other core busy (pytest -n 2, Dask); single-threaded pocketfft does not (1-7 ms).
DIRECT_MIN_KERNELS = 100

# (fx, gy): factors of a separable weight, None meaning 1 everywhere.
_Weight = tuple[np.ndarray | None, np.ndarray | None]
# How a tile's weighted sum goes into the output: store(output view, tile sum).
_Store = Callable[[np.ndarray, np.ndarray], None]


def _assign(view: np.ndarray, total: np.ndarray) -> None:
    view[...] = total


def _subtract(view: np.ndarray, total: np.ndarray) -> None:
    np.subtract(view, total, out=view)


def _add_non_negative(view: np.ndarray, total: np.ndarray) -> None:
    """Add a convolved variance, clipped at 0 (FFT round-off) like the stored one."""
    view += np.maximum(total, 0, out=total)


def resolve_workers(workers: int | None) -> int:
    """Return the number of FFT threads: ``workers``, or every core available if None."""
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if int(workers) < 1:
        msg = f"workers must be a positive number of threads, got {workers}"
        raise DiffimValueError(msg)
    return int(workers)


def _run_threads(func: Callable[[tuple[int, int]], None], items: list, workers: int) -> None:
    """Call ``func`` on every item, on up to ``workers`` threads (numpy releases the GIL)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            func(item)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        list(pool.map(func, items))  # list() re-raises a worker's exception


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    dtype = np.result_type(*arrays)
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def _check_kernels(kernels: np.ndarray) -> np.ndarray:
    kernels = np.asarray(kernels)
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2] or kernels.shape[1] % 2 != 1:
        msg = f"kernels must have shape (n, size, size) with odd size, got {kernels.shape}"
        raise DiffimValueError(msg)
    return kernels


# -- overlap-save engine -----------------------------------------------------------------
def _tile_axis(n_valid: int, half_width: int, target: int) -> tuple[int, int]:
    """Return ``(fft_length, step)`` that cover ``n_valid`` outputs with near-equal tiles."""
    n_tiles = -(-n_valid // target)
    fft_length = scipy.fft.next_fast_len(-(-n_valid // n_tiles) + 2 * half_width, real=True)
    return fft_length, fft_length - 2 * half_width


def _correlate_valid_tiled(
    plane: np.ndarray,
    kernels: np.ndarray,
    out: np.ndarray,
    weights: Sequence[_Weight] | None,
    workers: int,
    x_groups: Sequence[int] | None = None,
    store: _Store = _assign,
) -> None:
    """Write the valid-region correlation of ``plane`` with every kernel into ``out``.

    With ``weights`` (one ``(fx, gy)`` per kernel, over the valid columns and rows),
    ``out`` (shape ``(ny - 2c, nx - 2c)``) receives ``sum_m fx_m gy_m (plane ⋆ k_m)``,
    each tile's sum put there by ``store(view, sum)`` (assigned, or e.g. subtracted);
    without, ``out[m]`` receives ``plane ⋆ k_m``.  Overlap-save: each tile's block of
    ``step + 2c`` pixels is transformed once; its first ``step`` circular outputs are exact.

    Kernels with the same ``x_groups`` key must share their ``fx``.  The inverse transform
    is then split: the column pass runs per kernel and is weighted by ``gy`` (a function
    of the row alone, it commutes with the row pass), and the row pass runs once per group
    on the summed columns before ``fx`` weights it: 15 variance terms of an order-2 kernel
    need 5 row passes instead of 15.
    """
    c = kernels.shape[-1] // 2
    n_valid_y, n_valid_x = plane.shape[0] - 2 * c, plane.shape[1] - 2 * c
    if n_valid_y <= 0 or n_valid_x <= 0 or len(kernels) == 0:
        return
    (fft_y, step_y), (fft_x, step_x) = (
        _tile_axis(n, c, TILE_STEP) for n in (n_valid_y, n_valid_x)
    )
    fft_shape = (fft_y, fft_x)
    # the kernels' spectra in the plane's precision, conjugated in place: for 15 float32
    # terms at 360² that is 8 MB, where float64 transforms, conjugate and cast held 39 MB
    spectra = scipy.fft.rfft2(kernels.astype(_float_dtype(plane)), s=fft_shape)
    np.conjugate(spectra, out=spectra)
    tiles = [(y, x) for y in range(0, n_valid_y, step_y) for x in range(0, n_valid_x, step_x)]
    fft_workers = workers if len(tiles) == 1 else 1
    if weights is not None and x_groups is None:
        x_groups = range(len(kernels))
    fx_of = {} if weights is None else {x_groups[m]: weights[m][0] for m in range(len(kernels))}

    def one_tile(corner: tuple[int, int]) -> None:
        y0, x0 = corner
        height, width = min(step_y, n_valid_y - y0), min(step_x, n_valid_x - x0)
        block = plane[y0 : y0 + height + 2 * c, x0 : x0 + width + 2 * c]
        spectrum = scipy.fft.rfft2(block, s=fft_shape, workers=fft_workers)
        product = np.empty_like(spectrum)
        if weights is None:
            for m, kernel_spectrum in enumerate(spectra):
                np.multiply(spectrum, kernel_spectrum, out=product)
                result = scipy.fft.irfft2(product, s=fft_shape, workers=fft_workers)
                out[m, y0 : y0 + height, x0 : x0 + width] = result[:height, :width]
            return
        columns: dict[int, np.ndarray] = {}  # per x group: rows inverted, columns not yet
        for m, kernel_spectrum in enumerate(spectra):
            np.multiply(spectrum, kernel_spectrum, out=product)
            mixed = scipy.fft.ifft(product, axis=0, workers=fft_workers)[:height]
            gy = weights[m][1]
            if gy is not None:
                mixed *= gy[y0 : y0 + height, None]
            if x_groups[m] in columns:
                columns[x_groups[m]] += mixed
            else:
                columns[x_groups[m]] = mixed
        total = None
        for group, mixed in columns.items():
            result = scipy.fft.irfft(mixed, n=fft_x, axis=1, workers=fft_workers)[:, :width]
            if fx_of[group] is not None:
                result *= fx_of[group][x0 : x0 + width]
            total = result if total is None else np.add(total, result, out=total)
        store(out[y0 : y0 + height, x0 : x0 + width], total)

    _run_threads(one_tile, tiles, workers)


def correlate_fft(
    image: np.ndarray, kernels: np.ndarray, *, workers: int | None = None
) -> np.ndarray:
    """Correlate one image with a stack of same-size kernels (afw convention, zero padded).

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        Input pixels (any units); must be finite (a NaN spoils its FFT tile).
    kernels : numpy.ndarray, shape (n, size, size) or (size, size)
        Kernels of one odd size; the centre is pixel ``size // 2``.
    workers : int, optional
        Threads to use; all available cores by default.

    Returns
    -------
    numpy.ndarray, shape (n, ny, nx) or (ny, nx)
        ``out[m, y, x] = sum_{j,i} image[y - c + j, x - c + i] kernels[m, j, i]`` with
        pixels outside the image taken as 0 (like ``scipy.ndimage.correlate(...,
        mode="constant")``); float32 if both inputs are float32, else float64.

    Notes
    -----
    The image is padded by ``c`` zeros and correlated by overlap-save FFT tiles, one
    forward transform per tile shared by every kernel.
    """
    image = np.asarray(image)
    single = np.ndim(kernels) == 2
    kernels = _check_kernels(np.asarray(kernels)[None] if single else kernels)
    if image.ndim != 2:
        msg = f"image must be a 2-d array, got shape {image.shape}"
        raise DiffimValueError(msg)
    dtype = _float_dtype(image, kernels)
    c = kernels.shape[-1] // 2
    padded = np.pad(image.astype(dtype, copy=False), c)
    out = np.empty((len(kernels), *image.shape), dtype=dtype)
    _correlate_valid_tiled(padded, kernels, out, None, resolve_workers(workers))
    return out[0] if single else out


# -- small stamps --------------------------------------------------------------------------
def delta_function_shifts(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return each kernel's flat pixel index and value, or None unless all are delta functions.

    Parameters
    ----------
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray) or None
        ``index`` (int, ``dy · size + dx`` of kernel ``k``'s one non-zero pixel) and its
        ``value``; None if some kernel has more or fewer than one non-zero pixel.
    """
    flat = basis.reshape(basis.shape[0], -1)
    if not np.all(np.count_nonzero(flat, axis=1) == 1):
        return None
    index = np.argmax(flat != 0, axis=1)
    return index, flat[np.arange(len(flat)), index]


def _auto_method(basis: np.ndarray) -> str:
    """Return the `correlate_valid_stack` method that "auto" uses for this basis."""
    if delta_function_shifts(basis) is not None:
        return "gather"
    return "direct" if basis.shape[0] >= DIRECT_MIN_KERNELS else "fft"


def correlate_valid_stack(
    stamp: np.ndarray,
    basis: np.ndarray,
    *,
    method: Literal["auto", "fft", "direct", "gather"] = "auto",
) -> np.ndarray:
    """Correlate small stamps with every basis kernel over the stamps' valid region.

    Parameters
    ----------
    stamp : numpy.ndarray, shape (..., ny, nx)
        Pixels of a kernel candidate (any units), ``ny, nx >= size``; leading axes hold a
        batch of same-shape stamps, all done in one call.
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels of one odd size.
    method : {"auto", "fft", "direct", "gather"}
        ``"direct"`` is im2col + one matrix product ``(n_pix, size²) @ (size², n_basis)``;
        ``"fft"`` transforms each stamp once and the kernels in one batch; ``"gather"``
        (delta-function kernels only) copies shifted views.  ``"auto"`` picks "gather"
        when it can, else "direct" from ``DIRECT_MIN_KERNELS`` kernels on, else "fft".

    Returns
    -------
    numpy.ndarray, shape (..., n_basis, ny - size + 1, nx - size + 1)
        ``out[..., m, y, x] = sum_{j,i} stamp[..., y + j, x + i] basis[m, j, i]``, the afw
        correlation at stamp pixel ``(x + c, y + c)``; float32 if both inputs are float32.
    """
    dtype = _float_dtype(stamp, basis)
    stamp, basis = np.asarray(stamp, dtype=dtype), _check_kernels(basis).astype(dtype)
    if stamp.ndim < 2 or min(stamp.shape[-2:]) < basis.shape[1]:
        msg = (
            "stamps must be 2-d, or stacks of them, and at least "
            f"{basis.shape[1]}² pixels, got {stamp.shape}"
        )
        raise DiffimValueError(msg)
    methods = {"fft": _stack_fft, "direct": _stack_direct, "gather": _stack_gather}
    if method == "auto":
        method = _auto_method(basis)
    if method not in methods:
        msg = f"method must be 'auto', 'fft', 'direct' or 'gather', got {method!r}"
        raise DiffimValueError(msg)
    out_shape = (stamp.shape[-2] - basis.shape[1] + 1, stamp.shape[-1] - basis.shape[1] + 1)
    return methods[method](stamp, basis, out_shape)


def correlate_valid_pairs(images: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Correlate each small image with its own kernel over the valid region, in one FFT batch.

    Parameters
    ----------
    images : numpy.ndarray, shape (n, ny, nx)
        Stamps (e.g. a template stamp and its variance), ``ny, nx >= size``.
    kernels : numpy.ndarray, shape (n, size, size)
        One odd-sized kernel per image (e.g. ``K`` and ``K²``).

    Returns
    -------
    numpy.ndarray, shape (n, ny - size + 1, nx - size + 1)
        ``out[m]`` is ``correlate_valid_stack(images[m], kernels[m:m + 1])[0]``; one batched
        transform instead of ``n`` calls (2.5x faster for a pair of 43² stamps).
    """
    size = kernels.shape[1]
    fft_shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in images.shape[1:])
    workers = resolve_workers(None)
    product = np.conjugate(scipy.fft.rfft2(kernels, s=fft_shape, workers=workers))
    product *= scipy.fft.rfft2(images, s=fft_shape, workers=workers)
    out_shape = (images.shape[1] - size + 1, images.shape[2] - size + 1)
    return _inverse_valid(product, fft_shape, out_shape, workers)


def _inverse_valid(
    spectrum: np.ndarray, fft_shape: tuple[int, int], out_shape: tuple[int, int], workers: int
) -> np.ndarray:
    """``irfft2(spectrum, fft_shape)[..., :out_shape[0], :out_shape[1]]``, contiguous.

    The row transforms run only on the ``out_shape[0]`` rows kept: for stamps whose valid
    region is about half the transform (43² stamps, 21² kernels) this halves the work.
    """
    rows = scipy.fft.ifft(spectrum, axis=-2, overwrite_x=True, workers=workers)
    rows = rows[..., : out_shape[0], :]
    result = scipy.fft.irfft(rows, n=fft_shape[1], axis=-1, overwrite_x=True, workers=workers)
    return np.ascontiguousarray(result[..., : out_shape[1]])


def _stack_gather(stamp: np.ndarray, basis: np.ndarray, out_shape: tuple) -> np.ndarray:
    shifts = delta_function_shifts(basis)
    if shifts is None:
        msg = "method='gather' needs delta-function kernels (one non-zero pixel each)"
        raise DiffimValueError(msg)
    offsets, values = shifts
    windows = sliding_window_view(stamp, out_shape, axis=(-2, -1))  # (..., size, size, *out)
    dy, dx = np.divmod(offsets, basis.shape[1])
    shifted = windows[..., dy, dx, :, :]
    if np.any(values != 1):
        shifted *= values[:, None, None]
    return shifted


def _stack_direct(stamp: np.ndarray, basis: np.ndarray, out_shape: tuple) -> np.ndarray:
    n_basis, size = basis.shape[:2]
    windows = sliding_window_view(stamp, (size, size), axis=(-2, -1))
    columns = windows.reshape(*stamp.shape[:-2], -1, size * size)
    product = columns @ basis.reshape(n_basis, size * size).T  # (..., n_pix, n_basis)
    return np.swapaxes(product, -1, -2).reshape(*stamp.shape[:-2], n_basis, *out_shape)


def _stack_fft(stamp: np.ndarray, basis: np.ndarray, out_shape: tuple) -> np.ndarray:
    fft_shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in stamp.shape[-2:])
    workers = resolve_workers(None)  # batches of stamps: one transform per thread
    product = scipy.fft.rfft2(basis, s=fft_shape)
    np.conjugate(product, out=product)
    product = product * scipy.fft.rfft2(stamp, s=fft_shape, workers=workers)[..., None, :, :]
    return _inverse_valid(product, fft_shape, out_shape, workers)


# -- masks ---------------------------------------------------------------------------------
def _or_run(values: np.ndarray, half_width: int, axis: int) -> np.ndarray:
    """OR over a window of ``2 * half_width + 1`` along ``axis``, zeros outside the array."""
    n, size = values.shape[axis], 2 * half_width + 1
    length = n + 2 * half_width

    def along(start: int, stop: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    padded = np.zeros((*values.shape[:axis], length, *values.shape[axis + 1 :]), values.dtype)
    padded[along(half_width, half_width + n)] = values
    width = 1
    while 2 * width <= size:  # padded[i] becomes the OR of padded[i : i + 2 * width]
        padded[along(0, length - width)] |= padded[along(width, length)]
        width *= 2
    return padded[along(0, n)] | padded[along(size - width, size - width + n)]


def _box_or(
    values: np.ndarray,
    half_width: int,
    workers: int,
    bits: np.integer | None = None,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """OR of ``values`` over a ``(2h+1)²`` box around each pixel, in row stripes on threads.

    With ``bits`` only those bits are spread and the others kept on their own pixel; with
    ``into`` the result is ORed into that array (and returned) instead of a new one.  Each
    stripe is done on its own, so no full-size temporary is made.
    """
    out = np.empty_like(values) if into is None else into
    n_rows = values.shape[0]

    def one_stripe(bounds: tuple[int, int]) -> None:
        start, stop = bounds
        low, high = max(start - half_width, 0), min(stop + half_width, n_rows)
        block = values[low:high] if bits is None else values[low:high] & bits
        spread = _or_run(_or_run(block, half_width, 0), half_width, 1)[start - low : stop - low]
        if bits is not None:
            spread |= values[start:stop] & ~bits
        if into is None:
            out[start:stop] = spread
        else:
            out[start:stop] |= spread

    stripes = [(r, min(r + MASK_STRIPE_ROWS, n_rows)) for r in range(0, n_rows, MASK_STRIPE_ROWS)]
    _run_threads(one_stripe, stripes, workers)
    return out


def spread_mask(
    mask: np.ndarray,
    half_width: int,
    bits: int | None = None,
    *,
    workers: int | None = None,
    into: np.ndarray | None = None,
) -> np.ndarray:
    """Spread mask bits over the footprint of a kernel, as masked-image convolution does.

    Parameters
    ----------
    mask : numpy.ndarray of int, shape (ny, nx)
        Bit-plane mask.
    half_width : int
        Kernel half-width ``c`` in pixels; each set bit covers a ``(2c+1)²`` box.
    bits : int, optional
        Bits to spread; all bits by default.  Other bits stay on their own pixel.
    workers : int, optional
        Threads to use; all available cores by default.
    into : numpy.ndarray of int32, shape (ny, nx), optional
        A mask to OR the result into (e.g. a difference's), stripe by stripe, instead of
        returning a new one.

    Returns
    -------
    numpy.ndarray of int32, shape (ny, nx)
        New mask (or ``into``): the OR of the spread bits over the box (pixels outside the
        image count as 0) plus the unspread bits of the pixel itself.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) or half_width < 0:
        msg = f"need a 2-d integer mask and half_width >= 0, got {mask.shape} {mask.dtype}, "
        msg += f"half_width={half_width}"
        raise DiffimValueError(msg)
    mask = mask.astype(MASK_DTYPE, copy=False)
    spread_bits = None if bits is None else MASK_DTYPE(bits)
    set_bits = np.bitwise_or.reduce(mask, axis=None)  # every bit set anywhere, no temporary
    if half_width == 0 or not (set_bits if bits is None else set_bits & spread_bits):
        if into is None:
            return mask.copy()
        into |= mask
        return into
    return _box_or(mask, half_width, resolve_workers(workers), spread_bits, into)


# -- spatially varying kernels on masked images --------------------------------------------
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


def _finite_planes(masked_image: MaskedImage) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return image and variance with non-finite pixels set to 0, and where they were."""
    image, variance = masked_image.image, masked_image.variance
    finite = np.isfinite(image)
    finite &= np.isfinite(variance)
    if finite.all():
        return image, variance, None
    bad = ~finite
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
        coordinates ``(x0 + col, y0 + row)``; applied as a correlation (module notes).
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
        An image of the same shape, origin and dtype (e.g. the science image) from which
        to subtract the convolved image in its own planes, instead of returning a new
        one: its image becomes ``subtract_from - T ⋆ K`` (NaN on the border), its
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
        store_image, store_variance = _assign, _assign
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
    valid_variance = out_variance[interior]
    _spatial_correlate(
        variance, squared_function, squared_terms, xy0, valid_variance, workers, store_variance
    )
    if subtract_from is None:
        np.maximum(valid_variance, 0, out=valid_variance)
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
    if not same or subtract_from.dtype != masked_image.dtype:
        msg = (
            f"subtract_from must match the convolved image: shape {masked_image.shape}, "
            f"origin {masked_image.xy0}, dtype {masked_image.dtype}; got "
            f"{subtract_from.shape}, {subtract_from.xy0}, {subtract_from.dtype}"
        )
        raise DiffimValueError(msg)
