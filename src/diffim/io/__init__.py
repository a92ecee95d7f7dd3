"""Read and write exposures as LSST-style FITS files, and convert them to astropy CCDData.

The files written here follow LSST's ``afw`` layout: an empty primary HDU that holds the
metadata, then three image HDUs named ``IMAGE``, ``MASK`` and ``VARIANCE``.  Mask planes are
named by ``MP_<NAME> = bit`` cards in the ``MASK`` header, and the origin ``xy0`` of a cut-out
is stored as ``LTV1 = -x0``, ``LTV2 = -y0`` (plus the linear alternate WCS ``A``).

An :class:`~diffim.image.Exposure`'s ``wcs`` maps *parent* pixels (0-based) to the sky; in
the file the WCS is shifted so that FITS pixel 1 is the cut-out's first pixel, as plain FITS
viewers expect.  Reading undoes the shift.  A plain celestial WCS (TAN or TAN-SIP, as
written here) is kept as its header cards (`diffim.fitswcs.HeaderWcs`) and built with
``astropy.wcs`` only when ``exposure.wcs`` is first read.

Files are read and written with fitsio (cfitsio), whose import is a hundredth of a second
where ``astropy.io.fits`` takes half a second; headers are `Header` objects, turned into
astropy headers only where astropy needs one.

Its modules, whose names are imported from ``diffim.io``: ``_header`` (`Header`),
``_fitsfile`` (the HDUs of a file, reading and writing them with fitsio), ``_layout`` (HDU
names, header keywords, an exposure's header cards), ``_write`` (`exposure_to_hdulist`,
`write_exposure`, atomic writes), ``_read`` (`read_exposure`), ``_planes`` (mask and
variance planes, the variance estimate, ``NO_DATA``) and ``_ccddata`` (`to_ccddata`,
`from_ccddata`).
"""

from ..fitswcs import HeaderWcs
from ._ccddata import from_ccddata, to_ccddata
from ._header import Header

# module constants, not in __all__, importable from diffim.io as before the split
from ._layout import ATTRIBUTE_KEYS as ATTRIBUTE_KEYS
from ._layout import LSST_EXTNAMES as LSST_EXTNAMES
from ._layout import MASK_PLANE_PREFIX as MASK_PLANE_PREFIX
from ._layout import PathLike as PathLike
from ._layout import PlaneSource as PlaneSource
from ._read import read_exposure
from ._write import (
    atomic_write,
    atomic_write_hdulist,
    atomic_write_path,
    atomic_write_text,
    check_not_input,
    exposure_to_hdulist,
    write_exposure,
)

__all__ = [
    "Header",
    "HeaderWcs",
    "atomic_write",
    "atomic_write_hdulist",
    "atomic_write_path",
    "atomic_write_text",
    "check_not_input",
    "exposure_to_hdulist",
    "from_ccddata",
    "read_exposure",
    "to_ccddata",
    "write_exposure",
]
