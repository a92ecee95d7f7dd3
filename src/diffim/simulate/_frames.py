"""The two pixel frames: the science -> template mapping, and each frame's WCS, PSF and sky.

The template pixel grid is the reference; the science grid is rotated by ``rotation_deg``
about the image centre and offset by ``shift`` (template pixels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..psf import FieldVaryingPsf, PolynomialField
from .parameters import SimulationParameters

if TYPE_CHECKING:  # astropy.wcs takes ~0.4 s to import: only when simulating
    from astropy.wcs import WCS


def _center(p: SimulationParameters) -> np.ndarray:
    return np.array([(p.shape[1] - 1) / 2.0, (p.shape[0] - 1) / 2.0])


def _rotation(p: SimulationParameters) -> np.ndarray:
    angle = np.radians(p.rotation_deg)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _template_to_science(p: SimulationParameters, xy: np.ndarray) -> np.ndarray:
    """Map template pixel positions (n, 2) to science pixel positions."""
    if p.rotation_deg == 0 and not any(p.shift):
        return xy.copy()  # bit-identical grids
    c = _center(p)
    return c + (xy - c - np.asarray(p.shift)) @ _rotation(p)  # row-vector form of R^T


def _science_to_template(p: SimulationParameters, xy: np.ndarray) -> np.ndarray:
    if p.rotation_deg == 0 and not any(p.shift):
        return xy.copy()
    c = _center(p)
    return c + (xy - c) @ _rotation(p).T + np.asarray(p.shift)


def _make_wcs(p: SimulationParameters, frame: str) -> WCS:
    """TAN WCS; the science one is the template one composed with the science->template map."""
    from astropy.wcs import WCS

    scale = p.pixel_scale_arcsec / 3600.0
    cd = np.array([[-scale, 0.0], [0.0, scale]])  # north up, east left
    crpix = _center(p)
    if frame == "science":
        rotation = _rotation(p)
        cd = cd @ rotation
        crpix = crpix - rotation.T @ np.asarray(p.shift)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(p.sky_center_deg)
    wcs.wcs.crpix = (crpix + 1.0).tolist()  # FITS pixels are 1-based
    wcs.wcs.cd = cd
    return wcs


def _make_psf(p: SimulationParameters, frame: str) -> FieldVaryingPsf:
    science = frame == "science"
    center = tuple(_center(p))
    ny, nx = p.shape
    fwhm = p.science_fwhm if science else p.template_fwhm
    ellipticity = p.science_ellipticity if science else p.template_ellipticity
    angle = p.science_position_angle_deg if science else p.template_position_angle_deg
    gx, gy = p.fwhm_gradient
    ex, ey = p.ellipticity_gradient
    return FieldVaryingPsf(
        p.profile,
        PolynomialField(fwhm, center=center, gradient=(fwhm * gx / nx, fwhm * gy / ny)),
        ellipticity=PolynomialField(ellipticity, center=center, gradient=(ex / nx, ey / ny)),
        position_angle_deg=angle,
        beta=p.moffat_beta,
        center=center,
    )


def _sky(p: SimulationParameters, frame: str) -> PolynomialField:
    science = frame == "science"
    level = p.sky_science if science else p.sky_template
    gradient = p.sky_gradient_science if science else p.sky_gradient_template
    return PolynomialField(
        level / p.gain, center=tuple(_center(p)), gradient=tuple(g / p.gain for g in gradient)
    )
