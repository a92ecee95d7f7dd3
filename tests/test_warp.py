"""Tests of diffim.warp: WCS comparison, overlap, resampling of all planes, WarpedPsf."""

import pickle

import numpy as np
import pytest
from astropy.wcs import WCS

from diffim.errors import DiffimValueError, MaskedPixelsWarning, NoOverlapError
from diffim.image import BBox, Exposure, MaskedImage
from diffim.io import HeaderWcs, read_exposure, write_exposure
from diffim.psf import GaussianPsf, adaptive_moments, fwhm_from_moments
from diffim.simulate import simulate_pair
from diffim.task import ImagePsfMatchTask
from diffim.warp import WarpedPsf, check_overlap, same_grid, warp_exposure, wcs_agree

SHIFT = (0.3, -0.2)  # science pixel p sees template pixel p + SHIFT


def tan_wcs(crpix=(31.5, 31.5), scale_arcsec=0.2, crval=(150.0, 2.0)):
    """A TAN WCS of 0-based parent pixels, north up."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    scale = scale_arcsec / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    return wcs


def shifted_wcs(shift, **kwargs):
    """Science WCS whose pixel p maps to template (``tan_wcs()``) pixel p + shift."""
    return tan_wcs(crpix=(31.5 - shift[0], 31.5 - shift[1]), **kwargs)


def make_exposure(image, wcs, *, variance=None, mask=None, xy0=(0, 0), psf=None):
    image = np.asarray(image)
    return Exposure(
        MaskedImage(image, mask, variance, xy0=xy0),
        wcs=wcs,
        psf=psf,
        gain=2.0,
        saturation=5.0e4,
        zero_point=27.0,
        filter_name="r",
        metadata={"KEY": 1},
    )


def lanczos3_weights(phase):
    """Normalised Lanczos-3 weights of the taps -2..3 for sub-pixel phase ``phase``."""
    distance = np.arange(-2, 4) - phase
    weights = np.sinc(distance) * np.sinc(distance / 3.0)
    return weights / weights.sum()


@pytest.fixture(scope="module")
def star_pair():
    """Noise-free stars on a template grid and on a science grid shifted by SHIFT and rotated
    by 0.05 deg; same round FWHM = 3 px Gaussian PSF, sky and fluxes in both images."""
    return simulate_pair(
        shape=(192, 192),
        seed=5,
        dtype="float64",
        n_stars=40,
        flux_min=2.0e4,
        flux_max=2.0e5,
        noise=False,
        shift=SHIFT,
        rotation_deg=0.05,
        science_fwhm=3.0,
        template_fwhm=3.0,
        fwhm_gradient=(0.0, 0.0),
        science_ellipticity=0.0,
        template_ellipticity=0.0,
        ellipticity_gradient=(0.0, 0.0),
        n_galaxies=0,
        n_cosmic_rays=0,
        n_bad_columns=0,
        n_transients=0,
        n_variables=0,
        sky_science=600.0,
        sky_template=600.0,
        sky_gradient_science=(0.0, 0.0),
        sky_gradient_template=(0.0, 0.0),
        saturation=1.0e12,
    )


# -- wcs_agree and check_overlap ------------------------------------------------------------
def test_wcs_agree_identical_and_shifted():
    bbox = BBox(0, 0, 64, 64)
    assert wcs_agree(tan_wcs(), tan_wcs(), bbox)
    assert not wcs_agree(tan_wcs(), shifted_wcs((0.3, 0.0)), bbox)
    assert wcs_agree(tan_wcs(), shifted_wcs((0.3, 0.0)), bbox, tolerance_pix=0.31)


def test_wcs_agree_missing_wcs():
    """Two missing WCSs agree; one missing WCS cannot be compared."""
    bbox = BBox(0, 0, 8, 8)
    assert wcs_agree(None, None, bbox)
    assert not wcs_agree(tan_wcs(), None, bbox)
    assert not wcs_agree(None, tan_wcs(), bbox)


def test_same_grid_needs_the_same_box_and_agreeing_wcs():
    image = np.zeros((64, 64))
    science = make_exposure(image, tan_wcs())
    assert same_grid(make_exposure(image, tan_wcs()), science)
    assert not same_grid(make_exposure(image, shifted_wcs((0.3, 0.0))), science)
    assert not same_grid(make_exposure(image[1:], tan_wcs(), xy0=(0, 1)), science)
    assert not same_grid(make_exposure(image, None), science)


SCIENCE_PIXELS = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
TEMPLATE_PIXELS = np.linspace(1.0, 0.0, 64 * 64).reshape(64, 64) ** 2


def in_memory_pair(template_wcs):
    """Science (``tan_wcs()``) and template exposures with astropy WCS objects."""
    return (
        make_exposure(SCIENCE_PIXELS, tan_wcs(), variance=np.ones((64, 64))),
        make_exposure(TEMPLATE_PIXELS, template_wcs, variance=np.ones((64, 64))),
    )


def written_pair(tmp_path, template_wcs):
    """The `in_memory_pair`, written to FITS files and read back."""
    paths = [tmp_path / "science.fits", tmp_path / "template.fits"]
    for exposure, path in zip(in_memory_pair(template_wcs), paths, strict=True):
        write_exposure(exposure, path)
    return [read_exposure(path) for path in paths]


def test_identical_header_wcs_means_the_same_grid_without_building(tmp_path):
    science, template = written_pair(tmp_path, tan_wcs())
    assert same_grid(template, science)
    registered = ImagePsfMatchTask().registered_template(template, science, do_warping=False)
    assert registered is template  # no warp
    assert isinstance(template.stored_wcs, HeaderWcs)  # neither WCS was built
    assert isinstance(science.stored_wcs, HeaderWcs)


def test_different_header_wcs_is_warped_as_from_the_wcs_objects(tmp_path):
    """Headers that differ are compared (and warped) through the built astropy WCSs: the
    result is that of the same exposures made with astropy WCS objects, before writing."""
    task = ImagePsfMatchTask()
    science, template = written_pair(tmp_path, shifted_wcs((0.3, -0.2)))
    warped = task.registered_template(template, science, do_warping=True)
    assert not isinstance(science.stored_wcs, HeaderWcs)  # built to compare
    science_direct, template_direct = in_memory_pair(shifted_wcs((0.3, -0.2)))
    direct = task.registered_template(template_direct, science_direct, do_warping=True)
    assert direct is not template_direct
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(
            getattr(warped.masked_image, plane), getattr(direct.masked_image, plane)
        )
    assert wcs_agree(warped.wcs, science_direct.wcs, science.bbox, tolerance_pix=1e-9)


def test_disjoint_images_raise_no_overlap():
    template = make_exposure(np.zeros((64, 64)), tan_wcs())
    science = make_exposure(np.zeros((64, 64)), tan_wcs(crval=(10.0, -30.0)))
    match = "do not overlap on the sky: template covers RA 149.99.*check that you passed"
    with pytest.raises(NoOverlapError, match=match):
        check_overlap(template, science)
    with pytest.raises(NoOverlapError, match="do not overlap on the sky"):
        warp_exposure(template, science)


def test_grazing_overlap_with_no_covered_pixel_raises():
    """The footprints meet, but no science pixel has a full Lanczos-3 support inside."""
    template = make_exposure(np.zeros((64, 64)), tan_wcs())
    science = make_exposure(np.zeros((64, 64)), shifted_wcs((62.0, 0.0)))
    check_overlap(template, science)
    with pytest.raises(NoOverlapError, match="overlap too little"):
        warp_exposure(template, science)


def test_missing_wcs_and_bad_options_are_errors():
    template = make_exposure(np.zeros((16, 16)), None)
    science = make_exposure(np.zeros((16, 16)), tan_wcs())
    with pytest.raises(DiffimValueError, match="template exposure has no WCS"):
        warp_exposure(template, science)
    template.wcs = tan_wcs()
    with pytest.raises(DiffimValueError, match="kernel='lanczos9' is not a known kernel"):
        warp_exposure(template, science, kernel="lanczos9")
    with pytest.raises(DiffimValueError, match="interp_length must be"):
        warp_exposure(template, science, interp_length=-1)


# -- the image plane ------------------------------------------------------------------------
@pytest.mark.parametrize(("kernel", "tolerance"), [("lanczos3", 0.01), ("lanczos5", 0.005)])
def test_warp_reproduces_science_rendering(star_pair, kernel, tolerance):
    """Warping the template onto the science grid gives the science image of the same stars.

    The tolerances are the interpolation errors of each kernel for a pixel-integrated
    FWHM = 3 px Gaussian at the worst sub-pixel phase (0.93 % and 0.24 % of the peak,
    measured on 300 stars at random phases, see the module notes).
    """
    science, template = star_pair.science, star_pair.template
    warped = warp_exposure(template, science, kernel=kernel)
    sky = star_pair.truth.science_sky.value
    inner = (slice(10, -10), slice(10, -10))
    peak = (science.masked_image.image[inner] - sky).max()
    residual = warped.masked_image.image[inner] - science.masked_image.image[inner]
    assert np.abs(residual).max() < tolerance * peak
    assert not warped.masked_image.mask_plane("NO_DATA")[inner].any()


def test_constant_is_kept_exactly():
    """The 1-d weights sum to one, so a constant sky survives any sub-pixel shift."""
    template = make_exposure(np.full((64, 64), 7.25), tan_wcs())
    science = make_exposure(np.zeros((64, 64)), shifted_wcs((0.37, -0.61)))
    warped = warp_exposure(template, science).masked_image
    covered = ~warped.mask_plane("NO_DATA")
    assert covered.sum() > 50 * 50
    np.testing.assert_allclose(warped.image[covered], 7.25, rtol=1e-12)


def test_interpolated_mapping_matches_exact_mapping(star_pair):
    """The spline through nodes 10 px apart reproduces the exact WCS mapping."""
    fast = warp_exposure(star_pair.template, star_pair.science)
    exact = warp_exposure(star_pair.template, star_pair.science, interp_length=0)
    np.testing.assert_allclose(fast.masked_image.image, exact.masked_image.image, atol=1e-6)


def test_template_and_science_cutouts(star_pair):
    """Parent coordinates (xy0) are honoured on both sides."""
    full = warp_exposure(star_pair.template, star_pair.science).masked_image
    template_cut = star_pair.template.subimage(BBox(20, 30, 120, 100))
    warped = warp_exposure(template_cut, star_pair.science).masked_image
    covered = ~warped.mask_plane("NO_DATA")
    assert 100 * 80 < covered.sum() < 120 * 100
    np.testing.assert_allclose(warped.image[covered], full.image[covered], rtol=1e-10)
    box = BBox(40, 50, 90, 70)
    science_cut = star_pair.science.subimage(box)
    warped = warp_exposure(star_pair.template, science_cut).masked_image
    assert warped.xy0 == (40, 50)
    np.testing.assert_allclose(warped.image, full[box].image, rtol=1e-8)


# -- the mask plane -------------------------------------------------------------------------
def flagged_pixels(kernel_lo, kernel_hi, bad=(30, 30)):
    """Science pixels (row, col) whose support, for a pure SHIFT, contains ``bad``."""
    rows, cols = np.indices((64, 64))
    x0 = np.floor(cols + SHIFT[0]).astype(int)
    y0 = np.floor(rows + SHIFT[1]).astype(int)
    hit_x = (x0 + kernel_lo <= bad[0]) & (bad[0] <= x0 + kernel_hi)
    hit_y = (y0 + kernel_lo <= bad[1]) & (bad[1] <= y0 + kernel_hi)
    return hit_x & hit_y


@pytest.mark.parametrize(
    ("plane", "mask_kernel", "support"),
    [("BAD", "bilinear", (0, 1)), ("BAD", "lanczos3", (-2, 3)), ("EDGE", "bilinear", (-2, 3))],
)
def test_bad_pixel_flags_the_pixels_it_contributes_to(plane, mask_kernel, support):
    """BAD spreads over the mask kernel's support (2x2 for bilinear, 6x6 for Lanczos-3);
    EDGE (grow_full_mask) always over the full Lanczos-3 support."""
    template = make_exposure(np.ones((64, 64)), tan_wcs())
    template.masked_image.set_mask_plane(plane, np.zeros((64, 64), bool))
    template.masked_image.mask[30, 30] = 1 << template.masked_image.planes.bit(plane)
    science = make_exposure(np.zeros((64, 64)), shifted_wcs(SHIFT))
    warped = warp_exposure(template, science, mask_kernel=mask_kernel).masked_image
    expected = flagged_pixels(*support)
    assert expected.sum() == (support[1] - support[0] + 1) ** 2
    np.testing.assert_array_equal(warped.mask_plane(plane), expected)


def test_uncovered_pixels_are_no_data():
    """Pixels whose Lanczos-3 support leaves the template: image 0, variance 0, NO_DATA."""
    shift = (20.3, -0.2)
    template = make_exposure(np.ones((64, 64)), tan_wcs(), variance=np.ones((64, 64)))
    science = make_exposure(np.zeros((64, 64)), shifted_wcs(shift))
    warped = warp_exposure(template, science).masked_image
    rows, cols = np.indices((64, 64))
    # support floor(p + shift) - 2 .. floor(p + shift) + 3 must lie in 0..63
    covered = (cols + shift[0] < 61) & (rows + shift[1] >= 2) & (rows + shift[1] < 61)
    np.testing.assert_array_equal(warped.mask_plane("NO_DATA"), ~covered)
    assert np.all(warped.image[~covered] == 0)
    assert np.all(warped.variance[~covered] == 0)
    assert np.all(warped.mask[~covered] == 1 << warped.planes.bit("NO_DATA"))
    np.testing.assert_allclose(warped.image[covered], 1.0, rtol=1e-12)


def test_non_finite_template_pixels_are_masked():
    image = np.ones((64, 64))
    image[30, 30] = np.nan
    template = make_exposure(image, tan_wcs())
    science = make_exposure(np.zeros((64, 64)), shifted_wcs(SHIFT))
    with pytest.warns(MaskedPixelsWarning, match="1 template pixels are NaN or infinite"):
        warped = warp_exposure(template, science).masked_image
    assert np.isfinite(warped.image).all()
    np.testing.assert_array_equal(
        warped.mask_plane("NO_DATA")[10:50, 10:50], flagged_pixels(0, 1)[10:50, 10:50]
    )
    assert np.isnan(template.masked_image.image[30, 30])  # input untouched


# -- the variance plane ---------------------------------------------------------------------
def test_variance_is_sum_of_squared_weights():
    """For a constant input variance s2 and a pure shift every covered output pixel has
    variance s2 * sum(wx**2) * sum(wy**2), with the Lanczos-3 weights of the phases
    0.3 (x) and 0.8 (y, from -0.2); 1e-3 allows for the phases tabulated to 6e-5 px."""
    template = make_exposure(np.zeros((64, 64)), tan_wcs(), variance=np.full((64, 64), 4.0))
    science = make_exposure(np.zeros((64, 64)), shifted_wcs(SHIFT))
    warped = warp_exposure(template, science).masked_image
    expected = 4.0 * np.sum(lanczos3_weights(0.3) ** 2) * np.sum(lanczos3_weights(0.8) ** 2)
    covered = ~warped.mask_plane("NO_DATA")
    np.testing.assert_allclose(warped.variance[covered], expected, rtol=1e-3)


def test_variance_plane_matches_warped_white_noise():
    """The per-pixel variance of warped white noise is exactly sum(w**2) sigma**2, so the
    sample variance over ~60 000 (correlated) pixels must match the plane: its relative
    standard error is sqrt(2 * sum(rho**2) / N) < 1 %, and 5 % is over 5 sigma."""
    rng = np.random.default_rng(11)
    shape = (256, 256)
    noise = rng.normal(0.0, 2.0, shape)
    wcs = tan_wcs(crpix=(127.5, 127.5))
    science_wcs = tan_wcs(crpix=(127.5 - SHIFT[0], 127.5 - SHIFT[1]))
    template = make_exposure(noise, wcs, variance=np.full(shape, 4.0))
    warped = warp_exposure(template, make_exposure(np.zeros(shape), science_wcs)).masked_image
    covered = ~warped.mask_plane("NO_DATA")
    plane = warped.variance[covered].mean()
    assert plane < 4.0  # interpolation averages neighbours
    assert warped.image[covered].var() == pytest.approx(plane, rel=0.05)


# -- invariants -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_and_input_unmodified(star_pair, dtype):
    template = Exposure(
        star_pair.template.masked_image.astype(dtype),
        wcs=star_pair.template.wcs,
        psf=star_pair.template.psf,
        gain=2.0,
        zero_point=27.5,
        filter_name="g",
        metadata={"A": [1, 2]},
    )
    before = template.masked_image.copy()
    wcs_header = template.wcs.to_header_string()
    warped = warp_exposure(template, star_pair.science)
    assert warped.masked_image.image.dtype == dtype
    assert warped.masked_image.variance.dtype == dtype
    for name in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(template.masked_image, name), getattr(before, name))
    assert template.wcs.to_header_string() == wcs_header
    assert (warped.gain, warped.zero_point, warped.filter_name) == (2.0, 27.5, "g")
    assert warped.metadata == {"A": [1, 2]}
    assert warped.metadata is not template.metadata
    assert warped.bbox == star_pair.science.bbox
    assert wcs_agree(warped.wcs, star_pair.science.wcs, warped.bbox, tolerance_pix=1e-9)


def test_template_without_psf_gives_no_psf():
    template = make_exposure(np.ones((32, 32)), tan_wcs())
    warped = warp_exposure(template, make_exposure(np.zeros((32, 32)), shifted_wcs(SHIFT)))
    assert warped.psf is None


# -- WarpedPsf ------------------------------------------------------------------------------
def test_warped_psf_of_a_pure_shift(star_pair):
    """A pure shift keeps the PSF: same FWHM as the template PSF at the mapped position."""
    warped = warp_exposure(star_pair.template, star_pair.science)
    psf, template_psf = warped.psf, star_pair.template.psf
    assert isinstance(psf, WarpedPsf)
    x, y = 100.0, 80.0
    xt, yt = psf.template_position(x, y)
    assert psf.fwhm(x, y) == pytest.approx(template_psf.fwhm(xt, yt), rel=1e-6)
    kernel = psf.kernel_image(x, y)
    assert kernel.sum() == pytest.approx(1.0)
    assert fwhm_from_moments(kernel) == pytest.approx(3.0, rel=0.01)


def test_warped_psf_scales_with_pixel_size():
    """Science pixels 1.1x larger than the template's: the FWHM in science pixels shrinks
    by 1.1 (determinant radius / sqrt|det J|); the resampled image agrees within 1 %."""
    template_psf = GaussianPsf.from_fwhm(4.0)
    science_wcs = tan_wcs(scale_arcsec=0.22)
    psf = WarpedPsf(template_psf, tan_wcs(), science_wcs, center=(31.5, 31.5))
    np.testing.assert_allclose(psf.jacobian(31.5, 31.5), 1.1 * np.eye(2), atol=1e-6)
    assert psf.fwhm() == pytest.approx(4.0 / 1.1, rel=1e-6)
    assert fwhm_from_moments(psf.kernel_image()) == pytest.approx(4.0 / 1.1, rel=0.01)


def test_warped_psf_pickles(star_pair):
    psf = warp_exposure(star_pair.template, star_pair.science).psf
    clone = pickle.loads(pickle.dumps(psf))
    # astropy pickles a WCS through its header, which may round its last digits
    np.testing.assert_allclose(clone.kernel_image(50, 60), psf.kernel_image(50, 60), atol=1e-9)
    assert clone.fwhm(50, 60) == pytest.approx(psf.fwhm(50, 60), rel=1e-9)


def test_warped_psf_draw_centres_the_source(star_pair):
    """``draw`` puts the PSF centroid at the requested sub-pixel science position."""
    psf = warp_exposure(star_pair.template, star_pair.science).psf
    stamp = psf.draw(50.3, 60.7)
    moments = adaptive_moments(stamp.array)
    assert moments.x + stamp.xy0[0] == pytest.approx(50.3, abs=0.01)
    assert moments.y + stamp.xy0[1] == pytest.approx(60.7, abs=0.01)
