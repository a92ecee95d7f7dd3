"""Shared simulated data for the tests (all from diffim's own simulator, fixed seeds)."""

from dataclasses import dataclass

import numpy as np
import pytest

from diffim.simulate import SimulatedPair, simulate_pair


@dataclass
class PairWithModel:
    """A simulated pair and the noise-free source flux (sky removed) of both images, in ADU."""

    pair: SimulatedPair
    science_sources: np.ndarray
    template_sources: np.ndarray

    def empty_sky(self, noise_fraction=0.02):
        """Pixels where neither image has source flux above ``noise_fraction`` of its noise."""
        science_sigma = np.sqrt(self.pair.science.masked_image.variance)
        template_sigma = np.sqrt(self.pair.template.masked_image.variance)
        return (self.science_sources < noise_fraction * science_sigma) & (
            self.template_sources < noise_fraction * template_sigma
        )


def simulate_with_model(**parameters):
    """Simulate a pair and, from the same seed, its noise-free twin."""
    pair = simulate_pair(**parameters)
    model = simulate_pair(**{**parameters, "noise": False, "n_cosmic_rays": 0})
    ny, nx = pair.science.shape
    yy, xx = np.indices((ny, nx), dtype=float)
    science_sky = pair.truth.science_sky(xx, yy)
    template_sky = pair.truth.template_sky(xx, yy)
    return PairWithModel(
        pair,
        model.science.masked_image.image - science_sky,
        model.template.masked_image.image - template_sky,
    )


def isolated_stars(truth, *, min_flux, max_flux=np.inf, radius=15.0, frame="science"):
    """Rows of truth.stars that are constant, unsaturated and have no neighbour (star with
    over 1 % of its flux, transient or galaxy) within ``radius`` pixels."""
    stars = truth.stars
    x, y = np.asarray(stars[f"x_{frame}"]), np.asarray(stars[f"y_{frame}"])
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(distance, np.inf)
    flux = np.asarray(stars["flux_template"])
    crowded = ((distance < radius) & (flux[None, :] > 0.01 * flux[:, None])).any(axis=1)
    for others in (truth.transients, truth.galaxies):
        ox, oy = np.asarray(others[f"x_{frame}"]), np.asarray(others[f"y_{frame}"])
        crowded |= (np.hypot(x[:, None] - ox[None, :], y[:, None] - oy[None, :]) < radius).any(
            axis=1
        )
    keep = (
        ~crowded
        & ~np.asarray(stars["is_variable"])
        & ~np.asarray(stars["saturated"])
        & (flux >= min_flux)
        & (flux <= max_flux)
    )
    return stars[keep]


ARTEFACT_PLANES = ["BAD", "SAT", "CR", "NO_DATA", "EDGE"]

#: The seven pictures of ``diffim.diagnostics.write_debug_plots``, in the order written.
DEBUG_PLOTS = (
    "images.png",
    "candidate_kernels.png",
    "spatial_kernel.png",
    "kernel_sum.png",
    "residual_histograms.png",
    "candidates.png",
    "normalized_residuals.png",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def psf_flux(difference, psf, x, y):
    """Weighted PSF-fit flux (ADU) of a point source at parent (x, y), and its 1σ error."""
    stamp = psf.draw(x, y)
    rows, cols = stamp.bbox.slices(difference.xy0)
    image, variance = difference.image[rows, cols], difference.variance[rows, cols]
    weight = stamp.array / variance
    flux = np.sum(weight * image) / np.sum(weight * stamp.array)
    return flux, 1.0 / np.sqrt(np.sum(weight * stamp.array))


def normalized(difference):
    with np.errstate(divide="ignore", invalid="ignore"):
        z = difference.image / np.sqrt(difference.variance)
    good = np.isfinite(z) & ((difference.mask & difference.bitmask(ARTEFACT_PLANES)) == 0)
    return z, good


def near(points_x, points_y, shape, radius):
    """Boolean image, True within ``radius`` px of any of the points."""
    yy, xx = np.indices(shape)
    result = np.zeros(shape, dtype=bool)
    for x, y in zip(points_x, points_y, strict=True):
        x0, y0 = int(x), int(y)
        r = int(np.ceil(radius)) + 1
        sub = (slice(max(y0 - r, 0), y0 + r + 1), slice(max(x0 - r, 0), x0 + r + 1))
        result[sub] |= np.hypot(xx[sub] - x, yy[sub] - y) <= radius
    return result


@pytest.fixture(scope="session")
def varying_pair():
    """2048² pair: science FWHM 4.5 px and template 3.0 px at the centre, both growing by
    35 % across x; flux ratio 1.2; bright transients; Gaussian PSFs."""
    return simulate_with_model(
        shape=(2048, 2048),
        seed=11,
        n_stars=5000,
        science_fwhm=4.5,
        template_fwhm=3.0,
        fwhm_gradient=(0.35, 0.1),
        flux_ratio=1.2,
        n_transients=20,
        transient_flux=(3.0e4, 2.0e5),
        n_variables=8,
    )


@pytest.fixture(scope="session")
def equal_psf_run():
    """384² pair with identical, constant PSFs (FWHM 3.5 px) and skies, subtracted with a
    spatially constant kernel; returns the pair with its model and the SubtractResult."""
    from diffim.config import ImagePsfMatchConfig
    from diffim.task import ImagePsfMatchTask

    data = simulate_with_model(
        shape=(384, 384), seed=5, n_stars=250, science_fwhm=3.5, template_fwhm=3.5,
        fwhm_gradient=(0.0, 0.0), science_ellipticity=0.0, template_ellipticity=0.0,
        ellipticity_gradient=(0.0, 0.0), sky_science=800.0, sky_template=800.0,
        sky_gradient_science=(0.0, 0.0), sky_gradient_template=(0.0, 0.0), n_transients=0,
        n_variables=0, n_galaxies=0,
    )  # fmt: skip
    pair = data.pair
    stars = isolated_stars(pair.truth, min_flux=2000.0, radius=20.0)
    config = ImagePsfMatchConfig()
    config.kernel.active.spatialKernelOrder = 0  # the PSFs do not vary
    config.kernel.active.spatialBgOrder = 0
    result = ImagePsfMatchTask(config).subtractMaskedImages(
        pair.template.masked_image, pair.science.masked_image,
        list(zip(stars["x_science"], stars["y_science"], strict=True)), 3.5, 3.5,
    )  # fmt: skip
    return data, result
