"""How the task sets up a kernel fit from its config: orders, settings, regularization, basis.

The active kernel config (camelCase, ip_diffim's names) is read once here and translated
into the core's arguments: the spatial orders the candidates can afford
(`_affordable_orders`), `FitSettings` (`_fit_settings`), the delta-function basis's
`Regularization` (`_regularization`) and the Alard-Lupton degrees chosen by BIC
(`_bic_basis`).
"""

from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..basis import BasisList, generate_alard_lupton_basis, make_regularization_matrix
from ..errors import PoorlyConstrainedWarning
from ..fit import FitSettings, select_basis_by_bic
from ..image import MaskedImage
from ..solve import Regularization
from ..spatial import n_spatial_terms
from .cell_set import _build_cell_set

if TYPE_CHECKING:
    from ..config import PsfMatchConfig

#: An order is kept only with more than this many candidates per spatial term (ip_diffim
#: calls a spatial model with fewer "poorly constrained", spec §3.11).
CANDIDATES_PER_SPATIAL_TERM = 2


def _affordable_orders(orders: dict[str, int], n_candidates: int) -> dict[str, int]:
    """Lower spatial orders that ``n_candidates`` stars cannot constrain.

    An order is kept when there are more than CANDIDATES_PER_SPATIAL_TERM candidates per
    polynomial term; otherwise it drops to the highest order that has them, and one
    `PoorlyConstrainedWarning` names every lowered field (a sparse field then gets a stable
    low-order fit instead of an unstable high-order one).
    """
    affordable = {}
    for name, order in orders.items():
        while order > 0 and CANDIDATES_PER_SPATIAL_TERM * n_spatial_terms(order) >= n_candidates:
            order -= 1
        affordable[name] = order
    lowered = [
        f"{name} lowered from {orders[name]} to {order}"
        for name, order in affordable.items()
        if order < orders[name]
    ]
    if lowered:
        warnings.warn(
            f"only {n_candidates} kernel candidates: {', '.join(lowered)} "
            f"(more than {CANDIDATES_PER_SPATIAL_TERM} candidates per spatial term are needed); "
            "provide more stars to fit higher orders",
            PoorlyConstrainedWarning,
            stacklevel=5,
        )
    return affordable


def _fit_settings(cfg: PsfMatchConfig, science: MaskedImage, n_candidates: int) -> FitSettings:
    """The fit's settings from the active kernel config ``cfg``, for ``n_candidates`` stars."""
    orders = {"spatialKernelOrder": cfg.spatialKernelOrder}
    if cfg.fitForBackground:
        orders["spatialBgOrder"] = cfg.spatialBgOrder
    orders = _affordable_orders(orders, n_candidates)
    return FitSettings(
        n_star_per_cell=cfg.nStarPerCell,
        max_spatial_iterations=cfg.maxSpatialIterations,
        fit_background=cfg.fitForBackground,
        model_type=cfg.spatialModelType,
        kernel_order=orders["spatialKernelOrder"],
        background_order=orders.get("spatialBgOrder", cfg.spatialBgOrder),
        constant_first_term=(cfg.kernelBasisSet == "alard-lupton" or cfg.usePcaForSpatialKernel),
        single_kernel_clipping=cfg.singleKernelClipping,
        kernel_sum_clipping=cfg.kernelSumClipping,
        spatial_kernel_clipping=cfg.spatialKernelClipping,
        residual_mean_max=cfg.candidateResidualMeanMax,
        residual_std_max=cfg.candidateResidualStdMax,
        max_ksum_sigma=cfg.maxKsumSigma,
        check_condition_number=cfg.checkConditionNumber,
        max_condition_number=cfg.maxConditionNumber,
        condition_number_type=cfg.conditionNumberType,
        use_core_stats=cfg.useCoreStats,
        core_radius=cfg.candidateCoreRadius,
        constant_variance_weighting=cfg.constantVarianceWeighting,
        iterate_single_kernel=cfg.iterateSingleKernel,
        bad_mask_bits=science.bitmask(list(cfg.badMaskPlanes)),
        use_pca=cfg.usePcaForSpatialKernel,
        subtract_mean_for_pca=cfg.subtractMeanForPca,
        n_principal_components=cfg.numPrincipalComponents,
    )


def _bic_basis(
    cfg: PsfMatchConfig,
    basis: BasisList,
    stamps: tuple,
    template_fwhm: float | None,
    science_fwhm: float | None,
) -> BasisList:
    """Choose the Alard-Lupton polynomial degrees by BIC (spec §3.13).

    Every degree combination with ``1 <= d_i <= alardDegGauss[i]`` is tried on a
    throw-away cell set of the same candidates: ``stamps`` is ``(template, science,
    positions, half_width, n_parameters)``, the arguments of `_build_cell_set` for
    ``basis``'s kernel size.
    """
    if cfg.kernelBasisSet != "alard-lupton":
        return basis
    template, science, positions, half_width, n_parameters = stamps
    scratch, _ = _build_cell_set(
        cfg, template, science, positions, basis.kernel_size, half_width, n_parameters
    )
    choices = itertools.product(*(range(1, degree + 1) for degree in cfg.alardDegGauss))
    bases = {
        degrees: generate_alard_lupton_basis(
            cfg, template_fwhm, science_fwhm, basis_deg_gauss=degrees
        ).kernels
        for degrees in choices
    }
    best, _ = select_basis_by_bic(scratch, bases, _fit_settings(cfg, science, len(scratch)))
    return generate_alard_lupton_basis(cfg, template_fwhm, science_fwhm, basis_deg_gauss=best)


def _regularization(cfg: PsfMatchConfig) -> Regularization | None:
    """The delta-function basis's regularization (spec §3.4, §3.8), or None."""
    if cfg.kernelBasisSet != "delta-function" or not cfg.useRegularization:
        return None
    if cfg.lambdaStepType == "log":
        grid = 10.0 ** np.arange(cfg.lambdaMin, cfg.lambdaMax + cfg.lambdaStep / 2, cfg.lambdaStep)
    else:
        grid = np.arange(cfg.lambdaMin, cfg.lambdaMax + cfg.lambdaStep / 2, cfg.lambdaStep)
    return Regularization(
        make_regularization_matrix(cfg),
        lambda_type=cfg.lambdaType,
        lambda_value=cfg.lambdaValue,
        lambda_scaling=cfg.lambdaScaling,
        lambda_grid=tuple(float(v) for v in grid if v > 0),
        max_condition_number=cfg.maxConditionNumber,
    )
