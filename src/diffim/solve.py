"""Least-squares kernel solutions: one star at a time, and the spatial model over all stars.

Per candidate (spec §3.7): with ``C_i = (T ⋆ B_i)`` over the stamp shrunk by the kernel
half-width, ``d`` the science stamp there and ``w = 1 / var``, solve the normal equations
``M a = b`` with ``M = Cᵀ W C`` and ``b = Cᵀ W d`` (a column of ones appended to ``C`` when a
differential background is fitted).

Spatial model (spec §3.11): with ``a = A(x, y) θ`` mapping spatial parameters to one star's
coefficients, solve ``(Σ Aᵀ M A) θ = Σ Aᵀ b`` over the candidates.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

from ._delta_normal import delta_function_normal_equations
from .candidates import KernelCandidate, KernelSolution
from .convolve import correlate_valid_pairs, correlate_valid_stack, delta_function_shifts
from .errors import KernelSolutionError
from .image import BBox
from .spatial import SpatialBackground, SpatialFunction, SpatialKernel

__all__ = [
    "Regularization",
    "SpatialSolution",
    "build_single_kernel",
    "build_single_kernels",
    "candidate_residuals",
    "condition_number",
    "residual_statistics",
    "residual_statistics_of",
    "residuals_of",
    "solve_normal_equations",
    "solve_spatial_kernel",
]

ConditionNumberType = Literal["EIGENVALUE", "SVD"]


LambdaType = Literal["absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk"]


@dataclass(frozen=True)
class Regularization:
    """A penalty ``λ H`` added to each candidate's normal matrix (delta-function basis).

    Parameters
    ----------
    matrix : numpy.ndarray, shape (n, n)
        The regularization matrix ``H`` (background row and column zero).
    lambda_type : {"absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk"}
        ``absolute``: ``λ = lambda_value``; ``relative``: ``λ = lambda_scaling ·
        tr(M)/tr(H)``; the risk types scan ``lambda_grid`` for the λ that minimises an
        estimate of the prediction risk ``E (a_λ - a)ᵀ M (a_λ - a)`` (spec §3.8 uses
        ``E|a_λ - a|²``; see `_regularization_risks`).
    lambda_value, lambda_scaling : float
        See ``lambda_type``.
    lambda_grid : tuple of float
        λ values scanned by the risk types.
    max_condition_number : float
        The biased risk drops eigenvalues of ``M`` below ``λmax / max_condition_number``
        from its pseudo-inverse; the unbiased one keeps all non-zero eigenvalues.
    """

    matrix: np.ndarray
    lambda_type: LambdaType = "absolute"
    lambda_value: float = 0.2
    lambda_scaling: float = 1.0e-4
    lambda_grid: tuple[float, ...] = ()
    max_condition_number: float = np.inf

    def weight(self, normal_matrix: np.ndarray, normal_vector: np.ndarray) -> float:
        """Return λ for one candidate's normal equations ``M a = b``."""
        if self.lambda_type == "absolute":
            return self.lambda_value
        if self.lambda_type == "relative":
            return self.lambda_scaling * np.trace(normal_matrix) / np.trace(self.matrix)
        tolerance = (
            self.max_condition_number if self.lambda_type == "minimizeBiasedRisk" else np.inf
        )
        risks = _regularization_risks(
            normal_matrix, normal_vector, self.matrix, np.asarray(self.lambda_grid), tolerance
        )
        return float(self.lambda_grid[int(np.nanargmin(risks))])


def _regularization_risks(
    matrix: np.ndarray,
    vector: np.ndarray,
    penalty: np.ndarray,
    lambdas: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Risk estimates ``a_λᵀ M a_λ - 2 a_λᵀ M M⁺ b + 2 tr((M + λH)⁻¹ M)`` per λ.

    With ``a_λ = (M + λH)⁻¹ b`` and ``M⁺ b`` the (truncated) least-squares solution, this
    estimates, up to a constant, the prediction risk ``E (a_λ - a)ᵀ M (a_λ - a)``: the
    expected squared error of the model ``C a_λ`` of the science stamp, in units of its
    noise (Mallows' Cp, Stein's unbiased risk).  ip_diffim's estimate (spec §3.8) measures
    ``|a_λ - a|²`` on the kernel pixels instead; for noisy delta-function kernels the
    zero kernel beats the least-squares one in that metric (their noise, ``tr M⁻¹``,
    exceeds ``|a|²``), so it chose the largest λ scanned and left D/σ at 2.2-2.6.  All λ
    share one generalised eigen-decomposition ``H q = μ M q`` (``qᵀ M q = I``): with
    ``s = 1 / (1 + λ μ)`` and ``p = qᵀ b`` the risk is
    ``Σ (s² p² - 2 s p p̃) + 2 Σ s``, ``p̃ = qᵀ M M⁺ b``.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    keep = eigenvalues > max(eigenvalues[-1] / tolerance, eigenvalues[-1] * 1e-15)
    # M M⁺ b: b projected on the eigenvectors of M that are kept
    kept_vector = eigenvectors[:, keep] @ (eigenvectors[:, keep].T @ vector)
    # a relative 1e-12 ridge keeps M positive definite
    ridge = 1e-12 * np.trace(matrix) / len(matrix) * np.eye(len(matrix))
    mu, q = scipy.linalg.eigh(penalty, matrix + ridge)
    projected, kept = q.T @ vector, q.T @ kept_vector
    scale = 1.0 / (1.0 + np.outer(lambdas, mu))  # (len(lambdas), n)
    return (scale**2) @ projected**2 - 2.0 * scale @ (projected * kept) + 2.0 * scale.sum(axis=1)


def solve_normal_equations(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Solve the symmetric system ``matrix @ x = vector``, robustly.

    ``vector`` may hold several right-hand sides as columns, shape ``(n, k)``.

    An LU factorisation is used when the matrix is invertible (every pivot above
    ``n · eps · max|pivot|``); otherwise the pseudo-inverse of `eigen_solve`, which drops
    eigenvalues below ``n · eps · max|eigenvalue|`` (ip_diffim drops only exact zeros,
    which lets round-off noise into the solution).

    Raises
    ------
    KernelSolutionError
        If the solution is not finite.
    """
    n = matrix.shape[0]
    tiny = n * np.finfo(float).eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        lu, pivots = scipy.linalg.lu_factor(matrix, check_finite=False)
    diag = np.abs(np.diag(lu))
    if np.all(np.isfinite(diag)) and diag.min() > tiny * diag.max():
        solution = scipy.linalg.lu_solve((lu, pivots), vector, check_finite=False)
    else:
        solution = eigen_solve(matrix, vector)
    if not np.all(np.isfinite(solution)):
        raise KernelSolutionError(NAN_SOLUTION)
    return solution


NAN_SOLUTION = "unable to determine kernel solution: the normal equations gave NaN coefficients"


def eigen_solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Solve symmetric systems by their eigen-decomposition pseudo-inverse.

    Each system is first scaled to a unit diagonal; eigenvalues of the scaled matrix below
    ``n · eps · max|eigenvalue|`` are dropped.

    Parameters
    ----------
    matrices : numpy.ndarray, shape (..., n, n)
        Symmetric matrices; leading axes hold a batch, solved in one LAPACK call.
    vectors : numpy.ndarray, shape (..., n) or (..., n, k)
        Right-hand sides, one or ``k`` per matrix.

    Returns
    -------
    numpy.ndarray
        Solutions, shaped like ``vectors``.
    """
    matrices = np.asarray(matrices)
    single = vectors.ndim == matrices.ndim - 1
    scale, scaled, rhs = _unit_diagonal(matrices, vectors[..., None] if single else vectors)
    solution = scale[..., None] * _pseudo_inverse_solve(scaled, rhs)
    return solution[..., 0] if single else solution


def _unit_diagonal(
    matrices: np.ndarray, rhs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jacobi scaling: ``(s, S M S, S b)`` with ``S = diag(s)`` giving a unit diagonal.

    It keeps columns of very different norms (pixel values, the background's ones) from
    costing precision in a decomposition; the solution of the scaled system times ``s``
    solves the original one.
    """
    diagonal = np.diagonal(matrices, axis1=-2, axis2=-1)
    scale = 1.0 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    return scale, matrices * scale[..., :, None] * scale[..., None, :], rhs * scale[..., None]


def _pseudo_inverse_solve(matrices: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``(..., n, n)`` systems by the eigen pseudo-inverse, dropping eigenvalues below
    ``n · eps · max|eigenvalue|``."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrices)
    magnitude = np.abs(eigenvalues)
    keep = magnitude > matrices.shape[-1] * np.finfo(float).eps * magnitude.max(-1, keepdims=True)
    inverse = np.divide(1.0, eigenvalues, out=np.zeros_like(eigenvalues), where=keep)
    projected = np.swapaxes(eigenvectors, -1, -2) @ rhs
    return eigenvectors @ (projected * inverse[..., None])


def batch_solve(matrices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Solve a batch of symmetric positive semi-definite systems, each as spec §3.7 says.

    Each system is scaled to a unit diagonal and factorised (Cholesky); one whose pivots
    are all above ``n · eps · max(pivot)`` is invertible and solved directly, any other (or
    every one, if a factorisation fails) by the eigen-decomposition pseudo-inverse of
    `eigen_solve`.  For 636 systems of 28 unknowns
    this takes 14 ms instead of the 60 ms of the eigen-decomposition.

    Parameters
    ----------
    matrices : numpy.ndarray, shape (n_systems, n, n)
        Symmetric matrices.
    vectors : numpy.ndarray, shape (n_systems, n, k)
        ``k`` right-hand sides per matrix.

    Returns
    -------
    numpy.ndarray, shape (n_systems, n, k)
        The solutions.
    """
    scale, scaled, rhs = _unit_diagonal(matrices, vectors)
    try:
        pivots = np.diagonal(np.linalg.cholesky(scaled), axis1=-2, axis2=-1) ** 2
    except np.linalg.LinAlgError:  # some system is not positive definite
        invertible = np.zeros(len(matrices), dtype=bool)
    else:
        tiny = matrices.shape[-1] * np.finfo(float).eps
        invertible = pivots.min(axis=1) > tiny * pivots.max(axis=1)
    solution = np.empty(rhs.shape)
    if invertible.any():
        solution[invertible] = np.linalg.solve(scaled[invertible], rhs[invertible])
    if not invertible.all():
        solution[~invertible] = _pseudo_inverse_solve(scaled[~invertible], rhs[~invertible])
    return solution * scale[:, :, None]


def condition_number(matrix: np.ndarray, kind: ConditionNumberType = "EIGENVALUE") -> float:
    """Return ``λmax/λmin`` (EIGENVALUE; may be negative) or ``σmax/σmin`` (SVD) of a matrix."""
    if kind == "SVD":
        values = np.linalg.svd(matrix, compute_uv=False)
        return float(values[0] / values[-1]) if values[-1] != 0 else float("inf")
    eigenvalues = np.linalg.eigvalsh(matrix)
    return float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] != 0 else float("inf")


def _weights(candidate: KernelCandidate, constant_variance_weighting: bool) -> np.ndarray | float:
    """Return the inverse-variance weights of a candidate's stamp (spec §3.6 steps 1-2)."""
    if constant_variance_weighting:
        return float(_median_weights([candidate])[0])
    variance = candidate.science.variance + candidate.template.variance
    if np.any(variance < 0):
        msg = f"candidate {candidate.candidate_id}: variance less than 0.0 in its stamp"
        raise KernelSolutionError(msg)
    if np.any(variance == 0):
        msg = (
            f"candidate {candidate.candidate_id}: zero variance in its stamp, cannot inverse "
            "variance weight; set constantVarianceWeighting=True or fix the variance planes"
        )
        raise KernelSolutionError(msg)
    return 1.0 / variance


def _median_weights(batch: Sequence[KernelCandidate]) -> np.ndarray:
    """One weight per stamp, ``1 / median(var_science + var_template)`` (1 where that median
    is not positive), for a batch of same-shape stamps at once."""
    variance = np.stack([c.science.variance for c in batch])
    variance += np.stack([c.template.variance for c in batch])
    medians = np.median(variance.reshape(len(batch), -1), axis=1).astype(np.float64)
    positive = medians > 0
    return np.divide(1.0, medians, out=np.ones_like(medians), where=positive)


def _crop(array: np.ndarray, half_width: int) -> np.ndarray:
    """The last two axes of ``array`` shrunk by ``half_width`` pixels on every side."""
    return array[
        ..., half_width : array.shape[-2] - half_width, half_width : array.shape[-1] - half_width
    ]


#: Most float64 values of per-pixel work arrays (stamp pixels x planes, e.g. the design
#: columns of every basis kernel) that one batch of candidates may hold: 16 MB.
BATCH_VALUES = 2**21


def _batches(candidates: Sequence[KernelCandidate], n_planes: int) -> list[list[int]]:
    """Group candidate indices by stamp shape, in batches of at most `BATCH_VALUES` values.

    ``n_planes`` is the number of stamp-sized arrays a candidate needs in a batch.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, candidate in enumerate(candidates):
        groups.setdefault(candidate.template.image.shape, []).append(index)
    batches = []
    for (ny, nx), indices in groups.items():
        size = max(1, BATCH_VALUES // (n_planes * ny * nx))
        batches.extend(indices[start : start + size] for start in range(0, len(indices), size))
    return batches


def _solve_batch(
    matrices: np.ndarray,
    vectors: np.ndarray,
    basis_sums: np.ndarray,
    regularization: Regularization | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve candidates' normal equations ``(M + λH) a = b`` in one batch.

    Returns the solutions ``(n, n_unknowns)`` and the kernel-sum standard errors ``(n,)``
    from the covariance ``(M + λH)⁻¹``.
    """
    systems = matrices
    if regularization is not None:
        weights = [regularization.weight(m, v) for m, v in zip(matrices, vectors, strict=True)]
        systems = matrices + np.asarray(weights)[:, None, None] * regularization.matrix
    sums = np.zeros(vectors.shape[1])
    sums[: len(basis_sums)] = basis_sums
    rhs = np.stack([vectors, np.broadcast_to(sums, vectors.shape)], axis=-1)
    solved = batch_solve(systems, rhs)
    sum_variance = solved[:, :, 1] @ sums
    return solved[:, :, 0], np.sqrt(np.maximum(sum_variance, 0.0))


def _batch_weights(
    batch: Sequence[KernelCandidate],
    variances: Sequence[np.ndarray | None],
    constant_variance_weighting: bool,
    half_width: int,
    results: list,
    indices: Sequence[int],
) -> np.ndarray:
    """Return a batch's weights: ``(n,)`` if each candidate has one, else ``(n, n_pix)``.

    A candidate whose variance cannot be weighted gets weight 0 and its error in ``results``.
    """
    if constant_variance_weighting and all(v is None for v in variances):
        return _median_weights(batch)
    weights: list[np.ndarray | float] = []
    for index, candidate, variance in zip(indices, batch, variances, strict=True):
        if variance is not None:
            weights.append(1.0 / variance.ravel())
            continue
        try:
            weight = _weights(candidate, constant_variance_weighting)
        except KernelSolutionError as error:
            results[index], weight = error, 0.0
        weights.append(weight if np.isscalar(weight) else _crop(weight, half_width).ravel())
    n_pix = (batch[0].template.image.shape[0] - 2 * half_width) * (
        batch[0].template.image.shape[1] - 2 * half_width
    )
    return np.stack([np.broadcast_to(w, n_pix) for w in weights]).astype(float)


def _dense_normal_equations(
    templates: np.ndarray,
    data: np.ndarray,
    basis: np.ndarray,
    weights: np.ndarray,
    *,
    fit_background: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``M = Cᵀ W C``, ``b = Cᵀ W d`` and the design columns ``C = T ⋆ B``.

    ``weights`` is ``(n,)`` (one per candidate) or ``(n, n_pix)``.  The columns are
    correlated in the templates' precision (float32 stamps: single-precision FFTs, 2.5x
    faster, with rounding errors of the order of the pixels' own) and the products summed
    in float64.  The columns are returned as ``(n, n_basis, n_pix)`` float64.
    """
    n, n_basis = len(templates), basis.shape[0]
    design = correlate_valid_stack(templates, basis.astype(templates.dtype))
    columns = design.reshape(n, n_basis, -1).astype(np.float64)  # (n, n_basis, n_pix)
    data = data.reshape(n, -1)
    if weights.ndim == 1:  # one weight per candidate: scale the unweighted sums
        weighted, scale = columns, weights[:, None]
        pixel_weights = np.ones(data.shape[1])
    else:
        weighted, scale = columns * weights[:, None, :], np.ones((n, 1))
        pixel_weights = weights
    n_unknowns = n_basis + int(fit_background)
    matrices = np.empty((n, n_unknowns, n_unknowns))
    matrices[:, :n_basis, :n_basis] = weighted @ np.swapaxes(columns, 1, 2)
    vectors = np.empty((n, n_unknowns))
    vectors[:, :n_basis] = np.einsum("nkp,np->nk", weighted, data)
    if fit_background:  # the constant column: sums of the weighted columns and data
        matrices[:, :n_basis, n_basis] = weighted.sum(axis=2)
        matrices[:, n_basis, :n_basis] = matrices[:, :n_basis, n_basis]
        matrices[:, n_basis, n_basis] = np.broadcast_to(pixel_weights, data.shape).sum(axis=1)
        vectors[:, n_basis] = (data * pixel_weights).sum(axis=1)
    matrices *= scale[:, :, None]
    vectors *= scale
    return matrices, vectors, columns


def build_single_kernels(
    candidates: Sequence[KernelCandidate],
    basis: np.ndarray,
    *,
    fit_background: bool,
    constant_variance_weighting: bool = True,
    regularization: Regularization | None = None,
    condition_number_type: ConditionNumberType = "EIGENVALUE",
    max_condition_number: float | None = None,
    variances: Sequence[np.ndarray | None] | None = None,
) -> list[KernelSolution | KernelSolutionError]:
    """Fit many candidates' kernels (and backgrounds) by weighted linear least squares.

    Candidates with stamps of the same shape are fitted together: their stamps are
    correlated with the basis in one batched call and their normal equations built by one
    batched matrix product, which is what makes hundreds of candidates cheap.  A
    delta-function basis with one weight per candidate (``constant_variance_weighting`` and
    no ``variances``) skips the design columns: its normal matrix is summed from products of
    pairs of template rows (`delta_function_normal_equations`), equal to rounding and about
    3x faster for 21² kernels.

    Parameters
    ----------
    candidates : sequence of KernelCandidate
        The stamps; each fit uses its stamp shrunk by the kernel half-width.
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels.
    fit_background : bool
        Also fit a constant background under each stamp.
    constant_variance_weighting : bool
        Weight every pixel by the stamp's median ``var_science + var_template``.
    regularization : Regularization, optional
        Penalty added to the normal matrix (the stored ``M`` stays unregularised).
    condition_number_type : {"EIGENVALUE", "SVD"}
        How the condition number is measured.
    max_condition_number : float, optional
        If given and exceeded, the candidate's fit fails instead of being solved.
    variances : sequence of numpy.ndarray or None, optional
        Per candidate, the per-pixel variance of its fit region (stamp shrunk by the kernel
        half-width) to weight by instead of the stamps' variance planes, e.g. the variance
        of a first fit's difference (``iterateSingleKernel``); None entries use the planes.

    Returns
    -------
    list of KernelSolution or KernelSolutionError
        One per candidate, in order: its solution, or the error that stopped its fit (bad
        variance, a condition number above the limit, a non-finite solution).
    """
    half_width = basis.shape[1] // 2
    n_basis = basis.shape[0]
    basis_sums = basis.sum(axis=(1, 2))
    shifts = delta_function_shifts(basis)
    results: list[KernelSolution | KernelSolutionError | None] = [None] * len(candidates)
    for indices in _batches(candidates, n_basis + 1):
        batch = [candidates[i] for i in indices]
        templates = np.stack([c.template.image for c in batch])
        data = _crop(np.stack([c.science.image for c in batch]), half_width).astype(float)
        batch_variances = [None if variances is None else variances[i] for i in indices]
        weights = _batch_weights(
            batch, batch_variances, constant_variance_weighting, half_width, results, indices
        )
        models = None  # T ⋆ K over the fit region, from the design columns when formed
        if shifts is not None and weights.ndim == 1:
            matrices, vectors = delta_function_normal_equations(
                templates, data, shifts, weights,
                size=basis.shape[1], fit_background=fit_background,
            )  # fmt: skip
            solutions, sum_errors = _solve_batch(matrices, vectors, basis_sums, regularization)
        else:
            matrices, vectors, columns = _dense_normal_equations(
                templates, data, basis, weights, fit_background=fit_background
            )
            solutions, sum_errors = _solve_batch(matrices, vectors, basis_sums, regularization)
            models = np.einsum("nk,nkp->np", solutions[:, :n_basis], columns)
            models = models.reshape(data.shape)
        for row, index in enumerate(indices):
            if results[index] is not None:
                continue
            cond = float("nan")
            if max_condition_number is not None:
                cond = condition_number(matrices[row], condition_number_type)
                if not 0 < cond <= max_condition_number:
                    limit = f"(0, {max_condition_number:.3g}]"
                    results[index] = KernelSolutionError(
                        f"condition number {cond:.3g} outside {limit}"
                    )
                    continue
            solution = solutions[row]
            if not np.all(np.isfinite(solution)):
                results[index] = KernelSolutionError(NAN_SOLUTION)
                continue
            coefficients = solution[:n_basis]
            results[index] = KernelSolution(
                coefficients=coefficients,
                background=float(solution[n_basis]) if fit_background else 0.0,
                kernel_image=np.tensordot(coefficients, basis, axes=1),
                normal_matrix=matrices[row],
                normal_vector=vectors[row],
                condition_number=cond,
                kernel_sum_error=float(sum_errors[row]),
                convolved_template=None if models is None else models[row],
            )
    return results


def build_single_kernel(
    candidate: KernelCandidate,
    basis: np.ndarray,
    *,
    variance: np.ndarray | None = None,
    **options: object,
) -> KernelSolution:
    """Fit one candidate's kernel (and background); see `build_single_kernels`.

    Parameters
    ----------
    candidate : KernelCandidate
        The stamps; the fit uses the stamp shrunk by the kernel half-width.
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels.
    variance : numpy.ndarray, optional
        Per-pixel variance of the fit region to weight by instead of the variance planes.
    **options
        ``fit_background`` (required), ``constant_variance_weighting``,
        ``regularization``, ``condition_number_type``, ``max_condition_number`` as in
        `build_single_kernels`.

    Returns
    -------
    KernelSolution

    Raises
    ------
    KernelSolutionError
        Bad variance, a condition number above the limit, or a non-finite solution.
    """
    (result,) = build_single_kernels([candidate], basis, variances=[variance], **options)
    if isinstance(result, KernelSolutionError):
        raise result
    return result


def _residual_batches(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    bad_mask_bits: int,
    convolved_templates: Sequence[np.ndarray | None] | None = None,
) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, difference, variance, usable)`` for batches of same-shape stamps.

    The template stamps and variances of a batch are correlated with their ``K`` and
    ``K²`` in one FFT; the arrays have shape ``(len(indices), ny, nx)``.  Where every
    candidate of a batch has its ``T ⋆ K`` in ``convolved_templates`` (a single-kernel
    fit's model), only the variances are correlated.
    """
    for indices in _batches(candidates, 4):
        batch = [candidates[i] for i in indices]
        n = len(batch)
        kernels = np.stack([kernel_images[i] for i in indices])
        half_width = kernels.shape[1] // 2
        models = (
            [None] * n
            if convolved_templates is None
            else [convolved_templates[i] for i in indices]
        )
        if any(model is None for model in models):
            stamps = np.stack(
                [c.template.image for c in batch] + [c.template.variance for c in batch]
            )
            squares = np.concatenate([kernels, kernels**2]).astype(stamps.dtype)  # float32 FFTs
            convolved = correlate_valid_pairs(stamps, squares)
            models, convolved_variance = convolved[:n], convolved[n:]
        else:
            stamps = np.stack([c.template.variance for c in batch])
            convolved_variance = correlate_valid_pairs(stamps, (kernels**2).astype(stamps.dtype))
        science_image, science_variance, science_mask = (
            _crop(np.stack([getattr(c.science, plane) for c in batch]), half_width)
            for plane in ("image", "variance", "mask")
        )
        offsets = np.array([backgrounds[i] for i in indices])[:, None, None]
        difference = science_image - np.asarray(models) - offsets
        variance = convolved_variance + science_variance
        bad = (science_mask & bad_mask_bits) != 0
        template_bad = (np.stack([c.template.mask for c in batch]) & bad_mask_bits) != 0
        if template_bad.any():
            box = np.ones((1, *kernels.shape[1:]))
            bad |= correlate_valid_stack(template_bad.astype(float), box)[:, 0] > 0.5
        yield indices, difference, variance, ~bad


def residuals_of(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    bad_mask_bits: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Return each candidate's difference ``I - (K ⋆ T + b)`` over its fit region.

    Returns
    -------
    list of (difference, variance, usable)
        Per candidate: the difference (science units), its variance
        ``var_I + K² ⋆ var_T``, and ``usable``, False where a bad-plane bit of the science
        pixel, or of any template pixel under the kernel footprint, is set.
    """
    results: list = [None] * len(candidates)
    for indices, difference, variance, usable in _residual_batches(
        candidates, kernel_images, backgrounds, bad_mask_bits
    ):
        for row, index in enumerate(indices):
            results[index] = (difference[row], variance[row], usable[row])
    return results


def candidate_residuals(
    candidate: KernelCandidate, kernel_image: np.ndarray, background: float, bad_mask_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one candidate's ``(difference, variance, usable)``; see `residuals_of`."""
    return residuals_of([candidate], [kernel_image], [background], bad_mask_bits)[0]


def residual_statistics_of(
    candidates: Sequence[KernelCandidate],
    kernel_images: Sequence[np.ndarray],
    backgrounds: Sequence[float],
    *,
    bad_mask_bits: int,
    core_radius: int | None = None,
    convolved_templates: Sequence[np.ndarray | None] | None = None,
) -> list[tuple[float, float, int]]:
    """Return the mean and standard deviation of ``D / σ`` on candidates (spec §3.9 step 2).

    Parameters
    ----------
    candidates : sequence of KernelCandidate
        The stamps.
    kernel_images : sequence of numpy.ndarray
        Per candidate, the kernel image applied to its template stamp.
    backgrounds : sequence of float
        Per candidate, the background subtracted with it.
    bad_mask_bits : int
        Pixels flagged with these bits are ignored.
    core_radius : int, optional
        If given, use only the ``(2 r + 1)²`` core box around each stamp centre.
    convolved_templates : sequence of numpy.ndarray or None, optional
        Per candidate, its ``T ⋆ K`` over the fit region if known (a single-kernel fit's
        `KernelSolution.convolved_template`), which spares correlating its template.

    Returns
    -------
    list of (mean, std, n)
        Mean and standard deviation (``nan`` when fewer than two pixels are usable) and
        the number of pixels used, per candidate.
    """
    statistics: list = [None] * len(candidates)
    for indices, difference, variance, usable in _residual_batches(
        candidates, kernel_images, backgrounds, bad_mask_bits, convolved_templates
    ):
        if core_radius is not None:
            ny, nx = difference.shape[1:]
            core = np.zeros((ny, nx), dtype=bool)
            core[
                max(ny // 2 - core_radius, 0) : ny // 2 + core_radius + 1,
                max(nx // 2 - core_radius, 0) : nx // 2 + core_radius + 1,
            ] = True
            usable &= core
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized = difference / np.sqrt(variance)
            usable &= np.isfinite(normalized) & (variance > 0)
            n = usable.sum(axis=(1, 2))
            mean = np.where(usable, normalized, 0.0).sum(axis=(1, 2)) / n
            deviations = np.where(usable, normalized - mean[:, None, None], 0.0)
            std = np.sqrt((deviations**2).sum(axis=(1, 2)) / (n - 1))
        for row, index in enumerate(indices):
            if n[row] < 2:
                statistics[index] = (float("nan"), float("nan"), int(n[row]))
            else:
                statistics[index] = (float(mean[row]), float(std[row]), int(n[row]))
    return statistics


def residual_statistics(
    candidate: KernelCandidate,
    kernel_image: np.ndarray,
    background: float,
    *,
    bad_mask_bits: int,
    core_radius: int | None = None,
) -> tuple[float, float, int]:
    """Return ``(mean, std, n)`` of ``D / σ`` on one candidate; see `residual_statistics_of`."""
    return residual_statistics_of(
        [candidate], [kernel_image], [background],
        bad_mask_bits=bad_mask_bits, core_radius=core_radius,
    )[0]  # fmt: skip


@dataclass(frozen=True)
class SpatialSolution:
    """The spatial kernel and background fitted over all candidates."""

    kernel: SpatialKernel
    background: SpatialBackground
    condition_number: float
    n_candidates: int


def _term_matrix(
    candidates: Sequence[KernelCandidate],
    n_basis: int,
    kernel_function: SpatialFunction,
    background_function: SpatialFunction | None,
) -> np.ndarray:
    """Return ``Q[c, i, t]``: spatial term ``t`` at candidate ``c`` for coefficient ``i``.

    Rows ``i < n_basis`` hold the kernel terms; the last row (when a background is fitted)
    holds the background terms; shorter rows are zero-padded.
    """
    x = np.array([c.x for c in candidates])
    y = np.array([c.y for c in candidates])
    kernel_terms = kernel_function.terms(x, y).T
    n_terms = kernel_function.n_terms
    n_rows = n_basis
    if background_function is not None:
        n_terms = max(n_terms, background_function.n_terms)
        n_rows += 1
    terms = np.zeros((len(candidates), n_rows, n_terms))
    terms[:, :n_basis, : kernel_function.n_terms] = kernel_terms[:, None, :]
    if background_function is not None:
        terms[:, n_basis, : background_function.n_terms] = background_function.terms(x, y).T
    return terms


def _spatial_normal_matrix(matrices: np.ndarray, terms: np.ndarray, n_basis: int) -> np.ndarray:
    """Return ``Σ_c M_c[i, j] Q_c[i, a] Q_c[j, b]`` over candidates: the system for θ[i, a].

    ``matrices`` is ``(n_candidates, n_rows, n_rows)`` and ``terms`` the `_term_matrix`
    ``Q``, ``(n_candidates, n_rows, n_terms)``.  The kernel rows ``i < n_basis`` share one
    term vector, so all their blocks come from one matrix product over the candidates,
    ``(Q_c[0, a] Q_c[0, b])ᵀ @ M_c``; the background row and column, if any, are then
    overwritten with their own terms.  (One einsum over all four indices builds a
    ``(n_candidates, n_rows, n_rows, n_terms)`` intermediate: 0.9 GB and seconds for 100
    delta-function candidates.)
    """
    n_candidates, n_rows, n_terms = terms.shape
    kernel_terms = terms[:, 0]
    pairs = (kernel_terms[:, :, None] * kernel_terms[:, None, :]).reshape(n_candidates, -1)
    full = pairs.T @ matrices.reshape(n_candidates, -1)
    full = full.reshape(n_terms, n_terms, n_rows, n_rows).transpose(2, 0, 3, 1).copy()
    if n_rows > n_basis:
        background = slice(n_basis, n_rows)
        full[background] = np.einsum(
            "cij,cia,cjb->iajb", matrices[:, background], terms[:, background], terms
        )
        full[:, :, background] = np.einsum(
            "cij,cia,cjb->iajb", matrices[:, :, background], terms, terms[:, background]
        )
    return full


def solve_spatial_kernel(
    candidates: Sequence[KernelCandidate],
    basis: np.ndarray,
    *,
    bbox: BBox,
    model_type: Literal["chebyshev1", "polynomial"],
    kernel_order: int,
    background_order: int | None,
    constant_first_term: bool,
    condition_number_type: ConditionNumberType = "EIGENVALUE",
) -> SpatialSolution:
    """Fit the spatial kernel and background to the candidates' normal equations.

    Parameters
    ----------
    candidates : sequence of KernelCandidate
        Built candidates; their latest (``recent``) normal equations are used, which must
        match ``basis``.
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels.
    bbox : BBox
        Domain of the spatial functions (the cell set box).
    model_type : {"chebyshev1", "polynomial"}
        Spatial function family.
    kernel_order : int
        Order of the kernel coefficients' polynomials.
    background_order : int or None
        Order of the background polynomial; None when no background is fitted.
    constant_first_term : bool
        Give basis 0 a single spatially constant coefficient (AL and PCA bases).
    condition_number_type : {"EIGENVALUE", "SVD"}
        For the reported condition number of the spatial system.

    Returns
    -------
    SpatialSolution
    """
    n_basis = basis.shape[0]
    kernel_function = SpatialFunction(model_type, kernel_order, bbox)
    background_function = (
        None if background_order is None else SpatialFunction(model_type, background_order, bbox)
    )
    terms = _term_matrix(candidates, n_basis, kernel_function, background_function)
    matrices = np.stack([c.recent.normal_matrix for c in candidates])
    vectors = np.stack([c.recent.normal_vector for c in candidates])
    n_rows, n_terms = terms.shape[1:]
    full_matrix = _spatial_normal_matrix(matrices, terms, n_basis)
    full_vector = np.einsum("ci,cia->ia", vectors, terms)
    n_kt = kernel_function.n_terms
    free = np.zeros((n_rows, n_terms), dtype=bool)
    free[:n_basis, :n_kt] = True
    if constant_first_term:
        free[0, 1:] = False
    if background_function is not None:
        free[n_basis, : background_function.n_terms] = True
    index = np.flatnonzero(free.ravel())
    matrix = full_matrix.reshape(n_rows * n_terms, -1)[np.ix_(index, index)]
    theta = np.zeros(n_rows * n_terms)
    theta[index] = solve_normal_equations(matrix, full_vector.ravel()[index])
    theta = theta.reshape(n_rows, n_terms)
    coefficients = theta[:n_basis, :n_kt].copy()
    if background_function is None:
        background = SpatialBackground.zero(bbox)
    else:
        background = SpatialBackground(
            background_function, theta[n_basis, : background_function.n_terms].copy()
        )
    return SpatialSolution(
        kernel=SpatialKernel(basis, coefficients, kernel_function),
        background=background,
        condition_number=condition_number(matrix, condition_number_type),
        n_candidates=len(candidates),
    )
