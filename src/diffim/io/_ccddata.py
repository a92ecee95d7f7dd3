"""Convert exposures to and from astropy CCDData (`to_ccddata`, `from_ccddata`).

``astropy.nddata`` is slow to import: it is imported only when a conversion runs.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DiffimValueError
from ..fitswcs import shift_wcs
from ..image import DEFAULT_MASK_PLANES, MASK_DTYPE, Exposure, MaskedImage, MaskPlanes
from ._layout import (
    MASK_PLANE_PREFIX,
    _exposure_fields,
    _primary_header,
    _set_card,
    _xy0_from_header,
)
from ._planes import _complete, _float_image, _mask_from_array, _variance_from_map
from ._write import _as_exposure

if TYPE_CHECKING:
    from astropy.nddata import CCDData


def to_ccddata(exposure_or_masked_image: Exposure | MaskedImage, unit: Any = "adu") -> CCDData:
    """Return an astropy CCDData copy of an exposure.

    Parameters
    ----------
    exposure_or_masked_image : Exposure or MaskedImage
        What to convert.
    unit : str or astropy.units.Unit, optional
        Unit of the image values (``"adu"`` or ``"electron"``).

    Returns
    -------
    astropy.nddata.CCDData
        ``data`` the image, ``uncertainty`` a VarianceUncertainty, ``mask`` True where any
        bit is set, ``flags`` the int32 bit mask, ``wcs`` for the array's own pixels, and
        ``meta`` (a FITS header) holding ``MP_<NAME>`` bits, ``LTV1``/``LTV2`` (minus
        xy0), GAIN, SATURATE, ZEROPT, FILTER and the exposure metadata.
    """
    exposure = _as_exposure(exposure_or_masked_image)
    masked = exposure.masked_image
    x0, y0 = masked.xy0
    from astropy.nddata import CCDData, VarianceUncertainty  # slow to import: only when used

    header = _primary_header(exposure, None)
    for name, bit in masked.planes.as_dict().items():
        _set_card(header, MASK_PLANE_PREFIX + name, bit)
    header["LTV1"], header["LTV2"] = -x0, -y0
    meta = header.to_astropy()  # an astropy Header, so that CCDData.write handles HIERARCH
    return CCDData(
        masked.image.copy(),
        unit=unit,
        uncertainty=VarianceUncertainty(masked.variance.copy()),
        mask=masked.mask != 0,
        flags=masked.mask.copy(),
        wcs=None if exposure.wcs is None else shift_wcs(exposure.wcs, -x0, -y0),
        meta=meta,
    )


def _ccd_variance(ccd: CCDData) -> np.ndarray | None:
    """Return the variance (data units squared) of any CCDData uncertainty type."""
    from astropy.nddata import VarianceUncertainty

    if ccd.uncertainty is None:
        return None
    with np.errstate(divide="ignore"):
        variance = ccd.uncertainty.represent_as(VarianceUncertainty)
    if variance.unit is not None and ccd.unit is not None:
        return np.asarray(variance.quantity.to_value(ccd.unit**2))
    return np.asarray(variance.array)


def from_ccddata(ccd: CCDData, *, gain: float | None = None, read_noise: float = 0.0) -> Exposure:
    """Return an Exposure (a copy) made from an astropy CCDData.

    Parameters
    ----------
    ccd : astropy.nddata.CCDData
        The image.  An integer ``flags`` array is the bit mask (planes named by ``MP_<NAME>``
        entries of ``meta``); otherwise a boolean ``mask`` becomes the BAD plane.  Any
        uncertainty type (StdDev, Variance, InverseVariance) becomes the variance.
    gain : float, optional
        Gain in e-/ADU, used to estimate a variance when there is no uncertainty;
        overrides ``meta["GAIN"]``.
    read_noise : float, optional
        Read noise in e- for that estimate.

    Returns
    -------
    Exposure
        With ``xy0`` from ``meta["LTV1"/"LTV2"]`` and the parent-grid WCS.

    Warns
    -----
    VarianceEstimatedWarning
        ``ccd`` has no uncertainty.
    MaskedPixelsWarning
        Non-finite pixels were set to 0 and masked NO_DATA.
    """
    image = _float_image(np.array(ccd.data, dtype=ccd.data.dtype.newbyteorder("=")))
    meta = ccd.meta or {}
    fields = _exposure_fields(meta)
    gain = fields["gain"] if gain is None else gain
    if isinstance(ccd.flags, np.ndarray) and np.issubdtype(ccd.flags.dtype, np.integer):
        mask, planes = _mask_from_array(ccd.flags, meta, "CCDData flags", default_planes=True)
    elif ccd.mask is not None:
        mask = np.where(ccd.mask, np.int32(1 << DEFAULT_MASK_PLANES["BAD"]), np.int32(0))
        mask, planes = mask.astype(MASK_DTYPE), MaskPlanes()
    else:
        mask, planes = np.zeros(image.shape, dtype=MASK_DTYPE), MaskPlanes()
    variance = _ccd_variance(ccd)
    if variance is not None:
        variance = _variance_from_map(
            variance, "variance", "CCDData", DiffimValueError, dtype=image.dtype
        )
    variance, source, notes = _complete(
        image, mask, planes, variance, label="CCDData", gain=gain, read_noise=read_noise
    )
    for message, category in notes:
        warnings.warn(message, category, stacklevel=2)
    if source is not None:
        fields["metadata"]["VARSRC"] = source
    xy0 = _xy0_from_header(meta)
    return Exposure(
        MaskedImage(image, mask, variance, xy0=xy0, planes=planes),
        wcs=None if ccd.wcs is None else shift_wcs(ccd.wcs, xy0[0], xy0[1]),
        gain=gain,
        saturation=fields["saturation"],
        zero_point=fields["zero_point"],
        filter_name=fields["filter_name"],
        metadata=fields["metadata"],
    )
