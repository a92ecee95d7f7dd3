"""What defines a simulated pair: `SimulationParameters`, their checks and keyword overrides."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import DiffimValueError


@dataclass(frozen=True, kw_only=True)
class SimulationParameters:
    """Everything that defines a simulated pair; `simulate_pair` takes these as keywords.

    Fluxes and sky levels are in electrons (e-), lengths in pixels unless named otherwise.

    Attributes
    ----------
    shape : tuple of int
        ``(ny, nx)`` of both images.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same pair.
    dtype : {"float32", "float64"}
        Image and variance dtype.
    n_stars, flux_min, flux_max, luminosity_alpha
        Stars over the region covering both images (plus a margin), template fluxes in e-
        drawn from ``dN/dF ∝ F**-luminosity_alpha`` on ``[flux_min, flux_max]``.
    n_galaxies, galaxy_flux, galaxy_radius
        Exponential disks with total template flux (e-) and half-light radius (px) drawn
        log-uniformly from the given ranges, convolved with the local PSF.
    profile, moffat_beta
        PSF profile (``"gaussian"`` or ``"moffat"``) and Moffat index.
    science_fwhm, template_fwhm
        PSF FWHM at the image centre, pixels.
    fwhm_gradient
        Fractional FWHM change from one edge to the other along ``(x, y)``.
    science_ellipticity, template_ellipticity, ellipticity_gradient
        PSF ellipticity ``1 - b/a`` at the centre and its change across the image ``(x, y)``.
    science_position_angle_deg, template_position_angle_deg
        PSF major-axis angles, counter-clockwise from ``+x`` of each image.
    flux_ratio
        Science / template counts of a constant source (the true kernel sum).
    gain, read_noise, saturation
        e-/ADU, e- rms, and the clipping level in ADU (flagged SAT).
    sky_science, sky_template, sky_gradient_science, sky_gradient_template
        Sky at the image centre (e-/px) and its gradient (e-/px per px along x, y).
    noise
        False gives the noise-free expected image (same layout, same variance plane).
    shift, rotation_deg, pixel_scale_arcsec, sky_center_deg
        Science grid offset ``(dx, dy)`` (template px) and rotation relative to the
        template; pixel scale; ``(ra, dec)`` of the template centre.
    n_cosmic_rays, cosmic_ray_flux
        Tracks of 1-4 pixels per image, e- per hit pixel (flagged CR).
    n_bad_columns
        Whole columns per image set to 0 and flagged BAD.
    n_transients, transient_flux
        Point sources in the science image only; science flux range in e-.
    n_variables, variable_amplitude
        Stars whose science flux is scaled by ``1 + u`` with ``0.2 a <= |u| <= a``.
    zero_point, filter_name
        Template zero point (mag of 1 ADU); the science one adds ``2.5 log10(flux_ratio)``.
    """

    shape: tuple[int, int] = (512, 512)
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    n_stars: int = 300
    flux_min: float = 1.0e3
    flux_max: float = 2.0e6
    luminosity_alpha: float = 1.8
    n_galaxies: int = 10
    galaxy_flux: tuple[float, float] = (5.0e3, 1.0e5)
    galaxy_radius: tuple[float, float] = (1.5, 5.0)
    profile: Literal["gaussian", "moffat"] = "gaussian"
    moffat_beta: float = 3.0
    science_fwhm: float = 4.0
    template_fwhm: float = 3.0
    fwhm_gradient: tuple[float, float] = (0.1, 0.05)
    science_ellipticity: float = 0.05
    template_ellipticity: float = 0.03
    ellipticity_gradient: tuple[float, float] = (0.04, 0.0)
    science_position_angle_deg: float = 30.0
    template_position_angle_deg: float = -20.0
    flux_ratio: float = 1.0
    gain: float = 2.0
    read_noise: float = 5.0
    saturation: float = 30000.0
    sky_science: float = 1000.0
    sky_template: float = 600.0
    sky_gradient_science: tuple[float, float] = (0.2, -0.1)
    sky_gradient_template: tuple[float, float] = (-0.1, 0.15)
    noise: bool = True
    shift: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    pixel_scale_arcsec: float = 0.2
    sky_center_deg: tuple[float, float] = (150.0, 2.0)
    n_cosmic_rays: int = 10
    cosmic_ray_flux: tuple[float, float] = (2.0e3, 2.0e4)
    n_bad_columns: int = 1
    n_transients: int = 5
    transient_flux: tuple[float, float] = (5.0e3, 5.0e4)
    n_variables: int = 5
    variable_amplitude: float = 0.5
    zero_point: float = 27.0
    filter_name: str = "r"

    def __post_init__(self) -> None:
        _check_parameters(self)


def _check_parameters(p: SimulationParameters) -> None:
    counts = ("n_stars", "n_galaxies", "n_cosmic_rays", "n_bad_columns", "n_transients")
    problems = [
        f"{name}={getattr(p, name)} (must be >= 0)" for name in counts if getattr(p, name) < 0
    ]
    positive = (
        "flux_min",
        "science_fwhm",
        "template_fwhm",
        "flux_ratio",
        "gain",
        "pixel_scale_arcsec",
    )
    problems += [
        f"{name}={getattr(p, name)} (must be > 0)" for name in positive if not getattr(p, name) > 0
    ]
    ranges = ("galaxy_flux", "galaxy_radius", "cosmic_ray_flux", "transient_flux")
    problems += [
        f"{n}={getattr(p, n)} (need 0 < low <= high)"
        for n in ranges
        if not 0 < getattr(p, n)[0] <= getattr(p, n)[1]
    ]
    if not p.flux_max > p.flux_min:
        problems.append(f"flux_max={p.flux_max} (must exceed flux_min={p.flux_min})")
    if len(p.shape) != 2 or min(p.shape) < 16:
        problems.append(f"shape={p.shape} (need (ny, nx), both >= 16)")
    if p.n_variables > p.n_stars:
        problems.append(f"n_variables={p.n_variables} (must not exceed n_stars={p.n_stars})")
    if p.profile not in ("gaussian", "moffat") or p.dtype not in ("float32", "float64"):
        problems.append(f"profile={p.profile!r}/dtype={p.dtype!r} (see the allowed values)")
    if min(p.read_noise, p.sky_science, p.sky_template) < 0:
        problems.append("read_noise, sky_science and sky_template must be >= 0")
    if problems:
        msg = "bad simulation parameters: " + "; ".join(problems)
        raise DiffimValueError(msg)


def _is_number(value: Any, integer: bool = False) -> bool:
    """True for an int (or, unless ``integer``, a float) that is not a bool."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, bool | np.bool_)


def _check_override(name: str, value: Any, default: Any) -> None:
    """Raise DiffimValueError unless ``value`` has the form of the parameter's default."""
    if isinstance(default, tuple):
        fits = isinstance(value, tuple | list | np.ndarray) and len(value) == len(default)
        if not fits or not all(
            _is_number(v, isinstance(d, int)) for v, d in zip(value, default, strict=True)
        ):
            msg = (
                f"simulation parameter {name} takes {len(default)} numbers, e.g. "
                f"{name}={list(default)}; got {value!r}"
            )
            raise DiffimValueError(msg)
    elif _is_number(default) and not _is_number(value, isinstance(default, int)):
        kind = "an integer" if isinstance(default, int) else "a number"
        msg = f"simulation parameter {name} takes {kind}, e.g. {name}={default}; got {value!r}"
        raise DiffimValueError(msg)


def _with_overrides(base: SimulationParameters, overrides: dict[str, Any]) -> SimulationParameters:
    names = [f.name for f in dataclasses.fields(SimulationParameters)]
    for key, value in overrides.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown simulation parameter {key!r}{hint}"
            raise DiffimValueError(msg)
        _check_override(key, value, getattr(base, key))
    return dataclasses.replace(base, **overrides)
