"""Principal components of per-candidate kernels: the PCA basis of the spatial fit (spec
§3.10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import DiffimValueError
from .alard_lupton import renormalize_kernel_list

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["kernel_pca_basis"]


def kernel_pca_basis(
    kernels: ArrayLike,
    *,
    n_components: int,
    subtract_mean: bool = True,
    noise: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return a basis of principal-component kernels and the eigenvalues.

    Parameters
    ----------
    kernels : array_like, shape (n, size, size)
        Per-candidate kernel images, each normalised to unit sum by the caller.
    n_components : int
        Number of basis kernels to keep, the mean kernel included.
    subtract_mean : bool
        Subtract the mean kernel before the analysis and make it the first basis kernel.
    noise : array_like, shape (n,), optional
        Noise rms of each kernel image, in any unit common to all (e.g. the relative
        error of its sum); positive and finite.  The mean becomes the inverse-variance
        weighted mean and each kernel is divided by its noise before the analysis.  None
        (ip_diffim): equal weights.

    Returns
    -------
    basis : numpy.ndarray, shape (m, size, size)
        ``[mean], e_0, e_1, ...`` renormalised with `renormalize_kernel_list` (the first
        sums to 1, the others to 0 with unit norm); ``m <= n_components``.
    eigenvalues : numpy.ndarray
        Eigenvalues of the Gram matrix ``<I_i, I_j> / n_pixels`` (of the noise-scaled
        kernels when ``noise`` is given), descending.

    Raises
    ------
    DiffimValueError
        If the kernels are all identical after mean subtraction (zero eigenvalues) and no
        mean kernel is kept.

    Notes
    -----
    The snapshot method: the eigenvectors ``Q`` of the small Gram matrix give the
    eigen-images ``e_k = sum_j Q_jk I_j``, each divided by its pixel of largest ``|value|``.
    Eigenvalues below ``1e-12`` of the largest are round-off and give no component.

    With ``noise`` the analysis is that of the whitened kernels ``(I_j - mean) / σ_j``:
    every kernel's noise then adds the same amount to the Gram matrix, so the leading
    components are the kernels' real differences (the PSFs' variation over the field)
    instead of the noise of the faintest stars, which dominates an unweighted analysis
    of delta-function kernels (their noise grows as 1 / flux).
    """
    images = np.asarray(kernels, dtype=float)
    n_images, size = images.shape[0], images.shape[1]
    flat = images.reshape(n_images, -1)
    if noise is None:
        mean = flat.mean(axis=0)
    else:
        scale = 1.0 / np.asarray(noise, dtype=float)
        mean = scale**2 @ flat / np.sum(scale**2)
    if subtract_mean:
        flat = flat - mean
    if noise is not None:
        flat = flat * scale[:, None]
    gram = flat @ flat.T / flat.shape[1]
    eigenvalues, vectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    components = []
    significant = eigenvalues > 1e-12 * max(eigenvalues[0], 0.0)  # round-off is not a component
    for k in np.flatnonzero(significant)[:100]:
        image = vectors[:, k] @ flat
        extreme = image[np.argmax(np.abs(image))]
        if extreme != 0 and np.isfinite(extreme):
            components.append(image / extreme)
    candidates = ([mean] if subtract_mean else []) + components
    if not candidates:
        msg = "the candidate kernels are identical: a PCA basis needs subtractMeanForPca=True"
        raise DiffimValueError(msg)
    chosen = [
        c for c in candidates[: min(n_components, len(candidates))] if np.all(np.isfinite(c))
    ]
    basis = renormalize_kernel_list(np.array(chosen).reshape(-1, size, size))
    return basis, np.clip(eigenvalues, 0.0, None)
