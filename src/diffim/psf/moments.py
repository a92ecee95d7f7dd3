"""Adaptive second moments of PSF images and the determinant-radius FWHM.

Shapes use the *determinant radius* ``r_det = (Ixx Iyy - Ixy**2) ** (1/4)`` of the
second-moment matrix, and ``FWHM = FWHM_PER_SIGMA * r_det`` (ip_diffim's legacy
``getFwhmPix`` definition, the true FWHM of an elliptical Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DiffimValueError
from ._render import _gaussian_pixels

#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
MOMENT_WEIGHT_RATIO = 0.2  # weight covariance / source covariance in adaptive_moments


@dataclass(frozen=True)
class ShapeMoments:
    """Centroid and second moments of a PSF image (pixels, pixels squared)."""

    x: float
    y: float
    ixx: float
    iyy: float
    ixy: float

    @property
    def determinant_radius(self) -> float:
        """``(Ixx Iyy - Ixy**2) ** (1/4)`` in pixels."""
        return float((self.ixx * self.iyy - self.ixy**2) ** 0.25)

    @property
    def fwhm(self) -> float:
        """Determinant-radius FWHM, ``FWHM_PER_SIGMA * determinant_radius``, in pixels."""
        return float(FWHM_PER_SIGMA * self.determinant_radius)


def _weighted_moments(
    data: np.ndarray, xc: float, yc: float, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the centroid offset ``(mx, my)`` and moments ``(mxx, myy, mxy)`` of ``data``.

    The weight is a Gaussian of covariance ``weight = (wxx, wyy, wxy)`` centred on
    ``(xc, yc)``.
    """
    yy, xx = np.indices(data.shape, dtype=float)
    dx, dy = xx - xc, yy - yc
    wxx, wyy, wxy = weight
    q = (wyy * dx * dx - 2.0 * wxy * dx * dy + wxx * dy * dy) / (wxx * wyy - wxy**2)
    w = data * np.exp(-0.5 * q)
    norm = w.sum()
    if not norm > 0:
        msg = "adaptive_moments diverged: the weighted flux is not positive"
        raise DiffimValueError(msg)
    mx, my = (w * dx).sum() / norm, (w * dy).sum() / norm
    mxx = (w * dx * dx).sum() / norm - mx * mx
    myy = (w * dy * dy).sum() / norm - my * my
    mxy = (w * dx * dy).sum() / norm - mx * my
    return np.array([mx, my]), np.array([mxx, myy, mxy])


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric 2x2 matrix ``(xx, yy, xy)``, same packing; must be > 0."""
    xx, yy, xy = matrix
    det = xx * yy - xy * xy
    if not (xx > 0 and yy > 0 and det > 0):
        msg = f"adaptive_moments diverged: moments {matrix.tolist()} are not positive definite"
        raise DiffimValueError(msg)
    return np.array([yy, xx, -xy]) / det


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Product of the symmetric 2x2 matrix ``(xx, yy, xy)`` and a 2-vector."""
    xx, yy, xy = matrix
    return np.array([xx * vector[0] + xy * vector[1], xy * vector[0] + yy * vector[1]])


def _gaussian_model(
    cov: np.ndarray, xc: float, yc: float, shape: tuple, *, integrated: bool
) -> np.ndarray:
    """Return a unit-flux Gaussian on an array grid, pixel-integrated or point-sampled."""
    ny, nx = shape
    if integrated:
        u_edges = (np.arange(nx + 1) - 0.5 - xc)[None, :]
        v_edges = (np.arange(ny * 15 + 1) / 15 - 0.5 - yc)[None, :]
        return _gaussian_pixels(tuple(c[None] for c in cov), u_edges, v_edges, 15)[0]
    yy, xx = np.indices(shape, dtype=float)
    ixx, iyy, ixy = _inverse(cov)
    dx, dy = xx - xc, yy - yc
    return np.exp(-0.5 * (ixx * dx * dx + 2 * ixy * dx * dy + iyy * dy * dy))


def adaptive_moments(
    image: np.ndarray,
    *,
    pixel_integrated: bool = True,
    weight_ratio: float = MOMENT_WEIGHT_RATIO,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> ShapeMoments:
    """Measure the centroid and the Gaussian-equivalent second moments of a PSF image.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        A background-free PSF or star image (any units) that the source dominates.
    pixel_integrated : bool, optional
        True (default) if pixel values are integrals over the pixel area (a rendered or
        observed PSF), False if they are samples of the profile at pixel centres.
    weight_ratio : float, optional
        Size of the Gaussian weight relative to the source covariance (see Notes); 1 gives
        the classical adaptive moments (Bernstein & Jarvis 2002, AJ 123, 583).
    max_iter : int, optional
        Maximum number of iterations.
    tol : float, optional
        Convergence threshold on the relative change of the moments and of the centroid.

    Returns
    -------
    ShapeMoments
        Centroid ``(x, y)`` in array pixels and the moments ``Ixx, Iyy, Ixy`` in pixels**2.

    Raises
    ------
    DiffimValueError
        If the image has no positive flux or the iteration diverges.

    Notes
    -----
    The estimate ``C`` is iterated: the image moments ``M`` under a Gaussian weight of
    covariance ``W = weight_ratio * C`` are deconvolved, ``C <- (M^-1 - W^-1)^-1``, the
    relation that holds exactly for a Gaussian source of covariance ``C`` whatever ``W``.
    Sampling bias is removed by measuring a Gaussian model of covariance ``C`` rendered on
    the same pixels the same way, so a pixelized Gaussian gives its covariance exactly.  The
    narrow default weight (0.2) probes the core of the profile: for a Moffat with
    ``beta >= 2`` the resulting determinant-radius FWHM is within 0.5 % of the true FWHM
    (the classical ``weight_ratio=1`` overestimates it by 13 % for ``beta = 3``).
    """
    data = np.asarray(image, dtype=float)
    if data.ndim != 2 or not np.isfinite(data).all() or not data.max() > 0:
        msg = "adaptive_moments needs a finite 2-d image with positive flux; check the sky level"
        raise DiffimValueError(msg)
    iy, ix = np.unravel_index(np.argmax(data), data.shape)
    center = np.array([ix, iy], dtype=float)
    radius = np.sqrt(np.count_nonzero(data >= 0.5 * data.max()) / np.pi)
    cov = np.array([1.0, 1.0, 0.0]) * max(radius * 2.0 / FWHM_PER_SIGMA, 0.7) ** 2
    for _ in range(max_iter):
        weight = weight_ratio * cov
        shift, moments = _weighted_moments(data, *center, weight)
        model = _gaussian_model(cov, *center, data.shape, integrated=pixel_integrated)
        model_shift, model_moments = _weighted_moments(model, *center, weight)
        predicted = _inverse(_inverse(cov) + _inverse(weight))  # continuum Gaussian moments
        moments = moments + predicted - model_moments
        new_cov = _inverse(_inverse(moments) - _inverse(weight))
        # a Gaussian offset by d from the weight centre has a weighted mean shift M C^-1 d
        step = _matvec(new_cov, _matvec(_inverse(moments), shift - model_shift))
        change = np.abs(new_cov - cov).max() / (new_cov[0] + new_cov[1])
        cov, center = new_cov, center + step
        if change < tol and np.abs(step).max() < tol:
            break
    return ShapeMoments(float(center[0]), float(center[1]), *(float(c) for c in cov))


def fwhm_from_moments(image: np.ndarray, *, pixel_integrated: bool = True) -> float:
    """Return the determinant-radius FWHM (pixels) of a PSF image from adaptive moments.

    See :func:`adaptive_moments` for the estimator; the FWHM is
    ``FWHM_PER_SIGMA * (Ixx Iyy - Ixy**2) ** (1/4)``, exact for a Gaussian.

    Examples
    --------
    >>> from diffim.psf import GaussianPsf
    >>> round(fwhm_from_moments(GaussianPsf(2.0).kernel_image()), 3)
    4.71
    """
    return adaptive_moments(image, pixel_integrated=pixel_integrated).fwhm
