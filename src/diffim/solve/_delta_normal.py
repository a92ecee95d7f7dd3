"""Normal equations of a delta-function basis from the stamps' shifted products.

Every delta-function design column is the template stamp shifted, ``C_k(p) = v_k T(p + s_k)``
over the fit region ``R`` (``ny × nx``, the stamp shrunk by the kernel half-width).  With one
weight ``w`` per candidate,

    M_kl = w v_k v_l Σ_{p∈R} T(p + s_k) T(p + s_l),

so ``M`` needs the products of pairs of template rows, not of pairs of design columns: for
template rows ``r`` and ``r + Δ`` and kernel columns ``a, b``,
``d_Δ[r, a, b] = Σ_{x<nx} T[r, x + a] T[r + Δ, x + b]`` (one small matrix product per row
pair), and the kernel rows ``(ay, by = ay + Δ)`` block of ``M`` sums ``d_Δ`` over the ``ny``
rows ``r = ay .. ay + ny - 1``.  That costs ``≈ K · H · K² · nx`` multiply-adds for a
``K × K`` kernel on ``H``-row stamps (20 Mflop for 21² kernels on 61² stamps) instead of the
``n_pix · K⁴`` of ``Cᵀ W C`` (330 Mflop), and every entry is still a plain sum of the same
products, so it equals the dense product to rounding.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["delta_function_normal_equations"]


def _window_sums(n_rows: int, n_starts: int, length: int) -> np.ndarray:
    """Return the 0/1 matrix, ``(n_starts, n_rows)``, summing ``length`` rows from each start."""
    offsets = np.arange(n_rows)[None, :] - np.arange(n_starts)[:, None]
    return ((offsets >= 0) & (offsets < length)).astype(float)


def _shifted_gram(templates: np.ndarray, size: int) -> np.ndarray:
    """Return ``G[n, ay, ax, by, bx] = Σ_{y<ny, x<nx} T[y + ay, x + ax] T[y + by, x + bx]``.

    ``templates`` has shape ``(n, H, W)``; ``ny, nx = H - size + 1, W - size + 1``.
    """
    n, height, width = templates.shape
    ny, nx = height - size + 1, width - size + 1
    # rows[n, r, a, x] = T[n, r, x + a]
    rows = np.ascontiguousarray(sliding_window_view(templates, nx, axis=-1))
    windows = _window_sums(height, size, ny)
    gram = np.empty((n, size, size, size, size))
    for lag in range(size):
        # products[n, r, a, b] = Σ_x T[r, x + a] T[r + lag, x + b]
        products = rows[:, : height - lag] @ rows[:, lag:].swapaxes(-1, -2)
        # blocks[n, ay, a, b]: the same summed over rows ay .. ay + ny - 1
        blocks = windows[: size - lag, : height - lag] @ products.reshape(n, height - lag, -1)
        blocks = blocks.reshape(n, size - lag, size, size).swapaxes(0, 1)
        ay = np.arange(size - lag)
        gram[:, ay, :, ay + lag, :] = blocks
        gram[:, ay + lag, :, ay, :] = blocks.swapaxes(-1, -2)
    return gram


def delta_function_normal_equations(
    templates: np.ndarray,
    data: np.ndarray,
    shifts: tuple[np.ndarray, np.ndarray],
    weights: np.ndarray,
    *,
    size: int,
    fit_background: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the normal equations ``M = Cᵀ W C``, ``b = Cᵀ W d`` of a delta-function basis.

    Parameters
    ----------
    templates : numpy.ndarray, shape (n, H, W)
        Template stamps of ``n`` candidates.
    data : numpy.ndarray, shape (n, H - size + 1, W - size + 1)
        Science pixels of each fit region.
    shifts : (numpy.ndarray, numpy.ndarray)
        The basis' pixel indices and values, from `convolve.delta_function_shifts`.
    weights : numpy.ndarray, shape (n,)
        One inverse-variance weight per candidate.
    size : int
        Kernel width and height.
    fit_background : bool
        Append the column of ones of a constant background.

    Returns
    -------
    matrices : numpy.ndarray, shape (n, n_unknowns, n_unknowns)
    vectors : numpy.ndarray, shape (n, n_unknowns)
        float64; ``n_unknowns = n_basis (+ 1 with a background)``, ordered as the basis.
    """
    index, value = shifts
    templates = np.asarray(templates, dtype=float)
    data = np.asarray(data, dtype=float)
    n, ny, nx = data.shape
    n_basis = len(index)
    n_unknowns = n_basis + int(fit_background)
    # the value of every pair of kernel pixels, then of the basis' own kernels
    gram = _shifted_gram(templates, size).reshape(n, size * size, size * size)
    scale = np.outer(value, value)
    matrices = np.empty((n, n_unknowns, n_unknowns))
    if np.array_equal(index, np.arange(size * size)):
        np.multiply(gram, scale, out=matrices[:, :n_basis, :n_basis])
    else:
        matrices[:, :n_basis, :n_basis] = gram[:, index[:, None], index[None, :]] * scale
    # windows[n, ay, ax, y, x] = T[y + ay, x + ax]: every kernel pixel's design column
    windows = sliding_window_view(templates, (ny, nx), axis=(-2, -1))
    vectors = np.empty((n, n_unknowns))
    correlation = np.einsum("nabyx,nyx->nab", windows, data).reshape(n, -1)
    vectors[:, :n_basis] = correlation[:, index] * value
    if fit_background:
        column_sums = windows.sum(axis=(-2, -1)).reshape(n, -1)[:, index] * value
        matrices[:, :n_basis, n_basis] = matrices[:, n_basis, :n_basis] = column_sums
        matrices[:, n_basis, n_basis] = ny * nx
        vectors[:, n_basis] = data.sum(axis=(-2, -1))
    matrices *= weights[:, None, None]
    vectors *= weights[:, None]
    return matrices, vectors
