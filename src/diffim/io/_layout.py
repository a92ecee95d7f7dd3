"""The LSST file layout: HDU names, header keywords, and an exposure's header cards.

Mask planes are named by ``MP_<NAME> = bit`` cards in the ``MASK`` header, and the origin
``xy0`` of a cut-out is stored as ``LTV1 = -x0``, ``LTV2 = -y0`` (plus the linear alternate
WCS ``A``).  The functions here turn an exposure's attributes and metadata into header cards
(`_primary_header`, `_plane_header`) and read them back (`_exposure_fields`,
`_xy0_from_header`, `_planes_from_header`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..fitswcs import exposure_wcs_cards
from ..image import Exposure, MaskPlanes
from ._fitsfile import CARD_BYTES, HIERARCH
from ._header import Card, Header

log = logging.getLogger("diffim.io")  # one logger for the package, named as before the split

PathLike = str | os.PathLike
PlaneSource = str | os.PathLike | np.ndarray

LSST_EXTNAMES = ("IMAGE", "MASK", "VARIANCE")
MASK_PLANE_PREFIX = "MP_"
#: Header keywords read into Exposure attributes, in order of preference.
ATTRIBUTE_KEYS = {
    "gain": ("GAIN",),
    "saturation": ("SATURATE",),
    "zero_point": ("ZEROPT", "MAGZERO", "PHOTZP"),
    "filter_name": ("FILTER", "BAND"),
}
_RESERVED_KEY = re.compile(
    r"^(|SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|EXTNAME|EXTTYPE|EXTVER|PCOUNT|GCOUNT|BZERO"
    r"|BSCALE|BLANK|CHECKSUM|DATASUM|INHERIT|COMMENT|HISTORY)$"
)
_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA|CD\d|PC\d|PV\d|PS\d|A_|B_|AP_|BP_"
    r"|LTV|LTM|RADESYS|RADECSYS|EQUINOX|LONPOLE|LATPOLE|MJDREF|DATEREF)"
)
_FITS_KEYWORD = re.compile(r"^[A-Z0-9_-]{1,8}$")
#: Characters a HIERARCH keyword may not hold: the value separator, and cfitsio's wildcards.
_HIERARCH_FORBIDDEN = re.compile(r"[=?*#]")


def _set_card(header: Header, key: str, value: Any) -> None:
    """Set one card (long keywords are written as HIERARCH); skip values FITS cannot hold.

    Sequences of scalars are written as comma-separated strings, non-finite floats as the
    strings ``"nan"``/``"inf"``; strings must be printable ASCII.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, list | tuple) and all(
        isinstance(v, bool | int | float | str | np.generic) for v in value
    ):
        value = ",".join(str(v.item() if isinstance(v, np.generic) else v) for v in value)
    if isinstance(value, float) and not np.isfinite(value):
        value = str(value)
    if not isinstance(value, bool | int | float | str) or (
        isinstance(value, str) and not (value.isascii() and value.isprintable())
    ):
        log.warning("not writing header card %s: FITS cannot hold the value %r", key, value)
        return
    if _FITS_KEYWORD.match(key.upper()):
        header[key.upper()] = value
    elif _fits_hierarch_card(key, value):
        header[key] = value
    else:
        log.warning(
            "not writing header card %s=%r: a HIERARCH card holds at most 80 characters and "
            "no =, ?, * or # in its keyword",
            key,
            value,
        )


def _fits_hierarch_card(key: str, value: bool | int | float | str) -> bool:
    """Whether ``HIERARCH key = value`` is a valid card of at most 80 characters.

    cfitsio truncates a longer one silently (or loops forever on some), so it is refused
    here, as astropy refused it; the value's width is that of cfitsio's format.
    """
    if not (key.isascii() and key.isprintable()) or _HIERARCH_FORBIDDEN.search(key):
        return False
    if isinstance(value, bool):
        text = "T"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''") + "'"
    elif isinstance(value, float):
        text = f"{value:.15G}."  # cfitsio's double format; it may add a decimal point
    else:
        text = str(value)
    return len(HIERARCH) + len(key) + len(" = ") + len(text) <= CARD_BYTES


def _plane_header(exposure: Exposure, extname: str, wcs_cards: list[Card] | None = None) -> Header:
    """Return the header of one pixel HDU: EXTNAME, WCS of the cut-out, and xy0."""
    x0, y0 = exposure.masked_image.xy0
    header = Header()
    header["EXTNAME"] = extname
    header["EXTTYPE"] = extname
    header.extend(exposure_wcs_cards(exposure) if wcs_cards is None else wcs_cards)
    header["LTV1"] = (-x0, "minus the parent x of the first pixel")
    header["LTV2"] = (-y0, "minus the parent y of the first pixel")
    for key, value in (("CRVAL1A", x0), ("CRVAL2A", y0), ("CRPIX1A", 1), ("CRPIX2A", 1)):
        header[key] = value
    for key, value in (("CTYPE1A", "LINEAR"), ("CTYPE2A", "LINEAR"), ("WCSNAMEA", "A")):
        header[key] = value
    return header


def _primary_header(exposure: Exposure, header_extra: Mapping | None) -> Header:
    header = Header()
    for key, value in exposure.metadata.items():
        if not _RESERVED_KEY.match(key.upper()) and not _WCS_KEY.match(key.upper()):
            _set_card(header, key, value)
    for attribute, keys in ATTRIBUTE_KEYS.items():
        if getattr(exposure, attribute) is not None:
            _set_card(header, keys[0], getattr(exposure, attribute))
    for key, value in (header_extra or {}).items():
        if not _RESERVED_KEY.match(key.upper()):
            _set_card(header, key, value)
    return header


def _planes_from_header(header: Mapping | None) -> MaskPlanes | None:
    if header is None:
        return None
    bits = {
        str(key)[len(MASK_PLANE_PREFIX) :]: int(value)
        for key, value in header.items()
        if str(key).upper().startswith(MASK_PLANE_PREFIX)
    }
    return MaskPlanes(bits) if bits else None


def _xy0_from_header(header: Mapping) -> tuple[int, int]:
    if "LTV1" in header or "LTV2" in header:
        return (-round(header.get("LTV1", 0)), -round(header.get("LTV2", 0)))
    if header.get("CTYPE1A") == "LINEAR" and "CRVAL1A" in header:
        return (round(header["CRVAL1A"]), round(header.get("CRVAL2A", 0)))
    return (0, 0)


def _exposure_fields(header: Mapping) -> dict[str, Any]:
    """Return gain, saturation, zero_point, filter_name and the remaining plain metadata."""
    fields: dict[str, Any] = dict.fromkeys(ATTRIBUTE_KEYS)
    for attribute, keys in ATTRIBUTE_KEYS.items():
        key = next((key for key in keys if key in header), None)
        if key is None:
            continue
        value = header[key]
        if attribute == "filter_name":
            fields[attribute] = str(value).strip()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            fields[attribute] = float(value)
    if fields["gain"] is not None and not (np.isfinite(fields["gain"]) and fields["gain"] > 0):
        log.debug("ignoring header GAIN=%r: not a positive number", fields["gain"])
        fields["gain"] = None
    consumed = {key for keys in ATTRIBUTE_KEYS.values() for key in keys}
    fields["metadata"] = {
        str(key): value
        for key, value in header.items()
        if isinstance(value, bool | int | float | str)
        and str(key).upper() not in consumed
        and not _RESERVED_KEY.match(str(key).upper())
        and not _WCS_KEY.match(str(key).upper())
        and not str(key).upper().startswith(MASK_PLANE_PREFIX)
    }
    return fields
