"""The overlap-save FFT tile engine of `diffim.convolve`, and the thread helpers.

`_correlate_valid_tiled` correlates a whole plane with a stack of same-size kernels in
tiles of about ``TILE_STEP`` valid pixels a side, one thread per core: a tile's forward
transform is shared by every kernel, the kernel spectra are computed once at the tile size,
and no full-size complex array is held.  Each tile's (optionally weighted) sum goes into the
output through a store function (`_assign`, `_assign_non_negative`, `_subtract`,
`_add_non_negative`).
`correlate_fft` is its public, zero-padded form; `resolve_workers`, `_run_threads`,
`_float_dtype` and `_check_kernels` serve the other modules of the package too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import DiffimValueError
from . import fft

__all__ = ["correlate_fft", "resolve_workers"]

#: Target width in pixels of the valid output of one overlap-save tile.  For 21-px kernels
#: on 2048² float32 images, 160-440 px tiles convolve within 8 % of the best time (340);
#: 240 px holds 9 MiB less at the peak of a subtraction (kernel spectra, tile buffers).
TILE_STEP = 240

# (fx, gy): factors of a separable weight, None meaning 1 everywhere.
_Weight = tuple[np.ndarray | None, np.ndarray | None]
# How a tile's weighted sum goes into the output: store(output view, tile sum).
_Store = Callable[[np.ndarray, np.ndarray], None]


def _assign(view: np.ndarray, total: np.ndarray) -> None:
    view[...] = total


def _assign_non_negative(view: np.ndarray, total: np.ndarray) -> None:
    """Store a convolved variance, clipped at 0 (FFT round-off)."""
    np.maximum(total, 0, out=view)


def _subtract(view: np.ndarray, total: np.ndarray) -> None:
    np.subtract(view, total, out=view)


def _add_non_negative(view: np.ndarray, total: np.ndarray) -> None:
    """Add a convolved variance, clipped at 0 (FFT round-off) as `_assign_non_negative`."""
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
    fft_length = fft.good_size(-(-n_valid // n_tiles) + 2 * half_width)
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
    spectra = fft.rfft2(kernels.astype(_float_dtype(plane)), fft_shape)
    np.conjugate(spectra, out=spectra)
    tiles = [(y, x) for y in range(0, n_valid_y, step_y) for x in range(0, n_valid_x, step_x)]
    if weights is not None and x_groups is None:
        x_groups = range(len(kernels))
    fx_of = {} if weights is None else {x_groups[m]: weights[m][0] for m in range(len(kernels))}
    # kernels by x group, so that one group's column sum is alive at a time (a tile of the
    # 15 variance terms held 5: 2 MiB on two threads)
    groups = [] if weights is None else [
        (group, [m for m in range(len(kernels)) if x_groups[m] == group]) for group in fx_of
    ]  # fmt: skip

    def one_tile(corner: tuple[int, int]) -> None:
        y0, x0 = corner
        height, width = min(step_y, n_valid_y - y0), min(step_x, n_valid_x - x0)
        block = plane[y0 : y0 + height + 2 * c, x0 : x0 + width + 2 * c]
        spectrum = fft.rfft2(block, fft_shape)
        product = np.empty_like(spectrum)
        if weights is None:
            for m, kernel_spectrum in enumerate(spectra):
                np.multiply(spectrum, kernel_spectrum, out=product)
                result = fft.irfft2(product, fft_shape)
                out[m, y0 : y0 + height, x0 : x0 + width] = result[:height, :width]
            return
        total = None
        for group, members in groups:
            mixed = None  # the group's sum: columns inverted, rows not yet
            for m in members:
                np.multiply(spectrum, spectra[m], out=product)
                column = fft.ifft(product, 0, in_place=True)[:height]
                gy = weights[m][1]
                if gy is not None:
                    column *= gy[y0 : y0 + height, None]
                mixed = column.copy() if mixed is None else np.add(mixed, column, out=mixed)
            result = fft.irfft(mixed, fft_x)[:, :width]
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
