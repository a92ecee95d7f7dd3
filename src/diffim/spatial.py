"""Spatial models: 2-d polynomials, the spatially varying kernel and the background.

The kernel that maps the template onto the science image at parent pixel ``(x, y)`` is

.. math::

    K(x, y; u, v) = \\sum_i a_i(x, y) B_i(u, v),
    \\qquad a_i(x, y) = \\sum_p \\theta_{ip} P_p(x, y),

with ``B_i`` the basis kernels and ``P_p`` the terms of a 2-d Chebyshev (or plain)
polynomial of order ``n`` in afw's parameter order ``1, x, y, x², xy, y², x³, ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import DiffimValueError
from .image import BBox

__all__ = [
    "SpatialBackground",
    "SpatialFunction",
    "SpatialKernel",
    "n_spatial_terms",
    "term_powers",
]

SpatialModelType = Literal["chebyshev1", "polynomial"]

#: Rows of the image `SpatialBackground.add_to` evaluates at a time.
BACKGROUND_BLOCK_ROWS = 256


def n_spatial_terms(order: int) -> int:
    """Return the number of terms ``(order + 1)(order + 2) / 2`` of a 2-d polynomial."""
    return (order + 1) * (order + 2) // 2


def term_powers(order: int) -> list[tuple[int, int]]:
    """Return ``(x power, y power)`` of each term, grouped by total degree, x power first."""
    return [(degree - j, j) for degree in range(order + 1) for j in range(degree + 1)]


@dataclass(frozen=True)
class SpatialFunction:
    """A 2-d polynomial basis over an image.

    Parameters
    ----------
    kind : {"chebyshev1", "polynomial"}
        Chebyshev polynomials of the first kind over ``bbox`` scaled to [-1, 1], or plain
        powers of the parent pixel coordinates.
    order : int
        Total degree (>= 0).
    bbox : BBox
        Domain of the Chebyshev scaling: ``[x_min - 0.5, x_max + 0.5]`` maps to [-1, 1].
    """

    kind: SpatialModelType
    order: int
    bbox: BBox

    def __post_init__(self) -> None:
        if self.kind not in ("chebyshev1", "polynomial"):
            msg = f"spatial model type must be 'chebyshev1' or 'polynomial', got {self.kind!r}"
            raise DiffimValueError(msg)
        if self.order < 0:
            msg = f"spatial order must be >= 0, got {self.order}"
            raise DiffimValueError(msg)

    @property
    def n_terms(self) -> int:
        """Number of polynomial terms."""
        return n_spatial_terms(self.order)

    def _scaled(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "polynomial":
            return x, y
        x_lo, x_hi = self.bbox.x_min - 0.5, self.bbox.x_max + 0.5
        y_lo, y_hi = self.bbox.y_min - 0.5, self.bbox.y_max + 0.5
        return (
            (x - 0.5 * (x_lo + x_hi)) * 2.0 / (x_hi - x_lo),
            (y - 0.5 * (y_lo + y_hi)) * 2.0 / (y_hi - y_lo),
        )

    def _powers_1d(self, u: np.ndarray) -> list[np.ndarray]:
        values = [np.ones_like(u), u]
        for _ in range(2, self.order + 1):
            if self.kind == "chebyshev1":
                values.append(2.0 * u * values[-1] - values[-2])
            else:
                values.append(values[-1] * u)
        return values[: self.order + 1]

    def terms(self, x: float | np.ndarray, y: float | np.ndarray) -> np.ndarray:
        """Evaluate every term at parent pixel positions.

        Parameters
        ----------
        x, y : float or array_like
            Parent pixel coordinates; arrays broadcast together.

        Returns
        -------
        numpy.ndarray, shape (n_terms, *broadcast shape of x and y)
            Term values, float64.
        """
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        u, v = self._scaled(x, y)
        powers_u, powers_v = self._powers_1d(u), self._powers_1d(v)
        return np.stack([powers_u[px] * powers_v[py] for px, py in term_powers(self.order)])

    def terms_separable(self, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return each term as a pair of 1-d factors ``(f(x), g(y))`` (outer product = term)."""
        u, v = self._scaled(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        powers_u, powers_v = self._powers_1d(u), self._powers_1d(v)
        return [(powers_u[px], powers_v[py]) for px, py in term_powers(self.order)]

    def image(
        self, coefficients: np.ndarray, bbox: BBox, dtype: np.dtype | type = np.float64
    ) -> np.ndarray:
        """Evaluate ``sum_p c_p P_p`` on every pixel of ``bbox``; returns shape ``(ny, nx)``.

        Each term is separable, ``P_p(x, y) = f_p(x) g_p(y)``, so the sum is the single
        matrix product ``(c * G).T @ F`` of the (n_terms, ny) and (n_terms, nx) factors,
        computed in ``dtype``: no full-size temporaries besides the result.
        """
        xs = np.arange(bbox.x_min, bbox.x_min + bbox.width, dtype=float)
        ys = np.arange(bbox.y_min, bbox.y_min + bbox.height, dtype=float)
        factors = self.terms_separable(xs, ys)
        along_x = np.array([np.broadcast_to(fx, xs.shape) for fx, _ in factors])
        along_y = np.array([np.broadcast_to(gy, ys.shape) for _, gy in factors])
        weighted = np.asarray(coefficients, dtype=float)[:, None] * along_y
        return weighted.T.astype(dtype) @ along_x.astype(dtype)


@dataclass(frozen=True)
class SpatialKernel:
    """A spatially varying linear-combination kernel.

    Parameters
    ----------
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernel images; ``size`` is odd and the centre is pixel ``size // 2``.
    coefficients : numpy.ndarray, shape (n_basis, n_terms)
        Spatial polynomial coefficients of each basis kernel's weight.
    function : SpatialFunction
        The spatial polynomial basis (its ``n_terms`` equals ``coefficients.shape[1]``).

    Notes
    -----
    Kernels are applied as correlations, as in afw: ``out[y, x] = sum_{j,i}
    in[y - c + j, x - c + i] k[j, i]`` with ``c = size // 2``; a kernel with a single 1 at
    ``(c + dx, c + dy)`` shifts the image by ``(-dx, -dy)``.
    """

    basis: np.ndarray
    coefficients: np.ndarray
    function: SpatialFunction

    def __post_init__(self) -> None:
        if self.basis.ndim != 3 or self.basis.shape[1] != self.basis.shape[2]:
            msg = f"basis must have shape (n, size, size), got {self.basis.shape}"
            raise DiffimValueError(msg)
        if self.basis.shape[1] % 2 != 1:
            msg = f"kernel size must be odd, got {self.basis.shape[1]}"
            raise DiffimValueError(msg)
        expected = (self.basis.shape[0], self.function.n_terms)
        if self.coefficients.shape != expected:
            msg = f"coefficients must have shape {expected}, got {self.coefficients.shape}"
            raise DiffimValueError(msg)

    @property
    def size(self) -> int:
        """Kernel width and height in pixels (odd)."""
        return self.basis.shape[1]

    @property
    def half_width(self) -> int:
        """Pixels on each side of the kernel centre."""
        return self.size // 2

    @property
    def n_basis(self) -> int:
        """Number of basis kernels."""
        return self.basis.shape[0]

    @property
    def is_spatially_varying(self) -> bool:
        """True when any coefficient beyond the constant term is non-zero."""
        return bool(np.any(self.coefficients[:, 1:] != 0.0))

    def coefficients_at(self, x: float | np.ndarray, y: float | np.ndarray) -> np.ndarray:
        """Return the basis weights ``a_i(x, y)``, shape ``(n_basis, *positions)``."""
        return np.tensordot(self.coefficients, self.function.terms(x, y), axes=1)

    def image_at(self, x: float | np.ndarray, y: float | np.ndarray) -> np.ndarray:
        """Return the kernel image at parent pixel ``(x, y)``, shape ``(size, size)``.

        For arrays of positions, the images at each, shape ``(*positions, size, size)``.
        """
        return np.tensordot(self.coefficients_at(x, y), self.basis, axes=(0, 0))

    def sum_at(self, x: float | np.ndarray, y: float | np.ndarray) -> float | np.ndarray:
        """Return the kernel sum (photometric scale) at parent pixel ``(x, y)``.

        For arrays of positions, an array of the sums at each.
        """
        sums = np.tensordot(self.basis.sum(axis=(1, 2)), self.coefficients_at(x, y), axes=1)
        return float(sums) if np.ndim(sums) == 0 else sums

    def sum_image(self, bbox: BBox, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """Return the kernel sum on every pixel of ``bbox``, shape ``(ny, nx)``, in ``dtype``."""
        basis_sums = self.basis.sum(axis=(1, 2))
        return self.function.image(basis_sums @ self.coefficients, bbox, dtype)

    def term_kernels(self) -> np.ndarray:
        """Return ``K_p = sum_i theta_ip B_i`` per spatial term, shape ``(n_terms, size, size)``.

        ``K(x, y) = sum_p P_p(x, y) K_p``, so an image is convolved once per spatial term.
        """
        return np.tensordot(self.coefficients.T, self.basis, axes=1)


@dataclass(frozen=True)
class SpatialBackground:
    """A smooth differential background ``B(x, y) = sum_p c_p P_p(x, y)``.

    Parameters
    ----------
    function : SpatialFunction
        The spatial polynomial basis.
    coefficients : numpy.ndarray, shape (n_terms,)
        Coefficients in image units (ADU).
    """

    function: SpatialFunction
    coefficients: np.ndarray

    def __call__(self, x: float | np.ndarray, y: float | np.ndarray) -> np.ndarray:
        """Evaluate the background at parent pixel positions."""
        return np.tensordot(self.coefficients, self.function.terms(x, y), axes=1)

    def image(self, bbox: BBox, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """Evaluate the background on every pixel of ``bbox``, shape ``(ny, nx)``, in ``dtype``."""
        return self.function.image(self.coefficients, bbox, dtype)

    def add_to(self, image: np.ndarray, bbox: BBox, scale: float = 1.0) -> None:
        """Add ``scale · B`` to ``image`` (the pixels of ``bbox``) in place.

        Evaluated `BACKGROUND_BLOCK_ROWS` rows at a time: no full-size temporary (16 MiB
        for a 2048² float32 image).
        """
        for start in range(0, bbox.height, BACKGROUND_BLOCK_ROWS):
            rows = min(BACKGROUND_BLOCK_ROWS, bbox.height - start)
            block = BBox(bbox.x_min, bbox.y_min + start, bbox.width, rows)
            values = self.function.image(self.coefficients * scale, block, image.dtype)
            image[start : start + rows] += values

    @classmethod
    def zero(cls, bbox: BBox) -> SpatialBackground:
        """Return a background that is zero everywhere."""
        return cls(SpatialFunction("chebyshev1", 0, bbox), np.zeros(1))
