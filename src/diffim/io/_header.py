"""FITS headers as ordered cards, independent of the library that reads or writes them.

`Header` is what `diffim.io` reads from and writes to a file through fitsio (cfitsio), and
turns into an ``astropy.io.fits.Header`` only where astropy needs one (``astropy.wcs``,
CCDData, `exposure_to_hdulist`): astropy's FITS package costs half a second to import.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from astropy.io import fits

#: One header card: (keyword, value, comment).
Card = tuple[str, Any, str]

#: Commentary keywords: every card is kept, none replaces another.
COMMENTARY_KEYS = frozenset({"COMMENT", "HISTORY", ""})
#: Keywords of plain FITS syntax; any other is written with the HIERARCH convention.
_SHORT_KEYWORD = re.compile(r"^[A-Z0-9_-]{0,8}$")


class Header(Mapping[str, Any]):
    """The cards of one FITS header, in order, as a mapping of keyword to value.

    Keywords are looked up without regard to case; a keyword present more than once maps
    to the value of its first card, like ``astropy.io.fits.Header``.  Long (HIERARCH)
    keywords are stored without the ``HIERARCH`` prefix.

    Parameters
    ----------
    cards : iterable of (keyword, value, comment)
        The cards, in header order.
    """

    __slots__ = ("_first", "cards")

    def __init__(self, cards: Iterable[Card] = ()) -> None:
        self.cards: list[Card] = []
        self._first: dict[str, int] = {}
        for keyword, value, comment in cards:
            self.append(keyword, value, comment)

    def append(self, keyword: str, value: Any, comment: str = "") -> None:
        """Add a card at the end (a keyword already present keeps its first value)."""
        keyword = _strip_hierarch(keyword)
        self._first.setdefault(keyword.upper(), len(self.cards))
        self.cards.append((keyword, value, comment or ""))

    def __setitem__(self, keyword: str, value: Any) -> None:
        """Set the first card of ``keyword`` (appended if absent); ``value`` may be a
        ``(value, comment)`` pair."""
        value, comment = value if isinstance(value, tuple) else (value, None)
        keyword = _strip_hierarch(keyword)
        index = self._first.get(keyword.upper())
        if index is None or keyword.upper() in COMMENTARY_KEYS:
            self.append(keyword, value, comment or "")
            return
        old_keyword, _, old_comment = self.cards[index]
        self.cards[index] = (old_keyword, value, old_comment if comment is None else comment)

    def __getitem__(self, keyword: str) -> Any:
        try:
            return self.cards[self._first[_strip_hierarch(keyword).upper()]][1]
        except KeyError:
            raise KeyError(keyword) from None

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and _strip_hierarch(keyword).upper() in self._first

    def __iter__(self) -> Iterator[str]:
        return (self.cards[index][0] for index in self._first.values())

    def __len__(self) -> int:
        return len(self._first)

    def extend(self, cards: Iterable[Card]) -> None:
        """Append ``cards`` in order."""
        for card in cards:
            self.append(*card)

    def update(self, other: Header) -> None:
        """Set every keyword of ``other`` here (commentary cards are appended)."""
        for keyword, value, comment in other.cards:
            self[keyword] = (value, comment)

    def copy(self) -> Header:
        """Return a copy (the values themselves are shared)."""
        return Header(self.cards)

    def to_astropy(self) -> fits.Header:
        """Return the cards as an ``astropy.io.fits.Header`` (long keywords as HIERARCH)."""
        from astropy.io import fits  # astropy's FITS package costs ~0.5 s to import

        header = fits.Header()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # long comments cut
            for keyword, value, comment in self.cards:
                name = keyword if _SHORT_KEYWORD.match(keyword) else f"HIERARCH {keyword}"
                if keyword.upper() in COMMENTARY_KEYS:
                    header.append((keyword.upper(), value), end=True)
                else:
                    header.append((name, value, comment), end=True)
        return header

    @classmethod
    def from_astropy(cls, header: fits.Header) -> Header:
        """Return the cards of an ``astropy.io.fits.Header``."""
        return cls((card.keyword, card.value, card.comment) for card in header.cards)

    def __repr__(self) -> str:
        return f"Header({len(self.cards)} cards: {', '.join(list(self)[:6])}...)"


def as_header(header: Mapping | None) -> Header | None:
    """Return ``header`` as a `Header` (an astropy header or a plain mapping is copied)."""
    if header is None or isinstance(header, Header):
        return header
    if hasattr(header, "cards"):  # astropy.io.fits.Header
        return Header.from_astropy(header)
    return Header((str(key), value, "") for key, value in header.items())


def _strip_hierarch(keyword: str) -> str:
    if keyword[:9].upper() == "HIERARCH ":
        return keyword[9:].strip()
    return keyword
