"""The WCS of FITS image headers: kept as cards until used, shifted to cut-out pixels.

`HeaderWcs` holds a plain celestial WCS (TAN or TAN-SIP) as its header cards and builds it
with ``astropy.wcs`` (0.3 s to import) only when ``exposure.wcs`` is first read, so that an
aligned pair whose cards are identical is subtracted and written without building a WCS.
`exposure_wcs_cards` gives the cards of an exposure's pixel HDUs, with FITS pixel 1 at the
cut-out's first pixel; `shift_wcs` moves a WCS's pixel grid.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DiffimValueError, DiffimWarning
from .image import Exposure, LazyWcs

if TYPE_CHECKING:
    from astropy.wcs import WCS

    from .io._header import Card, Header

__all__ = ["HeaderWcs", "exposure_wcs_cards", "header_wcs", "shift_wcs"]

#: Notes collected while reading a file: (message, warning category) pairs.
Notes = list[tuple[str, type[Warning]]]

#: Keywords of the primary WCS (key " ") that astropy.wcs reads; alternates end in A-Z.
_PRIMARY_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d+|CRPIX\d+|CRVAL\d+|CDELT\d+|CUNIT\d+|CROTA\d+|CD\d+_\d+|PC\d+_\d+"
    r"|PV\d+_\d+|PS\d+_\d+|CNAME\d+|CRDER\d+|CSYER\d+|LONPOLE|LATPOLE|RADESYS|RADECSYS"
    r"|EQUINOX|EPOCH|MJDREF[IF]?|DATEREF|WCSNAME|RESTFRQ|RESTFREQ|RESTWAV|SPECSYS|SSYSOBS"
    r"|VELOSYS|VELREF|ZSOURCE|SSYSSRC|VELANGL|A_\w+|B_\w+|AP_\w+|BP_\w+|CPDIS\d+|CQDIS\d+"
    r"|DP\d+(\..*)?|DQ\d+(\..*)?|CPERR\d+|CQERR\d+|D2IM\w*|WAT\d_\d+|LTM\d_\d)$"
)
#: The primary-WCS cards of a plain celestial header (see `_plain_celestial_cards`).
_PLAIN_NUMERIC_KEY = re.compile(
    r"^(WCSAXES|CRPIX[12]|CRVAL[12]|CDELT[12]|CROTA2|CD[12]_[12]|PC[12]_[12]|LONPOLE|LATPOLE"
    r"|EQUINOX|MJDREF|(A|B|AP|BP)_(ORDER|DMAX|\d_\d))$"
)
_PLAIN_STRING_KEY = re.compile(r"^(CTYPE[12]|CUNIT[12]|RADESYS|WCSNAME|DATEREF)$")
#: Projections with no required PV parameters (wcslib's defaults are valid).
_CELESTIAL_CTYPE = re.compile(
    r"^(RA--|DEC-|GLON|GLAT|ELON|ELAT)-"
    r"(TAN|SIN|ARC|STG|ZEA|AIR|CAR|MER|CEA|SFL|PAR|MOL|AIT|HPX)(-SIP)?$"
)
_CELESTIAL_PAIRS = {("RA--", "DEC-"), ("GLON", "GLAT"), ("ELON", "ELAT")}
_RADESYS = {"ICRS", "FK5", "FK4", "FK4-NO-E", "GAPPT"}
_ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\d(T\d\d:\d\d:\d\d(\.\d*)?)?$")


def shift_wcs(wcs: WCS, dx: float, dy: float) -> WCS:
    """Return a copy of ``wcs`` whose pixel grid is shifted: new pixel = old pixel + (dx, dy)."""
    from astropy.wcs import Sip  # astropy.wcs (and coordinates) cost ~0.3 s: import when used

    shifted = wcs.deepcopy()
    shifted.wcs.crpix = shifted.wcs.crpix + np.array([dx, dy], dtype=float)
    if shifted.sip is not None:
        sip = shifted.sip
        shifted.sip = Sip(sip.a, sip.b, sip.ap, sip.bp, shifted.wcs.crpix)
    return shifted


def exposure_wcs_cards(exposure: Exposure) -> list[Card]:
    """Return the WCS cards of the cut-out's pixel HDUs (FITS pixel 1 = its first pixel).

    A `HeaderWcs` read from a file with the same ``xy0`` and not built since is written as
    the cards it was read from; any other WCS through ``astropy.wcs``.
    """
    stored = exposure.stored_wcs
    x0, y0 = exposure.masked_image.xy0
    if isinstance(stored, HeaderWcs) and stored.xy0 == (x0, y0):
        return list(stored.cards)
    if exposure.wcs is None:
        return []
    from astropy.wcs import WCS

    if not isinstance(exposure.wcs, WCS):
        msg = f"can only write an astropy.wcs.WCS, got {type(exposure.wcs).__name__}"
        raise DiffimValueError(msg)
    header = shift_wcs(exposure.wcs, -x0, -y0).to_header(relax=True)
    return [(card.keyword, card.value, card.comment) for card in header.cards]


class HeaderWcs(LazyWcs):
    """The celestial WCS of a FITS image header, built with ``astropy.wcs`` on first use.

    `read_exposure` stores one in the `Exposure` when the header holds a plain celestial
    WCS (see `from_header`); reading ``exposure.wcs`` builds it.  Two of them with the same
    ``xy0`` and the same WCS cards describe the same pixel grid without building either,
    and an exposure whose WCS was never built is written with the cards it was read from.

    Parameters
    ----------
    header : diffim.io.Header
        The image HDU's header; kept, and not modified.
    xy0 : tuple of int
        Parent ``(x0, y0)`` of the file's first pixel: the file WCS is shifted by it.
    cards : tuple of (str, object, str)
        The header's WCS cards (keyword, value, comment), in header order.
    """

    __slots__ = ("_header", "cards", "xy0")

    def __init__(
        self,
        header: Header,
        xy0: tuple[int, int],
        cards: tuple[tuple[str, Any, str], ...],
    ) -> None:
        self._header, self.xy0, self.cards = header, (int(xy0[0]), int(xy0[1])), cards

    @classmethod
    def from_header(cls, header: Header, xy0: tuple[int, int]) -> HeaderWcs | None:
        """Return the deferred WCS of ``header``, or None unless it is plain and celestial.

        Plain: two celestial axes (RA/Dec, Galactic or ecliptic) in a projection without
        required parameters, optionally with SIP; numeric reference point and an invertible
        CD or PC/CDELT matrix; no distortion tables, PV/PS parameters or other primary-WCS
        keywords.  astropy builds such a header without error, so deferring the build moves
        no warning and no failure.  Other headers are left to `_wcs_from_header`.
        """
        from .io._header import as_header  # diffim.io imports this module

        header = as_header(header)
        cards = _plain_celestial_cards(header)
        return None if cards is None else cls(header, xy0, cards)

    def build(self) -> WCS | None:
        """Return the ``astropy.wcs.WCS`` of parent pixels."""
        notes: Notes = []
        wcs = _wcs_from_header(self._header, self.xy0, notes)
        for message, category in notes:
            warnings.warn(message, category, stacklevel=3)
        return wcs

    def same_grid(self, other: LazyWcs) -> bool:
        """Return True if ``other`` has the same ``xy0`` and WCS keywords and values."""
        if not isinstance(other, HeaderWcs):
            return False
        if self.xy0 != other.xy0 or len(self.cards) != len(other.cards):
            return False
        return sorted(c[:2] for c in self.cards) == sorted(c[:2] for c in other.cards)

    def __repr__(self) -> str:
        ctypes = [value for key, value, _ in self.cards if key.startswith("CTYPE")]
        return f"HeaderWcs({'/'.join(ctypes)}, {len(self.cards)} cards, xy0={self.xy0})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _linear_matrix_ok(values: dict[str, Any]) -> bool:
    """True if the CD, or PC times CDELT (CROTA2 kept apart), matrix is invertible."""
    has_cd = any(key.startswith("CD") and "_" in key for key in values)
    has_pc = any(key.startswith("PC") for key in values)
    if has_cd and (has_pc or "CROTA2" in values):
        return False
    if has_cd:
        matrix = [[values.get(f"CD{i}_{j}", 0.0) for j in (1, 2)] for i in (1, 2)]
    else:
        matrix = [[values.get(f"PC{i}_{j}", float(i == j)) for j in (1, 2)] for i in (1, 2)]
        if has_pc and "CROTA2" in values:
            return False
        for i in (0, 1):
            cdelt = values.get(f"CDELT{i + 1}", 1.0)
            matrix[i] = [element * cdelt for element in matrix[i]]
    determinant = matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0]
    return bool(np.isfinite(determinant) and determinant != 0.0)


def _plain_celestial_cards(header: Header) -> tuple[Card, ...] | None:
    """Return the primary-WCS cards of ``header`` if they form a plain celestial WCS."""
    if header.get("NAXIS") != 2:
        return None
    cards, values = [], {}
    for key, value, comment in header.cards:
        if not _PRIMARY_WCS_KEY.match(key):
            continue
        if _PLAIN_NUMERIC_KEY.match(key):
            plain = _is_number(value)
        elif _PLAIN_STRING_KEY.match(key):
            plain = isinstance(value, str)
        else:
            plain = False
        if not plain or key in values:
            return None
        values[key] = value
        cards.append((key, value, comment))
    ctypes = [_CELESTIAL_CTYPE.match(str(values.get(f"CTYPE{i}", ""))) for i in (1, 2)]
    if not all(ctypes) or values.get("WCSAXES", 2) != 2:
        return None
    families = (ctypes[0].group(1), ctypes[1].group(1))
    if families not in _CELESTIAL_PAIRS or ctypes[0].group(2) != ctypes[1].group(2):
        return None
    has_sip = any(key.endswith("_ORDER") for key in values)
    sip_suffix = {ctypes[0].group(3), ctypes[1].group(3)}
    sip_ok = sip_suffix == {"-SIP"} and {"A_ORDER", "B_ORDER"} <= set(values)
    if (has_sip or sip_suffix != {None}) and not sip_ok:
        return None
    if any(key.startswith(("A_", "B_", "AP_", "BP_")) for key in values) and not has_sip:
        return None
    if any(values.get(f"CUNIT{i}", "deg") != "deg" for i in (1, 2)):
        return None
    if values.get("RADESYS", "ICRS") not in _RADESYS:
        return None
    if not _ISO_DATE.match(values.get("DATEREF", "2000-01-01")):
        return None
    return tuple(cards) if _linear_matrix_ok(values) else None


def header_wcs(header: Header, xy0: tuple[int, int], notes: Notes) -> Any:
    """Return the WCS of an image header: a `HeaderWcs` to build later if it is plain, None
    if it has no primary-WCS keyword at all, else the astropy WCS built now."""
    deferred = HeaderWcs.from_header(header, xy0)
    if deferred is not None:
        return deferred
    if not any(_PRIMARY_WCS_KEY.match(key) for key in header):
        return None  # astropy would make a non-celestial (pixel) WCS of it
    return _wcs_from_header(header, xy0, notes)


def _wcs_from_header(header: Header, xy0: tuple[int, int], notes: Notes) -> WCS | None:
    """Return the parent-pixel WCS of a header, or None if it has no celestial WCS."""
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header.to_astropy())
    except KeyError:  # only alternate WCSs (such as LSST's "A") in the header
        return None
    except (ValueError, MemoryError) as exc:
        notes.append((f"ignoring the unreadable WCS in the header: {exc}", DiffimWarning))
        return None
    if not wcs.has_celestial:
        return None
    if wcs.naxis != 2:
        wcs = wcs.celestial
    return shift_wcs(wcs, xy0[0], xy0[1])
