"""Pixelized PSF models: one kernel image (`ImagePsf`) or a grid of them (`GridPsf`)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from ..errors import DiffimValueError
from .model import PsfModel
from .moments import fwhm_from_moments


def _check_kernel(name: str, kernel: Any) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=float)
    if kernel.ndim < 2 or kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0:
        msg = f"{name} must be square with an odd size, got shape {kernel.shape}"
        raise DiffimValueError(msg)
    sums = kernel.sum(axis=(-2, -1))
    if not np.isfinite(kernel).all() or np.any(sums <= 0):
        msg = f"{name} must be finite with a positive sum"
        raise DiffimValueError(msg)
    return kernel / sums[..., None, None]


def _resize(kernel: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred odd kernel to ``size``."""
    pad = (size - kernel.shape[0]) // 2
    if pad >= 0:
        return np.pad(kernel, pad)
    return kernel[-pad:pad, -pad:pad]


class _PixelizedPsf(PsfModel):
    """PSF models defined by kernel images; sub-pixel shifts use cubic-spline interpolation."""

    kernel_size: int

    @abstractmethod
    def _kernel_at(self, x: float, y: float) -> np.ndarray:
        """Return the unit-sum kernel at parent ``(x, y)``."""

    def _default_size(self, x: np.ndarray, y: np.ndarray) -> int:
        return self.kernel_size

    def _render(
        self, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, size: int
    ) -> np.ndarray:
        from scipy import ndimage  # ~0.3 s to import, for sub-pixel shifts only

        out = np.empty((x.size, size, size))
        for k in range(x.size):
            kernel = _resize(self._kernel_at(x[k], y[k]), size)
            if dx[k] != 0 or dy[k] != 0:
                kernel = ndimage.shift(kernel, (dy[k], dx[k]), order=3, mode="constant")
            out[k] = kernel / kernel.sum()
        return out

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """Return the adaptive-moment determinant-radius FWHM (pixels), see `fwhm_from_moments`."""
        return fwhm_from_moments(self._kernel_at(*self._position(x, y)))


class ImagePsf(_PixelizedPsf):
    """A constant PSF given by one pixel-integrated kernel image.

    Parameters
    ----------
    kernel : array_like, shape (size, size)
        Odd-sized image centred on ``size // 2``; normalised to unit sum on input.
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = _check_kernel("kernel", kernel)
        self.kernel_size = self.kernel.shape[0]

    def _kernel_at(self, x: float, y: float) -> np.ndarray:
        return self.kernel

    def __repr__(self) -> str:
        return f"ImagePsf(<kernel {self.kernel.shape}>)"


class GridPsf(_PixelizedPsf):
    """A spatially varying PSF from kernel images on a regular grid, bilinearly interpolated.

    Parameters
    ----------
    kernels : array_like, shape (ny_grid, nx_grid, size, size)
        Kernel image at parent position ``(x_grid[i], y_grid[j])`` in ``kernels[j, i]``.
    x_grid, y_grid : array_like, shape (nx_grid,) and (ny_grid,)
        Strictly increasing grid positions in parent pixels.

    Notes
    -----
    The interpolated kernel is renormalised to unit sum; outside the grid the nearest edge
    kernel is used (constant extrapolation).
    """

    def __init__(self, kernels: Any, x_grid: Any, y_grid: Any) -> None:
        self.kernels = _check_kernel("kernels", kernels)
        self.x_grid = np.asarray(x_grid, dtype=float)
        self.y_grid = np.asarray(y_grid, dtype=float)
        expected = (self.y_grid.size, self.x_grid.size)
        if self.kernels.ndim != 4 or self.kernels.shape[:2] != expected:
            msg = f"kernels must have shape (ny_grid, nx_grid, size, size) = {expected} + (size, size), got {self.kernels.shape}"  # noqa: E501
            raise DiffimValueError(msg)
        for name, grid in (("x_grid", self.x_grid), ("y_grid", self.y_grid)):
            if np.any(np.diff(grid) <= 0):
                msg = f"{name} must be strictly increasing, got {grid.tolist()}"
                raise DiffimValueError(msg)
        self.kernel_size = self.kernels.shape[-1]
        self.average_position = (float(self.x_grid.mean()), float(self.y_grid.mean()))

    @staticmethod
    def _weights(grid: np.ndarray, value: float) -> tuple[int, int, float]:
        if grid.size == 1 or value <= grid[0]:
            return 0, 0, 0.0
        if value >= grid[-1]:
            return grid.size - 1, grid.size - 1, 0.0
        i = int(np.searchsorted(grid, value, side="right")) - 1
        return i, i + 1, (value - grid[i]) / (grid[i + 1] - grid[i])

    def _kernel_at(self, x: float, y: float) -> np.ndarray:
        i0, i1, tx = self._weights(self.x_grid, x)
        j0, j1, ty = self._weights(self.y_grid, y)
        kernel = (1 - ty) * ((1 - tx) * self.kernels[j0, i0] + tx * self.kernels[j0, i1]) + ty * (
            (1 - tx) * self.kernels[j1, i0] + tx * self.kernels[j1, i1]
        )
        return kernel / kernel.sum()

    def __repr__(self) -> str:
        return f"GridPsf(<kernels {self.kernels.shape}>, x_grid={self.x_grid.tolist()}, y_grid={self.y_grid.tolist()})"  # noqa: E501
