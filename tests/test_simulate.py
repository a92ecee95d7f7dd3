"""The simulator: determinism, truth consistency, noise model, masks, WCS and injection."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.special import ndtr

from diffim.errors import DiffimIOError, DiffimValueError
from diffim.image import Exposure, MaskedImage
from diffim.psf import GaussianPsf, adaptive_moments, fwhm_from_moments
from diffim.simulate import (
    SimulationParameters,
    inject_point_sources,
    render_point_sources,
    simulate_pair,
    write_pair,
)

ARTEFACTS = ["SAT", "CR", "BAD"]

QUIET = {
    "shape": (192, 192),
    "seed": 5,
    "n_stars": 40,
    "flux_min": 5e3,
    "flux_max": 2e5,
    "n_galaxies": 0,
    "n_transients": 0,
    "n_variables": 0,
    "n_cosmic_rays": 0,
    "n_bad_columns": 0,
    "noise": False,
}


@pytest.fixture(scope="module")
def quiet():
    """Noise-free stars only, none saturated (peak < 2e5 e- x 0.1 / 2 e-/ADU < 30000 ADU)."""
    return simulate_pair(**QUIET)


@pytest.fixture(scope="module")
def noisy_and_model():
    """The default content on 256², and its noise-free twin from the same seed."""
    parameters = {"shape": (256, 256), "seed": 3, "n_stars": 200, "saturation": 20000.0}
    return simulate_pair(**parameters), simulate_pair(**parameters, noise=False)


def isolated(truth, radius=20.0, border=15.0):
    stars = truth.stars
    x, y = np.asarray(stars["x_science"]), np.asarray(stars["y_science"])
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(distance, np.inf)
    ny, nx = truth.parameters.shape
    inside = np.ones(len(stars), dtype=bool)
    for frame in ("science", "template"):
        xf, yf = np.asarray(stars[f"x_{frame}"]), np.asarray(stars[f"y_{frame}"])
        inside &= (xf > border) & (xf < nx - 1 - border) & (yf > border) & (yf < ny - 1 - border)
    return stars[(distance.min(axis=1) > radius) & inside & ~np.asarray(stars["saturated"])]


def cutout(exposure, sky, x, y, half=12):
    """Sky-subtracted (2 half + 1)² stamp around parent (x, y) and its origin."""
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    image = exposure.masked_image.image[iy - half : iy + half + 1, ix - half : ix + half + 1]
    return image.astype(float) - sky(xx, yy), (ix - half, iy - half)


def test_same_seed_same_pair_and_different_seed_differs():
    parameters = {"shape": (96, 96), "n_stars": 30, "n_galaxies": 2}
    first, second = simulate_pair(**parameters, seed=9), simulate_pair(**parameters, seed=9)
    other = simulate_pair(**parameters, seed=10)
    for frame in ("science", "template"):
        a, b = getattr(first, frame).masked_image, getattr(second, frame).masked_image
        for plane in ("image", "mask", "variance"):
            np.testing.assert_array_equal(getattr(a, plane), getattr(b, plane))
        assert not np.array_equal(a.image, getattr(other, frame).masked_image.image)
    assert first.truth.to_json() == second.truth.to_json()
    assert first.truth.to_json() != other.truth.to_json()


@pytest.mark.parametrize("frame", ["science", "template"])
def test_isolated_star_fwhm_and_flux_match_truth(quiet, frame):
    """In a noise-free image an isolated star has the true PSF FWHM at its position (the
    moments are exact for a Gaussian; 0.5 % leaves room for faint neighbours' wings) and its
    total flux within a +-12 px box (> 6 sigma) is the true flux within 0.1 %."""
    truth = quiet.truth
    exposure, sky, psf = (
        getattr(quiet, frame),
        getattr(truth, f"{frame}_sky"),
        exposure_psf(quiet, frame),
    )
    stars = isolated(truth)
    assert len(stars) >= 5
    for star in stars:
        x, y = star[f"x_{frame}"], star[f"y_{frame}"]
        stamp, _ = cutout(exposure, sky, x, y)
        assert fwhm_from_moments(stamp) == pytest.approx(psf.fwhm(x, y), rel=0.005)
        assert stamp.sum() == pytest.approx(star[f"flux_{frame}"], rel=1e-3)


def exposure_psf(pair, frame):
    return getattr(pair, frame).psf


def test_stars_are_at_their_true_positions_with_shift_and_rotation():
    """Science grid shifted by (0.37, -0.62) px and rotated 0.4 deg: the WCSs map each star's
    template position onto its science position (to 1e-6 px), and the measured centroids
    in both images are the truth within 0.01 px."""
    pair = simulate_pair(**{**QUIET, "shift": (0.37, -0.62), "rotation_deg": 0.4})
    stars = pair.truth.stars
    world = pair.template.wcs.pixel_to_world_values(stars["x_template"], stars["y_template"])
    x_science, y_science = pair.science.wcs.world_to_pixel_values(*world)
    np.testing.assert_allclose(x_science, stars["x_science"], atol=1e-6)
    np.testing.assert_allclose(y_science, stars["y_science"], atol=1e-6)
    np.testing.assert_allclose(world[0], stars["ra"], atol=1e-9)
    assert np.abs(stars["x_science"] - stars["x_template"]).max() > 0.3
    for star in isolated(pair.truth):
        for frame in ("science", "template"):
            x, y = star[f"x_{frame}"], star[f"y_{frame}"]
            stamp, (x0, y0) = cutout(
                getattr(pair, frame), getattr(pair.truth, f"{frame}_sky"), x, y
            )
            moments = adaptive_moments(stamp)
            assert (moments.x + x0, moments.y + y0) == pytest.approx((x, y), abs=0.01)


def test_without_shift_both_wcs_are_identical(quiet):
    science, template = quiet.science.wcs, quiet.template.wcs
    np.testing.assert_array_equal(science.wcs.crpix, template.wcs.crpix)
    np.testing.assert_array_equal(science.wcs.cd, template.wcs.cd)
    np.testing.assert_array_equal(quiet.truth.stars["x_science"], quiet.truth.stars["x_template"])
    scale = np.abs(science.wcs.cd[0, 0]) * 3600.0
    assert scale == pytest.approx(0.2)


def test_flux_ratio_and_variable_stars():
    """Constant stars: science/template flux = flux_ratio = the true kernel sum; variables
    have the ratio of their truth fluxes, which differs from flux_ratio by >= 0.2 x 0.5."""
    pair = simulate_pair(**{**QUIET, "flux_ratio": 1.3, "n_variables": 6})
    truth = pair.truth
    assert truth.kernel_sum(10.0, 20.0) == 1.3
    stars = isolated(truth)
    assert np.asarray(stars["is_variable"]).sum() >= 1
    for star in stars:
        fluxes = {
            frame: cutout(
                getattr(pair, frame),
                getattr(truth, f"{frame}_sky"),
                star[f"x_{frame}"],
                star[f"y_{frame}"],
            )[0].sum()
            for frame in ("science", "template")
        }
        expected = star["flux_science"] / star["flux_template"]
        assert fluxes["science"] / fluxes["template"] == pytest.approx(expected, rel=2e-3)
        if star["is_variable"]:
            assert abs(expected / 1.3 - 1) >= 0.1 - 1e-12
        else:
            assert expected == pytest.approx(1.3, rel=1e-12)
    assert pair.science.zero_point - pair.template.zero_point == pytest.approx(2.5 * np.log10(1.3))


def test_sky_only_image_is_the_sky_model():
    """Without sources and noise each image is its own planar sky (ADU): different levels
    and gradients in science and template."""
    empty = {**QUIET, "n_stars": 0, "n_variables": 0}
    pair = simulate_pair(**empty)
    yy, xx = np.indices(pair.science.shape)
    for frame, level in (("science", 1000.0), ("template", 600.0)):
        sky = getattr(pair.truth, f"{frame}_sky")
        np.testing.assert_allclose(getattr(pair, frame).masked_image.image, sky(xx, yy), rtol=1e-6)
        assert sky(95.5, 95.5) == pytest.approx(level / 2.0)
    gradient = (
        pair.science.masked_image.image[:, -1].mean()
        - pair.science.masked_image.image[:, 0].mean()
    )
    assert gradient == pytest.approx(0.2 / 2.0 * 191, rel=1e-4)


def test_psf_truth_on_exposures():
    """FWHM at the centre is science_fwhm / template_fwhm, and changes by fwhm_gradient[0]
    of it from the left edge to the right edge."""
    pair = simulate_pair(**{**QUIET, "fwhm_gradient": (0.2, 0.0), "n_stars": 1})
    center = pair.science.bbox.center
    assert pair.science.psf.fwhm(*center) == pytest.approx(4.0)
    assert pair.template.psf.fwhm(*center) == pytest.approx(3.0)
    left, right = pair.science.psf.fwhm(-0.5, center[1]), pair.science.psf.fwhm(191.5, center[1])
    assert right - left == pytest.approx(0.2 * 4.0)
    assert pair.truth.science_psf is pair.science.psf


def test_variance_plane_is_the_expected_variance(noisy_and_model):
    """(noisy - noise-free)/sqrt(variance) on unflagged pixels has mean 0 (5 sigma/sqrt(N))
    and std 1 within 3 % (10 sigma of the sample std for N = 65k); the variance plane is
    (model e- + read_noise²)/gain² exactly."""
    noisy, model = noisy_and_model
    p = noisy.truth.parameters
    for frame in ("science", "template"):
        data, expected = getattr(noisy, frame).masked_image, getattr(model, frame).masked_image
        good = (data.mask & data.bitmask(ARTEFACTS)) == 0
        np.testing.assert_array_equal(data.variance, expected.variance)
        variance = (expected.image.astype(float) * p.gain + p.read_noise**2) / p.gain**2
        np.testing.assert_allclose(data.variance[good], variance[good], rtol=1e-5)
        z = (data.image - expected.image)[good] / np.sqrt(data.variance[good])
        assert abs(z.mean()) < 5 / np.sqrt(z.size)
        assert z.std() == pytest.approx(1.0, abs=0.03)


def test_saturated_pixels_are_clipped_and_flagged(noisy_and_model):
    noisy, _ = noisy_and_model
    stars = noisy.truth.stars
    assert np.asarray(stars["saturated"]).sum() >= 1
    for frame in ("science", "template"):
        mi = getattr(noisy, frame).masked_image
        saturated = mi.mask_plane("SAT")
        assert saturated.any()
        np.testing.assert_array_equal(saturated, mi.image >= 20000.0)
        assert mi.image.max() == pytest.approx(20000.0)
        flagged = stars[np.asarray(stars[f"saturated_{frame}"])]
        ix = np.floor(np.asarray(flagged[f"x_{frame}"]) + 0.5).astype(int)
        iy = np.floor(np.asarray(flagged[f"y_{frame}"]) + 0.5).astype(int)
        assert np.all(mi.image[iy, ix] == 20000.0)
    assert np.all(stars["saturated"] == (stars["saturated_science"] | stars["saturated_template"]))


def test_cosmic_rays_and_bad_columns_are_flagged(noisy_and_model):
    """Every cosmic-ray pixel is flagged CR and raised above the noise-free model by its
    flux; bad columns are 0 and flagged BAD over their whole length, nothing else is BAD."""
    noisy, model = noisy_and_model
    truth = noisy.truth
    without_rays = simulate_pair(model.truth.parameters, n_cosmic_rays=0)
    assert len(truth.cosmic_rays) >= 2 * truth.parameters.n_cosmic_rays
    for frame in ("science", "template"):
        mi, model_mi = getattr(noisy, frame).masked_image, getattr(model, frame).masked_image
        hits = truth.cosmic_rays[truth.cosmic_rays["image"] == frame]
        x, y = np.asarray(hits["x"]), np.asarray(hits["y"])
        assert mi.mask_plane("CR")[y, x].all()
        assert mi.mask_plane("CR").sum() == len(set(zip(x.tolist(), y.tolist(), strict=True)))
        clean = ~mi.mask_plane("SAT")[y, x] & ~mi.mask_plane("BAD")[y, x]
        excess = model_mi.image[y, x] - getattr(without_rays, frame).masked_image.image[y, x]
        assert np.all(excess[clean] >= 0.99 * np.asarray(hits["flux"])[clean])
        columns = truth.bad_columns[frame]
        assert len(columns) == truth.parameters.n_bad_columns
        bad = mi.mask_plane("BAD")
        assert bad[:, columns].all()
        assert bad.sum() == len(columns) * mi.shape[0]
        assert np.all(mi.image[:, columns] == 0)
    assert set(truth.bad_columns["science"]).isdisjoint(truth.bad_columns["template"])


def test_transients_only_in_science():
    """Removing the transients (independent generator) leaves the template unchanged and
    takes exactly their flux out of the science image, at their positions."""
    with_transients = simulate_pair(**{**QUIET, "n_transients": 4})
    without = simulate_pair(**{**QUIET, "n_transients": 0})
    np.testing.assert_array_equal(
        with_transients.template.masked_image.image, without.template.masked_image.image
    )
    difference = (
        with_transients.science.masked_image.image
        - without.science.masked_image.image.astype(float)
    )
    transients = with_transients.truth.transients
    assert len(transients) == 4
    assert difference.sum() == pytest.approx(np.sum(transients["flux_science"]), rel=1e-4)
    expected = render_point_sources(
        difference.shape,
        transients["x_science"],
        transients["y_science"],
        transients["flux_science"],
        with_transients.science.psf,
    )
    np.testing.assert_allclose(difference, expected, atol=1e-3 * expected.max())


def test_galaxies_are_identical_up_to_flux_ratio():
    """Galaxies keep their flux in both epochs, scaled by flux_ratio (PSF convolution keeps
    the flux; only the edges can lose some)."""
    pair = simulate_pair(**{**QUIET, "n_stars": 0, "n_galaxies": 3, "flux_ratio": 0.8})
    yy, xx = np.indices(pair.science.shape)
    totals = {
        frame: (
            getattr(pair, frame).masked_image.image - getattr(pair.truth, f"{frame}_sky")(xx, yy)
        ).sum()
        for frame in ("science", "template")
    }
    assert totals["science"] / totals["template"] == pytest.approx(0.8, rel=0.01)
    assert totals["template"] <= np.sum(pair.truth.galaxies["flux_template"]) * (1 + 1e-4)
    assert len(pair.truth.galaxies) == 3


def test_exposure_metadata_and_dtypes(quiet):
    science = quiet.science
    assert science.gain == 2.0
    assert science.saturation == 30000.0
    assert science.filter_name == "r"
    assert science.zero_point == pytest.approx(27.0)
    assert science.masked_image.dtype == np.float32
    assert science.metadata["SIMSEED"] == 5
    double = simulate_pair(**{**QUIET, "shape": (32, 32), "n_stars": 2, "dtype": "float64"})
    assert double.template.masked_image.dtype == np.float64


def test_truth_json_round_trip(quiet, tmp_path):
    data = json.loads(quiet.truth.to_json())
    assert data["parameters"]["seed"] == 5
    assert len(data["stars"]["x_science"]) == 40
    assert data["kernel_sum"] == 1.0
    assert data["science_psf"]["fwhm_pix"]["value"] == 4.0
    path = tmp_path / "truth.json"
    quiet.truth.write_json(path)
    assert json.loads(path.read_text()) == data
    with pytest.raises(DiffimIOError, match="overwrite=True"):
        quiet.truth.write_json(path)
    quiet.truth.write_json(path, overwrite=True)


def test_write_pair(tmp_path):
    from diffim.io import read_exposure

    pair = simulate_pair(shape=(64, 64), n_stars=10, seed=2)
    paths = write_pair(pair, tmp_path / "out")
    assert sorted(path.name for path in paths.values()) == [
        "science.fits",
        "template.fits",
        "truth.json",
    ]
    science = read_exposure(paths["science"])
    np.testing.assert_array_equal(science.masked_image.image, pair.science.masked_image.image)
    np.testing.assert_array_equal(science.masked_image.mask, pair.science.masked_image.mask)
    with pytest.raises(DiffimIOError, match="overwrite=True"):
        write_pair(pair, tmp_path / "out")
    write_pair(pair, tmp_path / "out", overwrite=True)


def blank_exposure(shape=(64, 64), gain=2.0):
    mi = MaskedImage(np.zeros(shape, dtype=np.float32), variance=np.ones(shape, dtype=np.float32))
    return Exposure(mi, psf=GaussianPsf(1.5), gain=gain)


def test_inject_point_sources_without_noise_adds_exact_flux():
    exposure = blank_exposure()
    injection = inject_point_sources(
        exposure, [(20.3, 30.6), (40.0, 10.5)], [1000.0, 500.0], add_noise=False
    )
    assert np.all(exposure.masked_image.image == 0)  # input untouched
    image = injection.exposure.masked_image.image
    assert image.sum() == pytest.approx(1500.0, rel=1e-6)
    assert image[31, 20] > 0
    assert image[10, 40] > 0
    assert list(injection.sources["flux"]) == [1000.0, 500.0]
    np.testing.assert_array_equal(injection.exposure.masked_image.variance, 1.0)


def test_inject_point_sources_with_noise_updates_variance():
    """Poisson noise of the injected e- (gain 2): variance grows by model / gain."""
    exposure = blank_exposure()
    rng = np.random.default_rng(4)
    injection = inject_point_sources(exposure, [(32.0, 32.0)], 2.0e5, rng=rng)
    mi = injection.exposure.masked_image
    model = render_point_sources(mi.shape, [32.0], [32.0], [2.0e5], exposure.psf)
    np.testing.assert_allclose(mi.variance - 1.0, model / 2.0, rtol=1e-5, atol=1e-6)
    assert mi.image.sum() == pytest.approx(2.0e5, abs=5 * np.sqrt(2.0e5 / 2.0))
    assert not np.allclose(mi.image, model)
    with pytest.raises(DiffimValueError, match="rng"):
        inject_point_sources(exposure, [(32.0, 32.0)], 100.0)
    with pytest.raises(DiffimValueError, match="psf"):
        inject_point_sources(Exposure(exposure.masked_image), [(1.0, 1.0)], 1.0, add_noise=False)


def test_render_point_sources_keeps_the_overlap_at_edges():
    psf = GaussianPsf(2.0)
    x, y, flux = [0.0, 25.0], [25.0, 25.0], [100.0, 100.0]
    image = render_point_sources((50, 50), x, y, flux, psf, size=41)
    # pixel 0 spans [-0.5, 0.5]: the image holds the part of the first star at x > -0.5
    assert image.sum() == pytest.approx(100.0 + 100.0 * ndtr(0.5 / 2.0), rel=1e-9)
    # default stamps end at 0.05 flux units per pixel (here 4 sigma) and hold all the flux
    assert render_point_sources((50, 50), x, y, flux, psf).sum() == pytest.approx(
        image.sum(), rel=1e-3
    )
    shifted = render_point_sources((50, 50), [25.0], [25.0], [100.0], psf, xy0=(5, 0))
    assert shifted.sum() == pytest.approx(100.0)
    assert np.unravel_index(np.argmax(shifted), shifted.shape) == (25, 20)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_star": 3}, "did you mean 'n_stars'"),
        ({"n_stars": -1}, "n_stars=-1"),
        ({"flux_max": 10.0}, "flux_max"),
        ({"shape": (8, 8)}, "shape"),
        ({"gain": 0.0}, "gain"),
        ({"profile": "airy"}, "profile"),
        ({"galaxy_radius": (3.0, 1.0)}, "galaxy_radius"),
        ({"shift": "(3.4,-2.1)"}, r"shift takes 2 numbers, e.g. shift=\[0.0, 0.0\]"),
        ({"shift": (1.0, 2.0, 3.0)}, "shift takes 2 numbers"),
        ({"shape": (64.5, 64)}, "shape takes 2 numbers"),
        ({"n_stars": 10.5}, "n_stars takes an integer"),
        ({"flux_ratio": "1.2"}, "flux_ratio takes a number"),
    ],
)
def test_parameter_validation(overrides, match):
    with pytest.raises(DiffimValueError, match=match):
        simulate_pair(**overrides)


def test_parameters_object_and_overrides():
    base = SimulationParameters(shape=(48, 48), n_stars=5, seed=1)
    pair = simulate_pair(base, seed=2)
    assert pair.truth.parameters == dataclasses.replace(base, seed=2)
    assert pair.truth.seed == 2
    assert pair.truth.gain == 2.0
    assert pair.truth.read_noise == 5.0


def test_moffat_pair():
    pair = simulate_pair(**{**QUIET, "profile": "moffat", "moffat_beta": 3.0})
    star = isolated(pair.truth)[0]
    x, y = star["x_science"], star["y_science"]
    stamp, _ = cutout(pair.science, pair.truth.science_sky, x, y, half=20)
    assert fwhm_from_moments(stamp) == pytest.approx(pair.science.psf.fwhm(x, y), rel=0.01)
