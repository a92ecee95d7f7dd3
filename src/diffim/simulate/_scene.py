"""The scene: random catalogs of stars, transients, galaxies and cosmic rays, with truth.

Each catalog is an astropy table drawn from its own generator; fluxes are in ADU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._frames import _science_to_template, _template_to_science
from .parameters import SimulationParameters

if TYPE_CHECKING:  # astropy.table and astropy.wcs take ~0.4 s to import: only when simulating
    from astropy.table import Table
    from astropy.wcs import WCS


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
