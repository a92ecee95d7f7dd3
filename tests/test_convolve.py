"""Tests of diffim.convolve against scipy.ndimage and brute-force per-pixel kernels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffim.convolve import (
    convolve_image,
    convolve_masked_image,
    correlate_fft,
    correlate_valid_stack,
    spread_mask,
    tiles,
)
from diffim.errors import DiffimValueError, MaskedPixelsWarning
from diffim.image import BBox, MaskedImage, MaskPlanes
from diffim.spatial import SpatialFunction, SpatialKernel

BAD, SAT, EDGE, DETECTED, NO_DATA = 1, 2, 16, 32, 256


def gaussian_basis(size, sigmas=(1.0, 2.0, 3.5)):
    c = size // 2
    v, u = np.mgrid[-c : c + 1, -c : c + 1].astype(float)
    kernels = [np.exp(-0.5 * (u**2 + v**2) / s**2) for s in sigmas]
    kernels += [kernels[0] * u / c, kernels[1] * v / c]  # odd terms: negative kernel values
    return np.array([k / np.abs(k).sum() for k in kernels])


def spatial_kernel(size, order, bbox, kind="chebyshev1", seed=0, variation=0.3):
    rng = np.random.default_rng(seed)
    basis = gaussian_basis(size)
    function = SpatialFunction(kind, order, bbox)
    coefficients = rng.normal(0.0, variation, (len(basis), function.n_terms))
    coefficients[:, 0] = rng.normal(0.0, 1.0, len(basis))
    if kind == "polynomial":  # keep P_p = x^a y^b of order one over the box
        scale = float(max(bbox.x_max, bbox.y_max))
        degrees = [d for d in range(order + 1) for _ in range(d + 1)]
        coefficients /= scale ** np.array(degrees, dtype=float)
    return SpatialKernel(basis, coefficients, function)


def constant_kernel(kernel_image):
    function = SpatialFunction("chebyshev1", 0, BBox(0, 0, 1, 1))
    return SpatialKernel(kernel_image[None], np.ones((1, 1)), function)


def masked_image(shape, dtype=np.float64, xy0=(0, 0), seed=1):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, shape).astype(dtype)
    variance = rng.uniform(50.0, 150.0, shape).astype(dtype)
    return MaskedImage(image, np.zeros(shape, dtype=np.int32), variance, xy0=xy0)


def brute_force(mi, kernel, points):
    """Return image and variance at ``points`` [(row, col)] from ``kernel.image_at``."""
    c = kernel.half_width
    values, variances = [], []
    for row, col in points:
        k = kernel.image_at(mi.xy0[0] + col, mi.xy0[1] + row)
        window = (slice(row - c, row + c + 1), slice(col - c, col + c + 1))
        values.append(np.sum(mi.image[window].astype(float) * k))
        variances.append(np.sum(mi.variance[window].astype(float) * k**2))
    return np.array(values), np.array(variances)


def interior_points(shape, c, step=7):
    return [(r, q) for r in range(c, shape[0] - c, step) for q in range(c, shape[1] - c, step)]


@pytest.fixture
def small_tiles(monkeypatch):
    """Force many overlap-save tiles (including partial ones) on small test images."""
    monkeypatch.setattr(tiles, "TILE_STEP", 37)  # read there, not in diffim.convolve


# -- (a) spatially constant kernel ---------------------------------------------------------
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.usefixtures("small_tiles")
def test_constant_kernel_matches_ndimage(dtype, rtol):
    """A constant kernel is one correlation: scipy.ndimage.correlate on the interior."""
    kernel_image = gaussian_basis(15)[[0, 3]].sum(axis=0)
    mi = masked_image((96, 130), dtype)
    result = convolve_masked_image(mi, constant_kernel(kernel_image))
    c = 7
    inner = (slice(c, -c), slice(c, -c))
    image = mi.image.astype(float)
    expected = ndimage.correlate(image, kernel_image, mode="constant")[inner]
    expected_var = ndimage.correlate(mi.variance.astype(float), kernel_image**2)[inner]
    np.testing.assert_allclose(result.image[inner], expected, atol=rtol * np.abs(expected).max())
    np.testing.assert_allclose(result.variance[inner], expected_var, rtol=rtol * 10)


# -- (b) spatially varying kernel ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["chebyshev1", "polynomial"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.usefixtures("small_tiles")
def test_spatial_kernel_matches_brute_force(kind, order):
    """Image and variance equal sum K(x, y) T and sum K(x, y)² var pixel by pixel, with the
    polynomial evaluated at the output pixel's parent coordinates (xy0 != 0)."""
    xy0 = (37, -12)
    mi = masked_image((90, 110), xy0=xy0)
    kernel = spatial_kernel(13, order, BBox(0, -20, 200, 150), kind=kind)
    result = convolve_masked_image(mi, kernel)
    points = interior_points(mi.shape, kernel.half_width)
    expected, expected_var = brute_force(mi, kernel, points)
    rows, cols = np.array(points).T
    scale = np.abs(expected).max()
    np.testing.assert_allclose(result.image[rows, cols], expected, atol=1e-6 * scale)
    np.testing.assert_allclose(result.variance[rows, cols], expected_var, rtol=1e-6)
    assert result.xy0 == xy0


def test_spatial_kernel_float32_variance_accuracy():
    """float32 transforms keep the variance within 1e-4 relative and non-negative."""
    mi = masked_image((128, 128), np.float32)
    kernel = spatial_kernel(21, 2, mi.bbox, variation=0.5)
    result = convolve_masked_image(mi, kernel)
    points = interior_points(mi.shape, kernel.half_width, step=5)
    _, expected_var = brute_force(mi, kernel, points)
    rows, cols = np.array(points).T
    np.testing.assert_allclose(result.variance[rows, cols], expected_var, rtol=1e-4)
    assert np.all(result.variance[10:-10, 10:-10] >= 0)


def test_convolve_image_equals_masked_image_plane():
    mi = masked_image((80, 70), xy0=(5, 9))
    kernel = spatial_kernel(11, 2, BBox(0, 0, 100, 100))
    np.testing.assert_array_equal(
        convolve_image(mi.image, kernel, xy0=mi.xy0), convolve_masked_image(mi, kernel).image
    )


@pytest.mark.usefixtures("small_tiles")
def test_threads_equal_serial():
    mi = masked_image((100, 90))
    kernel = spatial_kernel(9, 2, mi.bbox)
    serial = convolve_masked_image(mi, kernel, workers=1)
    threaded = convolve_masked_image(mi, kernel, workers=3)
    np.testing.assert_array_equal(serial.image, threaded.image)
    np.testing.assert_array_equal(serial.variance, threaded.variance)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize(
    ("dtype", "science_dtype"),
    [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)],
)
def test_subtract_from_equals_the_difference_with_the_convolved_image(dtype, science_dtype):
    """``subtract_from`` takes ``science - T ⋆ K`` in its own planes, bit for bit the
    difference with the returned convolved image: image, variance, mask and planes, with a
    NaN template pixel (NO_DATA footprint) and a negative-variance round-off clip, also for a
    float64 science image and a float32 template (the difference keeps the science dtype)."""
    template = masked_image((70, 64), dtype=dtype, xy0=(5, 9), seed=2)
    template.image[30, 20] = np.nan
    template.mask[10, 40] = BAD
    science = masked_image((70, 64), dtype=science_dtype, xy0=(5, 9), seed=3)
    science.mask[50, 3] = SAT
    kernel = spatial_kernel(9, 2, template.bbox)
    with pytest.warns(MaskedPixelsWarning):
        expected = science - convolve_masked_image(template, kernel)
    target = science.copy()
    with pytest.warns(MaskedPixelsWarning):
        result = convolve_masked_image(template, kernel, subtract_from=target)
    assert result is target
    assert result.image.dtype == science_dtype
    np.testing.assert_array_equal(result.image, expected.image)
    np.testing.assert_array_equal(result.variance, expected.variance)
    np.testing.assert_array_equal(result.mask, expected.mask)
    assert result.planes == expected.planes


def test_subtract_from_must_match_the_convolved_image():
    template = masked_image((30, 30))
    kernel = constant_kernel(gaussian_basis(7)[0])
    with pytest.raises(DiffimValueError, match="shape"):
        convolve_masked_image(template, kernel, subtract_from=masked_image((30, 31)))
    with pytest.raises(DiffimValueError, match="copy_edge"):
        convolve_masked_image(template, kernel, copy_edge=True, subtract_from=template.copy())
    with pytest.raises(DiffimValueError, match="shares pixels"):
        convolve_masked_image(template, kernel, subtract_from=template)


# -- (c) orientation -----------------------------------------------------------------------
def test_delta_kernel_shift_follows_afw():
    """A delta at (c + dx, c + dy) gives out[y, x] = in[y + dy, x + dx]."""
    size, dx, dy = 9, 3, -2
    c = size // 2
    kernel_image = np.zeros((size, size))
    kernel_image[c + dy, c + dx] = 1.0
    mi = masked_image((40, 50))
    result = convolve_masked_image(mi, constant_kernel(kernel_image))
    rows, cols = slice(c, 40 - c), slice(c, 50 - c)
    shifted = mi.image[c + dy : 40 - c + dy, c + dx : 50 - c + dx]
    np.testing.assert_allclose(result.image[rows, cols], shifted, rtol=1e-12)


# -- (d) masks and borders -----------------------------------------------------------------
def test_bad_pixel_spreads_to_kernel_box_only():
    mi = masked_image((40, 40))
    mi.mask[20, 17] = BAD | DETECTED
    kernel = constant_kernel(gaussian_basis(7)[0])
    result = convolve_masked_image(mi, kernel, spread_mask_bits=BAD)
    expected = np.zeros((40, 40), dtype=bool)
    expected[17:24, 14:21] = True
    assert np.array_equal((result.mask & BAD) != 0, expected)
    assert np.flatnonzero(result.mask & DETECTED).tolist() == [20 * 40 + 17]


def test_border_is_nan_inf_no_data():
    mi = masked_image((30, 40))
    mi.mask[0, 0] = SAT
    result = convolve_masked_image(mi, constant_kernel(gaussian_basis(7)[0]))
    border = np.ones((30, 40), dtype=bool)
    border[3:-3, 3:-3] = False
    assert np.all(np.isnan(result.image[border]))
    assert np.all(np.isposinf(result.variance[border]))
    assert np.all(result.mask[border] & NO_DATA)
    assert np.all(np.isfinite(result.image[~border]))
    assert not np.any(result.mask[~border] & NO_DATA)
    assert result.mask[3, 3] == SAT  # spread from the corner, still in the interior


def test_copy_edge_copies_input_with_edge_bit():
    mi = masked_image((30, 40))
    mi.mask[1, 5] = BAD
    planes = MaskPlanes({"BAD": 0, "SAT": 1})  # no EDGE plane yet: it is added
    mi = MaskedImage(mi.image, mi.mask, mi.variance, planes=planes)
    result = convolve_masked_image(mi, constant_kernel(gaussian_basis(7)[0]), copy_edge=True)
    edge = 1 << result.planes.bit("EDGE")
    assert "EDGE" not in mi.planes
    border = np.ones((30, 40), dtype=bool)
    border[3:-3, 3:-3] = False
    np.testing.assert_array_equal(result.image[border], mi.image[border])
    np.testing.assert_array_equal(result.variance[border], mi.variance[border])
    np.testing.assert_array_equal(result.mask[border], mi.mask[border] | edge)
    assert result.mask[4, 5] == BAD


def test_spread_mask_matches_binary_dilation():
    rng = np.random.default_rng(4)
    mask = np.where(rng.random((70, 90)) < 0.01, 1 << rng.integers(0, 9, (70, 90)), 0)
    mask[0, 89] |= 1 << 30
    bits = ~(1 << 5)
    result = spread_mask(mask, 3, bits, workers=2)
    expected = mask & ~bits
    for bit in range(31):
        plane = (mask & bits & (1 << bit)) != 0
        expected[ndimage.binary_dilation(plane, np.ones((7, 7), dtype=bool))] |= 1 << bit
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.int32
    target = np.full(mask.shape, 1 << 12, dtype=np.int32)
    assert spread_mask(mask, 3, bits, workers=2, into=target) is target
    np.testing.assert_array_equal(target, expected | (1 << 12))


# -- (e) dtypes and purity -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_and_inputs_unchanged(dtype):
    mi = masked_image((50, 60), dtype)
    mi.mask[10, 10] = BAD
    before = mi.copy()
    kernel = spatial_kernel(9, 2, mi.bbox)
    basis_before = kernel.basis.copy()
    result = convolve_masked_image(mi, kernel)
    assert result.image.dtype == dtype
    assert result.variance.dtype == dtype
    assert result.mask.dtype == np.int32
    assert result.bbox == mi.bbox
    assert result.planes == mi.planes
    assert result.planes is not mi.planes
    for name in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(mi, name), getattr(before, name))
    np.testing.assert_array_equal(kernel.basis, basis_before)


def test_image_smaller_than_kernel_is_all_border():
    mi = masked_image((6, 30))
    result = convolve_masked_image(mi, constant_kernel(gaussian_basis(7)[0]))
    assert np.all(np.isnan(result.image))
    assert np.all(result.mask & NO_DATA)


# -- (f) building blocks -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "fft", "direct"])
@pytest.mark.parametrize(
    ("stamp_size", "size", "dtype"), [(43, 21, np.float64), (30, 9, np.float32)]
)
def test_correlate_valid_stack_matches_ndimage(method, stamp_size, size, dtype):
    rng = np.random.default_rng(5)
    stamp = rng.normal(size=(stamp_size, stamp_size + 4)).astype(dtype)
    basis = rng.normal(size=(6, size, size)).astype(dtype)
    c = size // 2
    result = correlate_valid_stack(stamp, basis, method=method)
    expected = [ndimage.correlate(stamp.astype(float), k.astype(float))[c:-c, c:-c] for k in basis]
    assert result.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(result, expected, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("value", [1.0, 2.5])
def test_correlate_valid_stack_delta_basis_is_exact(value):
    """Delta-function kernels (auto picks "gather") give exactly shifted, scaled stamps."""
    rng = np.random.default_rng(6)
    stamp = rng.normal(size=(25, 27))
    basis = np.zeros((49, 7, 7))
    basis.reshape(49, 49)[np.arange(49), np.arange(49)[::-1]] = value
    expected = [ndimage.correlate(stamp, k)[3:-3, 3:-3] for k in basis]
    np.testing.assert_array_equal(correlate_valid_stack(stamp, basis), expected)
    np.testing.assert_allclose(correlate_valid_stack(stamp, basis, method="fft"), expected)


@pytest.mark.usefixtures("small_tiles")
def test_correlate_fft_matches_ndimage_with_zero_padding():
    rng = np.random.default_rng(7)
    image = rng.normal(size=(83, 101))
    kernels = rng.normal(size=(3, 11, 11))
    result = correlate_fft(image, kernels, workers=2)
    expected = [ndimage.correlate(image, k, mode="constant") for k in kernels]
    np.testing.assert_allclose(result, expected, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(correlate_fft(image, kernels[1]), expected[1], atol=1e-10)


# -- (g) non-finite input ------------------------------------------------------------------
def test_nan_pixel_becomes_no_data_footprint():
    """A NaN input pixel is a NO_DATA pixel of value 0: its footprint is flagged, every
    output stays finite, and pixels outside the footprint are untouched."""
    mi = masked_image((40, 40))
    clean = convolve_masked_image(mi, constant_kernel(gaussian_basis(5)[0]))
    mi.image[20, 25] = np.nan
    mi.variance[8, 8] = np.inf
    with pytest.warns(MaskedPixelsWarning, match="2 pixels with non-finite"):
        result = convolve_masked_image(mi, constant_kernel(gaussian_basis(5)[0]))
    footprint = np.zeros((40, 40), dtype=bool)
    footprint[18:23, 23:28] = footprint[6:11, 6:11] = True
    interior = np.zeros((40, 40), dtype=bool)
    interior[2:-2, 2:-2] = True
    assert np.array_equal((result.mask & NO_DATA) != 0, footprint | ~interior)
    assert np.all(np.isfinite(result.image[interior]))
    assert np.all(np.isfinite(result.variance[interior]))
    keep = interior & ~footprint
    np.testing.assert_allclose(result.image[keep], clean.image[keep], rtol=1e-12)
    np.testing.assert_allclose(result.variance[keep], clean.variance[keep], rtol=1e-12)


# -- validation ----------------------------------------------------------------------------
def test_validation_messages():
    stamp = np.zeros((20, 20))
    with pytest.raises(DiffimValueError, match="odd size"):
        correlate_valid_stack(stamp, np.zeros((2, 4, 4)))
    with pytest.raises(DiffimValueError, match="method must be"):
        correlate_valid_stack(stamp, np.zeros((2, 5, 5)), method="magic")
    with pytest.raises(DiffimValueError, match="at least 25²"):
        correlate_valid_stack(stamp, np.zeros((2, 25, 25)))
    with pytest.raises(DiffimValueError, match="delta-function"):
        correlate_valid_stack(stamp, np.ones((2, 5, 5)), method="gather")
    with pytest.raises(DiffimValueError, match="workers must be"):
        correlate_fft(stamp, np.zeros((5, 5)), workers=0)
    with pytest.raises(DiffimValueError, match="SpatialKernel"):
        convolve_masked_image(masked_image((20, 20)), np.zeros((5, 5)))


def test_correlate_valid_pairs_matches_the_stack_one_by_one():
    from diffim.convolve import correlate_valid_pairs

    rng = np.random.default_rng(11)
    images = rng.normal(size=(2, 43, 47))
    kernels = rng.normal(size=(2, 21, 21))
    result = correlate_valid_pairs(images, kernels)
    for m in range(2):
        expected = correlate_valid_stack(images[m], kernels[m : m + 1])[0]
        np.testing.assert_allclose(result[m], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["fft", "direct", "gather"])
def test_correlate_valid_stack_batch_matches_single_stamps(method):
    rng = np.random.default_rng(7)
    stamps = rng.normal(size=(2, 3, 17, 19))
    if method == "gather":
        basis = np.zeros((4, 5, 5))
        basis[np.arange(4), [0, 2, 4, 1], [3, 2, 0, 4]] = [1.0, 2.0, -1.0, 0.5]
    else:
        basis = rng.normal(size=(4, 5, 5))
    batch = correlate_valid_stack(stamps, basis, method=method)
    assert batch.shape == (2, 3, 4, 13, 15)
    for i in range(2):
        for j in range(3):
            expected = correlate_valid_stack(stamps[i, j], basis, method=method)
            np.testing.assert_allclose(batch[i, j], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fft_module_follows_numpy_conventions(dtype):
    """`diffim.convolve.fft` (ducc0) gives numpy.fft's transforms, zero padding and
    normalisation, in the input's precision, and its inverses restore the input."""
    from diffim.convolve import fft

    rng = np.random.default_rng(5)
    array = rng.normal(size=(3, 17, 22)).astype(dtype)
    shape = (fft.good_size(20), fft.good_size(25))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    spectrum = fft.rfft2(array, shape)
    assert spectrum.dtype == np.result_type(dtype, np.complex64)
    expected = np.fft.rfft2(array.astype(float), s=shape)
    np.testing.assert_allclose(spectrum, expected, atol=tolerance * np.abs(expected).max())
    padded = np.zeros((3, *shape))
    padded[:, :17, :22] = array
    np.testing.assert_allclose(fft.irfft2(spectrum, shape), padded, atol=tolerance * 10)
    columns = fft.ifft(spectrum.copy(), -2)
    np.testing.assert_allclose(
        columns, np.fft.ifft(expected, axis=-2), atol=tolerance * np.abs(columns).max()
    )
    in_place = spectrum.copy()
    assert fft.ifft(in_place, -2, in_place=True) is in_place
    np.testing.assert_array_equal(in_place, columns)
    np.testing.assert_allclose(fft.irfft(columns, shape[1]), padded, atol=tolerance * 10)
    assert fft.good_size(43) == 45  # 2-3-5 smooth
    assert fft.good_size(64) == 64
