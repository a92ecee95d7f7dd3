"""Tests of diffim.image: mask planes, masked-image arithmetic, sub-images, boxes."""

import numpy as np
import pytest

from diffim.errors import DiffimValueError
from diffim.image import DEFAULT_MASK_PLANES, BBox, Exposure, LazyWcs, MaskedImage, MaskPlanes

SHAPE = (30, 40)  # (ny, nx)


def make_masked_image(seed=0, dtype=np.float64, xy0=(0, 0)):
    rng = np.random.default_rng(seed)
    return MaskedImage(
        rng.normal(10.0, 2.0, SHAPE).astype(dtype),
        rng.integers(0, 1 << 9, SHAPE, dtype=np.int32),
        rng.uniform(1.0, 5.0, SHAPE).astype(dtype),
        xy0=xy0,
    )


# -- MaskPlanes -----------------------------------------------------------------------------
def test_default_planes_are_lsst_bits_0_to_8():
    planes = MaskPlanes()
    expected = ["BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE"]
    assert list(planes) == [*expected, "SUSPECT", "NO_DATA"]
    assert [planes.bit(name) for name in planes] == list(range(9))
    assert planes.as_dict() == DEFAULT_MASK_PLANES
    assert len(planes) == 9


def test_add_plane_by_name_takes_lowest_free_bit():
    planes = MaskPlanes({"BAD": 0, "CR": 2})
    assert planes.add("FAKE") == 1
    assert planes.add("FAKE") == 1  # adding again is a no-op
    assert planes.add("STREAK") == 3
    assert "STREAK" in planes


def test_bitmask_and_names():
    planes = MaskPlanes()
    assert planes.bitmask("SAT") == 2
    assert planes.bitmask(["BAD", "CR", "NO_DATA"]) == 1 | 8 | 256
    assert planes.bitmask_known(["BAD", "NOT_A_PLANE"]) == 1
    assert planes.names(1 | 32) == ["BAD", "DETECTED"]
    with pytest.raises(DiffimValueError, match="unknown mask plane 'NOT_A_PLANE'"):
        planes.bitmask("NOT_A_PLANE")


@pytest.mark.parametrize(
    ("bits", "message"), [({"A": 31}, "bits must be in 0..30"), ({"A": 1, "B": 1}, "share a bit")]
)
def test_invalid_planes(bits, message):
    with pytest.raises(DiffimValueError, match=message):
        MaskPlanes(bits)


def test_merge_planes():
    merged = MaskPlanes({"BAD": 0}).merged(MaskPlanes({"BAD": 0, "CR": 3}))
    assert merged.as_dict() == {"BAD": 0, "CR": 3}
    with pytest.raises(DiffimValueError, match="'CR' has bit 3 in one image and 4"):
        merged.merged(MaskPlanes({"CR": 4}))


def test_copy_is_independent():
    planes = MaskPlanes()
    copy = planes.copy()
    copy.add("NEW")
    assert "NEW" not in planes
    assert planes != copy


# -- MaskedImage ----------------------------------------------------------------------------
def test_subtract_adds_variances_and_ors_masks():
    first, second = make_masked_image(1), make_masked_image(2)
    difference = first - second
    np.testing.assert_array_equal(difference.image, first.image - second.image)
    np.testing.assert_array_equal(difference.variance, first.variance + second.variance)
    np.testing.assert_array_equal(difference.mask, first.mask | second.mask)
    total = first + second
    np.testing.assert_array_equal(total.variance, first.variance + second.variance)


def test_subtract_into_writes_the_difference_into_the_other_image():
    first, second = make_masked_image(1), make_masked_image(2)
    expected = first - second
    before = first.copy()
    result = first.subtract_into(second)
    assert result is second
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(result, plane), getattr(expected, plane))
        np.testing.assert_array_equal(getattr(first, plane), getattr(before, plane))


def test_operators_leave_operands_unchanged():
    first, second = make_masked_image(1), make_masked_image(2)
    before = first.copy()
    _ = first - second
    _ = first * 3.0
    np.testing.assert_array_equal(first.image, before.image)
    np.testing.assert_array_equal(first.variance, before.variance)
    np.testing.assert_array_equal(first.mask, before.mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaling_scales_variance_by_square(dtype):
    masked = make_masked_image(dtype=dtype)
    scaled = 3.0 * masked
    np.testing.assert_allclose(scaled.image, 3.0 * masked.image, rtol=1e-6)
    np.testing.assert_allclose(scaled.variance, 9.0 * masked.variance, rtol=1e-6)
    np.testing.assert_array_equal(scaled.mask, masked.mask)
    assert scaled.dtype == dtype
    halved = masked / 2.0
    np.testing.assert_allclose(halved.variance, masked.variance / 4.0, rtol=1e-6)


def test_scalar_offset_leaves_variance():
    masked = make_masked_image()
    shifted = masked - 5.0
    np.testing.assert_allclose(shifted.image, masked.image - 5.0)
    np.testing.assert_array_equal(shifted.variance, masked.variance)


def test_combining_mismatched_images_is_an_error():
    masked = make_masked_image()
    other = MaskedImage(np.zeros((10, 10)))
    with pytest.raises(DiffimValueError, match=r"shapes \(30, 40\) and \(10, 10\)"):
        _ = masked - other
    shifted = make_masked_image(xy0=(1, 0))
    with pytest.raises(DiffimValueError, match=r"origins \(0, 0\) and \(1, 0\)"):
        _ = masked + shifted


def test_constructor_shape_and_dtype_checks():
    with pytest.raises(DiffimValueError, match=r"variance shape \(3, 3\) differs .* \(30, 40\)"):
        MaskedImage(np.zeros(SHAPE), variance=np.zeros((3, 3)))
    with pytest.raises(DiffimValueError, match="mask must hold integers"):
        MaskedImage(np.zeros(SHAPE), mask=np.zeros(SHAPE))
    with pytest.raises(DiffimValueError, match="image must be a 2-d array"):
        MaskedImage(np.zeros(5))
    assert MaskedImage(np.zeros(SHAPE, dtype=np.int16)).dtype == np.float64
    assert MaskedImage(np.zeros(SHAPE, dtype=np.float32)).variance.dtype == np.float32


def test_subimage_is_a_view_with_parent_coordinates():
    masked = make_masked_image(xy0=(100, 200))
    box = BBox(110, 205, 8, 6)
    sub = masked[box]
    assert sub.xy0 == (110, 205)
    assert sub.bbox == box
    assert np.shares_memory(sub.image, masked.image)
    assert np.shares_memory(sub.mask, masked.mask)
    assert np.shares_memory(sub.variance, masked.variance)
    # parent pixel (112, 207) is element [207 - 200, 112 - 100] of the parent
    assert sub.image[2, 2] == masked.image[7, 12]
    sub.image[2, 2] = -1.0
    assert masked.image[7, 12] == -1.0


def test_subimage_outside_is_an_error():
    masked = make_masked_image()
    with pytest.raises(DiffimValueError, match="not inside the image box"):
        masked.subimage(BBox(35, 0, 10, 10))


def test_mask_plane_helpers():
    masked = MaskedImage(np.zeros(SHAPE))
    where = np.zeros(SHAPE, dtype=bool)
    where[3, 4] = True
    masked.set_mask_plane("STREAK", where)
    assert masked.planes.bit("STREAK") == 9
    np.testing.assert_array_equal(masked.mask_plane("STREAK"), where)
    assert masked.bitmask(["STREAK", "UNKNOWN"]) == 1 << 9


def test_copy_and_astype_are_deep():
    masked = make_masked_image()
    copy = masked.copy()
    copy.image[0, 0] += 1.0
    copy.planes.add("NEW")
    assert copy.image[0, 0] != masked.image[0, 0]
    assert "NEW" not in masked.planes
    single = masked.astype(np.float32)
    assert single.dtype == np.float32
    assert not np.shares_memory(single.mask, masked.mask)


def test_exposure_subimage_keeps_metadata():
    exposure = Exposure(make_masked_image(), gain=2.0, filter_name="r", metadata={"A": 1})
    sub = exposure.subimage(BBox(5, 5, 10, 10))
    assert (sub.gain, sub.filter_name, sub.metadata) == (2.0, "r", {"A": 1})
    assert sub.bbox == BBox(5, 5, 10, 10)
    sub.metadata["A"] = 2
    assert exposure.metadata["A"] == 1


def test_set_mask_plane_keeps_other_bits_and_accepts_indices():
    masked = make_masked_image()
    expected = masked.mask.copy()
    where = np.zeros(SHAPE, dtype=bool)
    where[::3, ::2] = True
    masked.set_mask_plane("SAT", where)
    expected[where] |= np.int32(1 << DEFAULT_MASK_PLANES["SAT"])
    np.testing.assert_array_equal(masked.mask, expected)
    indices = (np.array([0, 2]), np.array([1, 3]))  # fancy indices, not a boolean image
    masked.set_mask_plane("CR", indices)
    expected[indices] |= np.int32(1 << DEFAULT_MASK_PLANES["CR"])
    np.testing.assert_array_equal(masked.mask, expected)


class CountingWcs(LazyWcs):
    """A LazyWcs that counts its builds; builds an object standing for a WCS."""

    def __init__(self):
        self.builds = 0

    def build(self):
        self.builds += 1
        return {"built": self.builds}


def test_lazy_wcs_is_built_once_on_first_access_and_shared_until_then():
    lazy = CountingWcs()
    exposure = Exposure(make_masked_image(), wcs=lazy)
    assert exposure.stored_wcs is lazy
    assert "wcs=unread" in repr(exposure)
    copies = [exposure.copy(), exposure.with_pixels(exposure.masked_image)]
    copies.append(exposure.subimage(BBox(1, 1, 4, 4)))
    assert all(copy.stored_wcs is lazy for copy in copies)
    assert lazy.builds == 0
    built = exposure.wcs
    assert built == {"built": 1}
    assert exposure.wcs is built
    assert exposure.stored_wcs is built
    assert lazy.builds == 1
    assert "wcs=yes" in repr(exposure)
    copied = exposure.copy()
    assert copied.wcs == built
    assert copied.wcs is not built  # a built WCS is deep-copied
    exposure.wcs = None
    assert exposure.wcs is None
    assert "wcs=no" in repr(exposure)


def test_lazy_wcs_default_compares_identity_only():
    first, second = CountingWcs(), CountingWcs()
    assert first.same_grid(first)
    assert not first.same_grid(second)


# -- BBox -----------------------------------------------------------------------------------
def test_bbox_corners_shape_and_center():
    box = BBox.from_corners(2, 3, 11, 7)
    assert (box.width, box.height) == (10, 5)
    assert (box.x_max, box.y_max) == (11, 7)
    assert box.shape == (5, 10)
    assert box.center == (6.5, 5.0)
    assert BBox.from_corners(5, 5, 4, 9).is_empty


def test_bbox_intersection_grow_and_contains():
    first, second = BBox(0, 0, 10, 10), BBox(5, 8, 10, 10)
    assert first.intersection(second) == BBox(5, 8, 5, 2)
    assert first.intersection(BBox(20, 20, 3, 3)).is_empty
    assert first.grown(2) == BBox(-2, -2, 14, 14)
    assert first.grown(-3) == BBox(3, 3, 4, 4)
    assert first.contains(BBox(2, 2, 3, 3))
    assert not first.contains(second)
    assert first.contains_point(9.4, 0.0)
    assert not first.contains_point(9.6, 0.0)


def test_bbox_slices_and_validation():
    box = BBox(12, 25, 4, 3)
    rows, cols = box.slices(xy0=(10, 20))
    assert (rows, cols) == (slice(5, 8), slice(2, 6))
    with pytest.raises(DiffimValueError, match="width=-1"):
        BBox(0, 0, -1, 2)


def test_bits_set_equals_the_mask_test_in_one_pass():
    """``bits_set`` (row blocks, no integer temporary) is ``(mask & bits) != 0``, for a mask
    taller than one block, one row, and a 1-d mask."""
    from diffim.image import BITS_BLOCK_ROWS, bits_set

    rng = np.random.default_rng(3)
    for shape in ((BITS_BLOCK_ROWS * 2 + 17, 40), (1, 9), (50,)):
        mask = rng.integers(0, 2**31 - 1, shape, dtype=np.int32)
        for bits in (0, 1, 0x3, 1 << 30):
            result = bits_set(mask, bits)
            assert result.dtype == bool
            np.testing.assert_array_equal(result, (mask & bits) != 0)
