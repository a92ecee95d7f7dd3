"""QA of the task's fitted kernel: the checks that refuse or warn, and the metadata.

`_diagnose` refuses a kernel whose sum is not positive over the field and warns about an
ill-conditioned or poorly constrained spatial fit (spec §3.11); `_metadata` gathers the QA
numbers that `ImagePsfMatchTask` returns in its results' ``metadata`` (ip_diffim's keys).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._version import __version__
from ..basis import BasisList
from ..candidates import SpatialCellSet
from ..errors import KernelSolutionError, PoorlyConstrainedWarning
from ..fit import FitResult, FitSettings
from ..image import BBox
from ..spatial import SpatialKernel, n_spatial_terms

#: Grid (per axis) on which the kernel sum's range over the field is reported.
KERNEL_SUM_GRID = 16


def _kernel_sums_on_grid(kernel: SpatialKernel, bbox: BBox) -> np.ndarray:
    """Return the kernel's sum on a `KERNEL_SUM_GRID` x `KERNEL_SUM_GRID` grid over ``bbox``."""
    grid_x = np.linspace(bbox.x_min, bbox.x_max, KERNEL_SUM_GRID)
    grid_y = np.linspace(bbox.y_min, bbox.y_max, KERNEL_SUM_GRID)
    return kernel.sum_at(*np.meshgrid(grid_x, grid_y))


def _diagnose(
    fit: FitResult, settings: FitSettings, sums: np.ndarray, max_condition_number: float
) -> None:
    """Refuse a kernel whose sum (the flux ratio) is not positive everywhere; warn when
    the spatial system is ill-conditioned or has too few good candidates (spec §3.11).

    ``sums`` is the kernel sum on the `KERNEL_SUM_GRID` grid over the image, and
    ``max_condition_number`` the config's ``maxSpatialConditionNumber``.

    Raises
    ------
    KernelSolutionError
        If the spatial kernel's sum is zero or negative somewhere on the image: the
        two images cannot show the same stars (different fields, a wrong WCS).
    """
    if not np.all(sums > 0):
        msg = (
            f"the fitted PSF-matching kernel has a sum (flux ratio) of {sums.min():.3g} to "
            f"{sums.max():.3g} over the image, from {fit.n_good} good of "
            f"{sum(fit.rejected.values()) + fit.n_good} fitted candidates: a flux ratio must "
            "be positive, so the two images do not show the same stars; check that they "
            "cover the same field (their WCS) in the same band, or pass a candidateList"
        )
        raise KernelSolutionError(msg)
    condition = fit.solution.condition_number
    if not 0 < condition <= max_condition_number:
        warnings.warn(
            f"the spatial kernel system is ill-conditioned (condition number {condition:.3g}, "
            f"limit maxSpatialConditionNumber={max_condition_number:.3g}); lower "
            "spatialKernelOrder or use more, better spread stars",
            PoorlyConstrainedWarning,
            stacklevel=4,
        )
    n_kernel_terms = n_spatial_terms(settings.kernel_order)
    if fit.n_good < n_kernel_terms:
        text = "underconstrained"
    elif fit.n_good <= 2 * n_kernel_terms:
        text = "poorly constrained"
    else:
        return
    warnings.warn(
        f"spatial kernel model is {text}: {fit.n_good} good candidates for "
        f"{n_kernel_terms} spatial terms per basis kernel; lower spatialKernelOrder or "
        "provide more stars",
        PoorlyConstrainedWarning,
        stacklevel=4,
    )


def _metadata(
    basis: BasisList,
    fit: FitResult,
    cell_set: SpatialCellSet,
    dropped: dict[str, int],
    timings: dict[str, float],
    sums: np.ndarray,
) -> dict[str, Any]:
    """The QA numbers of a `MatchResult`'s ``metadata``."""
    kernel = fit.solution.kernel
    bbox = cell_set.bbox
    x_center, y_center = bbox.center
    status = cell_set.status_counts()
    metadata: dict[str, Any] = {
        "diffimVersion": __version__,
        "ALBasisNGauss": len(basis.sigmas),
        "ALBasisDegGauss": list(basis.degrees),
        "ALBasisSigGauss": [float(s) for s in basis.sigmas],
        "ALKernelSize": basis.kernel_size,
        "ALBasisMode": basis.mode,
        "spatialConditionNum": fit.solution.condition_number,
        "spatialKernelSum": kernel.sum_at(x_center, y_center),
        "kernelSumMin": float(sums.min()),
        "kernelSumMax": float(sums.max()),
        "kernelSumClippedMean": fit.kernel_sum_mean,
        "kernelSumClippedStd": fit.kernel_sum_std,
        "nCandidates": len(cell_set),
        "nCandidatesGood": status["GOOD"],
        "nCandidatesBad": status["BAD"],
        "nCandidatesUsedInSpatialFit": fit.solution.n_candidates,
        "nGoodSpatialAssessment": fit.n_good,
        "spatialResidualMean": fit.spatial_residual_mean,
        "spatialResidualStd": fit.spatial_residual_std,
        "spatialIterations": fit.iterations,
    }
    metadata.update({f"nRejected_{stage}": n for stage, n in fit.rejected.items()})
    metadata.update({f"nDropped_{why.replace(' ', '_')}": n for why, n in dropped.items()})
    metadata.update({f"time_{stage}": t for stage, t in timings.items()})
    return metadata


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
