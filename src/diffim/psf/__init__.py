"""PSF models: analytic (Gaussian, Moffat, smoothly varying over the field) and pixelized.

Every model offers

* ``kernel_image(x=None, y=None, size=None)``: the pixel-integrated PSF at parent position
  ``(x, y)``, an odd ``(size, size)`` array that sums to one, centred on pixel
  ``(size // 2, size // 2)``; without a position, the model's average position is used;
* ``fwhm(x=None, y=None)``: the full width at half maximum in pixels;
* ``draw(x, y, size=None)`` / ``draw_many(x, y, size=None)``: the pixel-integrated PSF
  centred at the sub-pixel parent position ``(x, y)``, as a stamp with its parent origin.

PSF images are measured by `adaptive_moments` / `fwhm_from_moments` (Gaussian-weighted
moments deconvolved from their weight: exact for Gaussians, within 1 % for Moffats).

Positions are parent pixel coordinates with ``x`` the column; arrays are indexed ``[y, x]``.
Shapes use the *determinant radius* ``r_det = (Ixx Iyy - Ixy**2) ** (1/4)`` of the
second-moment matrix, and ``FWHM = FWHM_PER_SIGMA * r_det``: this is ip_diffim's legacy
``getFwhmPix`` definition, and it equals the true FWHM (geometric mean of the major- and
minor-axis FWHMs) of an elliptical Gaussian.  Ellipticity is ``e = 1 - b/a`` (axis ratio
``b/a``) and the position angle is that of the major axis, counter-clockwise from ``+x``.

The package is split by concept: `model` (the `PsfModel` base class, `PsfStamp`,
`PsfStamps`), `analytic` (`FieldVaryingPsf`, `GaussianPsf`, `MoffatPsf`,
`PolynomialField`), `pixelized` (`ImagePsf`, `GridPsf`), `moments` (`adaptive_moments`,
`fwhm_from_moments`, `ShapeMoments`) and the private stamp renderers of `_render`.  Every
public name is re-exported here: import from ``diffim.psf``.
"""

from .analytic import FieldVaryingPsf, GaussianPsf, MoffatPsf, PolynomialField
from .model import PsfModel, PsfStamp, PsfStamps
from .moments import (
    FWHM_PER_SIGMA,
    MOMENT_WEIGHT_RATIO,
    ShapeMoments,
    adaptive_moments,
    fwhm_from_moments,
)
from .pixelized import GridPsf, ImagePsf

__all__ = [
    "FWHM_PER_SIGMA",
    "MOMENT_WEIGHT_RATIO",
    "FieldVaryingPsf",
    "GaussianPsf",
    "GridPsf",
    "ImagePsf",
    "MoffatPsf",
    "PolynomialField",
    "PsfModel",
    "PsfStamp",
    "PsfStamps",
    "ShapeMoments",
    "adaptive_moments",
    "fwhm_from_moments",
]
