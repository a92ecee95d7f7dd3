"""Tests of diffim.basis (spec §3.2-§3.4 and the acceptance list §6.1)."""

import numpy as np
import pytest

from diffim.basis import (
    FWHM_PER_SIGMA,
    BasisList,
    alard_lupton_sigmas,
    generate_alard_lupton_basis,
    make_alard_lupton_basis,
    make_delta_function_basis,
    make_kernel_basis,
    make_regularization_matrix,
    regularization_matrix,
    renormalize_kernel_list,
)
from diffim.config import PsfMatchConfigAL, PsfMatchConfigDF
from diffim.errors import DiffimConfigError, DiffimValueError

PLACES_7 = 0.5e-7  # ip_diffim's assertAlmostEqual(places=7)


def assert_renormalized(kernels):
    """B0 sums to 1; every other kernel sums to 0 and has unit L2 norm."""
    sums = kernels.sum(axis=(1, 2))
    norms = np.sum(kernels**2, axis=(1, 2))
    assert sums[0] == pytest.approx(1.0, abs=PLACES_7)
    np.testing.assert_allclose(sums[1:], 0.0, atol=PLACES_7)
    np.testing.assert_allclose(norms[1:], 1.0, atol=PLACES_7)


# --------------------------------------------------------------------------------------------
# Delta functions


@pytest.mark.parametrize(("width", "height"), [(21, 21), (5, 3), (1, 1)])
def test_delta_function_basis(width, height):
    """Kernel n is a single 1 at (x, y) = (n mod W, n div W)."""
    kernels = make_delta_function_basis(width, height)
    assert kernels.shape == (width * height, height, width)
    assert kernels.dtype == np.float64
    for n, kernel in enumerate(kernels):
        assert kernel[n // width, n % width] == 1.0
        assert kernel.sum() == 1.0
        assert np.count_nonzero(kernel) == 1


@pytest.mark.parametrize(("width", "height"), [(0, 5), (5, 0), (2.5, 3)])
def test_delta_function_basis_rejects_bad_sizes(width, height):
    with pytest.raises(DiffimValueError, match="width and height"):
        make_delta_function_basis(width, height)


def test_make_kernel_basis_delta_function():
    config = PsfMatchConfigDF(kernelSize=11)
    basis = make_kernel_basis(config, 3.0, 4.0)  # FWHMs are ignored for DF
    assert isinstance(basis, BasisList)
    assert len(basis) == 121
    assert basis.kernels.shape == (121, 11, 11)
    assert (basis.sigmas, basis.degrees, basis.kernel_size, basis.mode) == ((), (), 11, "config")
    assert basis.metadata() == {}


# --------------------------------------------------------------------------------------------
# Alard-Lupton kernel images


def test_alard_lupton_basis_counts_and_normalisation():
    """Degrees (4, 2, 2) give 15 + 6 + 6 = 27 kernels, renormalised."""
    kernels = make_alard_lupton_basis(10, (0.7, 1.5, 3.0), (4, 2, 2))
    assert kernels.shape == (27, 21, 21)
    assert kernels.dtype == np.float64
    assert_renormalized(kernels)


def test_alard_lupton_term_order_is_afw():
    """Terms run 1, x, y, ...: kernel 1 is odd in x (columns), kernel 2 odd in y (rows)."""
    kernels = make_alard_lupton_basis(5, (1.5,), (1,))
    np.testing.assert_allclose(kernels[1], -kernels[1][:, ::-1], atol=1e-15)
    np.testing.assert_allclose(kernels[1], kernels[1][::-1, :], atol=1e-15)
    np.testing.assert_allclose(kernels[2], kernels[1].T, atol=1e-15)
    assert kernels[1][5, 6] > 0  # +u to the right of the centre


def test_alard_lupton_first_kernel_is_the_gaussian():
    """B0 is the first Gaussian at pixel centres with unit sum."""
    offsets = np.arange(-4, 5)
    gaussian = np.exp(-0.5 * (offsets[None, :] ** 2 + offsets[:, None] ** 2) / 1.3**2)
    kernels = make_alard_lupton_basis(4, (1.3, 2.0), (2, 0))
    np.testing.assert_allclose(kernels[0], gaussian / gaussian.sum(), rtol=1e-14)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, (1.0,), (0,)), "half_width"),
        ((5, (1.0, 2.0), (0,)), "2 sigmas but 1 degrees"),
        ((5, (0.0,), (0,)), "sigmas must be finite and > 0"),
        ((5, (1.0,), (-1,)), "degrees must be integers >= 0"),
    ],
)
def test_alard_lupton_basis_errors(args, match):
    with pytest.raises(DiffimValueError, match=match):
        make_alard_lupton_basis(*args)


def _gaussian(size, sigma_x, sigma_y):
    offsets = np.arange(size) - size // 2
    return np.exp(-0.5 * ((offsets[None, :] / sigma_x) ** 2 + (offsets[:, None] / sigma_y) ** 2))


def test_renormalize_kernel_list_on_gaussians():
    """Gaussians (2, 2), (3, 4), (0.2, 0.25) on 21x21 give sums 1, 0, 0 and unit norms."""
    kernels = np.stack([_gaussian(21, 2, 2), _gaussian(21, 3, 4), _gaussian(21, 0.2, 0.25)])
    before = kernels.copy()
    renormalized = renormalize_kernel_list(kernels)
    assert_renormalized(renormalized)
    np.testing.assert_array_equal(kernels, before)  # input untouched
    np.testing.assert_allclose(renormalized[0], kernels[0] / kernels[0].sum())


def test_renormalize_kernel_list_edge_cases():
    assert renormalize_kernel_list(np.empty((0, 5, 5))).shape == (0, 5, 5)
    odd = np.zeros((2, 3, 3))
    odd[0, 1, 1] = 2.0
    odd[1, 1, 0], odd[1, 1, 2] = -1.0, 1.0  # sums to 0: only L2-normalised
    result = renormalize_kernel_list(odd)
    np.testing.assert_allclose(result[1], odd[1] / np.sqrt(2.0))
    with pytest.raises(DiffimValueError, match="non-zero sum"):
        renormalize_kernel_list(odd[::-1])
    with pytest.raises(DiffimValueError, match="multiples of the first"):
        renormalize_kernel_list(np.stack([odd[0], 3.0 * odd[0]]))
    with pytest.raises(DiffimValueError, match="shape"):
        renormalize_kernel_list(np.ones((3, 3)))


# --------------------------------------------------------------------------------------------
# Alard-Lupton sigmas and kernel size (ip_diffim HEAD rules)


@pytest.mark.parametrize(
    ("target", "reference", "sigmas", "size", "mode"),
    [
        # sigma_k = sqrt(5^2 - 4^2) / 2.35482 = 1.274; 1.274 / 2 < 0.7 -> 0.7, 1.4, 2.8;
        # int(6 * 2.8) = 16 -> 17 -> clamped to 21
        (4.0, 5.0, (0.7, 1.4, 2.8), 21, "convolution"),
        # sigma_k = sqrt(20^2 - 2^2) / 2.35482 = 8.4506: 4.2253, 8.4506, 16.901; 101 -> 35
        (2.0, 20.0, (4.2253, 8.4506, 16.9013), 35, "convolution"),
        # deconvolution: sigma_k = sqrt(6^2 - 3^2) / 2.35482 = 2.2066, min sigma 0.4;
        # int(6 * 4.4132) = 26 -> 27
        (6.0, 3.0, (1.1033, 2.2066, 4.4132), 27, "deconvolution"),
        # sigma_k = sqrt(5^2 - 4.5^2) / 2.35482 = 0.9255: 0.4628 > 0.4 is kept
        (5.0, 4.5, (0.4628, 0.9255, 1.8511), 21, "deconvolution"),
        # equal FWHMs: config sigmas, size from the last one: int(6 * 3.0) = 18 -> 19 -> 21
        (4.0, 4.0, (0.7, 1.5, 3.0), 21, "config"),
    ],
)
def test_head_sigma_progression(target, reference, sigmas, size, mode):
    params = alard_lupton_sigmas(PsfMatchConfigAL(), target, reference)
    np.testing.assert_allclose(params.sigmas, sigmas, atol=1e-4)
    assert (params.kernel_size, params.mode) == (size, mode)
    assert params.degrees == (4, 2, 2)


def test_equal_fwhm_size_comes_from_the_last_config_sigma():
    """HEAD: equal FWHMs give int(6 * 3.0) = 18 -> 19, not kernelSize."""
    config = PsfMatchConfigAL(kernelSizeMin=11, kernelSize=25)
    assert alard_lupton_sigmas(config, 4.0, 4.0).kernel_size == 19


def test_config_mode_uses_config_values():
    config = PsfMatchConfigAL(kernelSize=17)
    for target, reference in [(None, None), (None, 4.0), (3.0, None)]:
        params = alard_lupton_sigmas(config, target, reference)  # no TypeError (pain point 10)
        assert (params.sigmas, params.kernel_size, params.mode) == ((0.7, 1.5, 3.0), 17, "config")
    config.scaleByFwhm = False
    assert alard_lupton_sigmas(config, 3.0, 8.0).mode == "config"
    params = alard_lupton_sigmas(config, None, None, (2, 1, 0), (1.0, 2.0, 4.0))
    assert (params.sigmas, params.degrees) == ((1.0, 2.0, 4.0), (2, 1, 0))


def test_single_gaussian_uses_the_kernel_sigma():
    config = PsfMatchConfigAL(alardNGauss=1, alardDegGauss=(3,), alardSigGauss=(2.0,))
    sigma_k = np.sqrt(8.0**2 - 4.0**2) / FWHM_PER_SIGMA
    params = alard_lupton_sigmas(config, 4.0, 8.0)
    assert params.sigmas == pytest.approx((sigma_k,))
    assert params.degrees == (3,)


def test_sigmas_are_continuous_in_fwhm():
    """The legacy rule jumped at sigma_k = beta * minSig = 1.4 (template sigma 2.0, science
    sigma sqrt(2.0**2 + 1.4**2) = 2.44); HEAD's sigmas change by at most
    beta**2 * (d sigma_k / d sigma_r) * step = 4 * 1.8 * 0.001 per step of 0.001 px."""
    config = PsfMatchConfigAL()
    science_sigmas = np.arange(2.30, 2.50, 0.001)
    progression = np.array(
        [
            alard_lupton_sigmas(config, 2.0 * FWHM_PER_SIGMA, s * FWHM_PER_SIGMA).sigmas
            for s in science_sigmas
        ]
    )
    assert np.max(np.abs(np.diff(progression, axis=0))) < 4 * 1.8 * 0.001
    assert progression[0] == pytest.approx((0.7, 1.4, 2.8))  # floor of minSig before
    assert progression[-1][0] > 0.7  # and above it after the legacy jump point


def test_sigma_errors():
    config = PsfMatchConfigAL()
    with pytest.raises(DiffimConfigError, match="alardDegGauss has 2 entries"):
        alard_lupton_sigmas(config, 3.0, 4.0, basis_deg_gauss=(4, 2))
    with pytest.raises(DiffimConfigError, match="alardSigGauss has 1 entries"):
        alard_lupton_sigmas(config, basis_sigma_gauss=(1.0,))
    config.kernelSize = 20  # assignment is allowed; the basis refuses it
    with pytest.raises(DiffimConfigError, match="kernelSize=20 must be odd"):
        alard_lupton_sigmas(config)
    with pytest.raises(DiffimConfigError, match="kernelBasisSet='delta-function'"):
        alard_lupton_sigmas(PsfMatchConfigDF(), 3.0, 4.0)
    with pytest.raises(DiffimValueError, match="target_fwhm_pix"):
        alard_lupton_sigmas(PsfMatchConfigAL(), -1.0, 4.0)
    with pytest.raises(DiffimValueError, match="reference_fwhm_pix"):
        alard_lupton_sigmas(PsfMatchConfigAL(), 3.0, np.nan)


# --------------------------------------------------------------------------------------------
# Whole bases


@pytest.mark.parametrize(("target", "reference"), [(None, None), (3.0, 4.0), (4.0, 3.0)])
def test_generate_alard_lupton_basis(target, reference):
    basis = generate_alard_lupton_basis(PsfMatchConfigAL(), target, reference)
    assert len(basis) == 27
    assert basis.kernels.shape == (27, basis.kernel_size, basis.kernel_size)
    assert_renormalized(basis.kernels)
    metadata = basis.metadata()
    assert metadata["ALBasisNGauss"] == 3
    assert metadata["ALBasisDegGauss"] == [4, 2, 2]
    assert metadata["ALKernelSize"] == basis.kernel_size
    assert metadata["ALBasisMode"] == basis.mode


def test_make_kernel_basis_alard_lupton():
    basis = make_kernel_basis(PsfMatchConfigAL(), 3.0, 4.0, basis_deg_gauss=(2, 1, 0))
    assert len(basis) == 6 + 3 + 1
    assert basis.mode == "convolution"
    assert_renormalized(basis.kernels)


def test_make_kernel_basis_rejects_unknown_family():
    config = PsfMatchConfigAL()
    object.__setattr__(config, "kernelBasisSet", "shapelets")  # bypass the field check
    with pytest.raises(DiffimConfigError, match="kernelBasisSet='shapelets'"):
        make_kernel_basis(config)


# --------------------------------------------------------------------------------------------
# Regularization


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"central_stencil": 1}, "centralRegularizationStencil=1 must be 5 or 9"),
        ({"border_penalty": -1.0}, "regularizationBorderPenalty=-1.0 must be >= 0"),
        ({"regularization_type": "foo"}, "regularizationType='foo'"),
        ({"regularization_type": "forwardDifference", "forward_orders": (0,)}, "Orders"),
        ({"regularization_type": "forwardDifference", "forward_orders": (4,)}, "Orders"),
        ({"regularization_type": "forwardDifference", "forward_orders": ()}, "non-empty"),
    ],
)
def test_regularization_errors(kwargs, match):
    with pytest.raises(DiffimConfigError, match=match):
        regularization_matrix(7, 7, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"central_stencil": 5},
        {"central_stencil": 9},
        {"border_penalty": 0.0},
        {"regularization_type": "forwardDifference", "forward_orders": (1,)},
        {"regularization_type": "forwardDifference", "forward_orders": (1, 2)},
        {"regularization_type": "forwardDifference", "forward_orders": (1, 2, 3)},
    ],
)
def test_regularization_valid_settings(kwargs):
    """H is symmetric positive semi-definite; a smooth kernel costs less than noise."""
    size = 9
    h = regularization_matrix(size, size, **kwargs)
    assert h.shape == (size * size, size * size)
    np.testing.assert_array_equal(h, h.T)
    eigenvalues = np.linalg.eigvalsh(h)
    assert eigenvalues.min() > -1e-10 * eigenvalues.max()
    smooth = _gaussian(size, 1.5, 1.5).ravel()
    noise = np.random.default_rng(42).normal(size=size * size)
    smooth, noise = smooth / np.linalg.norm(smooth), noise / np.linalg.norm(noise)
    assert smooth @ h @ smooth < 0.2 * (noise @ h @ noise)


@pytest.mark.parametrize("stencil", [5, 9])
def test_central_difference_penalises_only_the_border_of_a_constant(stencil):
    """The Laplacian of a constant is 0, so a^T H a = penalty^2 * (number of border pixels)."""
    h = regularization_matrix(7, 7, central_stencil=stencil, border_penalty=2.0)
    ones = np.ones(49)
    assert ones @ h @ ones == pytest.approx(4.0 * 24)


def test_forward_difference_of_a_constant():
    """Differences of a constant vanish; the last column and row get the penalty, the corner
    twice (Bx + By): a^T H a = p^2 * (2 * (n - 1) + 4) = 9 * 12 for n = 5, p = 3."""
    h = regularization_matrix(5, 5, regularization_type="forwardDifference", forward_orders=(1,))
    ones = np.ones(25)
    assert ones @ h @ ones == pytest.approx(108.0)


def test_regularization_from_config_with_background():
    config = PsfMatchConfigDF(kernelSize=7, fitForBackground=True)
    h = make_regularization_matrix(config)
    assert h.shape == (50, 50)
    assert not h[-1].any()
    assert not h[:, -1].any()
    np.testing.assert_array_equal(
        h[:49, :49], make_regularization_matrix(PsfMatchConfigDF(kernelSize=7))
    )


def test_regularization_from_a_mutated_config():
    config = PsfMatchConfigDF()
    config.regularizationBorderPenalty = -1.0  # bounds are only checked by validate()
    with pytest.raises(DiffimConfigError, match="regularizationBorderPenalty"):
        make_regularization_matrix(config)
    with pytest.raises(DiffimConfigError, match="centralRegularizationStencil"):
        PsfMatchConfigDF(centralRegularizationStencil=1)
