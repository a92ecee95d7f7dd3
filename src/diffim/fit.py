"""The kernel-fitting stages and their iteration (spec §3.9, §3.11).

The stages follow ip_diffim's visitors, in order:

1. **single kernels**: fit a kernel to each of the best ``nStarPerCell`` candidates of every
   cell; reject those whose normalised residuals ``D/σ`` have ``|mean|`` or ``std`` above the
   limits, and fit replacements until a pass rejects nothing;
2. **kernel sums**: sigma-clip the candidates' kernel sums (variable stars, stars saturated
   in one image only); any rejection restarts at stage 1;
3. **spatial fit**: fit the spatially varying kernel and background to all good candidates;
4. **assessment**: re-compute each candidate's residuals with the spatial model and reject
   the bad ones; if any was rejected, go back to stage 1 (at most
   ``maxSpatialIterations`` times).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from .basis import kernel_pca_basis
from .candidates import CandidateStatus, KernelCandidate, KernelSolution, SpatialCellSet
from .errors import KernelSolutionError, NoKernelCandidatesError
from .progress import progress_bar
from .solve import (
    Regularization,
    SpatialSolution,
    build_single_kernels,
    residual_statistics_of,
    residuals_of,
    solve_spatial_kernel,
)
from .stats import clipped_mean_std

__all__ = [
    "FitResult",
    "FitSettings",
    "fit_spatial_kernel",
    "select_basis_by_bic",
]

log = logging.getLogger(__name__)

#: Converts an interquartile range to the sigma of a Gaussian (afw's constant).

# BLAS note: the fitting stages run with single-threaded BLAS.  They multiply and decompose
# thousands of small matrices (28 x 28 for the default basis), for which OpenBLAS's threads
# only add overhead; while another process keeps a core busy (pytest -n 2, Dask workers)
# its spinning threads made a batch of 40 eigen-decompositions 13x slower (119 ms instead
# of 9 ms on 2 cores).

STAGE_BUILD = "singleKernel"
STAGE_KSUM = "kernelSum"
STAGE_SPATIAL = "spatial"
STAGE_PCA = "pca"


@dataclass(frozen=True)
class FitSettings:
    """Everything the fitting stages need, taken once from the configuration.

    The fields mirror ip_diffim's config fields (in snake_case); see `diffim.config`.
    """

    n_star_per_cell: int = 3
    max_spatial_iterations: int = 3
    fit_background: bool = False
    model_type: Literal["chebyshev1", "polynomial"] = "chebyshev1"
    kernel_order: int = 2
    background_order: int = 1
    constant_first_term: bool = True
    single_kernel_clipping: bool = True
    kernel_sum_clipping: bool = True
    spatial_kernel_clipping: bool = True
    residual_mean_max: float = 0.25
    residual_std_max: float = 1.5
    max_ksum_sigma: float = 3.0
    check_condition_number: bool = False
    max_condition_number: float = 5.0e7
    condition_number_type: Literal["EIGENVALUE", "SVD"] = "EIGENVALUE"
    use_core_stats: bool = False
    core_radius: int = 3
    constant_variance_weighting: bool = True
    iterate_single_kernel: bool = False
    bad_mask_bits: int = 0
    use_pca: bool = False
    subtract_mean_for_pca: bool = True
    n_principal_components: int = 5


@dataclass
class FitResult:
    """Outcome of `fit_spatial_kernel`.

    Attributes
    ----------
    solution : SpatialSolution
        Spatial kernel, background and the condition number of the spatial system.
    rejected : dict of str to int
        Candidates rejected per stage (``singleKernel``, ``kernelSum``, ``spatial``).
    kernel_sum_mean, kernel_sum_std : float
        Clipped mean and standard deviation of the candidates' kernel sums.
    n_good : int
        Candidates GOOD after the last assessment.
    spatial_residual_mean, spatial_residual_std : float
        Mean over GOOD candidates of the spatial model's residual mean and std of ``D/σ``.
    iterations : int
        Spatial iterations run.
    """

    solution: SpatialSolution
    rejected: dict[str, int] = field(default_factory=dict)
    kernel_sum_mean: float = float("nan")
    kernel_sum_std: float = float("nan")
    n_good: int = 0
    spatial_residual_mean: float = float("nan")
    spatial_residual_std: float = float("nan")
    iterations: int = 0


def _assess(
    candidates: list[KernelCandidate],
    kernel_images: list[np.ndarray],
    backgrounds: list[float],
    stage: str,
    clip: bool,
    settings: FitSettings,
    convolved_templates: list[np.ndarray | None] | None = None,
) -> list[bool]:
    """Measure candidates' residuals; mark each GOOD or BAD; return which were rejected.

    ``convolved_templates`` are the candidates' ``T ⋆ K``, when known (single-kernel fits).
    """
    statistics = residual_statistics_of(
        candidates,
        kernel_images,
        backgrounds,
        bad_mask_bits=settings.bad_mask_bits,
        core_radius=settings.core_radius if settings.use_core_stats else None,
        convolved_templates=convolved_templates,
    )
    rejected = []
    for candidate, (mean, std, _) in zip(candidates, statistics, strict=True):
        candidate.residuals[stage] = (mean, std)
        reason = ""
        if not (np.isfinite(mean) and np.isfinite(std)):
            reason = "residual statistics are not finite"
        elif clip and abs(mean) > settings.residual_mean_max:
            reason = f"|mean(D/σ)| = {abs(mean):.3g} > {settings.residual_mean_max}"
        elif clip and std > settings.residual_std_max:
            reason = f"std(D/σ) = {std:.3g} > {settings.residual_std_max}"
        if reason:
            candidate.reject(stage, reason)
        else:
            candidate.status = CandidateStatus.GOOD
        rejected.append(bool(reason))
    return rejected


def _build_candidates(
    candidates: list[KernelCandidate],
    basis: np.ndarray,
    settings: FitSettings,
    regularization: Regularization | None,
    solution_name: str = "ORIG",
) -> list[bool]:
    """Fit candidates' kernels, store them as ``solution_name`` and assess them.

    Returns, per candidate, True if it was rejected.
    """
    options = {
        "fit_background": settings.fit_background,
        "constant_variance_weighting": settings.constant_variance_weighting,
        "regularization": regularization,
        "condition_number_type": settings.condition_number_type,
        "max_condition_number": (
            settings.max_condition_number if settings.check_condition_number else None
        ),
    }
    solutions = build_single_kernels(candidates, basis, **options)
    if settings.iterate_single_kernel and not settings.constant_variance_weighting:
        built = [i for i, s in enumerate(solutions) if isinstance(s, KernelSolution)]
        residuals = residuals_of(
            [candidates[i] for i in built],
            [solutions[i].kernel_image for i in built],
            [solutions[i].background for i in built],
            0,
        )
        again = build_single_kernels(
            [candidates[i] for i in built], basis,
            variances=[variance for _, variance, _ in residuals], **options,
        )  # fmt: skip
        for i, solution in zip(built, again, strict=True):
            solutions[i] = solution
    rejected = [False] * len(candidates)
    fitted = []
    for i, (candidate, solution) in enumerate(zip(candidates, solutions, strict=True)):
        if isinstance(solution, KernelSolutionError):
            candidate.reject(STAGE_BUILD, str(solution))
            rejected[i] = True
        else:  # the model serves only the assessment below: 2.6 MiB for 630 candidates
            candidate.solutions[solution_name] = replace(solution, convolved_template=None)
            fitted.append(i)
    assessed = _assess(
        [candidates[i] for i in fitted],
        [solutions[i].kernel_image for i in fitted],
        [solutions[i].background for i in fitted],
        STAGE_BUILD,
        settings.single_kernel_clipping,
        settings,
        [solutions[i].convolved_template for i in fitted],
    )
    for i, was_rejected in zip(fitted, assessed, strict=True):
        rejected[i] = was_rejected
    return rejected


def _build_single_kernels(
    cell_set: SpatialCellSet,
    basis: np.ndarray,
    settings: FitSettings,
    regularization: Regularization | None,
    rejected: Counter,
) -> None:
    """Fit every visited, not yet built candidate; repeat until a pass rejects none."""
    with progress_bar(None, "fitting kernel candidates") as bar:
        while True:
            todo = [c for c in cell_set.visit(settings.n_star_per_cell) if not c.is_built]
            n_rejected = sum(_build_candidates(todo, basis, settings, regularization))
            bar.update(len(todo))
            rejected[STAGE_BUILD] += n_rejected
            log.debug("single-kernel pass: %d fitted, %d rejected", len(todo), n_rejected)
            if n_rejected == 0:
                return


def _last_stage(rejected: Counter) -> str:
    """The stage that rejected the most candidates (where a fit ran out of them)."""
    return max(rejected, key=rejected.get) if any(rejected.values()) else STAGE_KSUM


def _clip_kernel_sums(
    cell_set: SpatialCellSet, settings: FitSettings, rejected: Counter
) -> tuple[int, float, float]:
    """Sigma-clip the candidates' kernel sums; return (n rejected, mean, std).

    A candidate is rejected when ``|κ - mean| > maxKsumSigma · sqrt(std² + err²)``, with
    ``mean`` and ``std`` afw's clipped statistics of the visited candidates and ``err`` the
    candidate's own least-squares kernel-sum uncertainty.  ip_diffim uses ``std`` alone; as
    rejected candidates are replaced and the statistics recomputed on ever fewer, similar
    values, ``std`` can shrink below the measurement noise and reject good stars one after
    the other.  With noise-free sums (``err = 0``) both rules agree.
    """
    visited = list(cell_set.visit(settings.n_star_per_cell))
    if not visited:
        raise NoKernelCandidatesError(len(cell_set), dict(rejected), _last_stage(rejected))
    sums = np.array([c.solutions["ORIG"].kernel_sum for c in visited])
    errors = np.array([c.solutions["ORIG"].kernel_sum_error for c in visited])
    mean, std = clipped_mean_std(sums)
    if not np.isfinite(mean):
        raise NoKernelCandidatesError(len(cell_set), dict(rejected), _last_stage(rejected))
    thresholds = settings.max_ksum_sigma * np.sqrt(std**2 + np.nan_to_num(errors) ** 2)
    n_rejected = 0
    if settings.kernel_sum_clipping:
        for candidate, kernel_sum, threshold in zip(visited, sums, thresholds, strict=True):
            if abs(kernel_sum - mean) > threshold:
                candidate.reject(
                    STAGE_KSUM,
                    f"kernel sum {kernel_sum:.4g} differs from the mean {mean:.4g} by more "
                    f"than {settings.max_ksum_sigma} σ "
                    f"({threshold / settings.max_ksum_sigma:.3g})",
                )
                n_rejected += 1
    rejected[STAGE_KSUM] += n_rejected
    log.debug("kernel-sum clipping: mean %.5g std %.3g, %d rejected", mean, std, n_rejected)
    return n_rejected, mean, std


def _relative_kernel_noise(sums: np.ndarray, sum_errors: np.ndarray) -> np.ndarray:
    """Noise of unit-sum kernels, for weighting the PCA: each kernel sum's relative error.

    Every pixel of a candidate's kernel has noise in proportion to its sum's error (both
    scale as ``1 / (S/N)`` of the star).  Errors that are not positive and finite get the
    median of the others (all of them: equal weights).
    """
    noise = np.abs(sum_errors / sums)
    valid = np.isfinite(noise) & (noise > 0)
    fill = float(np.median(noise[valid])) if valid.any() else 1.0
    return np.where(valid, noise, fill)


def _pca_basis(
    cell_set: SpatialCellSet, settings: FitSettings, rejected: Counter
) -> tuple[int, np.ndarray]:
    """Build a PCA basis from the visited candidates' kernels and re-fit them with it.

    Returns the number of candidates the re-fit rejected and the basis (spec §3.10).
    Unlike ip_diffim, each kernel is weighted by its noise (`_relative_kernel_noise`,
    `kernel_pca_basis`).
    """
    visited = list(cell_set.visit(settings.n_star_per_cell))
    solutions = [c.solutions["ORIG"] for c in visited]
    sums = np.array([s.kernel_sum for s in solutions])
    kernels = np.array([s.kernel_image for s in solutions]) / sums[:, None, None]
    basis, _ = kernel_pca_basis(
        kernels,
        n_components=settings.n_principal_components,
        subtract_mean=settings.subtract_mean_for_pca,
        noise=_relative_kernel_noise(sums, np.array([s.kernel_sum_error for s in solutions])),
    )
    n_rejected = 0
    flags = _build_candidates(visited, basis, settings, None, solution_name="PCA")
    for candidate, was_rejected in zip(visited, flags, strict=True):
        if was_rejected:
            candidate.rejected_by = STAGE_PCA
            n_rejected += 1
    rejected[STAGE_PCA] += n_rejected
    log.debug(
        "PCA basis of %d kernels from %d candidates: %d rejected",
        len(basis),
        len(visited),
        n_rejected,
    )
    return n_rejected, basis


def _solve_spatial(
    cell_set: SpatialCellSet, basis: np.ndarray, settings: FitSettings, rejected: Counter
) -> SpatialSolution:
    candidates = [c for c in cell_set.visit(settings.n_star_per_cell) if c.is_built]
    if not candidates:
        raise NoKernelCandidatesError(len(cell_set), dict(rejected), STAGE_SPATIAL)
    return solve_spatial_kernel(
        candidates,
        basis,
        bbox=cell_set.bbox,
        model_type=settings.model_type,
        kernel_order=settings.kernel_order,
        background_order=settings.background_order if settings.fit_background else None,
        constant_first_term=settings.constant_first_term,
        condition_number_type=settings.condition_number_type,
    )


def _assess_spatial(
    cell_set: SpatialCellSet, solution: SpatialSolution, settings: FitSettings, clip: bool
) -> tuple[int, int]:
    """Assess the visited candidates with the spatial model; return (n good, n rejected)."""
    visited = list(cell_set.visit(settings.n_star_per_cell))
    x, y = np.array([c.x for c in visited]), np.array([c.y for c in visited])
    kernel_images = list(solution.kernel.image_at(x, y))
    backgrounds = list(solution.background(x, y))
    rejected = _assess(visited, kernel_images, backgrounds, STAGE_SPATIAL, clip, settings)
    return len(visited) - sum(rejected), sum(rejected)


def fit_spatial_kernel(
    cell_set: SpatialCellSet,
    basis: np.ndarray,
    settings: FitSettings,
    regularization: Regularization | None = None,
) -> FitResult:
    """Run the fitting stages on a cell set and return the spatial solution.

    Parameters
    ----------
    cell_set : SpatialCellSet
        Candidates; their status, solutions and residuals are updated in place.
    basis : numpy.ndarray, shape (n_basis, size, size)
        Basis kernels.
    settings : FitSettings
        Clipping limits, spatial orders, weighting.
    regularization : Regularization, optional
        Penalty for the per-candidate fits (delta-function basis).

    Returns
    -------
    FitResult

    Raises
    ------
    NoKernelCandidatesError
        When a stage is left without any usable candidate.
    """
    with threadpool_limits(limits=1, user_api="blas"):  # see the BLAS note above
        return _fit_spatial_kernel(cell_set, basis, settings, regularization)


def _fit_spatial_kernel(
    cell_set: SpatialCellSet,
    basis: np.ndarray,
    settings: FitSettings,
    regularization: Regularization | None,
) -> FitResult:
    rejected: Counter = Counter({STAGE_BUILD: 0, STAGE_KSUM: 0, STAGE_SPATIAL: 0})
    if settings.use_pca:
        rejected[STAGE_PCA] = 0
    spatial_basis = basis
    iteration = 0
    n_spatial_rejected = 0
    ksum_mean = ksum_std = float("nan")
    solution = None
    while iteration < settings.max_spatial_iterations:
        _build_single_kernels(cell_set, basis, settings, regularization, rejected)
        n_ksum_rejected, ksum_mean, ksum_std = _clip_kernel_sums(cell_set, settings, rejected)
        if n_ksum_rejected:
            continue
        if settings.use_pca:
            n_pca_rejected, spatial_basis = _pca_basis(cell_set, settings, rejected)
            if n_pca_rejected:
                continue
        solution = _solve_spatial(cell_set, spatial_basis, settings, rejected)
        n_good, n_spatial_rejected = _assess_spatial(
            cell_set, solution, settings, settings.spatial_kernel_clipping
        )
        rejected[STAGE_SPATIAL] += n_spatial_rejected
        log.info(
            "spatial iteration %d: %d candidates good, %d rejected",
            iteration + 1,
            n_good,
            n_spatial_rejected,
        )
        if n_good == 0 and n_spatial_rejected == 0:
            raise NoKernelCandidatesError(len(cell_set), dict(rejected), STAGE_SPATIAL)
        if n_spatial_rejected == 0:
            break
        iteration += 1
    if solution is None or n_spatial_rejected:
        # Replacements of the last rejected candidates are fitted and clipped, then the
        # spatial model is solved once more (ip_diffim re-solves without building them).
        _build_single_kernels(cell_set, basis, settings, regularization, rejected)
        _, ksum_mean, ksum_std = _clip_kernel_sums(cell_set, settings, rejected)
        if settings.use_pca:
            _, spatial_basis = _pca_basis(cell_set, settings, rejected)
        solution = _solve_spatial(cell_set, spatial_basis, settings, rejected)
        _assess_spatial(cell_set, solution, settings, clip=False)
    good = [
        c
        for c in cell_set.visit(settings.n_star_per_cell)
        if c.status is CandidateStatus.GOOD and STAGE_SPATIAL in c.residuals
    ]
    means = [c.residuals[STAGE_SPATIAL][0] for c in good]
    stds = [c.residuals[STAGE_SPATIAL][1] for c in good]
    return FitResult(
        solution=solution,
        rejected=dict(rejected),
        kernel_sum_mean=ksum_mean,
        kernel_sum_std=ksum_std,
        n_good=len(good),
        spatial_residual_mean=float(np.mean(means)) if means else float("nan"),
        spatial_residual_std=float(np.mean(stds)) if stds else float("nan"),
        iterations=iteration + 1,
    )


def _bic_scores(
    candidates: list[KernelCandidate],
    bases: dict[tuple[int, ...], np.ndarray],
    settings: FitSettings,
) -> list[dict]:
    """Per candidate, ``BIC = Σ (D/σ)² + k ln n`` of each basis whose fit passes clipping."""
    scores: list[dict] = [{} for _ in candidates]
    for key, basis in bases.items():
        for candidate in candidates:
            candidate.status, candidate.solutions = CandidateStatus.UNKNOWN, {}
        flags = _build_candidates(candidates, basis, settings, None)
        fitted = [i for i, was_rejected in enumerate(flags) if not was_rejected]
        solutions = [candidates[i].solutions["ORIG"] for i in fitted]
        residuals = residuals_of(
            [candidates[i] for i in fitted],
            [solution.kernel_image for solution in solutions],
            [solution.background for solution in solutions],
            settings.bad_mask_bits,
        )
        for i, (difference, variance, usable) in zip(fitted, residuals, strict=True):
            chi2 = float(np.sum(difference[usable] ** 2 / variance[usable]))
            scores[i][key] = chi2 + len(basis) * np.log(usable.sum())
    return scores


def select_basis_by_bic(
    cell_set: SpatialCellSet, bases: dict[tuple[int, ...], np.ndarray], settings: FitSettings
) -> tuple[tuple[int, ...], dict[tuple[int, ...], int]]:
    """Choose among candidate bases by the Bayesian information criterion (spec §3.13).

    Every visited candidate is fitted with every basis; a fit that passes the single-kernel
    clipping scores ``BIC = Σ (D/σ)² + k ln n`` (``k`` basis kernels, ``n`` fit pixels).
    Each candidate votes for its lowest-BIC basis; the most voted wins, ties going to the
    smaller basis.  Unlike ip_diffim this needs no minimum number of distinct winners.

    Parameters
    ----------
    cell_set : SpatialCellSet
        Candidates; their solutions and status are overwritten (use a throw-away set).
    bases : dict
        Basis kernels keyed by a label (e.g. the polynomial degrees).
    settings : FitSettings
        Clipping limits and weighting.

    Returns
    -------
    best : tuple
        The winning key.
    votes : dict
        Number of candidates preferring each key.

    Raises
    ------
    NoKernelCandidatesError
        If no candidate could be fitted with any basis.
    """
    visited = list(cell_set.visit(settings.n_star_per_cell))
    with threadpool_limits(limits=1, user_api="blas"):  # see the BLAS note above
        scores = _bic_scores(visited, bases, settings)
    votes = dict.fromkeys(bases, 0)
    for candidate_scores in scores:
        if candidate_scores:
            votes[min(candidate_scores, key=candidate_scores.get)] += 1
    if not any(votes.values()):
        raise NoKernelCandidatesError(len(cell_set), {"bic": len(visited)}, "BIC")
    best = max(votes, key=lambda key: (votes[key], -len(bases[key])))
    log.info("BIC votes per basis: %s; chose %s", votes, best)
    return best, votes
