"""The PSF model interface: the `PsfModel` base class and the stamps it draws."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DiffimValueError
from ..image import BBox


@dataclass(frozen=True)
class PsfStamp:
    """One PSF image placed in parent coordinates.

    Attributes
    ----------
    array : ndarray, shape (size, size)
        Pixel-integrated PSF normalised to unit sum.
    xy0 : tuple of int
        Parent pixel ``(x0, y0)`` of ``array[0, 0]``.
    """

    array: np.ndarray
    xy0: tuple[int, int]

    @property
    def bbox(self) -> BBox:
        """Parent-coordinate box covered by the stamp."""
        return BBox(self.xy0[0], self.xy0[1], self.array.shape[1], self.array.shape[0])


@dataclass(frozen=True)
class PsfStamps:
    """Many PSF stamps of one size: ``arrays[k]`` starts at parent pixel ``(x0[k], y0[k])``."""

    arrays: np.ndarray
    x0: np.ndarray
    y0: np.ndarray


def _odd_size(name: str, size: Any) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        msg = f"{name} must be a positive odd integer, got {size!r}; try {max(int(size), 1) | 1}"
        raise DiffimValueError(msg)
    return int(size)


class PsfModel(ABC):
    """Base class of the PSF models; subclasses implement ``_render`` and ``fwhm``."""

    #: Position used when ``x``/``y`` are omitted (parent pixels).
    average_position: tuple[float, float] = (0.0, 0.0)

    @abstractmethod
    def _render(
        self, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, size: int
    ) -> np.ndarray:
        """Return unit-sum stamps (n, size, size) of the PSF at (x, y), offset by (dx, dy)."""

    @abstractmethod
    def _default_size(self, x: np.ndarray, y: np.ndarray) -> int:
        """Return an odd stamp size that holds the PSF at every given position."""

    @abstractmethod
    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """Return the FWHM in pixels at parent position ``(x, y)`` (default: average)."""

    def _position(self, x: float | None, y: float | None) -> tuple[float, float]:
        x_avg, y_avg = self.average_position
        return (x_avg if x is None else float(x), y_avg if y is None else float(y))

    def kernel_image(
        self, x: float | None = None, y: float | None = None, size: int | None = None
    ) -> np.ndarray:
        """Return the pixel-integrated PSF at ``(x, y)``, unit sum, centred on ``size // 2``.

        Parameters
        ----------
        x, y : float, optional
            Parent position in pixels; the model's average position if omitted.
        size : int, optional
            Odd width and height of the image; the model's default if omitted.

        Returns
        -------
        ndarray, shape (size, size)
            float64 kernel image that sums to one.
        """
        xy = np.array(self._position(x, y))
        size = self._default_size(xy[:1], xy[1:]) if size is None else _odd_size("size", size)
        zero = np.zeros(1)
        return self._render(xy[:1], xy[1:], zero, zero, size)[0]

    def draw_many(self, x: Any, y: Any, *, size: int | None = None) -> PsfStamps:
        """Return pixel-integrated unit-sum stamps centred at sub-pixel parent positions.

        Parameters
        ----------
        x, y : array_like of float, shape (n,)
            Parent positions of the sources, pixels.
        size : int, optional
            Odd stamp size; by default large enough for the PSF at every position.

        Returns
        -------
        PsfStamps
            ``arrays`` (n, size, size) and the parent origins ``x0``, ``y0`` (n,); the source
            lies in the stamp's central pixel.
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        if x.shape != y.shape or x.ndim != 1:
            msg = f"x and y must be 1-d arrays of one length, got shapes {x.shape} and {y.shape}"
            raise DiffimValueError(msg)
        size = self._default_size(x, y) if size is None else _odd_size("size", size)
        ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        arrays = self._render(x, y, x - ix, y - iy, size)
        return PsfStamps(arrays, ix - size // 2, iy - size // 2)

    def draw(self, x: float, y: float, *, size: int | None = None) -> PsfStamp:
        """Return the pixel-integrated PSF centred at parent ``(x, y)`` (see `draw_many`)."""
        stamps = self.draw_many([x], [y], size=size)
        return PsfStamp(stamps.arrays[0], (int(stamps.x0[0]), int(stamps.y0[0])))
