"""A simulated science/template pair: `simulate_pair`, its truth, and `write_pair`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DiffimIOError
from ..image import Exposure, MaskedImage
from ..psf import FieldVaryingPsf, PolynomialField
from ._frames import _make_psf, _make_wcs, _sky
from ._scene import _cosmic_rays, _galaxies, _stars, _transients
from .parameters import SimulationParameters, _with_overrides
from .render import _expected_counts, _observe

if TYPE_CHECKING:  # astropy.table and astropy.wcs take ~0.4 s to import: only when simulating
    from astropy.table import Table
    from astropy.wcs import WCS


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
        from ..io import atomic_write_text

        atomic_write_text(path, self.to_json(), overwrite=overwrite)


@dataclass
class SimulatedPair:
    """A simulated science and template exposure with their truth."""

    science: Exposure
    template: Exposure
    truth: SimulationTruth


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
    from ..io import write_exposure  # lazy: the simulator itself needs no FITS I/O

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
