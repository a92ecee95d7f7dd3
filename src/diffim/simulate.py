"""Simulated science/template pairs with known truth, and point-source injection.

The template pixel grid is the reference.  A science pixel ``p_s`` sees the sky of template
pixel ``p_t = c + R(rotation) (p_s - c) + shift`` with ``c`` the image centre, and both
exposures carry TAN WCSs that encode exactly this mapping.  Pixel values are in ADU: the
expected counts in e- (sky + sources) are Poisson-sampled, read noise is added, and the
result is divided by the gain; the variance plane is the expected variance
``(model_e + read_noise**2) / gain**2`` in ADU**2.  For a source that does not vary, the
science flux is ``flux_ratio`` times the template flux, so the true PSF-matching kernel
(template -> science) has sum ``flux_ratio`` everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import DiffimIOError, DiffimValueError
from .image import Exposure, MaskedImage
from .psf import FieldVaryingPsf, PolynomialField, PsfModel

if TYPE_CHECKING:  # astropy.table and astropy.wcs take ~0.4 s to import: only when simulating
    from astropy.table import Table
    from astropy.wcs import WCS

__all__ = [
    "Injection",
    "SimulatedPair",
    "SimulationParameters",
    "SimulationTruth",
    "inject_point_sources",
    "render_point_sources",
    "simulate_pair",
    "write_pair",
]

HALF_LIGHT_PER_SCALE_LENGTH = 1.678347  # r_e / h of an exponential (Sersic n = 1) disk
#: Point-source stamps reach to where a source falls below this many flux units per pixel.
STAMP_EDGE_LEVEL = 0.05
_MAX_STAMP_HALF_WIDTH = 128  # pixels; wings beyond are dropped (their flux stays in the stamp)


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


@dataclass
class SimulationTruth:
    """What went into a simulated pair.

    Attributes
    ----------
    parameters : SimulationParameters
    stars : astropy.table.Table
        ``x_science, y_science, x_template, y_template`` (pixels), ``ra, dec`` (deg),
        ``flux_template, flux_science`` (ADU, total, before saturation), ``is_variable``,
        ``saturated_science, saturated_template, saturated`` (SAT at the star's pixel).
    transients : astropy.table.Table
        Science-only point sources: positions as for stars, ``flux_science`` (ADU).
    galaxies : astropy.table.Table
        Positions, ``flux_template, flux_science`` (ADU), ``half_light_radius`` (px),
        ``ellipticity`` and ``position_angle_deg`` (template frame).
    cosmic_rays : astropy.table.Table
        ``image`` ("science"/"template"), ``x, y`` of every hit pixel, ``flux`` (ADU).
    bad_columns : dict of str to list of int
    science_psf, template_psf : FieldVaryingPsf
        The exact PSFs, each in its own pixel frame (also on the exposures).
    science_sky, template_sky : PolynomialField
        Sky models in ADU per pixel.
    """

    parameters: SimulationParameters
    stars: Table
    transients: Table
    galaxies: Table
    cosmic_rays: Table
    bad_columns: dict[str, list[int]]
    science_psf: FieldVaryingPsf
    template_psf: FieldVaryingPsf
    science_sky: PolynomialField
    template_sky: PolynomialField

    @property
    def flux_ratio(self) -> float:
        """Science / template counts of a constant source."""
        return self.parameters.flux_ratio

    @property
    def gain(self) -> float:
        """Gain in e-/ADU (both images)."""
        return self.parameters.gain

    @property
    def read_noise(self) -> float:
        """Read noise in e- (both images)."""
        return self.parameters.read_noise

    @property
    def seed(self) -> int:
        """Seed of the simulation."""
        return self.parameters.seed

    def kernel_sum(self, x: float | None = None, y: float | None = None) -> float:
        """Return the true sum of the template->science matching kernel at ``(x, y)``.

        Both images are in ADU with one gain, so the kernel sum is the science / template flux
        of a constant star, ``flux_ratio``, at every position.
        """
        return self.parameters.flux_ratio

    def to_dict(self) -> dict[str, Any]:
        """Return the truth as JSON-friendly values (tables become dicts of lists)."""
        tables = ("stars", "transients", "galaxies", "cosmic_rays")
        out: dict[str, Any] = {"parameters": dataclasses.asdict(self.parameters)}
        out.update(
            {
                name: {c: getattr(self, name)[c].tolist() for c in getattr(self, name).colnames}
                for name in tables
            }
        )
        out["bad_columns"] = self.bad_columns
        out["science_psf"], out["template_psf"] = (
            self.science_psf.to_dict(),
            self.template_psf.to_dict(),
        )
        out["science_sky"], out["template_sky"] = (
            dataclasses.asdict(self.science_sky),
            dataclasses.asdict(self.template_sky),
        )
        out["kernel_sum"] = self.kernel_sum()
        return out

    def to_json(self) -> str:
        """Return `to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=1)

    def write_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write `to_json` to ``path`` atomically (temporary file, then ``os.replace``)."""
        from .io import atomic_write_text

        atomic_write_text(path, self.to_json(), overwrite=overwrite)


@dataclass
class SimulatedPair:
    """A simulated science and template exposure with their truth."""

    science: Exposure
    template: Exposure
    truth: SimulationTruth


@dataclass
class Injection:
    """What `inject_point_sources` returns: a new exposure and the injected sources."""

    exposure: Exposure
    sources: Table


# -- rendering ------------------------------------------------------------------------------
def _stamp_sizes(psf: PsfModel, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Return odd stamp sizes reaching to where each source drops below `STAMP_EDGE_LEVEL`.

    Half-widths are rounded up to multiples of 4 px so that few groups are rendered; only
    `FieldVaryingPsf` models get per-source sizes, others their default size.
    """
    if not isinstance(psf, FieldVaryingPsf):
        return np.full(x.shape, psf.draw(0.0, 0.0).array.shape[0])
    level = STAMP_EDGE_LEVEL / np.maximum(np.abs(flux), 1e-300)
    radius = np.clip(psf.isophote_radius(x, y, level), 4.0, _MAX_STAMP_HALF_WIDTH)
    return 2 * (4 * np.ceil(radius / 4.0).astype(int)) + 1


def _add_clipped(image: np.ndarray, array: np.ndarray, x0: int, y0: int) -> None:
    """Add one stamp whose element [0, 0] falls on image pixel (x0, y0), in place."""
    ny, nx = image.shape
    size_y, size_x = array.shape
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + size_x, nx), min(y0 + size_y, ny)
    if xa < xb and ya < yb:
        image[ya:yb, xa:xb] += array[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _accumulate(image: np.ndarray, arrays: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> None:
    """Add stamps ``arrays[k]`` at array origins ``(x0[k], y0[k])`` into ``image``, in place."""
    if len(arrays) <= 32:  # a full-image bincount costs more than a few slices
        for array, i0, j0 in zip(arrays, x0, y0, strict=True):
            _add_clipped(image, array, int(i0), int(j0))
        return
    ny, nx = image.shape
    size = arrays.shape[-1]
    cols = x0[:, None, None] + np.arange(size)[None, None, :]
    rows = y0[:, None, None] + np.arange(size)[None, :, None]
    inside = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
    index = (rows * nx + cols)[inside]
    image += np.bincount(index, weights=arrays[inside], minlength=ny * nx).reshape(ny, nx)


def render_point_sources(
    shape: tuple[int, int],
    x: Any,
    y: Any,
    flux: Any,
    psf: PsfModel,
    *,
    xy0: tuple[int, int] = (0, 0),
    size: int | None = None,
) -> np.ndarray:
    """Return an image of point sources, each the pixel-integrated PSF at its position.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    x, y : array_like of float, shape (n,)
        Parent positions in pixels (sources off the image contribute their overlap).
    flux : array_like of float, shape (n,)
        Total flux of each source (any unit; the image is in the same unit).
    psf : PsfModel
        PSF evaluated at each source's parent position.
    xy0 : tuple of int, optional
        Parent coordinates of array element ``[0, 0]``.
    size : int, optional
        Odd stamp size; by default one per source reaching out to where it falls below
        `STAMP_EDGE_LEVEL` flux units per pixel (`FieldVaryingPsf`), else the model's default.

    Returns
    -------
    ndarray, shape (ny, nx), float64
        Each stamp sums to its flux, so a source inside the image keeps its flux exactly.
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (x, y, flux))
    image = np.zeros(shape)
    sizes = _stamp_sizes(psf, x, y, flux) if size is None else np.full(x.shape, size)
    for stamp_size in np.unique(sizes):
        pick = sizes == stamp_size
        stamps = psf.draw_many(x[pick], y[pick], size=int(stamp_size))
        arrays = stamps.arrays * flux[pick, None, None]
        _accumulate(image, arrays, stamps.x0 - xy0[0], stamps.y0 - xy0[1])
    return image


def inject_point_sources(
    exposure: Exposure,
    positions: Any,
    fluxes: Any,
    *,
    rng: np.random.Generator | None = None,
    add_noise: bool = True,
) -> Injection:
    """Return a copy of ``exposure`` with PSF stars added, and the table of what was added.

    Parameters
    ----------
    exposure : Exposure
        Needs ``psf`` (its model at each position is used) and, with noise, ``gain``.
    positions : array_like, shape (n, 2)
        Parent ``(x, y)`` of the sources, pixels.
    fluxes : array_like, shape (n,)
        Total fluxes in image units (ADU).
    rng : numpy.random.Generator, optional
        Required when ``add_noise`` is True.
    add_noise : bool, optional
        Add the sources' Poisson noise (``gain`` e-/ADU) and their expected variance
        ``model / gain`` (ADU**2) to the variance plane.

    Returns
    -------
    Injection
        ``exposure`` (a new one; the input is unchanged) and ``sources`` (``x, y, flux``).
    """
    positions = np.asarray(positions, dtype=float).reshape(-1, 2)
    fluxes = np.broadcast_to(np.asarray(fluxes, dtype=float), positions[:, 0].shape)
    if exposure.psf is None:
        msg = "inject_point_sources needs exposure.psf; attach a PSF model from diffim.psf"
        raise DiffimValueError(msg)
    if add_noise and (rng is None or not exposure.gain):
        msg = "add_noise=True needs rng (a numpy Generator) and exposure.gain; or add_noise=False"
        raise DiffimValueError(msg)
    result = exposure.copy()
    mi = result.masked_image
    model = render_point_sources(
        mi.shape, positions[:, 0], positions[:, 1], fluxes, exposure.psf, xy0=mi.xy0
    )
    if add_noise:
        gain = exposure.gain
        model_e = np.clip(model * gain, 0.0, None)
        mi.image += (rng.poisson(model_e) / gain).astype(mi.dtype)
        mi.variance += (model_e / gain**2).astype(mi.dtype)
    else:
        mi.image += model.astype(mi.dtype)
    from astropy.table import Table

    sources = Table({"x": positions[:, 0], "y": positions[:, 1], "flux": fluxes})
    return Injection(result, sources)


# -- geometry -------------------------------------------------------------------------------
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


# -- layout ---------------------------------------------------------------------------------
def _power_law(
    rng: np.random.Generator, n: int, low: float, high: float, alpha: float
) -> np.ndarray:
    """Draw from ``dN/dF ∝ F**-alpha`` on ``[low, high]`` by inverting the CDF."""
    u = rng.uniform(size=n)
    if abs(alpha - 1.0) < 1e-12:
        return low * (high / low) ** u
    a, b = low ** (1.0 - alpha), high ** (1.0 - alpha)
    return (a + u * (b - a)) ** (1.0 / (1.0 - alpha))


def _log_uniform(rng: np.random.Generator, n: int, bounds: tuple[float, float]) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size=n))


def _uniform_positions(
    rng: np.random.Generator, p: SimulationParameters, n: int, margin: float
) -> np.ndarray:
    """Template positions (n, 2) over the box covering both images, grown by ``margin``."""
    ny, nx = p.shape
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [-0.5, ny - 0.5], [nx - 0.5, ny - 0.5]])
    both = np.vstack([corners, _science_to_template(p, corners)])
    low, high = both.min(axis=0) - margin, both.max(axis=0) + margin
    return rng.uniform(low, high, size=(n, 2))


def _positions_table(p: SimulationParameters, template_xy: np.ndarray, wcs: WCS) -> Table:
    from astropy.table import Table

    science_xy = _template_to_science(p, template_xy)
    ra, dec = wcs.pixel_to_world_values(template_xy[:, 0], template_xy[:, 1])
    return Table(
        {
            "x_science": science_xy[:, 0],
            "y_science": science_xy[:, 1],
            "x_template": template_xy[:, 0],
            "y_template": template_xy[:, 1],
            "ra": np.asarray(ra),
            "dec": np.asarray(dec),
        }
    )


def _stars(rng: np.random.Generator, p: SimulationParameters, wcs: WCS) -> Table:
    """Stars with template/science fluxes in ADU; ``n_variables`` of them vary."""
    stars = _positions_table(p, _uniform_positions(rng, p, p.n_stars, 10.0), wcs)
    flux = _power_law(rng, p.n_stars, p.flux_min, p.flux_max, p.luminosity_alpha) / p.gain
    inside = np.flatnonzero(_inside(p, stars, border=10.0))
    chosen = rng.choice(inside, size=min(p.n_variables, inside.size), replace=False)
    factor = np.ones(p.n_stars)
    sign = rng.choice([-1.0, 1.0], chosen.size)
    factor[chosen] += sign * p.variable_amplitude * rng.uniform(0.2, 1.0, chosen.size)
    stars["flux_template"], stars["flux_science"] = flux, p.flux_ratio * flux * factor
    stars["is_variable"] = factor != 1.0
    return stars


def _transients(rng: np.random.Generator, p: SimulationParameters, wcs: WCS) -> Table:
    """Science-only point sources >= 20 px (or 1/4 of the image) inside it, flux in ADU."""
    border = min(20.0, min(p.shape) / 4.0)
    high = np.array(p.shape[::-1]) - 1.0 - border
    science_xy = rng.uniform(border, high, size=(p.n_transients, 2))
    transients = _positions_table(p, _science_to_template(p, science_xy), wcs)
    transients["flux_science"] = _log_uniform(rng, p.n_transients, p.transient_flux) / p.gain
    return transients


def _galaxies(rng: np.random.Generator, p: SimulationParameters, wcs: WCS) -> Table:
    """Exponential disks: fluxes in ADU, shapes in the template frame."""
    galaxies = _positions_table(p, _uniform_positions(rng, p, p.n_galaxies, 0.0), wcs)
    galaxies["flux_template"] = _log_uniform(rng, p.n_galaxies, p.galaxy_flux) / p.gain
    galaxies["flux_science"] = p.flux_ratio * galaxies["flux_template"]
    galaxies["half_light_radius"] = _log_uniform(rng, p.n_galaxies, p.galaxy_radius)
    galaxies["ellipticity"] = rng.uniform(0.0, 0.6, p.n_galaxies)
    galaxies["position_angle_deg"] = rng.uniform(0.0, 180.0, p.n_galaxies)
    return galaxies


def _inside(p: SimulationParameters, table: Table, border: float) -> np.ndarray:
    ny, nx = p.shape
    ok = np.ones(len(table), dtype=bool)
    for frame in ("science", "template"):
        x, y = np.asarray(table[f"x_{frame}"]), np.asarray(table[f"y_{frame}"])
        ok &= (x >= border) & (x <= nx - 1 - border) & (y >= border) & (y <= ny - 1 - border)
    return ok


def _galaxy_stamp(row: Any, psf: FieldVaryingPsf, x: float, y: float, angle_deg: float) -> tuple:
    """Unit-sum image of an exponential disk convolved with the PSF at ``(x, y)``."""
    scale = row["half_light_radius"] / HALF_LIGHT_PER_SCALE_LENGTH
    axis_ratio = 1.0 - row["ellipticity"]
    kernel = psf.kernel_image(x, y)
    half = int(np.ceil(10.0 * scale / np.sqrt(axis_ratio))) + kernel.shape[0] // 2
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    sub = 3
    grid = (np.arange((2 * half + 1) * sub) + 0.5) / sub - 0.5 - half
    u, v = grid[None, :] - (x - ix), grid[:, None] - (y - iy)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    major, minor = u * c + v * s, -u * s + v * c
    disk = np.exp(-np.hypot(major / np.sqrt(axis_ratio), minor * np.sqrt(axis_ratio)) / scale)
    disk = disk.reshape(2 * half + 1, sub, 2 * half + 1, sub).sum(axis=(1, 3))
    from scipy.signal import fftconvolve  # scipy.signal takes seconds to import

    image = np.clip(fftconvolve(disk, kernel, mode="same"), 0.0, None)
    return image / image.sum(), ix - half, iy - half


# -- one epoch ------------------------------------------------------------------------------
def _expected_counts(p: SimulationParameters, truth: dict[str, Any], frame: str) -> np.ndarray:
    """Return the expected e- per pixel: sky + stars + galaxies (+ science transients)."""
    science = frame == "science"
    psf, sky = truth[f"{frame}_psf"], truth[f"{frame}_sky"]
    x_row, y_column = np.arange(p.shape[1])[None, :], np.arange(p.shape[0])[:, None]
    model = np.broadcast_to(sky(x_row, y_column) * p.gain, p.shape).copy()
    sources = [truth["stars"]] + ([truth["transients"]] if science else [])
    for table in sources:
        x, y = np.asarray(table[f"x_{frame}"]), np.asarray(table[f"y_{frame}"])
        model += render_point_sources(
            p.shape, x, y, np.asarray(table[f"flux_{frame}"]) * p.gain, psf
        )
    rotation = p.rotation_deg if science else 0.0
    for row in truth["galaxies"]:
        x, y = row[f"x_{frame}"], row[f"y_{frame}"]
        stamp, x0, y0 = _galaxy_stamp(row, psf, x, y, row["position_angle_deg"] - rotation)
        _accumulate(
            model, stamp[None] * row[f"flux_{frame}"] * p.gain, np.array([x0]), np.array([y0])
        )
    return model


def _cosmic_rays(rng: np.random.Generator, p: SimulationParameters, frame: str) -> Table:
    """Tracks of 1-4 pixels; one row per hit pixel, flux in ADU."""
    ny, nx = p.shape
    start = rng.integers(0, [nx, ny], size=(p.n_cosmic_rays, 2))
    step = rng.integers(-1, 2, size=(p.n_cosmic_rays, 2))
    length = rng.integers(1, 5, size=p.n_cosmic_rays)
    flux = rng.uniform(*p.cosmic_ray_flux, size=p.n_cosmic_rays) / p.gain
    track = np.arange(4)
    xy = start[:, None, :] + track[None, :, None] * step[:, None, :]
    keep = (track[None, :] < length[:, None]) & (xy >= 0).all(axis=2) & (xy < [nx, ny]).all(axis=2)
    keep &= (track[None, :] == 0) | (step != 0).any(axis=1)[:, None]  # a (0, 0) step: one hit
    pixels = xy[keep]
    hit_flux = np.broadcast_to(flux[:, None], keep.shape)[keep]
    from astropy.table import Table

    return Table(
        {"image": [frame] * len(pixels), "x": pixels[:, 0], "y": pixels[:, 1], "flux": hit_flux}
    )


def _observe(
    p: SimulationParameters, model_e: np.ndarray, noise_rng: np.random.Generator, artefacts: tuple
) -> MaskedImage:
    """Turn expected e- into an ADU masked image with noise, CRs, bad columns, saturation."""
    cosmic_rays, bad_columns = artefacts
    variance = (model_e + p.read_noise**2) / p.gain**2
    if p.noise:
        counts = noise_rng.poisson(model_e) + noise_rng.normal(0.0, p.read_noise, p.shape)
    else:
        counts = model_e
    image = counts / p.gain
    mi = MaskedImage(image.astype(p.dtype), variance=variance.astype(p.dtype))
    cr_x, cr_y = np.asarray(cosmic_rays["x"], dtype=int), np.asarray(cosmic_rays["y"], dtype=int)
    np.add.at(mi.image, (cr_y, cr_x), np.asarray(cosmic_rays["flux"], dtype=p.dtype))
    cr_mask = np.zeros(p.shape, dtype=bool)
    cr_mask[cr_y, cr_x] = True
    mi.set_mask_plane("CR", cr_mask)
    bad = np.zeros(p.shape, dtype=bool)
    bad[:, bad_columns] = True
    mi.image[bad] = 0.0
    mi.set_mask_plane("BAD", bad)
    saturated = mi.image >= p.saturation
    mi.image[saturated] = p.saturation
    mi.set_mask_plane("SAT", saturated)
    return mi


def _flag_saturated(p: SimulationParameters, stars: Table, images: dict[str, MaskedImage]) -> None:
    ny, nx = p.shape
    stars["saturated"] = False
    for frame, mi in images.items():
        ix = np.floor(np.asarray(stars[f"x_{frame}"]) + 0.5).astype(int)
        iy = np.floor(np.asarray(stars[f"y_{frame}"]) + 0.5).astype(int)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        flag = np.zeros(len(stars), dtype=bool)
        flag[inside] = mi.mask_plane("SAT")[iy[inside], ix[inside]]
        stars[f"saturated_{frame}"] = flag
        stars["saturated"] |= flag


def simulate_pair(
    parameters: SimulationParameters | None = None, /, **overrides: Any
) -> SimulatedPair:
    """Simulate a science/template pair with known truth, deterministically from ``seed``.

    Parameters
    ----------
    parameters : SimulationParameters, optional
        Base parameters (defaults if omitted).
    **overrides
        Any `SimulationParameters` field, e.g. ``shape=(256, 256), seed=3, flux_ratio=1.2``.

    Returns
    -------
    SimulatedPair
        ``science`` and ``template`` exposures (ADU, WCS, true PSF, gain, saturation, zero
        point, filter) and their ``truth``.

    Raises
    ------
    DiffimValueError
        For an unknown parameter name or a bad value.

    Notes
    -----
    Stars, transients, galaxies, artefacts (cosmic rays and bad columns) and the noise of
    each image come from independent generators spawned from ``np.random.default_rng(seed)``:
    ``noise=False`` gives the expected image of the same layout, and ``n_transients=0`` the
    same stars and galaxies.  A 2048x2048 pair with 5000 stars takes about
    2 s on one core.
    """
    p = _with_overrides(parameters or SimulationParameters(), overrides)
    rngs = np.random.default_rng(p.seed).spawn(6)  # one per component: see Notes
    wcs = {frame: _make_wcs(p, frame) for frame in ("science", "template")}
    truth: dict[str, Any] = {
        "stars": _stars(rngs[0], p, wcs["template"]),
        "transients": _transients(rngs[1], p, wcs["template"]),
        "galaxies": _galaxies(rngs[2], p, wcs["template"]),
    }
    columns = rngs[3].permutation(p.shape[1])[: 2 * p.n_bad_columns]
    truth["bad_columns"] = {
        "science": sorted(columns[::2].tolist()),
        "template": sorted(columns[1::2].tolist()),
    }
    cosmic = {frame: _cosmic_rays(rngs[3], p, frame) for frame in ("science", "template")}
    images, exposures = {}, {}
    for frame, rng in (("science", rngs[4]), ("template", rngs[5])):
        truth[f"{frame}_psf"], truth[f"{frame}_sky"] = _make_psf(p, frame), _sky(p, frame)
        model = _expected_counts(p, truth, frame)
        artefacts = (cosmic[frame], truth["bad_columns"][frame])
        images[frame] = _observe(p, model, rng, artefacts)
        exposures[frame] = _exposure(p, images[frame], wcs[frame], truth[f"{frame}_psf"], frame)
    _flag_saturated(p, truth["stars"], images)
    from astropy.table import vstack

    truth["cosmic_rays"] = vstack([cosmic["science"], cosmic["template"]])
    result = SimulationTruth(parameters=p, **truth)
    return SimulatedPair(exposures["science"], exposures["template"], result)


def _with_overrides(base: SimulationParameters, overrides: dict[str, Any]) -> SimulationParameters:
    names = [f.name for f in dataclasses.fields(SimulationParameters)]
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown simulation parameter {key!r}{hint}"
            raise DiffimValueError(msg)
    return dataclasses.replace(base, **overrides)


def _exposure(
    p: SimulationParameters, mi: MaskedImage, wcs: WCS, psf: FieldVaryingPsf, frame: str
) -> Exposure:
    zero_point = p.zero_point + (2.5 * np.log10(p.flux_ratio) if frame == "science" else 0.0)
    return Exposure(
        mi,
        wcs=wcs,
        psf=psf,
        gain=p.gain,
        saturation=p.saturation,
        zero_point=float(zero_point),
        filter_name=p.filter_name,
        metadata={"SIMSEED": p.seed, "SIMFRAME": frame},
    )


def write_pair(
    pair: SimulatedPair, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write ``science.fits``, ``template.fits`` (LSST-style) and ``truth.json`` to ``out_dir``.

    Parameters
    ----------
    pair : SimulatedPair
        The pair to write.
    out_dir : str or os.PathLike
        Created if missing.
    overwrite : bool, optional
        Replace existing files; by default an existing file is a `DiffimIOError`.

    Returns
    -------
    dict of str to Path
        ``{"science": ..., "template": ..., "truth": ...}``.
    """
    from .io import write_exposure  # lazy: the simulator itself needs no FITS I/O

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "science": out / "science.fits",
        "template": out / "template.fits",
        "truth": out / "truth.json",
    }
    if not overwrite:
        existing = [str(path) for path in paths.values() if path.exists()]
        if existing:
            msg = f"{', '.join(existing)} exist; pass overwrite=True to replace them"
            raise DiffimIOError(msg)
    write_exposure(pair.science, paths["science"], overwrite=overwrite)
    write_exposure(pair.template, paths["template"], overwrite=overwrite)
    pair.truth.write_json(paths["truth"], overwrite=overwrite)
    return paths
