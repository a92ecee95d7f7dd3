"""Tests of diffim.sources and diffim.fwhm: detection, kernel-star selection and FWHM
measurement.

The images are rendered here (not with diffim.simulate) so that the truth is explicit:
Gaussian stars are integrated exactly over each pixel with erf, Moffat stars by 11x11
sub-pixel sampling; the noise is Gaussian with variance ``read_noise**2 + model`` (gain 1).
"""

import math

import numpy as np
import pytest
from astropy.table import Table
from scipy.special import erf

from diffim import fwhm as profile_fits
from diffim import sources
from diffim.errors import DiffimValueError, InsufficientKernelSourcesError, MaskedPixelsWarning
from diffim.fwhm import measure_fwhm, measure_fwhm_forced
from diffim.image import MaskedImage
from diffim.sources import REJECT_REASONS, detect_sources, select_kernel_sources

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
SKY = 100.0
READ_NOISE = 5.0
SATURATION = 20000.0


def gaussian_pixels(dx, dy, fwhm):
    """Fraction of a unit-flux Gaussian falling in pixels at offsets (dx, dy) (exact)."""
    sigma = fwhm / FWHM_PER_SIGMA
    scale = sigma * math.sqrt(2.0)

    def cdf(edges):
        return 0.5 * erf(edges / scale)

    return (cdf(dx + 0.5) - cdf(dx - 0.5)) * (cdf(dy + 0.5) - cdf(dy - 0.5))


def moffat_pixels(dx, dy, fwhm, beta, oversample=11):
    """Fraction of a unit-flux Moffat in pixels at offsets (dx, dy), by sub-pixel sampling."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    sx = dx[..., None, None] + sub[None, :]
    sy = dy[..., None, None] + sub[:, None]
    surface = (beta - 1.0) / (math.pi * alpha**2) * (1.0 + (sx**2 + sy**2) / alpha**2) ** -beta
    return surface.mean(axis=(-2, -1))


def add_star(model, x, y, flux, profile, half=25):
    """Add a star centred at array position (x, y) to ``model`` in place."""
    ny, nx = model.shape
    ix, iy = round(x), round(y)
    rows = slice(max(iy - half, 0), min(iy + half + 1, ny))
    cols = slice(max(ix - half, 0), min(ix + half + 1, nx))
    yy, xx = np.mgrid[rows, cols]
    model[rows, cols] += flux * profile(xx - x, yy - y)


def make_image(stars, *, shape=(320, 320), profile, seed, xy0=(0, 0)):
    """Render ``stars`` (rows of x, y, flux in array coordinates) on a sky with noise."""
    rng = np.random.default_rng(seed)
    model = np.full(shape, SKY)
    for x, y, flux in stars:
        add_star(model, x, y, flux, profile)
    variance = READ_NOISE**2 + model
    image = model + rng.normal(size=shape) * np.sqrt(variance)
    return MaskedImage(image, variance=variance, xy0=xy0)


def star_grid(seed, *, shape=(320, 320), spacing=40, flux_range=(5e3, 1e5)):
    """Stars on a jittered grid ``spacing`` apart with log-uniform fluxes."""
    rng = np.random.default_rng(seed)
    centres = np.arange(spacing / 2, shape[0] - spacing / 4, spacing)
    xs, ys = np.meshgrid(centres, centres)
    n = xs.size
    jitter = rng.uniform(-3.0, 3.0, size=(2, n))
    flux = np.exp(rng.uniform(*np.log(flux_range), size=n))
    return np.column_stack([xs.ravel() + jitter[0], ys.ravel() + jitter[1], flux])


def gaussian(fwhm):
    return lambda dx, dy: gaussian_pixels(dx, dy, fwhm)


def moffat(fwhm, beta):
    return lambda dx, dy: moffat_pixels(dx, dy, fwhm, beta)


def nearest(table, x, y):
    """Index of the row of ``table`` nearest to (x, y) and its distance."""
    distance = np.hypot(table["x"] - x, table["y"] - y)
    return int(np.argmin(distance)), float(distance.min())


@pytest.fixture(scope="module")
def gaussian_field():
    stars = star_grid(seed=1)
    return stars, make_image(stars, profile=gaussian(3.0), seed=2, xy0=(1000, 2000))


# -- detection -----------------------------------------------------------------------------
@pytest.mark.parametrize("fwhm_pix", [None, 3.0])
def test_detections_at_true_positions_and_fluxes(gaussian_field, fwhm_pix):
    """Bright (flux >= 2e4, S/N > 100) Gaussian stars: centroids within 0.1 px in parent
    coordinates; the 2-FWHM aperture holds 99.999% of the flux, so flux within 3% (>3 sigma)."""
    stars, image = gaussian_field
    table = detect_sources(image, fwhm_pix=fwhm_pix)
    assert len(table) == len(stars)  # no spurious detections at 5 sigma on 1e5 pixels
    for x, y, flux in stars:
        row, distance = nearest(table, x + 1000, y + 2000)
        assert distance < (0.1 if flux >= 2e4 else 0.3)
        assert table["flux"][row] == pytest.approx(flux, rel=0.03 if flux >= 2e4 else 0.1)
        assert table["snr"][row] == pytest.approx(table["flux"][row] / table["flux_err"][row])
        assert table["peak"][row] > SKY + 0.05 * flux  # peak includes the background
    assert np.median(table["fwhm"]) == pytest.approx(3.0, rel=0.05)
    assert np.median(table["background"]) == pytest.approx(SKY, abs=1.0)


def test_detection_leaves_input_unchanged_and_accepts_float32_big_endian(gaussian_field):
    stars, image = gaussian_field
    before = image.copy()
    big_endian = MaskedImage(
        image.image.astype(">f4"), image.mask, image.variance.astype(">f4"), xy0=image.xy0
    )
    table = detect_sources(big_endian)
    assert len(table) == len(stars)
    np.testing.assert_array_equal(image.image, before.image)
    np.testing.assert_array_equal(image.variance, before.variance)
    np.testing.assert_array_equal(image.mask, before.mask)


def test_float32_and_float64_images_give_identical_detections(gaussian_field):
    """sep computes in single precision: a float32 image (kept float32, no float64 copy)
    and the same values in float64 give the same table, bit for bit."""
    image = gaussian_field[1]
    single = MaskedImage(
        image.image.astype(np.float32),
        image.mask,
        image.variance.astype(np.float32),
        xy0=image.xy0,
    )
    double = single.astype(np.float64)
    tables = [detect_sources(single), detect_sources(double)]
    assert len(tables[0]) == len(tables[1]) > 0
    for name in tables[0].colnames:
        np.testing.assert_array_equal(tables[0][name], tables[1][name], err_msg=name)
    assert tables[0].meta == tables[1].meta


def test_nan_pixels_are_ignored_with_a_warning(gaussian_field):
    stars, image = gaussian_field
    image = image.copy()
    image.image[150:160, 0:30] = np.nan
    with pytest.warns(MaskedPixelsWarning, match="300 unmasked pixels"):
        table = detect_sources(image)
    assert len(table) == len(stars)
    image.set_mask_plane("NO_DATA", ~np.isfinite(image.image))
    assert len(detect_sources(image)) == len(stars)  # masked NaNs: no warning


def test_all_masked_is_an_error(gaussian_field):
    image = gaussian_field[1].copy()
    image.set_mask_plane("BAD", np.ones(image.shape, dtype=bool))
    with pytest.raises(DiffimValueError, match="all 102400 pixels are masked"):
        detect_sources(image)


def test_blank_image_gives_empty_tables_and_fwhm_error():
    image = make_image(np.zeros((0, 3)), shape=(100, 100), profile=gaussian(3.0), seed=9)
    assert len(detect_sources(image)) == 0
    selected = select_kernel_sources(image, stamp_half_width=10, return_all=True)
    assert len(selected) == 0
    assert "reject_reason" in selected.colnames
    with pytest.raises(InsufficientKernelSourcesError, match="0 usable kernel stars"):
        measure_fwhm(image)


def test_non_masked_image_is_an_error(gaussian_field):
    with pytest.raises(DiffimValueError, match="expected a MaskedImage, got ndarray"):
        detect_sources(gaussian_field[1].image)


def test_zero_variance_falls_back_to_background_rms(gaussian_field):
    stars, image = gaussian_field
    image = MaskedImage(image.image, image.mask, xy0=image.xy0)
    table = detect_sources(image)
    assert len(table) == len(stars)
    assert np.all(table["snr"] > 10)


# -- selection -----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["gauss3", "moffat4"])
def contaminated_field(request):
    """A grid of good stars plus, in some grid cells, the objects selection must refuse.

    With the FWHM-4 Moffat PSF sep cannot deblend the unequal 6 px pair: its rejection
    rests on the shape tests."""
    profile, fwhm = {"gauss3": (gaussian(3.0), 3.0), "moffat4": (moffat(4.0, 3.0), 4.0)}[
        request.param
    ]
    stars = star_grid(seed=3, flux_range=(1e4, 8e4))
    keep = np.ones(len(stars), dtype=bool)
    keep[[9, 12, 20, 23, 30, 33]] = False  # cells reused for the planted objects
    cells = stars[~keep, :2]
    planted = {
        "saturated": [(*cells[0], 1e6)],
        "masked": [(*cells[1], 3e4)],
        "pair_equal": [(*cells[2], 3e4), (cells[2][0] + 6.0, cells[2][1], 3e4)],
        "pair_half": [(*cells[3], 3e4), (cells[3][0], cells[3][1] + 6.0, 1.5e4)],
    }
    good = stars[keep]
    image = make_image(
        np.concatenate([good, *(np.array(v) for v in planted.values())]),
        profile=profile,
        seed=4,
    )
    galaxy = np.zeros(image.shape)
    add_star(galaxy, *cells[4], 1e5, gaussian(3.0 * fwhm), half=40)  # sigma 3x the PSF's
    image.image += galaxy
    image.variance += galaxy
    planted["galaxy"] = [(*cells[4], 1e5)]
    bad_pixel = (round(cells[1][1]) - 3, round(cells[1][0]) + 5)  # inside a +-12 px stamp
    image.set_mask_plane("BAD", np.isin(np.arange(image.image.size), [np.ravel_multi_index(
        bad_pixel, image.shape)]).reshape(image.shape))  # fmt: skip
    clipped = image.image >= SATURATION
    image.image[clipped] = SATURATION
    image.set_mask_plane("SAT", clipped)
    return good, planted, image


def reasons_at(table, objects):
    """The reject_reason of the detection nearest each planted object (within 4 px)."""
    reasons = []
    for x, y, _ in objects:
        row, distance = nearest(table, x, y)
        reasons.append(table["reject_reason"][row] if distance < 4 else "undetected")
    return reasons


@pytest.mark.parametrize(
    ("saturation", "bad_mask_bits", "saturated_reason"),
    [(SATURATION, None, "saturated"), (None, None, "masked"), (SATURATION, 0, "saturated")],
)
def test_selection_rejects_bad_objects(
    contaminated_field, saturation, bad_mask_bits, saturated_reason
):
    """Saturated, masked, blended/paired and extended objects are never kept; at least 90%
    of the good isolated stars are."""
    good, planted, image = contaminated_field
    if bad_mask_bits == 0:
        bad_mask_bits = image.bitmask("BAD")  # SAT not a bad bit: only the peak test
    table = select_kernel_sources(
        image,
        stamp_half_width=12,
        saturation=saturation,
        bad_mask_bits=bad_mask_bits,
        return_all=True,
    )
    assert reasons_at(table, planted["saturated"]) == [saturated_reason]
    assert reasons_at(table, planted["masked"]) == ["masked"]
    assert reasons_at(table, planted["galaxy"]) == ["extended"]
    for name in ("pair_equal", "pair_half"):
        for reason in reasons_at(table, planted[name]):
            assert reason in {"blended", "not isolated", "elongated", "extended", "undetected"}
    kept = table[table["selected"]]
    for objects in planted.values():
        for x, y, _ in objects:
            assert np.hypot(kept["x"] - x, kept["y"] - y).min() > 4
    assert sum(nearest(kept, x, y)[1] < 0.5 for x, y, _ in good) >= 0.9 * len(good)
    assert np.all(kept["reject_reason"] == "")
    failed = np.any([table[name] for name in REJECT_REASONS], axis=0)
    np.testing.assert_array_equal(table["selected"], ~failed)


def test_selection_default_is_sorted_and_capped(contaminated_field):
    image = contaminated_field[2]
    everything = select_kernel_sources(image, stamp_half_width=10, saturation=SATURATION)
    assert len(everything) > 5
    assert np.all(np.diff(everything["snr"]) <= 0)
    capped = select_kernel_sources(
        image, stamp_half_width=10, saturation=SATURATION, max_sources=5
    )
    np.testing.assert_array_equal(capped["id"], everything["id"][:5])


def test_selection_from_a_table_or_a_catalog_is_the_same_and_changes_neither(
    contaminated_field,
):
    """The public functions return astropy Tables of the internal `SourceCatalog`'s
    columns; selecting from either gives the same rows, bit for bit, and adds no column
    or meta key to the detections given."""
    image = contaminated_field[2]
    catalog = sources._detect_sources(image)
    table = detect_sources(image)
    assert isinstance(table, Table)
    assert table.colnames == catalog.colnames
    assert dict(table.meta) == catalog.meta
    for name in catalog.colnames:
        np.testing.assert_array_equal(table[name], catalog[name], err_msg=name)
    columns = catalog.colnames
    selected = [
        select_kernel_sources(image, stamp_half_width=10, return_all=True, detections=given)
        for given in (table, catalog)
    ]
    assert all(isinstance(kept, Table) for kept in selected)
    assert len(selected[0]) == len(table) > 5
    for name in selected[0].colnames:
        np.testing.assert_array_equal(selected[0][name], selected[1][name], err_msg=name)
    assert table.colnames == catalog.colnames == columns
    assert "stellar_fwhm" not in table.meta
    assert "stellar_fwhm" not in catalog.meta


def test_selection_snr_limits(contaminated_field):
    image = contaminated_field[2]
    kept = select_kernel_sources(image, stamp_half_width=10, min_snr=50.0, max_snr=150.0)
    assert len(kept) > 0
    assert np.all((kept["snr"] >= 50.0) & (kept["snr"] <= 150.0))


def test_stamp_leaving_the_image_is_flagged_not_rejected():
    """A star 7 px from the edge: its +-10 px stamp leaves the image, which only sets edge."""
    stars = np.array([[7.0, 60.0, 3e4], [60.0, 60.0, 3e4], [60.0, 7.5, 3e4]])
    image = make_image(stars, shape=(120, 120), profile=gaussian(3.0), seed=5)
    table = select_kernel_sources(image, stamp_half_width=10, return_all=True)
    edge = [table["edge"][nearest(table, x, y)[0]] for x, y, _ in stars]
    assert edge == [True, False, True]
    assert np.all(table["selected"])


def test_masked_stamp_test_is_the_same_for_sparse_and_dense_masks(monkeypatch):
    """The neighbour grid used for a few bad pixels and the summed-area table used for many
    flag exactly the same stamps."""
    stars = star_grid(seed=11)
    image = make_image(stars, profile=gaussian(3.0), seed=12)
    rng = np.random.default_rng(13)
    bad = rng.random(image.shape) < 0.002
    bad[:, 77] = True  # a bad column
    image.set_mask_plane("BAD", bad)
    sparse = select_kernel_sources(image, stamp_half_width=10, return_all=True)
    assert 0 < sparse["masked"].sum() < len(sparse)
    monkeypatch.setattr(sources, "SPARSE_BAD_PIXELS", 0)
    dense = select_kernel_sources(image, stamp_half_width=10, return_all=True)
    np.testing.assert_array_equal(sparse["masked"], dense["masked"])
    np.testing.assert_array_equal(sparse["edge"], dense["edge"])


def test_box_tests_sparse_and_dense_agree_with_brute_force(monkeypatch):
    """Boxes centred on and off the image, with bad pixels exactly on their edges."""
    rng = np.random.default_rng(21)
    shape, xy0, half_width = (60, 80), (100, 200), 3
    bad = rng.random(shape) < 0.01
    bad[25:42, 28:45] = False
    bad[30, 40] = True  # on the edge of the first box, just outside the second
    image = MaskedImage(np.zeros(shape), xy0=xy0)
    image.set_mask_plane("BAD", bad)
    x = np.r_[xy0[0] + 37.4, xy0[0] + 36.4, rng.uniform(90, 190, 300)]
    y = np.r_[xy0[1] + 33.0, xy0[1] + 33.0, rng.uniform(190, 270, 300)]
    ix, iy = np.rint(x - xy0[0]).astype(int), np.rint(y - xy0[1]).astype(int)
    rows, cols = np.nonzero(bad)
    expected = (np.maximum(abs(ix[:, None] - cols), abs(iy[:, None] - rows)) <= half_width).any(
        axis=1
    )
    sparse = sources._box_tests(image, image.bitmask("BAD"), x, y, half_width)
    monkeypatch.setattr(sources, "SPARSE_BAD_PIXELS", 0)
    dense = sources._box_tests(image, image.bitmask("BAD"), x, y, half_width)
    assert expected[0]
    assert not expected[1]
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(sparse[0], expected)
    np.testing.assert_array_equal(dense[0], expected)
    np.testing.assert_array_equal(sparse[1], dense[1])


def brute_force_pairs(query_x, query_y, point_x, point_y, radius):
    """Every (query, point) pair with max(|dx|, |dy|) <= radius, sorted, by an n x m table."""
    separation = np.maximum(
        abs(np.asarray(query_x, dtype=float)[:, None] - point_x),
        abs(np.asarray(query_y, dtype=float)[:, None] - point_y),
    )
    return np.nonzero(separation <= radius)


def sorted_pairs(query_index, point_index):
    order = np.lexsort((point_index, query_index))
    return query_index[order], point_index[order]


@pytest.mark.parametrize(
    ("n_query", "n_point", "radius", "kind"),
    [
        (300, 400, 10.0, "uniform"),
        (200, 200, 2.5, "uniform"),
        (250, 300, 2.0, "integer"),  # many separations exactly equal to the radius
        (250, 300, 0.0, "integer"),  # only coincident positions pair
        (100, 150, 1.5, "duplicated"),
        (50, 60, 3.0, "half-integer"),
        (40, 1, 40.0, "uniform"),
        (1, 40, 40.0, "uniform"),
        (0, 50, 5.0, "uniform"),
        (50, 0, 5.0, "uniform"),
        (0, 0, 5.0, "uniform"),
    ],
)
def test_chebyshev_pairs_match_brute_force(n_query, n_point, radius, kind):
    rng = np.random.default_rng([n_query, n_point, int(10 * radius)])
    if kind == "uniform":
        qx, qy, px, py = (rng.uniform(-50, 150, n) for n in (n_query, n_query, n_point, n_point))
    elif kind == "integer":
        qx, qy, px, py = (rng.integers(0, 20, n) for n in (n_query, n_query, n_point, n_point))
    elif kind == "half-integer":
        qx, qy, px, py = (rng.integers(0, 40, n) / 2 for n in (n_query, n_query, n_point, n_point))
    else:  # every point three times; half the queries on points
        px, py = np.repeat(rng.uniform(0, 10, (2, n_point // 3)), 3, axis=1)
        qx, qy = np.c_[[px[:50], py[:50]], rng.uniform(0, 10, (2, n_query - 50))]
    query_index, point_index = sources._chebyshev_pairs(qx, qy, px, py, radius)
    expected = brute_force_pairs(qx, qy, px, py, radius)
    assert query_index.dtype == point_index.dtype == np.int64
    assert np.all(np.diff(query_index) >= 0)  # ordered by query
    if n_query * n_point > 0:
        assert 0 < len(expected[0]) < n_query * n_point
    for got, want in zip(sorted_pairs(query_index, point_index), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_chebyshev_pairs_of_single_points():
    """A point pairs with itself at radius 0, and at a separation of exactly the radius."""
    for radius, separation, paired in [(0.0, 0.0, True), (2.5, 2.5, True), (2.5, 2.5001, False)]:
        query_index, point_index = sources._chebyshev_pairs(
            [3.0], [4.0], [3.0 - separation], [4.0 + separation], radius
        )
        assert query_index.tolist() == point_index.tolist() == ([0] if paired else [])


def test_chebyshev_pairs_in_chunks_match_brute_force(monkeypatch):
    """Small chunks, a crowded clump and one query with more candidates than a chunk."""
    rng = np.random.default_rng(7)
    x, y = (
        np.r_[rng.uniform(0, 50, 300), np.full(40, 20.0)],
        np.r_[rng.uniform(0, 50, 300), np.full(40, 20.0)],
    )
    monkeypatch.setattr(sources, "PAIR_CHUNK", 25)
    pairs = sorted_pairs(*sources._chebyshev_pairs(x, y, x, y, 4.0))
    for got, want in zip(pairs, brute_force_pairs(x, y, x, y, 4.0), strict=True):
        np.testing.assert_array_equal(got, want)


def test_chebyshev_pairs_refuse_non_finite_positions():
    with pytest.raises(DiffimValueError, match="finite"):
        sources._chebyshev_pairs([0.0, np.nan], [0.0, 1.0], [0.0], [0.0], 1.0)


def test_crowded_matches_brute_force():
    """Crowded: another source within the box (edges included) is > 0.1x as bright."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 60, (2, 200)).astype(float)
    x[:2], y[:2] = (70.0, 73.0), (10.0, 10.0)  # a pair exactly half_width apart
    flux = rng.lognormal(8.0, 2.0, 200)
    flux[:2] = (1000.0, 50.0)  # only the fainter is spoilt
    flux[2] = np.nan  # counts as 0
    separation = np.maximum(abs(x[:, None] - x), abs(y[:, None] - y))
    neighbour = (separation <= 3) & ~np.eye(200, dtype=bool)
    known = np.nan_to_num(flux)
    expected = (neighbour & (known > 0.1 * known[:, None])).any(axis=1)
    crowded = sources._crowded(x, y, flux, 3)
    np.testing.assert_array_equal(crowded, expected)
    assert not crowded[0]
    assert crowded[1]
    assert 0 < crowded.sum() < 200
    assert not sources._crowded(x[:1], y[:1], flux[:1], 3).any()
    assert sources._crowded(x[:0], y[:0], flux[:0], 3).size == 0


# -- FWHM ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "fwhm"),
    [
        (gaussian(3.0), 3.0),
        (gaussian(5.0), 5.0),
        (moffat(4.0, 3.0), 4.0),
        (moffat(4.0, 2.5), 4.0),
        (moffat(3.5, 4.0), 3.5),
    ],
    ids=["gauss3", "gauss5", "moffat3-beta3", "moffat4-beta2.5", "moffat3.5-beta4"],
)
def test_measure_fwhm_recovers_the_true_fwhm(profile, fwhm):
    """The fitted profile reaches the Gaussian limit, so both families give their FWHM."""
    stars = star_grid(seed=6, flux_range=(1e4, 1e5))
    image = make_image(stars, profile=profile, seed=7)
    assert measure_fwhm(image) == pytest.approx(fwhm, rel=0.03)


def test_measure_fwhm_from_given_sources(gaussian_field):
    image = gaussian_field[1]
    sources = select_kernel_sources(image, stamp_half_width=8)
    assert measure_fwhm(image, sources) == pytest.approx(3.0, rel=0.03)
    assert measure_fwhm(image, sources["x", "y"], fwhm_pix=3.5) == pytest.approx(3.0, rel=0.03)


def test_measure_fwhm_needs_three_stars():
    stars = np.array([[40.0, 40.0, 3e4], [90.0, 80.0, 3e4]])
    image = make_image(stars, shape=(128, 128), profile=gaussian(3.0), seed=8)
    with pytest.raises(InsufficientKernelSourcesError, match="2 usable kernel stars, 3") as info:
        measure_fwhm(image)
    assert (info.value.n_usable, info.value.n_required) == (2, 3)


@pytest.mark.parametrize("inverse_beta", [1e-6, 0.25, 0.6])
def test_profile_derivatives_match_finite_differences(inverse_beta):
    """The fit's analytic Jacobian (x0, y0, FWHM, 1/beta) equals central differences of
    the pixel-integrated profile, from the Gaussian limit to beta = 1.7."""
    offsets = np.arange(-6.0, 7.0)
    py, px = (grid.ravel()[None, :] for grid in np.meshgrid(offsets, offsets, indexing="ij"))
    params = np.array([[0.3, -0.2, 3.5, inverse_beta]])
    _, jacobian = profile_fits._profile_terms(params, px, py, jacobian=True)
    for k, step in enumerate([1e-5, 1e-5, 1e-5, 1e-7]):
        shifted = [params.copy(), params.copy()]
        shifted[0][0, k] += step
        shifted[1][0, k] -= step
        models = [profile_fits._profile_terms(p, px, py, jacobian=False)[0] for p in shifted]
        numerical = (models[0] - models[1]) / (2 * step)
        np.testing.assert_allclose(jacobian[..., k], numerical, rtol=1e-4, atol=1e-7)


def test_measure_fwhm_reuses_given_detections(gaussian_field, monkeypatch):
    """With a detection table the image is not detected again, and the FWHM is the one
    measured from a fresh detection."""
    image = gaussian_field[1]
    detections = detect_sources(image)
    expected = measure_fwhm(image)

    def no_detection(*args, **kwargs):
        raise AssertionError("detected again")

    monkeypatch.setattr(profile_fits, "_detect_sources", no_detection)
    assert measure_fwhm(image, detections=detections) == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def reference_stars():
    """Stars selected on a FWHM-4 Gaussian image, to be measured on other images."""
    stars = star_grid(seed=14, flux_range=(1e4, 1e5))
    reference = make_image(stars, profile=gaussian(4.0), seed=15)
    selected = select_kernel_sources(reference, stamp_half_width=10)
    return stars, selected


@pytest.mark.parametrize(
    ("profile", "fwhm"),
    [(gaussian(3.0), 3.0), (moffat(5.5, 3.0), 5.5), (moffat(2.5, 2.5), 2.5)],
    ids=["sharper-gauss", "broader-moffat", "much-sharper-moffat"],
)
def test_forced_fwhm_at_another_images_stars(reference_stars, profile, fwhm):
    """Measured at the positions of stars selected on a FWHM-4 image, another PSF's FWHM
    comes back within 3 %: Gaussian or Moffat, sharper or broader than the guess."""
    stars, selected = reference_stars
    image = make_image(stars, profile=profile, seed=16)
    assert measure_fwhm_forced(image, selected, fwhm_pix=4.0) == pytest.approx(fwhm, rel=0.03)


def test_forced_fwhm_skips_saturated_masked_and_missing_stars(reference_stars):
    """The brightest reference stars are saturated, masked or absent on this image: they
    are skipped (peak test, mask test, amplitude S/N) and the FWHM stays within 3 %."""
    stars, selected = reference_stars
    order = np.argsort(-stars[:, 2])
    assert all(nearest(selected, *stars[k, :2])[1] < 1 for k in order[:7])
    scaled = stars.copy()
    scaled[order[:3], 2] *= 20.0  # saturated here
    scaled[order[3:6], 2] = 0.0  # missing here (transients of the reference image)
    image = make_image(scaled, profile=gaussian(3.0), seed=17)
    clipped = image.image >= SATURATION
    image.image[clipped] = SATURATION
    x, y = stars[order[6], :2]
    wing = np.zeros(image.shape, dtype=bool)
    wing[round(y) + 4, round(x) - 4] = True  # a bad pixel in the stamp of the next one
    image.set_mask_plane("BAD", wing)
    fitted = []

    def recording_fit(masked_image, bad, x, y, guess):
        result = fit(masked_image, bad, x, y, guess)
        fitted.extend(zip(x, y, result[1], strict=True))
        return result

    fit = profile_fits._fit_fwhm
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profile_fits, "_fit_fwhm", recording_fit)
        fwhm = measure_fwhm_forced(image, selected, fwhm_pix=4.0, saturation=SATURATION)
    assert fwhm == pytest.approx(3.0, rel=0.03)

    def fits_at(k):
        return [snr for x, y, snr in fitted if np.hypot(x - stars[k, 0], y - stars[k, 1]) < 1]

    for k in (*order[:3], order[6]):  # saturated, masked: never fitted
        assert fits_at(k) == []
    for k in order[3:6]:  # missing: fitted on noise, dropped by the S/N test
        assert all(not snr >= profile_fits.MIN_FORCED_SNR for snr in fits_at(k))
    assert sum(len(fits_at(k)) for k in order[3:6]) > 0
    flat = make_image(np.zeros((0, 3)), profile=gaussian(3.0), seed=18)
    with pytest.raises(InsufficientKernelSourcesError, match="0 usable kernel stars"):
        measure_fwhm_forced(flat, selected, fwhm_pix=4.0)
