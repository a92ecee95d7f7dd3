"""Least-squares kernel solutions: one star at a time, and the spatial model over all stars.

Per candidate (spec §3.7): with ``C_i = (T ⋆ B_i)`` over the stamp shrunk by the kernel
half-width, ``d`` the science stamp there and ``w = 1 / var``, solve the normal equations
``M a = b`` with ``M = Cᵀ W C`` and ``b = Cᵀ W d`` (a column of ones appended to ``C`` when a
differential background is fitted).

Spatial model (spec §3.11): with ``a = A(x, y) θ`` mapping spatial parameters to one star's
coefficients, solve ``(Σ Aᵀ M A) θ = Σ Aᵀ b`` over the candidates.

The package is split by concept: `linalg` (`solve_normal_equations`, `batch_solve`,
`condition_number` and the `Regularization` penalty with its risk scans),
`single_kernel` (`build_single_kernels`, `build_single_kernel`: weights and normal equations
of batches of candidates), `residuals` (`residuals_of`, `candidate_residuals`,
`residual_statistics_of`, `residual_statistics`), `spatial_solution` (`solve_spatial_kernel`,
`SpatialSolution`), and the private `_stamps` (batches of same-shape stamps, `BATCH_VALUES`)
and `_delta_normal` (the normal equations of a delta-function basis from shifted template
products).  Every public name is re-exported here: import from ``diffim.solve``.
"""

from ._stamps import BATCH_VALUES as BATCH_VALUES
from .linalg import NAN_SOLUTION as NAN_SOLUTION
from .linalg import ConditionNumberType as ConditionNumberType
from .linalg import LambdaType as LambdaType
from .linalg import Regularization, condition_number, solve_normal_equations
from .linalg import batch_solve as batch_solve
from .residuals import (
    candidate_residuals,
    residual_statistics,
    residual_statistics_of,
    residuals_of,
)
from .single_kernel import _dense_normal_equations as _dense_normal_equations
from .single_kernel import build_single_kernel, build_single_kernels
from .spatial_solution import SpatialSolution, solve_spatial_kernel
from .spatial_solution import _spatial_normal_matrix as _spatial_normal_matrix

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
