"""Images from catalogs: point sources and galaxies through the PSF, then noise and artefacts.

`render_point_sources` and `inject_point_sources` work on any exposure with a PSF model; the
private helpers render and observe one epoch of a simulated pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DiffimValueError
from ..image import Exposure, MaskedImage
from ..psf import FieldVaryingPsf, PsfModel
from .parameters import SimulationParameters

if TYPE_CHECKING:  # astropy.table takes ~0.4 s to import: only when simulating
    from astropy.table import Table


HALF_LIGHT_PER_SCALE_LENGTH = 1.678347  # r_e / h of an exponential (Sersic n = 1) disk
#: Point-source stamps reach to where a source falls below this many flux units per pixel.
STAMP_EDGE_LEVEL = 0.05
_MAX_STAMP_HALF_WIDTH = 128  # pixels; wings beyond are dropped (their flux stays in the stamp)


@dataclass
class Injection:
    """What `inject_point_sources` returns: a new exposure and the injected sources."""

    exposure: Exposure
    sources: Table


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
