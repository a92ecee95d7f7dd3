"""Pictures of the residuals: candidates' clipping statistics and the difference's D/σ.

``residual_histograms.png`` shows the candidates' ``D/σ`` mean and std at each fitting
stage against the clipping limits, and their kernel sums against the clipping band;
``normalized_residuals.png`` the histogram of the difference's ``D/σ`` over usable pixels
against N(0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..image import MaskedImage
from ..stats import median_robust_std
from .display import (
    CATEGORY_STYLES,
    FLAGGED_PLANES,
    _by_category,
    _kernel_sums,
    _new_figure,
    _normalized_difference,
)

#: How each stage's candidate residuals are drawn in residual_histograms.png.
STAGE_HISTOGRAMS = {
    "singleKernel": {"color": "#4393c3", "histtype": "stepfilled", "alpha": 0.6},
    "spatial": {"color": "black", "histtype": "step", "linewidth": 1.8},
}
STAGE_LABELS = {"singleKernel": "single-kernel fits", "spatial": "spatial model"}
#: Legends placed under their axes.
LEGEND_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "fontsize": 9}
#: Bins of the candidate histograms.
HISTOGRAM_BINS = 40
#: Two-sided probability that a standard normal variable lies beyond 5.
GAUSSIAN_TAIL_5SIGMA = math.erfc(5.0 / math.sqrt(2.0))


def _histogram_range(values: np.ndarray, lines: Sequence[float]) -> tuple[float, float]:
    """Axis range holding the lines and the values, but at most 1.5 line spans beyond."""
    span_low, span_high = min(lines), max(lines)
    width = (span_high - span_low) or abs(span_high) or 1.0
    low = max(min(values.min(initial=span_low), span_low), span_low - 1.5 * width)
    high = min(max(values.max(initial=span_high), span_high), span_high + 1.5 * width)
    return low - 0.05 * (high - low), high + 0.05 * (high - low)


def _finish_histogram(axes: Any, values: np.ndarray, limits: tuple, xlabel: str) -> None:
    """Set range and labels (counting the values clipped into the edge bins), add the legend."""
    n_out = int(np.sum((values < limits[0]) | (values > limits[1])))
    if n_out:
        xlabel += f"\n({n_out} beyond the axis, counted in the edge bins)"
    axes.set(xlim=limits, xlabel=xlabel, ylabel="candidates")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.legend(ncols=2, **LEGEND_BELOW)


def _residual_histogram(
    axes: Any, candidates: Sequence, index: int, lines: list, xlabel: str
) -> None:
    """Histogram of the residual mean (``index`` 0) or std (1) at both stages.

    ``lines`` holds ``(position, label, linestyle)``; dashed ones (clipping limits) are red.
    """
    values = {
        stage: np.array([c.residuals[stage][index] for c in candidates if stage in c.residuals])
        for stage in STAGE_HISTOGRAMS
    }
    everything = np.concatenate(list(values.values()))
    limits = _histogram_range(everything, [position for position, _, _ in lines])
    bins = np.linspace(*limits, HISTOGRAM_BINS + 1)
    for stage, style in STAGE_HISTOGRAMS.items():
        if values[stage].size:
            label = f"{STAGE_LABELS[stage]} ({values[stage].size})"
            axes.hist(np.clip(values[stage], *limits), bins=bins, label=label, **style)
    for position, label, linestyle in lines:
        color = "#d73027" if linestyle == "--" else "0.4"
        axes.axvline(position, color=color, linestyle=linestyle, linewidth=1.8, label=label)
    _finish_histogram(axes, everything, limits, xlabel)


def _kernel_sum_histogram(axes: Any, candidates: Sequence, metadata: dict, sigma: float) -> None:
    """Histogram of the candidates' kernel sums, stacked by status, with the clipping band."""
    groups = _by_category(c for c in candidates if "ORIG" in c.solutions)
    sums = {name: _kernel_sums(group) for name, group in groups.items() if group}
    everything = np.concatenate([np.empty(0), *sums.values()])
    mean = metadata.get("kernelSumClippedMean", np.nan)
    std = metadata.get("kernelSumClippedStd", np.nan)
    band = (mean - sigma * std, mean + sigma * std)
    finite = np.isfinite(band).all()
    limits = _histogram_range(everything, band if finite else [np.mean(everything, initial=1)])
    if sums:
        axes.hist(
            [np.clip(v, *limits) for v in sums.values()],
            stacked=True,
            bins=np.linspace(*limits, HISTOGRAM_BINS + 1),
            color=[CATEGORY_STYLES[name][0] for name in sums],
            label=[f"{name} ({v.size})" for name, v in sums.items()],
        )
    if finite:
        label = f"clipped mean ± {sigma:g}σ (maxKsumSigma),\nwidened by each candidate's error"
        axes.axvspan(*band, color=CATEGORY_STYLES["GOOD"][0], alpha=0.15, label=label)
        label = f"clipped mean {mean:.4f}, σ {std:.3g}"
        axes.axvline(mean, color=CATEGORY_STYLES["GOOD"][0], linewidth=1.8, label=label)
    axes.set_title("kernel sums, stacked by status")
    _finish_histogram(axes, everything, limits, "candidate kernel sum")


def _plot_residual_histograms(mpl: Any, candidates: Sequence, metadata: dict, active: Any) -> Any:
    """residual_histograms.png: candidates' D/σ mean and std, and their kernel sums."""
    figure = _new_figure(mpl, 17.0, 6.2)
    mean_axes, std_axes, sum_axes = figure.subplots(1, 3)
    limit = active.candidateResidualMeanMax
    lines = [(-limit, f"±{limit:g} (candidateResidualMeanMax)", "--"), (limit, "", "--")]
    _residual_histogram(mean_axes, candidates, 0, lines, "mean of D/σ over the stamp")
    mean_axes.set_title("candidate residual mean")
    limit = active.candidateResidualStdMax
    lines = [(1.0, "1 (pure noise)", ":"), (limit, f"{limit:g} (candidateResidualStdMax)", "--")]
    _residual_histogram(std_axes, candidates, 1, lines, "std of D/σ over the stamp")
    std_axes.set_title("candidate residual std")
    _kernel_sum_histogram(sum_axes, candidates, metadata, active.maxKsumSigma)
    return figure


def _residual_summary(values: np.ndarray) -> str:
    """Text block: mean, std, robust std and the fraction beyond 5σ against N(0, 1)."""
    _, robust = median_robust_std(values)
    beyond = float(np.mean(np.abs(values) > 5.0))
    expected = GAUSSIAN_TAIL_5SIGMA
    return (
        f"pixels        {values.size:,}\n"
        f"mean          {values.mean():+.4f}  (N(0,1): 0 ± {1 / math.sqrt(values.size):.4f})\n"
        f"std           {values.std():.4f}\n"
        f"robust std    {robust:.4f}  (1.4826 MAD)\n"
        f"|D/σ| > 5     {beyond:.2e}  ({round(beyond * values.size):,} px)\n"
        f"N(0,1) > 5    {expected:.2e}  ({expected * values.size:.2g} px)"
    )


def _plot_normalized_residuals(mpl: Any, difference: MaskedImage, active: Any) -> Any:
    """normalized_residuals.png: histogram of D/σ over usable pixels against N(0, 1)."""
    planes = list(dict.fromkeys([*FLAGGED_PLANES, *active.badMaskPlanes]))
    values = _normalized_difference(difference, planes)
    values = values[np.isfinite(values)].astype(float)
    figure = _new_figure(mpl, 10.0, 6.5)
    axes = figure.add_subplot()
    axes.set(
        yscale="log",
        xlabel="difference / √variance",
        ylabel="pixels per bin",
        title=f"normalised difference, pixels without {', '.join(planes)}",
    )
    if values.size == 0:
        axes.text(0.5, 0.5, "no usable pixels", ha="center", transform=axes.transAxes)
        return figure
    edges = np.linspace(-10.0, 10.0, 201)
    width = edges[1] - edges[0]
    axes.hist(
        np.clip(values, -10.0, 10.0),
        bins=edges,
        histtype="stepfilled",
        color="#4393c3",
        alpha=0.7,
        label="D/σ (the edge bins hold all beyond ±10)",
    )
    z = np.linspace(-10.0, 10.0, 801)
    gaussian = values.size * width * np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    axes.plot(z, gaussian, color="black", linewidth=1.5, label="N(0, 1), same number of pixels")
    for side in (-5.0, 5.0):
        axes.axvline(side, color="0.4", linestyle=":", linewidth=1.2)
    axes.set_ylim(0.5, 5.0 * values.size * width)
    axes.text(
        0.02,
        0.97,
        _residual_summary(values),
        transform=axes.transAxes,
        va="top",
        family="monospace",
        fontsize=10,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    axes.legend(loc="upper right")
    return figure
