"""Per-candidate and spatial least-squares solutions."""

import numpy as np
import pytest
from scipy import ndimage

from diffim.basis import make_alard_lupton_basis
from diffim.candidates import KernelCandidate
from diffim.errors import KernelSolutionError
from diffim.image import BBox, MaskedImage
from diffim.solve import (
    build_single_kernel,
    condition_number,
    residual_statistics,
    solve_normal_equations,
    solve_spatial_kernel,
)
from diffim.spatial import SpatialFunction, SpatialKernel

KERNEL_HALF_WIDTH = 10
STAMP = 61


def gaussian_kernel(sigma, half_width=KERNEL_HALF_WIDTH):
    """A unit-sum circular Gaussian sampled at pixel centres (as the AL basis is)."""
    offsets = np.arange(-half_width, half_width + 1)
    profile = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = np.outer(profile, profile)
    return kernel / kernel.sum()


def star_stamp(sigma, flux, size=STAMP, center=None):
    """A noise-free Gaussian star, pixel-integrated."""
    from scipy.special import erf

    center = (size - 1) / 2 if center is None else center
    edges = np.arange(size + 1) - 0.5 - center
    cdf = 0.5 * (1 + erf(edges / (np.sqrt(2) * sigma)))
    profile = np.diff(cdf)
    return flux * np.outer(profile, profile)


def make_candidate(sigma_kernel, flux_ratio, background, *, noise_sigma=0.0, seed=0):
    """Template star sigma 1.5 px; science = template ⋆ Gaussian(sigma_kernel) · ratio + bg."""
    rng = np.random.default_rng(seed)
    template = star_stamp(1.5, 5.0e4)
    kernel = gaussian_kernel(sigma_kernel) * flux_ratio
    science = ndimage.correlate(template, kernel, mode="constant") + background
    variance = np.full(template.shape, max(noise_sigma**2, 1.0))
    if noise_sigma:
        template = template + rng.normal(0, noise_sigma, template.shape)
        science = science + rng.normal(0, noise_sigma, science.shape)
    stamp_template = MaskedImage(template, variance=variance.copy())
    stamp_science = MaskedImage(science, variance=variance.copy())
    center = (STAMP - 1) / 2
    return KernelCandidate(center, center, stamp_template, stamp_science, rating=1.0), kernel


def basis_with_sigma(sigma):
    """AL basis whose Gaussians include ``sigma`` exactly (the HEAD progression)."""
    return make_alard_lupton_basis(KERNEL_HALF_WIDTH, [sigma / 2, sigma, 2 * sigma], [4, 2, 2])


def test_noise_free_kernel_recovered():
    """A known Gaussian kernel, flux ratio and background come back (noise-free)."""
    candidate, truth = make_candidate(2.0, 1.3, 25.0)
    solution = build_single_kernel(candidate, basis_with_sigma(2.0), fit_background=True)
    assert np.max(np.abs(solution.kernel_image - truth)) < 1e-3 * truth.max()
    assert solution.kernel_sum == pytest.approx(1.3, abs=1e-4)
    assert solution.background == pytest.approx(25.0, abs=1e-3)


def test_noisy_kernel_sum_within_noise():
    """With noise, the kernel sum is within 5 sigma of its least-squares uncertainty."""
    candidate, _ = make_candidate(2.0, 1.3, 25.0, noise_sigma=10.0, seed=3)
    solution = build_single_kernel(candidate, basis_with_sigma(2.0), fit_background=True)
    covariance = np.linalg.inv(solution.normal_matrix)
    sum_error = np.sqrt(covariance[0, 0])
    assert abs(solution.kernel_sum - 1.3) < 5 * sum_error
    mean, std, n = residual_statistics(
        candidate, solution.kernel_image, solution.background, bad_mask_bits=0
    )
    # 2 sigma of the sample statistics of n normalised residuals, plus the fitted dof
    assert abs(mean) < 5 / np.sqrt(n)
    assert std == pytest.approx(1.0, abs=0.1)


def test_fit_model_is_the_template_convolved_with_the_kernel():
    """A single-kernel fit keeps ``T ⋆ K`` from its design columns: it equals the template
    stamp correlated with the kernel image, and the residual statistics computed from it
    equal those that correlate the template again (float32 stamps: to 1e-5)."""
    from diffim.convolve import correlate_valid_stack
    from diffim.solve import residual_statistics_of

    candidate, _ = make_candidate(2.0, 1.3, 25.0, noise_sigma=10.0, seed=4)
    for plane in (candidate.template, candidate.science):
        plane.image = plane.image.astype(np.float32)
        plane.variance = plane.variance.astype(np.float32)
    solution = build_single_kernel(candidate, basis_with_sigma(2.0), fit_background=True)
    expected = correlate_valid_stack(candidate.template.image, solution.kernel_image[None])[0]
    model = solution.convolved_template
    assert model.shape == expected.shape
    np.testing.assert_allclose(model, expected, rtol=0, atol=1e-5 * abs(expected).max())
    arguments = ([candidate], [solution.kernel_image], [solution.background])
    again = residual_statistics_of(*arguments, bad_mask_bits=0)
    reused = residual_statistics_of(*arguments, bad_mask_bits=0, convolved_templates=[model])
    np.testing.assert_allclose(reused[0][:2], again[0][:2], rtol=1e-5, atol=1e-6)
    assert reused[0][2] == again[0][2]


def test_zero_variance_raises_without_constant_weighting():
    candidate, _ = make_candidate(2.0, 1.0, 0.0)
    candidate.science.variance[5, 5] = 0.0
    candidate.template.variance[5, 5] = 0.0
    with pytest.raises(KernelSolutionError, match="zero variance"):
        build_single_kernel(
            candidate,
            basis_with_sigma(2.0),
            fit_background=False,
            constant_variance_weighting=False,
        )


def test_condition_number_limit_rejects():
    candidate, _ = make_candidate(2.0, 1.0, 0.0)
    with pytest.raises(KernelSolutionError, match="condition number"):
        build_single_kernel(
            candidate, basis_with_sigma(2.0), fit_background=False, max_condition_number=1.0
        )


def test_singular_system_uses_pseudo_inverse():
    """A rank-deficient system gets the minimum-norm solution instead of failing."""
    matrix = np.array([[1.0, 1.0], [1.0, 1.0]])
    solution = solve_normal_equations(matrix, np.array([2.0, 2.0]))
    np.testing.assert_allclose(solution, [1.0, 1.0])
    assert condition_number(np.diag([4.0, 1.0])) == pytest.approx(4.0)
    assert condition_number(np.diag([4.0, 1.0]), "SVD") == pytest.approx(4.0)


def test_spatial_fit_recovers_linear_kernel_variation():
    """Candidates whose kernel sum varies linearly in x give back that spatial model."""
    bbox = BBox(0, 0, 512, 512)
    basis = basis_with_sigma(2.0)
    candidates = []
    for i, x in enumerate(np.linspace(30, 480, 5)):
        for y in np.linspace(30, 480, 3):
            ratio = 1.0 + 0.2 * x / 512
            candidate, _ = make_candidate(2.0, ratio, 0.0)
            candidate.x, candidate.y, candidate.candidate_id = float(x), float(y), i
            candidate.solutions["ORIG"] = build_single_kernel(
                candidate, basis, fit_background=False
            )
            candidates.append(candidate)
    solution = solve_spatial_kernel(
        candidates,
        basis,
        bbox=bbox,
        model_type="chebyshev1",
        kernel_order=1,
        background_order=None,
        constant_first_term=False,
    )
    for x in (30.0, 250.0, 480.0):
        assert solution.kernel.sum_at(x, 100.0) == pytest.approx(1.0 + 0.2 * x / 512, rel=1e-4)
    assert np.all(solution.background.coefficients == 0)


def test_spatial_kernel_constant_first_term():
    """With a constant first term, basis 0 has one non-zero spatial coefficient."""
    basis = basis_with_sigma(2.0)
    function = SpatialFunction("chebyshev1", 2, BBox(0, 0, 100, 100))
    coefficients = np.zeros((basis.shape[0], function.n_terms))
    coefficients[0, 0] = 1.0
    kernel = SpatialKernel(basis, coefficients, function)
    assert kernel.sum_at(10, 90) == pytest.approx(1.0)
    assert not kernel.is_spatially_varying


def test_delta_function_basis_recovers_an_elliptical_gaussian_exactly():
    """Spec §6.2 testGaussian: a delta-function fit of a point source blurred by a 21x21
    elliptical Gaussian (σx=2, σy=3, not normalised) returns that kernel pixel for pixel,
    its sum, and zero background."""
    from diffim.basis import make_delta_function_basis

    size, stamp = 21, 71
    template = np.zeros((stamp, stamp))
    template[stamp // 2, stamp // 2] = 1.0
    variance = np.full((stamp, stamp), 1e-4)
    variance[stamp // 2, stamp // 2] = 1.0
    offsets = np.arange(size) - size // 2
    kernel = np.outer(np.exp(-0.5 * (offsets / 3.0) ** 2), np.exp(-0.5 * (offsets / 2.0) ** 2))
    science = ndimage.correlate(template, kernel, mode="constant")
    candidate = KernelCandidate(
        35.0,
        35.0,
        MaskedImage(template, variance=variance),
        MaskedImage(science, variance=variance.copy()),
        rating=1.0,
    )
    for constant in (True, False):
        solution = build_single_kernel(
            candidate,
            make_delta_function_basis(size, size),
            fit_background=True,
            constant_variance_weighting=constant,
        )
        assert solution.kernel_sum == pytest.approx(science.sum(), abs=5e-8)
        assert solution.background == pytest.approx(0.0, abs=5e-8)
        np.testing.assert_allclose(solution.kernel_image, kernel, rtol=1e-5)


def test_pca_basis_of_identical_kernels():
    """Spec §6.3 KernelPca: identical kernels have eigenvalues (1, 0, 0) without mean
    subtraction; with it, all zero and the basis is the mean kernel alone."""
    from diffim.basis import kernel_pca_basis

    kernel = np.zeros((5, 5))
    kernel[2, 2] = 1.0
    kernels = np.array([kernel] * 3)
    basis, eigenvalues = kernel_pca_basis(kernels, n_components=5, subtract_mean=False)
    np.testing.assert_allclose(eigenvalues / eigenvalues.sum(), [1, 0, 0], atol=1e-12)
    basis, eigenvalues = kernel_pca_basis(kernels, n_components=5, subtract_mean=True)
    np.testing.assert_allclose(eigenvalues, 0, atol=1e-12)
    assert basis.shape[0] == 1
    np.testing.assert_allclose(basis[0], kernel)


def test_pca_basis_sums_and_norms():
    """PCA bases are renormalised: the first sums to 1, the others to 0 with unit norm."""
    from diffim.basis import kernel_pca_basis

    rng = np.random.default_rng(2)
    kernels = np.array([gaussian_kernel(s) for s in rng.uniform(1.5, 2.5, 12)])
    basis, eigenvalues = kernel_pca_basis(kernels, n_components=4, subtract_mean=True)
    assert basis.shape[0] == 4
    assert basis[0].sum() == pytest.approx(1.0)
    for component in basis[1:]:
        assert component.sum() == pytest.approx(0.0, abs=1e-10)
        assert np.sum(component**2) == pytest.approx(1.0)
    assert np.all(np.diff(eigenvalues) <= 1e-15)


@pytest.mark.parametrize(
    "lambda_type", ["absolute", "relative", "minimizeUnbiasedRisk", "minimizeBiasedRisk"]
)
def test_regularization_smooths_noisy_delta_function_kernels(lambda_type):
    """Regularized delta-function kernels of a noisy star are smoother than unregularized
    ones (smaller summed squared Laplacian), with the kernel sum still within the noise."""
    from diffim.basis import make_delta_function_basis, regularization_matrix
    from diffim.solve import Regularization

    size = 11
    candidate, _ = make_candidate(1.5, 1.2, 0.0, noise_sigma=20.0, seed=5)
    crop = (STAMP - (2 * size + 21)) // 2
    candidate.template = candidate.template.subimage(
        BBox(crop, crop, STAMP - 2 * crop, STAMP - 2 * crop)
    )
    candidate.science = candidate.science.subimage(
        BBox(crop, crop, STAMP - 2 * crop, STAMP - 2 * crop)
    )
    basis = make_delta_function_basis(size, size)
    matrix = regularization_matrix(
        size,
        size,
        regularization_type="centralDifference",
        central_stencil=9,
        forward_orders=(1,),
        border_penalty=3.0,
        fit_for_background=False,
    )
    grid = tuple(10.0 ** np.arange(-1, 7.01, 0.25))
    regularization = Regularization(
        matrix,
        lambda_type=lambda_type,
        lambda_value=1e3,
        lambda_scaling=1e-3,
        lambda_grid=grid,
        max_condition_number=5e6,
    )
    plain = build_single_kernel(candidate, basis, fit_background=False)
    smooth = build_single_kernel(
        candidate, basis, fit_background=False, regularization=regularization
    )

    def roughness(kernel):
        return np.sum(ndimage.laplace(kernel) ** 2)

    assert roughness(smooth.kernel_image) < roughness(plain.kernel_image)
    assert smooth.kernel_sum == pytest.approx(1.2, abs=5 * plain.kernel_sum_error + 0.01)


def moffat_candidate(*, noise_sigma=0.0, seed=0):
    """A Moffat star (FWHM 3 px, β = 2.5, 5·10⁴ ADU) on 300 ADU of sky in a 61² template
    stamp (the delta-function stamp of a 21-pixel kernel); the science stamp is the template
    correlated with an elliptical, rotated Moffat-like kernel ``(1 + q)**-3`` of sum 1.1,
    plus a 20 ADU background.  Returns the candidate and the kernel."""
    from diffim.psf import MoffatPsf

    size, stamp, pad = 21, 61, 10
    star = MoffatPsf(3.0, 2.5).draw(0.0, 0.0, size=stamp + 2 * pad).array
    template = 5.0e4 * star / star.sum() + 300.0
    offsets = np.arange(size) - size // 2
    u, v = np.meshgrid(offsets, offsets)
    along = (np.cos(0.5) * u + np.sin(0.5) * v) / 1.6
    across = (-np.sin(0.5) * u + np.cos(0.5) * v) / 2.4
    kernel = (1.0 + along**2 + across**2) ** -3.0
    kernel *= 1.1 / kernel.sum()
    # correlate the padded template, then crop: the stamps' fit region sees no edge effect
    science = ndimage.correlate(template, kernel, mode="constant") + 20.0
    crop = (slice(pad, pad + stamp),) * 2
    template, science = template[crop], science[crop]
    variance = np.full(template.shape, max(noise_sigma**2, 1.0))
    if noise_sigma:
        rng = np.random.default_rng(seed)
        template = template + rng.normal(0.0, noise_sigma, template.shape)
        science = science + rng.normal(0.0, noise_sigma, science.shape)
    center = (stamp - 1) / 2
    candidate = KernelCandidate(
        center,
        center,
        MaskedImage(template, variance=variance),
        MaskedImage(science, variance=variance.copy()),
        rating=1.0,
    )
    return candidate, kernel


def test_delta_function_fit_recovers_a_moffat_to_moffat_kernel():
    """Spec §6.2 precision on a smooth star: science = Moffat template ⋆ a non-Gaussian
    (elliptical Moffat-like) kernel, noise-free, with sky in both stamps.  The unregularised
    delta-function fit returns the kernel sum and the background to 7 places and every kernel
    pixel above 10⁻³ to 5 places of its ratio to the truth."""
    from diffim.basis import make_delta_function_basis

    candidate, kernel = moffat_candidate()
    solution = build_single_kernel(
        candidate, make_delta_function_basis(21, 21), fit_background=True
    )
    assert solution.kernel_sum == pytest.approx(1.1, abs=5e-8)
    assert solution.background == pytest.approx(20.0, abs=5e-8)
    significant = kernel > 1e-3
    np.testing.assert_allclose(
        solution.kernel_image[significant] / kernel[significant], 1.0, atol=5e-6
    )
    np.testing.assert_allclose(solution.kernel_image, kernel, atol=5e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_regularization_smooths_without_worse_residuals(seed):
    """On noisy Moffat stamps (sky noise σ = 12.5 ADU in both images) the regularised
    (relative λ, the 9-point Laplacian) delta-function kernel is smoother, by the sum of its
    squared second differences, by at least a fifth; its difference's D/σ standard deviation
    stays within 3 % of the unregularised one, and its kernel sum within the unregularised
    sum's 1σ error."""
    from diffim.basis import make_delta_function_basis, regularization_matrix
    from diffim.solve import Regularization

    candidate, _ = moffat_candidate(noise_sigma=12.5, seed=seed)
    basis = make_delta_function_basis(21, 21)
    matrix = regularization_matrix(
        21,
        21,
        regularization_type="centralDifference",
        central_stencil=9,
        forward_orders=(1,),
        border_penalty=3.0,
        fit_for_background=True,
    )
    regularization = Regularization(matrix, lambda_type="relative", lambda_scaling=1e-4)
    plain = build_single_kernel(candidate, basis, fit_background=True)
    smooth = build_single_kernel(
        candidate, basis, fit_background=True, regularization=regularization
    )

    def roughness(kernel):
        return np.sum(np.diff(kernel, 2, axis=0) ** 2) + np.sum(np.diff(kernel, 2, axis=1) ** 2)

    assert roughness(smooth.kernel_image) < 0.8 * roughness(plain.kernel_image)
    _, plain_std, _ = residual_statistics(
        candidate, plain.kernel_image, plain.background, bad_mask_bits=0
    )
    _, smooth_std, _ = residual_statistics(
        candidate, smooth.kernel_image, smooth.background, bad_mask_bits=0
    )
    assert smooth_std == pytest.approx(plain_std, rel=0.03)
    assert smooth.kernel_sum == pytest.approx(plain.kernel_sum, abs=plain.kernel_sum_error)


def test_noise_weighted_pca_basis_keeps_the_real_variation():
    """Gaussian kernels of σ 1.5-2.5 px: six nearly noise-free, thirty with 100x more pixel
    noise.  Unweighted, the faint kernels' noise makes every component; with each kernel
    divided by its noise, three components hold the σ variation and fit each clean kernel
    to better than 1 % of its norm (least squares over the basis), the unweighted ones not."""
    from diffim.basis import kernel_pca_basis

    rng = np.random.default_rng(8)
    sigmas = rng.uniform(1.5, 2.5, 36)
    noise = np.where(np.arange(36) < 6, 1e-5, 1e-3)
    clean = np.array([gaussian_kernel(s) for s in sigmas])
    kernels = clean + noise[:, None, None] * rng.normal(size=clean.shape)

    def worst_fit(basis):
        flat = basis.reshape(len(basis), -1).T
        errors = []
        for kernel in clean[:6]:
            coefficients, *_ = np.linalg.lstsq(flat, kernel.ravel(), rcond=None)
            errors.append(np.linalg.norm(flat @ coefficients - kernel.ravel()))
        return max(errors) / np.linalg.norm(clean[0])

    weighted, _ = kernel_pca_basis(kernels, n_components=3, noise=noise)
    plain, _ = kernel_pca_basis(kernels, n_components=3)
    assert worst_fit(weighted) < 0.01
    assert worst_fit(plain) > 0.02
    same, _ = kernel_pca_basis(kernels, n_components=3, noise=np.full(36, 7.0))
    np.testing.assert_allclose(same, plain, atol=1e-12)


@pytest.mark.parametrize("lambda_type", ["minimizeUnbiasedRisk", "minimizeBiasedRisk"])
def test_risk_lambda_on_noisy_moffat_stamps(lambda_type):
    """On noisy Moffat stamps (σ = 12.5 ADU in both images) the risk-minimising λ lies
    inside the scanned 10⁻¹-10⁷ (ip_diffim's kernel-pixel risk chose 6·10⁵-10⁶, D/σ std
    2.2-2.6), the kernel is smoother and at least twice closer to the true kernel than the
    unregularised one (0.09 vs 0.40 in L2), and the model of the noise-free science stamp
    is better: smaller rms of (S - K ⋆ T - b) / σ on the noise-free stamps.  D/σ itself
    stays within 5 % of 1 (the unregularised 442 unknowns overfit the noise: 0.77-0.82)."""
    from diffim.basis import make_delta_function_basis, regularization_matrix
    from diffim.solve import Regularization, candidate_residuals

    basis = make_delta_function_basis(21, 21)
    matrix = regularization_matrix(
        21, 21, regularization_type="centralDifference", central_stencil=9,
        forward_orders=(1,), border_penalty=3.0, fit_for_background=True,
    )  # fmt: skip
    grid = tuple(10.0 ** np.arange(-1, 7.01, 0.25))
    regularization = Regularization(
        matrix, lambda_type=lambda_type, lambda_grid=grid, max_condition_number=5e6
    )
    noise_free, truth = moffat_candidate()
    for seed in (1, 2, 3):
        candidate, _ = moffat_candidate(noise_sigma=12.5, seed=seed)
        plain = build_single_kernel(candidate, basis, fit_background=True)
        chosen = regularization.weight(plain.normal_matrix, plain.normal_vector)
        assert grid[0] < chosen < grid[-1]
        smooth = build_single_kernel(
            candidate, basis, fit_background=True, regularization=regularization
        )
        error_smooth = np.linalg.norm(smooth.kernel_image - truth)
        assert error_smooth < 0.5 * np.linalg.norm(plain.kernel_image - truth)
        model_errors = [
            np.sqrt(
                np.mean(candidate_residuals(noise_free, s.kernel_image, s.background, 0)[0] ** 2)
            )
            / 12.5
            for s in (smooth, plain)
        ]
        assert model_errors[0] < model_errors[1]
        _, std, _ = residual_statistics(
            candidate, smooth.kernel_image, smooth.background, bad_mask_bits=0
        )
        assert std == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("fit_background", [True, False])
def test_delta_function_normal_equations_equal_the_design_product(fit_background):
    """The shifted-product normal equations of a delta-function basis are the dense
    ``Cᵀ W C`` and ``Cᵀ W d`` to rounding (2e-14 of the largest entry), also for a basis in another
    order, with a missing pixel and with values other than 1, on random stamps of two
    candidates with different weights."""
    from diffim.basis import make_delta_function_basis
    from diffim.convolve import delta_function_shifts
    from diffim.solve import _dense_normal_equations
    from diffim.solve._delta_normal import delta_function_normal_equations

    rng = np.random.default_rng(5)
    templates = rng.normal(100.0, 30.0, (2, 25, 29))
    data = rng.normal(50.0, 10.0, (2, 25 - 6, 29 - 6))
    weights = np.array([0.3, 2.5])
    basis = make_delta_function_basis(7, 7)
    shuffled = basis[rng.permutation(len(basis))[:-1]] * rng.uniform(0.5, 2.0, (48, 1, 1))
    for kernels in (basis, shuffled):
        *dense, _ = _dense_normal_equations(
            templates, data, kernels, weights, fit_background=fit_background
        )
        fast = delta_function_normal_equations(
            templates, data, delta_function_shifts(kernels), weights,
            size=7, fit_background=fit_background,
        )  # fmt: skip
        for expected, actual in zip(dense, fast, strict=True):
            np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-14 * abs(expected).max())


def test_delta_function_shifts_only_for_delta_functions():
    from diffim.basis import make_delta_function_basis
    from diffim.convolve import delta_function_shifts

    index, value = delta_function_shifts(make_delta_function_basis(3, 3))
    np.testing.assert_array_equal(index, np.arange(9))
    np.testing.assert_array_equal(value, np.ones(9))
    assert delta_function_shifts(basis_with_sigma(2.0)) is None


@pytest.mark.parametrize("fit_background", [True, False])
def test_delta_function_fast_path_equals_the_dense_path(fit_background):
    """A delta-function fit with one weight per candidate (the fast path) gives the same
    normal equations, to rounding (2e-14 of their largest entry), as the dense path, which
    the same weight given per pixel forces; so its kernel, background and kernel-sum error
    agree within the rounding bound ``κ · 2e-14`` of the Jacobi-scaled condition number κ
    (1e9 for the noise-free Moffat stamp, 2e5 for the noisy Gaussian one)."""
    from diffim.basis import make_delta_function_basis
    from diffim.solve import build_single_kernels

    candidate, _ = moffat_candidate()
    noisy, _ = make_candidate(2.0, 1.2, 15.0, noise_sigma=5.0, seed=3)
    basis = make_delta_function_basis(21, 21)
    candidates = [candidate, noisy]
    fast = build_single_kernels(candidates, basis, fit_background=fit_background)
    fit_shape = (STAMP - 2 * KERNEL_HALF_WIDTH,) * 2
    # the constant weighting's variance, given per pixel
    medians = [np.median(c.science.variance + c.template.variance) for c in candidates]
    dense = build_single_kernels(
        candidates, basis, fit_background=fit_background,
        variances=[np.full(fit_shape, m) for m in medians],
    )  # fmt: skip
    rounding = 2e-14
    for f, d in zip(fast, dense, strict=True):
        matrix, vector = d.normal_matrix, d.normal_vector
        np.testing.assert_allclose(
            f.normal_matrix, matrix, rtol=0, atol=rounding * abs(matrix).max()
        )
        np.testing.assert_allclose(
            f.normal_vector, vector, rtol=0, atol=rounding * abs(vector).max()
        )
        scale = 1.0 / np.sqrt(np.diag(matrix))
        bound = np.linalg.cond(matrix * np.outer(scale, scale)) * rounding
        np.testing.assert_allclose(
            f.kernel_image, d.kernel_image, rtol=0, atol=bound * abs(d.kernel_image).max()
        )
        assert f.background == pytest.approx(d.background, abs=bound * abs(d.background) + 1e-12)
        assert f.kernel_sum_error == pytest.approx(d.kernel_sum_error, rel=bound)


@pytest.mark.parametrize(("kernel_terms", "background_terms"), [(6, 3), (3, 6), (6, None)])
def test_spatial_normal_matrix_equals_its_definition(kernel_terms, background_terms):
    """The spatial system built by one matrix product over candidates is
    ``Σ_c M_c[i, j] Q_c[i, a] Q_c[j, b]`` to rounding, with or without a background row
    (with fewer or more spatial terms than the kernel rows)."""
    from diffim.solve import _spatial_normal_matrix

    rng = np.random.default_rng(11)
    n_candidates, n_basis = 15, 10
    n_rows = n_basis + (background_terms is not None)
    n_terms = max(kernel_terms, background_terms or 0)
    factors = rng.normal(size=(n_candidates, n_rows, n_rows))
    matrices = factors @ factors.transpose(0, 2, 1)
    terms = np.zeros((n_candidates, n_rows, n_terms))
    terms[:, :n_basis, :kernel_terms] = rng.normal(size=(n_candidates, 1, kernel_terms))
    if background_terms is not None:
        terms[:, n_basis, :background_terms] = rng.normal(size=(n_candidates, background_terms))
    expected = np.einsum("cij,cia,cjb->iajb", matrices, terms, terms)
    np.testing.assert_allclose(
        _spatial_normal_matrix(matrices, terms, n_basis),
        expected, rtol=0, atol=1e-14 * abs(expected).max(),
    )  # fmt: skip
