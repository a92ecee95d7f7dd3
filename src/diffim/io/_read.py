"""Read an exposure from an LSST-style or a plain FITS file (`read_exposure`).

The ``IMAGE``, ``MASK`` and ``VARIANCE`` HDUs of an LSST-style file (named, or HDUs 1-3 of
a calexp) are read together; otherwise one 2-d image HDU is the image, and the variance
(or weight, or sigma) and the mask may come from separate files or arrays.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from ..errors import DiffimIOError, DiffimValueError
from ..fitswcs import header_wcs
from ..image import MASK_DTYPE, Exposure, MaskedImage, MaskPlanes
from ._fitsfile import Hdu, open_fits
from ._header import Header
from ._layout import LSST_EXTNAMES, PathLike, PlaneSource, _exposure_fields, _xy0_from_header
from ._planes import _complete, _float_image, _mask_from_array, _variance_from_map

log = logging.getLogger("diffim.io")  # one logger for the package, named as before the split


def _lsst_indices(hdus: list[Hdu]) -> dict[str, int]:
    """Return the HDU index of IMAGE/MASK/VARIANCE, or {} if the file is not LSST-style."""
    found: dict[str, int] = {}
    for hdu in hdus:
        kinds = {hdu.name, str(hdu.header.get("EXTTYPE", "")).strip().upper()}
        for kind in kinds.intersection(LSST_EXTNAMES):
            if hdu.is_2d_image and kind not in found:
                found[kind] = hdu.index
    if "IMAGE" in found:
        return found
    # calexp/deepCoadd without names: empty primary, then image, integer mask, variance.
    planes = hdus[1:4]
    if (
        len(planes) == 3
        and not hdus[0].shape
        and all(hdu.is_2d_image for hdu in planes)
        and len({hdu.shape for hdu in planes}) == 1
        and planes[1].integer
    ):
        return dict(zip(LSST_EXTNAMES, (1, 2, 3), strict=True))
    return {}


def _image_index(hdus: list[Hdu], path: PathLike, hdu: int | str | None) -> int:
    """Return the index of the chosen HDU, or of the first one holding a 2-d image."""
    if hdu is None:
        index = next((item.index for item in hdus if item.is_2d_image), None)
        if index is None:
            msg = f"{path} has no 2-d image HDU; pass an image file"
            raise DiffimIOError(msg)
        return index
    if isinstance(hdu, str):
        index = next((item.index for item in hdus if item.name == hdu.strip().upper()), None)
    else:
        index = int(hdu) if -len(hdus) <= int(hdu) < len(hdus) else None
    if index is None:
        names = [item.name for item in hdus]
        msg = f"{path} has no HDU {hdu!r}; its HDUs are {names}"
        raise DiffimIOError(msg)
    index %= len(hdus)
    if not hdus[index].is_2d_image:
        msg = f"HDU {hdu!r} of {path} holds no 2-d image; choose another with hdu="
        raise DiffimIOError(msg)
    return index


def _read_file(hdus: list[Hdu], path: PathLike, hdu: int | str | None) -> dict[str, Any]:
    """Return image, mask, variance (None if absent) and the headers of a FITS file."""
    found = _lsst_indices(hdus) if hdu is None else {}
    if not found:
        found = {"IMAGE": _image_index(hdus, path, hdu)}
    extra = [item.name or str(item.index) for item in hdus[1:] if item.index not in found.values()]
    if extra and len(found) > 1:
        log.debug("%s: ignoring %d extra HDUs %s", path, len(extra), extra)
    parts: dict[str, Any] = {"label": str(path)}
    taken: dict[int, np.ndarray] = {}
    for kind, index in found.items():
        if index in taken:  # one HDU named for two planes: each plane gets its own array
            parts[kind] = taken[index].copy()
        else:
            parts[kind] = taken[index] = hdus[index].read()
        parts[kind + "_header"] = hdus[index].header.copy()
        shape = parts[kind].shape
        if shape != parts["IMAGE"].shape:
            msg = f"{path}: {kind} shape {shape} differs from IMAGE shape {parts['IMAGE'].shape}"
            raise DiffimIOError(msg)
    parts["header"] = hdus[0].header.copy()
    if found["IMAGE"] != 0:
        parts["header"].update(parts["IMAGE_header"])
    return parts


def _load_plane(source: PlaneSource, what: str) -> tuple[np.ndarray, Header | None, str]:
    """Return (array, header, label) of a separate plane given as a file name or an array."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            msg = f"{what} array must be 2-d, got shape {source.shape}"
            raise DiffimValueError(msg)
        return source, None, f"{what} array"

    with open_fits(source) as hdus:
        plane = hdus[_image_index(hdus, source, None)]
        return plane.read(), plane.header, f"{what} file {source}"


def _check_shape(array: np.ndarray, shape: tuple[int, ...], label: str, image_label: str) -> None:
    if array.shape != shape:
        msg = f"{label} has shape {array.shape}, but the image {image_label} has shape {shape}"
        raise DiffimIOError(msg)


def read_exposure(
    path: PathLike,
    *,
    variance: PlaneSource | None = None,
    mask: PlaneSource | None = None,
    weight: PlaneSource | None = None,
    sigma: PlaneSource | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
    hdu: int | str | None = None,
) -> Exposure:
    """Read an exposure from an LSST-style or a plain (optionally tile-compressed) FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        The image.  With ``IMAGE``/``MASK``/``VARIANCE`` HDUs (or an LSST calexp whose HDUs
        1-3 are image, mask and variance) all three are read and extra HDUs are ignored;
        otherwise the first HDU holding a 2-d image (or ``hdu``) is the image.
    variance, weight, sigma : str, os.PathLike or ndarray, optional
        At most one: a separate map of the variance (image units squared), inverse variance,
        or standard deviation (image units); it overrides a VARIANCE HDU.  Zero weight,
        like any non-finite value, masks the pixel NO_DATA.
    mask : str, os.PathLike or ndarray, optional
        A separate integer mask.  Its ``MP_<NAME>`` cards name the bits; without them any
        non-zero value is BAD.
    gain : float, optional
        Gain in e-/ADU; overrides the ``GAIN`` card.
    read_noise : float, optional
        Read noise in e-; overrides ``RDNOISE`` (default 0).
    saturation : float, optional
        Saturation level in ADU; overrides ``SATURATE``.  Pixels at or above it are
        flagged SAT (in addition to any SAT bits the file has).
    hdu : int or str, optional
        Index or name of the image HDU; turns off LSST-layout detection.

    Returns
    -------
    Exposure
        Image dtype kept (float32 stays float32), mask int32, ``xy0`` from ``LTV1/LTV2``,
        ``wcs`` of the parent grid (None without a celestial WCS; a plain one is stored as
        a `HeaderWcs` and built on first access), ``psf`` None.

    Raises
    ------
    DiffimIOError
        If a file is missing, not FITS, has no 2-d image, has planes of different shapes,
        or a negative variance.

    Warns
    -----
    VarianceEstimatedWarning
        No variance was given: it was estimated from the gain (Poisson + read noise) or, with
        no gain, from the sky noise; ``metadata["VARSRC"]`` says which.
    MaskedPixelsWarning
        Non-finite pixels were set to 0 and masked NO_DATA.
    """
    _check_options(variance=variance, weight=weight, sigma=sigma, gain=gain, saturation=saturation)
    with open_fits(path) as hdus:
        parts = _read_file(hdus, path, hdu)
    image, label, header = _float_image(parts["IMAGE"]), parts["label"], parts["header"]
    mask_array, planes = _read_mask(parts, mask)
    maps = {"variance": variance, "weight": weight, "sigma": sigma}
    variance_array = _read_variance(parts, image.dtype, **maps)
    fields = _exposure_fields(header)
    gain = fields["gain"] if gain is None else gain
    if read_noise is None:
        read_noise = header.get("RDNOISE", 0.0)
        read_noise = float(read_noise) if isinstance(read_noise, int | float) else 0.0
    variance_array, source, notes = _complete(
        image, mask_array, planes, variance_array, label=label, gain=gain, read_noise=read_noise
    )
    xy0 = _xy0_from_header(parts["IMAGE_header"])
    wcs = header_wcs(parts["IMAGE_header"], xy0, notes)
    for message, category in notes:
        warnings.warn(message, category, stacklevel=2)
    if source is not None:
        fields["metadata"]["VARSRC"] = source
    masked_image = MaskedImage(image, mask_array, variance_array, xy0=xy0, planes=planes)
    saturation = fields["saturation"] if saturation is None else saturation
    if saturation is not None:
        masked_image.set_mask_plane("SAT", masked_image.image >= saturation)
    return Exposure(
        masked_image,
        wcs=wcs,
        gain=gain,
        saturation=saturation,
        zero_point=fields["zero_point"],
        filter_name=fields["filter_name"],
        metadata=fields["metadata"],
    )


def _check_options(**options: Any) -> None:
    given = [name for name in ("variance", "weight", "sigma") if options[name] is not None]
    if len(given) > 1:
        msg = f"pass at most one of variance=, weight=, sigma=; got {', '.join(given)}"
        raise DiffimValueError(msg)
    gain = options["gain"]
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        msg = f"gain must be a positive number of e-/ADU, got {gain!r}"
        raise DiffimValueError(msg)
    saturation = options["saturation"]
    if saturation is not None and not (np.isfinite(saturation) and saturation > 0):
        msg = f"saturation must be a positive number (image units), got {saturation!r}"
        raise DiffimValueError(msg)


def _read_mask(parts: dict[str, Any], mask: PlaneSource | None) -> tuple[np.ndarray, MaskPlanes]:
    """Return the mask from a separate file if given, else the MASK HDU, else zeros."""
    if mask is not None:
        array, header, label = _load_plane(mask, "mask")
        _check_shape(array, parts["IMAGE"].shape, label, parts["label"])
        owned = not isinstance(mask, np.ndarray)  # read from a file: ours to reuse
        return _mask_from_array(array, header, label, default_planes=False, copy=not owned)
    if "MASK" in parts:
        label = f"{parts['label']}[MASK]"
        header = parts["MASK_header"]
        return _mask_from_array(parts["MASK"], header, label, default_planes=True, copy=False)
    return np.zeros(parts["IMAGE"].shape, dtype=MASK_DTYPE), MaskPlanes()


def _read_variance(
    parts: dict[str, Any], dtype: np.dtype, **maps: PlaneSource | None
) -> np.ndarray | None:
    """Return the variance (of ``dtype``) from a separate map if given, else the VARIANCE
    HDU, else None."""
    for kind, source in maps.items():
        if source is not None:
            array, _, label = _load_plane(source, kind)
            _check_shape(array, parts["IMAGE"].shape, label, parts["label"])
            owned = not isinstance(source, np.ndarray)
            return _variance_from_map(array, kind, label, dtype=dtype, copy=not owned)
    if "VARIANCE" in parts:
        label = f"{parts['label']}[VARIANCE]"
        return _variance_from_map(parts["VARIANCE"], "variance", label, dtype=dtype, copy=False)
    return None
