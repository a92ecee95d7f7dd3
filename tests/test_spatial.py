"""Tests of diffim.spatial: the spatial polynomials evaluated on whole images."""

import numpy as np
import pytest

from diffim.image import BBox
from diffim.spatial import SpatialBackground, SpatialFunction


@pytest.mark.parametrize("kind", ["chebyshev1", "polynomial"])
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_image_equals_the_terms_summed_pixel_by_pixel(kind, order):
    """``image`` (one matrix product of the separable factors) equals ``sum_p c_p P_p(x, y)``
    evaluated term by term at every parent pixel, to float64 round-off."""
    bbox = BBox(17, -5, 60, 45)  # an offset box: parent coordinates matter
    function = SpatialFunction(kind, order, BBox(0, -10, 100, 80))
    coefficients = np.random.default_rng(order).normal(size=function.n_terms)
    coefficients[-1] = 0.0  # a zero coefficient contributes nothing
    y, x = np.mgrid[bbox.y_min : bbox.y_max + 1, bbox.x_min : bbox.x_max + 1]
    expected = np.tensordot(coefficients, function.terms(x, y), axes=1)
    result = function.image(coefficients, bbox)
    assert result.shape == bbox.shape
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-13, atol=1e-13 * np.abs(expected).max())


def test_background_image_matches_its_pointwise_values():
    function = SpatialFunction("chebyshev1", 2, BBox(0, 0, 64, 48))
    background = SpatialBackground(function, np.array([3.0, 0.5, -0.2, 0.1, 0.05, -0.3]))
    bbox = BBox(0, 0, 64, 48)
    image = background.image(bbox)
    assert image[10, 20] == pytest.approx(float(background(20.0, 10.0)), abs=1e-12)
    assert image[47, 63] == pytest.approx(float(background(63.0, 47.0)), abs=1e-12)


def test_background_add_to_matches_its_image_across_row_blocks():
    """`SpatialBackground.add_to` (row blocks, no full-size temporary) adds exactly
    ``scale`` times `SpatialBackground.image`, in the image's dtype."""
    bbox = BBox(10, -5, 37, 600)  # more rows than one block
    function = SpatialFunction("chebyshev1", 2, bbox)
    background = SpatialBackground(function, np.array([3.0, 0.5, -0.2, 0.1, 0.05, -0.3]))
    image = np.full((bbox.height, bbox.width), 7.0, dtype=np.float32)
    background.add_to(image, bbox, scale=-1.0)
    expected = 7.0 - background.image(bbox, np.float32)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, expected)
