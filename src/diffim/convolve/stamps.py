"""Correlations of small stamps with a stack of kernels, over the stamps' valid region.

`correlate_valid_stack` correlates a batch of same-shape candidate stamps with every basis
kernel: by FFT, by im2col and one matrix product (from ``DIRECT_MIN_KERNELS`` kernels on),
or, for delta-function kernels (`delta_function_shifts`), by gathering shifted views.
`correlate_valid_pairs` correlates each stamp with its own kernel (a template stamp and its
variance with ``K`` and ``K²``) in one FFT batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import DiffimValueError
from . import fft
from .tiles import _check_kernels, _float_dtype

__all__ = ["correlate_valid_pairs", "correlate_valid_stack", "delta_function_shifts"]

#: `correlate_valid_stack` uses im2col + matmul ("direct") from this many kernels on, FFTs
#: below.  For 27 kernels on 43² stamps direct is at best 1.1-1.4x faster, but it runs on
#: multithreaded OpenBLAS, whose small products slowed from 0.8 ms to 36 ms (median) with
#: the other core busy (pytest -n 2, Dask); single-threaded FFTs do not (1-7 ms).
DIRECT_MIN_KERNELS = 100


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
    fft_shape = tuple(fft.good_size(n) for n in images.shape[1:])
    product = np.conjugate(fft.rfft2(kernels, fft_shape))
    product *= fft.rfft2(images, fft_shape)
    out_shape = (images.shape[1] - size + 1, images.shape[2] - size + 1)
    return _inverse_valid(product, fft_shape, out_shape)


def _inverse_valid(
    spectrum: np.ndarray, fft_shape: tuple[int, int], out_shape: tuple[int, int]
) -> np.ndarray:
    """``irfft2(spectrum, fft_shape)[..., :out_shape[0], :out_shape[1]]``, contiguous.

    The row transforms run only on the ``out_shape[0]`` rows kept: for stamps whose valid
    region is about half the transform (43² stamps, 21² kernels) this halves the work.
    """
    rows = fft.ifft(spectrum, -2, in_place=True)
    rows = rows[..., : out_shape[0], :]
    result = fft.irfft(rows, fft_shape[1])
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
    fft_shape = tuple(fft.good_size(n) for n in stamp.shape[-2:])
    product = fft.rfft2(basis, fft_shape)
    np.conjugate(product, out=product)
    product = product * fft.rfft2(stamp, fft_shape)[..., None, :, :]
    return _inverse_valid(product, fft_shape, out_shape)
