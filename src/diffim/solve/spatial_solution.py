"""The spatial kernel solution: one kernel and background model over all candidates.

Spatial model (spec §3.11): with ``a = A(x, y) θ`` mapping spatial parameters to one star's
coefficients, solve ``(Σ Aᵀ M A) θ = Σ Aᵀ b`` over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..candidates import KernelCandidate
from ..image import BBox
from ..spatial import SpatialBackground, SpatialFunction, SpatialKernel
from .linalg import ConditionNumberType, condition_number, solve_normal_equations

__all__ = ["SpatialSolution", "solve_spatial_kernel"]


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
