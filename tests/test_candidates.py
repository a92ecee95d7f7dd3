"""Kernel candidates, stamps and the spatial cell set."""

import numpy as np
import pytest

from diffim.candidates import (
    CandidateStatus,
    KernelCandidate,
    SpatialCellSet,
    candidate_rating,
    stamp_box,
)
from diffim.errors import DiffimValueError
from diffim.image import BBox, MaskedImage


def dummy_candidate(x, y, rating, candidate_id=0):
    stamp = MaskedImage(np.zeros((5, 5)))
    return KernelCandidate(x, y, stamp, stamp, rating, candidate_id=candidate_id)


def test_cells_tile_the_box_and_truncate_the_last():
    cell_set = SpatialCellSet(BBox(10, 20, 300, 200), 128, 128)
    assert (cell_set.n_x, cell_set.n_y) == (3, 2)
    assert cell_set.cells[0].bbox == BBox(10, 20, 128, 128)
    assert cell_set.cells[2].bbox == BBox(266, 20, 44, 128)
    assert cell_set.cells[5].bbox == BBox(266, 148, 44, 72)


def test_insert_uses_nearest_pixel_and_sorts_by_rating():
    cell_set = SpatialCellSet(BBox(0, 0, 256, 256), 128, 128)
    cell_set.insert(dummy_candidate(127.4, 10, 1.0, 0))
    cell_set.insert(dummy_candidate(127.6, 10, 5.0, 1))  # rounds to 128: second cell
    cell_set.insert(dummy_candidate(20, 10, 3.0, 2))
    assert [c.candidate_id for c in cell_set.cells[0].candidates] == [2, 0]
    assert [c.candidate_id for c in cell_set.cells[1].candidates] == [1]
    with pytest.raises(DiffimValueError, match="outside"):
        cell_set.insert(dummy_candidate(300, 10, 1.0))


def test_visit_skips_bad_and_counts_those_turning_bad():
    cell_set = SpatialCellSet(BBox(0, 0, 128, 128), 128, 128)
    for i in range(5):
        cell_set.insert(dummy_candidate(10 + i, 10, 10.0 - i, i))
    cell_set.cells[0].candidates[0].status = CandidateStatus.BAD
    visited = []
    for candidate in cell_set.visit(2):
        visited.append(candidate.candidate_id)
        candidate.reject("test", "turns bad while visited")
    assert visited == [1, 2]
    assert [c.candidate_id for c in cell_set.visit(2)] == [3, 4]
    assert [c.candidate_id for c in cell_set.visit(-1)] == [3, 4]
    assert cell_set.rejections_by_stage() == {"": 1, "test": 2}


def test_stamp_box_shrinks_symmetrically_at_edges():
    bounds = BBox(0, 0, 100, 100)
    assert stamp_box(50.2, 49.7, 21, bounds) == BBox.from_corners(29, 29, 71, 71)
    box = stamp_box(10, 50, 21, bounds)
    assert box == BBox.from_corners(0, 40, 20, 60)
    assert stamp_box(-3, 50, 21, bounds).is_empty


def test_rating_is_core_signal_to_noise():
    image = np.zeros((21, 21))
    image[7:14, 7:14] = 20.0
    mask = np.zeros((21, 21), dtype=np.int32)
    mask[10, 10] = 1
    stamp = MaskedImage(image, mask, np.full((21, 21), 4.0))
    assert candidate_rating(stamp, bad_mask_bits=0, core_radius=3) == pytest.approx(10.0)
    stamp.image[10, 10] = 1e6
    assert candidate_rating(stamp, bad_mask_bits=1, core_radius=3) == pytest.approx(10.0)


def test_remove_sky_slope_keeps_the_star_and_the_central_level():
    """A star on a tilted, noisy sky (300 + 0.4 dx - 0.25 dy ADU, σ = 5 ADU) with a bright
    neighbour in the outer part: the removed plane has the true slope within 5 times its
    least-squares error σ / sqrt(Σ dx²) (outer pixels), and zero level at the centre."""
    from diffim.candidates import remove_sky_slope

    half, sigma = 30, 5.0
    dy, dx = np.indices((2 * half + 1, 2 * half + 1), dtype=float) - half
    star = 5.0e3 * np.exp(-0.5 * (dx**2 + dy**2) / 1.5**2)
    neighbour = 8.0e3 * np.exp(-0.5 * ((dx - 22) ** 2 + (dy + 18) ** 2) / 1.5**2)
    noise = np.random.default_rng(4).normal(0.0, sigma, dx.shape)
    image = star + neighbour + 300.0 + 0.4 * dx - 0.25 * dy + noise
    stamp = MaskedImage(image, variance=np.full(dx.shape, sigma**2), xy0=(100, 200))
    flat = remove_sky_slope(stamp, inner_radius=half / 2)
    removed = stamp.image - flat.image
    outer = np.hypot(dx, dy) > half / 2
    slope_error = sigma / np.sqrt(np.sum(dx[outer] ** 2))
    assert removed[half, half] == 0.0
    assert removed[half, half + 1] == pytest.approx(0.4, abs=5 * slope_error)
    assert removed[half + 1, half] == pytest.approx(-0.25, abs=5 * slope_error)
    np.testing.assert_array_equal(stamp.image, image)  # the input is untouched
    assert flat.xy0 == (100, 200)
