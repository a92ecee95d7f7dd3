"""Images with a mask and a variance plane, and exposures that add WCS, PSF and metadata.

Pixel coordinates follow LSST's conventions: ``x`` is the column, ``y`` the row, numpy
arrays are indexed ``[y, x]``, and a cut-out keeps the *parent* coordinates of its pixels
through its origin ``xy0``: array element ``[j, i]`` is parent pixel ``(x0 + i, y0 + j)``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DiffimValueError

__all__ = [
    "DEFAULT_MASK_PLANES",
    "BBox",
    "Exposure",
    "LazyWcs",
    "MaskPlanes",
    "MaskedImage",
    "bits_set",
]

#: LSST's default mask planes and their bit numbers.
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}

MASK_DTYPE = np.int32
MAX_MASK_BITS = 31  # bit 31 would be the sign bit of an int32
#: Rows of a mask tested at a time by `bits_set` (1 MB of int32 for 1024-pixel rows).
BITS_BLOCK_ROWS = 256


def bits_set(mask: np.ndarray, bits: int) -> np.ndarray:
    """Return where ``mask`` has any of ``bits`` set, as booleans of the mask's shape.

    ``(mask & bits) != 0``, a block of rows at a time: no mask-sized integer temporary
    (16 MB for a 2048² int32 mask) is made.
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return np.asarray((mask & bits) != 0)
    out = np.empty(mask.shape, dtype=bool)
    bits = mask.dtype.type(bits)
    for start in range(0, mask.shape[0], BITS_BLOCK_ROWS):
        rows = slice(start, start + BITS_BLOCK_ROWS)
        np.not_equal(mask[rows] & bits, 0, out=out[rows])
    return out


@dataclass(frozen=True)
class BBox:
    """An integer pixel box in parent coordinates, inclusive of both corners.

    Parameters
    ----------
    x_min, y_min : int
        Lower-left pixel of the box.
    width, height : int
        Size of the box in pixels; both must be >= 0.
    """

    x_min: int
    y_min: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            msg = f"BBox size must be non-negative, got width={self.width}, height={self.height}"
            raise DiffimValueError(msg)

    @classmethod
    def from_corners(cls, x_min: int, y_min: int, x_max: int, y_max: int) -> BBox:
        """Make a box from its inclusive corners; an inverted box is empty."""
        return cls(
            int(x_min), int(y_min), max(0, int(x_max) - x_min + 1), max(0, int(y_max) - y_min + 1)
        )

    @property
    def x_max(self) -> int:
        """Last column of the box (inclusive)."""
        return self.x_min + self.width - 1

    @property
    def y_max(self) -> int:
        """Last row of the box (inclusive)."""
        return self.y_min + self.height - 1

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)`` of the box."""
        return (self.height, self.width)

    @property
    def is_empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.width == 0 or self.height == 0

    @property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` of the box in pixels."""
        return (self.x_min + (self.width - 1) / 2.0, self.y_min + (self.height - 1) / 2.0)

    def contains(self, other: BBox) -> bool:
        """Return True if ``other`` lies entirely inside this box."""
        return (
            other.x_min >= self.x_min
            and other.y_min >= self.y_min
            and other.x_max <= self.x_max
            and other.y_max <= self.y_max
        )

    def contains_point(self, x: float, y: float) -> bool:
        """Return True if the pixel nearest to ``(x, y)`` lies inside the box."""
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        return self.x_min <= ix <= self.x_max and self.y_min <= iy <= self.y_max

    def intersection(self, other: BBox) -> BBox:
        """Return the overlap of two boxes (possibly empty)."""
        return BBox.from_corners(
            max(self.x_min, other.x_min),
            max(self.y_min, other.y_min),
            min(self.x_max, other.x_max),
            min(self.y_max, other.y_max),
        )

    def grown(self, border: int) -> BBox:
        """Return the box grown by ``border`` pixels on every side (negative shrinks)."""
        return BBox.from_corners(
            self.x_min - border, self.y_min - border, self.x_max + border, self.y_max + border
        )

    def slices(self, xy0: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
        """Return the ``(rows, cols)`` slices of this box in an array whose origin is ``xy0``."""
        x0, y0 = xy0
        return (
            slice(self.y_min - y0, self.y_min - y0 + self.height),
            slice(self.x_min - x0, self.x_min - x0 + self.width),
        )


class MaskPlanes:
    """Named bit planes of an integer mask.

    Parameters
    ----------
    planes : dict of str to int, optional
        Plane name to bit number; LSST's defaults (:data:`DEFAULT_MASK_PLANES`) if omitted.

    Examples
    --------
    >>> planes = MaskPlanes()
    >>> planes.bitmask(["BAD", "SAT"])
    3
    >>> planes.add("FAKE")
    9
    """

    def __init__(self, planes: dict[str, int] | None = None) -> None:
        self._bits: dict[str, int] = dict(DEFAULT_MASK_PLANES if planes is None else planes)
        for name, bit in self._bits.items():
            if not 0 <= bit < MAX_MASK_BITS:
                msg = f"mask plane {name!r} has bit {bit}; bits must be in 0..{MAX_MASK_BITS - 1}"
                raise DiffimValueError(msg)
        if len(set(self._bits.values())) != len(self._bits):
            msg = f"two mask planes share a bit: {self._bits}"
            raise DiffimValueError(msg)

    def __contains__(self, name: object) -> bool:
        return name in self._bits

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskPlanes) and self._bits == other._bits

    def __repr__(self) -> str:
        return f"MaskPlanes({self._bits!r})"

    def as_dict(self) -> dict[str, int]:
        """Return a copy of the name-to-bit mapping."""
        return dict(self._bits)

    def copy(self) -> MaskPlanes:
        """Return an independent copy."""
        return MaskPlanes(self._bits)

    def bit(self, name: str) -> int:
        """Return the bit number of plane ``name``."""
        try:
            return self._bits[name]
        except KeyError:
            msg = f"unknown mask plane {name!r}; known planes: {', '.join(self._bits)}"
            raise DiffimValueError(msg) from None

    def add(self, name: str) -> int:
        """Add plane ``name`` (if new) on the lowest free bit and return its bit number."""
        if name in self._bits:
            return self._bits[name]
        used = set(self._bits.values())
        free = next((b for b in range(MAX_MASK_BITS) if b not in used), None)
        if free is None:
            msg = f"no free mask bit left for plane {name!r}"
            raise DiffimValueError(msg)
        self._bits[name] = free
        return free

    def bitmask(self, names: str | list[str] | tuple[str, ...]) -> int:
        """Return the OR of the bit values of the named planes; unknown names are an error."""
        if isinstance(names, str):
            names = [names]
        value = 0
        for name in names:
            value |= 1 << self.bit(name)
        return value

    def bitmask_known(self, names: list[str] | tuple[str, ...]) -> int:
        """Return the OR of the bit values of those named planes that exist here."""
        return self.bitmask([name for name in names if name in self._bits])

    def names(self, value: int) -> list[str]:
        """Return the names of the planes set in mask ``value``."""
        return [name for name, bit in self._bits.items() if value & (1 << bit)]

    def merged(self, other: MaskPlanes) -> MaskPlanes:
        """Return the union of two plane sets; conflicting bit numbers are an error."""
        merged = dict(self._bits)
        for name, bit in other._bits.items():
            if merged.get(name, bit) != bit:
                msg = (
                    f"mask plane {name!r} has bit {merged[name]} in one image and {bit} in the "
                    "other; remap one mask before combining"
                )
                raise DiffimValueError(msg)
            merged[name] = bit
        return MaskPlanes(merged)


def _as_float_image(name: str, array: Any, dtype: np.dtype | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        msg = f"{name} must be a 2-d array, got shape {array.shape}"
        raise DiffimValueError(msg)
    if dtype is None:
        dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.float64
    return array.astype(dtype, copy=False)


class MaskedImage:
    """An image with a mask of bit planes and a variance plane, all of one shape.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Pixel values (ADU or e-); float32 is kept as float32, other types become float64.
    mask : array_like of int, shape (ny, nx), optional
        Bit planes (see ``planes``); zeros if omitted.
    variance : array_like, shape (ny, nx), optional
        Variance of each pixel in image units squared; zeros if omitted.
    xy0 : tuple of int, optional
        Parent coordinates ``(x0, y0)`` of array element ``[0, 0]``.
    planes : MaskPlanes, optional
        Names of the mask bits; LSST's defaults if omitted.

    Notes
    -----
    The arrays are stored without copying where their dtypes allow, so a ``MaskedImage``
    built from arrays is a view of them.  Arithmetic follows the masked-image rules:
    subtracting or adding images adds their variances and ORs their masks; multiplying by a
    scalar ``c`` multiplies the variance by ``c**2``.
    """

    def __init__(
        self,
        image: Any,
        mask: Any = None,
        variance: Any = None,
        *,
        xy0: tuple[int, int] = (0, 0),
        planes: MaskPlanes | None = None,
    ) -> None:
        self.image = _as_float_image("image", image)
        shape = self.image.shape
        if mask is None:
            mask = np.zeros(shape, dtype=MASK_DTYPE)
        if variance is None:
            variance = np.zeros(shape, dtype=self.image.dtype)
        mask = np.asarray(mask)
        if not np.issubdtype(mask.dtype, np.integer):
            msg = f"mask must hold integers (bit planes), got dtype {mask.dtype}"
            raise DiffimValueError(msg)
        self.mask = mask.astype(MASK_DTYPE, copy=False)
        self.variance = _as_float_image("variance", variance, self.image.dtype)
        for name, plane in (("mask", self.mask), ("variance", self.variance)):
            if plane.shape != shape:
                msg = f"{name} shape {plane.shape} differs from image shape {shape}"
                raise DiffimValueError(msg)
        self.xy0 = (int(xy0[0]), int(xy0[1]))
        self.planes = MaskPlanes() if planes is None else planes

    # -- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)``."""
        return self.image.shape

    @property
    def dtype(self) -> np.dtype:
        """Floating-point type of the image and variance planes."""
        return self.image.dtype

    @property
    def bbox(self) -> BBox:
        """Bounding box of the image in parent coordinates."""
        return BBox(self.xy0[0], self.xy0[1], self.shape[1], self.shape[0])

    def __getitem__(self, bbox: BBox) -> MaskedImage:
        """Return a view of the pixels inside ``bbox`` (parent coordinates)."""
        return self.subimage(bbox)

    def subimage(self, bbox: BBox) -> MaskedImage:
        """Return a view (no copy) of the pixels inside ``bbox`` (parent coordinates).

        Raises
        ------
        DiffimValueError
            If ``bbox`` is not entirely inside this image.
        """
        if not self.bbox.contains(bbox) or bbox.is_empty:
            msg = f"sub-image box {bbox} is empty or not inside the image box {self.bbox}"
            raise DiffimValueError(msg)
        rows, cols = bbox.slices(self.xy0)
        # Views of planes already checked here: skip the constructor's checks (kernel-stamp
        # loops take thousands of sub-images).
        view = object.__new__(MaskedImage)
        view.image = self.image[rows, cols]
        view.mask = self.mask[rows, cols]
        view.variance = self.variance[rows, cols]
        view.xy0 = (int(bbox.x_min), int(bbox.y_min))
        view.planes = self.planes
        return view

    def copy(self) -> MaskedImage:
        """Return a deep copy."""
        return MaskedImage(
            self.image.copy(),
            self.mask.copy(),
            self.variance.copy(),
            xy0=self.xy0,
            planes=self.planes.copy(),
        )

    def astype(self, dtype: np.dtype | type) -> MaskedImage:
        """Return a copy with image and variance converted to ``dtype``."""
        return MaskedImage(
            self.image.astype(dtype),
            self.mask.copy(),
            self.variance.astype(dtype),
            xy0=self.xy0,
            planes=self.planes.copy(),
        )

    # -- masks ----------------------------------------------------------------------------
    def bitmask(self, names: str | list[str] | tuple[str, ...]) -> int:
        """Return the bit value of the named planes that this image knows (others ignored)."""
        if isinstance(names, str):
            names = [names]
        return self.planes.bitmask_known(list(names))

    def mask_plane(self, name: str) -> np.ndarray:
        """Return a boolean array, True where plane ``name`` is set."""
        return bits_set(self.mask, 1 << self.planes.bit(name))

    def set_mask_plane(self, name: str, where: np.ndarray) -> None:
        """Set plane ``name`` (added if new) on the pixels where ``where`` is True."""
        bit = np.int32(1 << self.planes.add(name))
        if isinstance(where, np.ndarray) and where.dtype == bool and where.shape == self.shape:
            np.bitwise_or(self.mask, bit, out=self.mask, where=where)  # one pass, no gather
        else:
            self.mask[where] |= bit

    # -- arithmetic -----------------------------------------------------------------------
    def _check_compatible(self, other: MaskedImage) -> MaskPlanes:
        if other.shape != self.shape:
            msg = f"cannot combine images of shapes {self.shape} and {other.shape}"
            raise DiffimValueError(msg)
        if other.xy0 != self.xy0:
            msg = f"cannot combine images with origins {self.xy0} and {other.xy0}"
            raise DiffimValueError(msg)
        return self.planes.merged(other.planes)

    def __isub__(self, other: MaskedImage | float) -> MaskedImage:
        if isinstance(other, MaskedImage):
            self.planes = self._check_compatible(other)
            self.image -= other.image
            self.variance += other.variance
            self.mask |= other.mask
        else:
            self.image -= other
        return self

    def __iadd__(self, other: MaskedImage | float) -> MaskedImage:
        if isinstance(other, MaskedImage):
            self.planes = self._check_compatible(other)
            self.image += other.image
            self.variance += other.variance
            self.mask |= other.mask
        else:
            self.image += other
        return self

    def __imul__(self, scale: float) -> MaskedImage:
        self.image *= scale
        self.variance *= scale * scale
        return self

    def __itruediv__(self, scale: float) -> MaskedImage:
        self.image /= scale
        self.variance /= scale * scale
        return self

    def _combined(self, other: MaskedImage | float, operation: np.ufunc) -> MaskedImage:
        """``self ± other`` in one pass per plane (no copy first), in this image's dtypes."""
        if not isinstance(other, MaskedImage):
            image = operation(self.image, other, dtype=self.image.dtype)
            return MaskedImage(
                image, self.mask.copy(), self.variance.copy(), xy0=self.xy0,
                planes=self.planes.copy(),
            )  # fmt: skip
        planes = self._check_compatible(other)
        return MaskedImage(
            operation(self.image, other.image, dtype=self.image.dtype),
            self.mask | other.mask,
            np.add(self.variance, other.variance, dtype=self.variance.dtype),
            xy0=self.xy0,
            planes=planes,
        )

    def subtract_into(self, other: MaskedImage) -> MaskedImage:
        """Write ``self - other`` into ``other``'s own planes and return ``other``.

        The same pixels, variance and mask as ``self - other``, without allocating a new
        image: for a ``other`` that is no longer needed (e.g. a matched template).
        """
        other.planes = self._check_compatible(other)
        np.subtract(self.image, other.image, out=other.image)
        other.variance += self.variance
        other.mask |= self.mask
        return other

    def __sub__(self, other: MaskedImage | float) -> MaskedImage:
        return self._combined(other, np.subtract)

    def __add__(self, other: MaskedImage | float) -> MaskedImage:
        return self._combined(other, np.add)

    def __mul__(self, scale: float) -> MaskedImage:
        result = self.copy()
        result *= scale
        return result

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> MaskedImage:
        result = self.copy()
        result /= scale
        return result

    def __repr__(self) -> str:
        return f"MaskedImage(shape={self.shape}, dtype={self.dtype}, xy0={self.xy0})"


class LazyWcs:
    """A WCS kept in a cheap form (such as the FITS cards it was read from) until first use.

    `Exposure` stores one in place of its ``wcs`` and builds it when ``wcs`` is first read,
    so that an aligned pair whose WCS cards are identical never builds a WCS (importing
    ``astropy.wcs`` takes ~0.3 s).  Subclasses are immutable and implement `build` and
    `same_grid`; `diffim.fitswcs.HeaderWcs` is the one made when reading FITS files.
    """

    __slots__ = ()

    def build(self) -> Any:
        """Return the WCS (an ``astropy.wcs.WCS`` of parent pixels), or None if invalid."""
        raise NotImplementedError

    def same_grid(self, other: LazyWcs) -> bool:
        """Return True only if both certainly map every parent pixel to the same sky point.

        False means "not known to be equal": the caller then compares the built WCSs.
        """
        return self is other


class _WcsField:
    """Descriptor of `Exposure.wcs`: stores a WCS, None or a `LazyWcs`; reads a built WCS.

    A `LazyWcs` is built on the first read and replaced by the result; from then on the
    exposure holds an ordinary (mutable) WCS object, as if it had been given one.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, exposure: Exposure | None, owner: type | None = None) -> Any:
        if exposure is None:
            return None  # the dataclass default
        value = exposure.__dict__[self._slot]
        if isinstance(value, LazyWcs):
            value = value.build()
            exposure.__dict__[self._slot] = value
        return value

    def __set__(self, exposure: Exposure, value: Any) -> None:
        exposure.__dict__[self._slot] = value


@dataclass
class Exposure:
    """A masked image with its world coordinates, PSF model and metadata.

    Parameters
    ----------
    masked_image : MaskedImage
        The pixels.
    wcs : astropy.wcs.WCS, LazyWcs or None
        World coordinate system of the *parent* pixel grid (pixel ``(0, 0)`` is parent
        pixel ``(0, 0)``, not the cut-out's first pixel).  A `LazyWcs` (what
        `diffim.io.read_exposure` stores) is built on first access: ``exposure.wcs`` is
        always an ``astropy.wcs.WCS`` or None.
    psf : object or None
        A PSF model from :mod:`diffim.psf`.
    gain : float or None
        Detector gain in e-/ADU.
    saturation : float or None
        Saturation level in image units (ADU).
    zero_point : float or None
        Photometric zero point in magnitudes (AB mag of one image unit per second-free flux).
    filter_name : str or None
        Band name.
    metadata : dict
        Free-form header cards carried along to the output.
    """

    masked_image: MaskedImage
    wcs: Any = _WcsField()
    psf: Any = None
    gain: float | None = None
    saturation: float | None = None
    zero_point: float | None = None
    filter_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def stored_wcs(self) -> Any:
        """The WCS as stored, without building it: a WCS, an unbuilt `LazyWcs`, or None.

        Pass it as ``wcs=`` to give another exposure the same WCS without building it.
        """
        return self.__dict__["_wcs"]

    @property
    def bbox(self) -> BBox:
        """Bounding box in parent coordinates."""
        return self.masked_image.bbox

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)``."""
        return self.masked_image.shape

    def subimage(self, bbox: BBox) -> Exposure:
        """Return an exposure whose pixels are a view of those inside ``bbox``."""
        return Exposure(
            self.masked_image.subimage(bbox),
            wcs=self.stored_wcs,
            psf=self.psf,
            gain=self.gain,
            saturation=self.saturation,
            zero_point=self.zero_point,
            filter_name=self.filter_name,
            metadata=dict(self.metadata),
        )

    def copy(self) -> Exposure:
        """Return a deep copy of pixels and metadata (the PSF is shared)."""
        return self.with_pixels(self.masked_image.copy())

    def with_pixels(self, masked_image: MaskedImage) -> Exposure:
        """Return an exposure of ``masked_image`` (not copied) with a deep copy of this one's
        WCS and metadata and the same PSF, gain, saturation, zero point and filter.

        An unbuilt `LazyWcs` is immutable: it is shared, and stays unbuilt.
        """
        wcs = self.stored_wcs
        return Exposure(
            masked_image,
            wcs=wcs if isinstance(wcs, LazyWcs) else copy.deepcopy(wcs),
            psf=self.psf,
            gain=self.gain,
            saturation=self.saturation,
            zero_point=self.zero_point,
            filter_name=self.filter_name,
            metadata=copy.deepcopy(self.metadata),
        )

    def __repr__(self) -> str:
        psf = type(self.psf).__name__ if self.psf is not None else None
        wcs = self.stored_wcs
        described = "no" if wcs is None else "unread" if isinstance(wcs, LazyWcs) else "yes"
        return (
            f"Exposure(shape={self.shape}, xy0={self.masked_image.xy0}, wcs={described}, "
            f"psf={psf}, filter={self.filter_name!r})"
        )
