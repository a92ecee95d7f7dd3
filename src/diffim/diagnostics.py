"""Pictures of a subtraction for people to look at (matplotlib, an optional dependency).

Only this module imports matplotlib, and only inside its functions, so that the rest of
diffim works without it (``pip install 'diffim[plot]'`` brings it).  Figures are drawn
with matplotlib's object interface (no pyplot, no interactive backend, no global state) and
written atomically: a temporary file in the destination folder, then ``os.replace``.

`write_debug_plots` draws one PNG per question a person asks of a subtraction (are the
images matched? which stars made the kernel, and why were others rejected? how does the
kernel vary over the field? is the difference consistent with noise?); `plot_subtraction`
draws the one-page summary of the CLI demo.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .candidates import CandidateStatus, KernelCandidate
from .config import ImagePsfMatchConfig
from .errors import DiffimError, DiffimValueError
from .image import BBox, MaskedImage
from .spatial import SpatialKernel
from .stats import median_robust_std, sampling_step

__all__ = ["plot_subtraction", "write_debug_plots"]

#: Mask planes drawn in grey on the difference and left out of its histogram.
FLAGGED_PLANES = ("BAD", "SAT", "CR", "EDGE", "NO_DATA")
#: How D/σ is drawn: blue negative, red positive, saturated at ±5.
DIFFERENCE_STYLE = {"cmap": "RdBu_r", "vmin": -5.0, "vmax": 5.0, "interpolation": "nearest"}
#: Resolution of the PNG files (dots per inch).
DPI = 100
#: Colour and marker of each candidate class, the same in every figure.
CATEGORY_STYLES = {
    "GOOD": ("#1a9850", "o"),
    "singleKernel": ("#d73027", "X"),
    "kernelSum": ("#fd8d3c", "s"),
    "spatial": ("#c51b7d", "D"),
    "not fitted": ("#4393c3", "."),
}
#: How each stage's candidate residuals are drawn in residual_histograms.png.
STAGE_HISTOGRAMS = {
    "singleKernel": {"color": "#4393c3", "histtype": "stepfilled", "alpha": 0.6},
    "spatial": {"color": "black", "histtype": "step", "linewidth": 1.8},
}
STAGE_LABELS = {"singleKernel": "single-kernel fits", "spatial": "spatial model"}
#: Legends placed under their axes.
LEGEND_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "fontsize": 9}
#: Most candidate kernels drawn in candidate_kernels.png (the rejected ones first).
MAX_KERNEL_PANELS = 64
#: Kernels per axis in spatial_kernel.png.
SPATIAL_GRID = 5
#: spatial_kernel.png shows the central box holding every pixel above this fraction of the peak.
KERNEL_SUPPORT_FRACTION = 0.01
#: Points per axis on which the kernel-sum map is evaluated.
KERNEL_SUM_GRID = 128
#: Bins of the candidate histograms.
HISTOGRAM_BINS = 40
#: Two-sided probability that a standard normal variable lies beyond 5.
GAUSSIAN_TAIL_5SIGMA = math.erfc(5.0 / math.sqrt(2.0))
#: Pixels used to estimate a stretch: larger images are sampled on a regular grid of >= this.
STRETCH_SAMPLE = 1_000_000


# -- shared helpers -------------------------------------------------------------------------
def _matplotlib() -> Any:
    """Import matplotlib lazily; raise DiffimError with the install command when missing."""
    try:
        import matplotlib
        import matplotlib.colors
        import matplotlib.figure
        import matplotlib.lines
    except ImportError as error:
        msg = "diagnostic plots need matplotlib: pip install 'diffim[plot]'"
        raise DiffimError(msg) from error
    return matplotlib


def _new_figure(mpl: Any, width: float, height: float) -> Any:
    return mpl.figure.Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Any, path: str | os.PathLike) -> Path:
    """Write a figure as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _sample(image: np.ndarray) -> np.ndarray:
    """Return the finite values of a regular subsample of at least STRETCH_SAMPLE pixels."""
    step = sampling_step(image.size, STRETCH_SAMPLE)
    values = image[::step, ::step]
    return values[np.isfinite(values)]


def _asinh_norm(mpl: Any, image: np.ndarray) -> tuple[float, Any]:
    """Return ``(median, norm)``: an asinh stretch for ``image - median``.

    Linear within two noise sigmas (1.4826 MAD) of the median, so that the sky noise is
    visible, and logarithmic-like above, so that star cores are not saturated; from
    -3 sigma to the 99.9th percentile.
    """
    values = _sample(image)
    if values.size == 0:
        return 0.0, mpl.colors.AsinhNorm(linear_width=1.0, vmin=-1.0, vmax=1.0)
    median, noise = median_robust_std(values)
    noise = noise or float(np.std(values))
    noise = noise or 1.0
    top = float(np.percentile(values, 99.9)) - median
    vmax = max(top, 30.0 * noise)
    return median, mpl.colors.AsinhNorm(linear_width=2 * noise, vmin=-3 * noise, vmax=vmax)


def _percentile_stretch(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple:
    values = _sample(image)
    if values.size == 0:
        return 0.0, 1.0
    return tuple(float(v) for v in np.percentile(values, [low, high]))


def _normalized_difference(difference: MaskedImage, planes: Iterable[str]) -> np.ndarray:
    """Return ``D / sqrt(var)``, NaN where a plane of ``planes`` is set or not finite."""
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = difference.image / np.sqrt(difference.variance)
    flagged = (difference.mask & difference.bitmask(list(planes))) != 0
    return np.where(flagged | ~np.isfinite(normalized), np.nan, normalized)


def _extent(bbox: BBox) -> tuple[float, float, float, float]:
    """Image extent in parent pixel coordinates (pixel centres on integers)."""
    return (bbox.x_min - 0.5, bbox.x_max + 0.5, bbox.y_min - 0.5, bbox.y_max + 0.5)


def _show(mpl: Any, axes: Any, image: np.ndarray, bbox: BBox, titles: tuple, **style: Any) -> Any:
    """Draw an image in parent pixels with a colorbar; NaN in grey; ``titles``: (axes, bar)."""
    cmap = mpl.colormaps[style.pop("cmap", "gray")].with_extremes(bad="0.55")
    extend = style.pop("extend", "neither")
    shown = axes.imshow(image, origin="lower", extent=_extent(bbox), cmap=cmap, **style)
    axes.set(title=titles[0], xlabel="x (pixels)", ylabel="y (pixels)")
    axes.figure.colorbar(shown, ax=axes, shrink=0.85, label=titles[1], extend=extend)
    return shown


def _masked_image(image: Any) -> MaskedImage:
    """Accept an Exposure (its masked image) or a MaskedImage."""
    masked = getattr(image, "masked_image", image)
    if not isinstance(masked, MaskedImage):
        msg = f"expected an Exposure or a MaskedImage, got {type(image).__name__}"
        raise DiffimValueError(msg)
    return masked


def _difference(result: Any) -> MaskedImage:
    for name in ("subtractedExposure", "subtractedMaskedImage"):
        value = getattr(result, name, None)
        if value is not None:
            return _masked_image(value)
    msg = (
        f"{type(result).__name__} holds no difference image; pass what diffim.subtract, "
        "subtractExposures or subtractMaskedImages returned"
    )
    raise DiffimValueError(msg)


def _category(candidate: KernelCandidate) -> str:
    """GOOD, the rejecting stage of a BAD candidate, or 'not fitted'."""
    if candidate.status is CandidateStatus.GOOD:
        return "GOOD"
    if candidate.status is CandidateStatus.BAD:
        return candidate.rejected_by or "singleKernel"
    return "not fitted"


def _by_category(candidates: Iterable[KernelCandidate]) -> dict[str, list[KernelCandidate]]:
    groups: dict[str, list[KernelCandidate]] = {name: [] for name in CATEGORY_STYLES}
    for candidate in candidates:
        groups.setdefault(_category(candidate), []).append(candidate)
    return groups


def _kernel_sums(candidates: Iterable[KernelCandidate]) -> np.ndarray:
    return np.array([c.solutions["ORIG"].kernel_sum for c in candidates], dtype=float)


def _legend_handle(mpl: Any, category: str, count: int, **style: Any) -> Any:
    color, marker = CATEGORY_STYLES.get(category, ("black", "o"))
    label = category if category in ("GOOD", "not fitted") else f"rejected: {category}"
    style = {"markeredgecolor": color, "markerfacecolor": "none", **style}
    style |= {"linestyle": "none", "markersize": 9, "markeredgewidth": 1.8}
    return mpl.lines.Line2D([], [], marker=marker, label=f"{label} ({count})", **style)


# -- the figures ----------------------------------------------------------------------------
def _plot_images(mpl: Any, result: Any, science: MaskedImage, template: MaskedImage) -> Any:
    """images.png: science, template, matched image and normalised difference (2 × 2)."""
    convolved = "template" if getattr(result, "convolveTemplate", True) else "science"
    target = "science" if convolved == "template" else "template"
    matched = result.matchedImage.image + result.backgroundModel.image(science.bbox)
    stretch = {"science": _asinh_norm(mpl, science.image)}
    stretch["template"] = _asinh_norm(mpl, template.image)
    panels = [
        ("science", science.image, "science"),
        ("template (on the science grid)", template.image, "template"),
        (f"{convolved} ⊗ kernel + background, on the {target}'s stretch", matched, target),
    ]
    figure = _new_figure(mpl, 13.5, 12.0)
    grid = figure.subplots(2, 2, sharex=True, sharey=True).ravel()
    for axes, (title, image, name) in zip(grid, panels, strict=False):
        median, norm = stretch[name]
        label = f"ADU above the {name} median, {median:.1f} (asinh scale)"
        _show(mpl, axes, image - median, science.bbox, (title, label), norm=norm)
    difference = _difference(result)
    normalized = _normalized_difference(difference, FLAGGED_PLANES)
    titles = (f"difference / √variance (grey: {', '.join(FLAGGED_PLANES)})", "D / σ")
    _show(mpl, grid[3], normalized, difference.bbox, titles, **DIFFERENCE_STYLE)
    for axes in grid:
        axes.label_outer()
    get = result.metadata.get
    figure.suptitle(
        f"convolved the {convolved}; kernel sum at the centre "
        f"{get('spatialKernelSum', np.nan):.4f}; difference median "
        f"{get('diffimResidualMedian', np.nan):+.3f} σ, robust std "
        f"{get('diffimResidualRobustStd', np.nan):.3f} σ",
        fontsize=13,
    )
    return figure


def _draw_candidate_kernel(axes: Any, candidate: KernelCandidate, norm: Any) -> Any:
    category = _category(candidate)
    color = CATEGORY_STYLES[category][0]
    solution = candidate.solutions["ORIG"]
    shown = axes.imshow(
        solution.kernel_image, origin="lower", cmap="RdBu_r", norm=norm, interpolation="nearest"
    )
    axes.set(xticks=[], yticks=[])
    for spine in axes.spines.values():
        spine.set(color=color, linewidth=4)
    axes.set_title(
        f"#{candidate.candidate_id} at ({candidate.x:.0f}, {candidate.y:.0f})\n"
        f"kernel sum {solution.kernel_sum:.4f}",
        fontsize=8,
    )
    stage = "spatial" if "spatial" in candidate.residuals else "singleKernel"
    mean, std = candidate.residuals.get(stage, (np.nan, np.nan))
    status = "GOOD" if category == "GOOD" else f"BAD: {category}"
    axes.set_xlabel(f"{status}\nD/σ mean {mean:+.2f}, std {std:.2f}", fontsize=8, color=color)
    return shown


def _plot_candidate_kernels(mpl: Any, candidates: Sequence[KernelCandidate]) -> Any:
    """candidate_kernels.png: fitted candidates' own (ORIG) kernels, rejected ones first."""
    fitted = [c for c in candidates if "ORIG" in c.solutions]
    fitted.sort(key=lambda c: (_category(c) == "GOOD", _category(c), c.candidate_id))
    shown = fitted[:MAX_KERNEL_PANELS]
    n_columns = max(1, math.ceil(math.sqrt(len(shown))))
    n_rows = max(1, math.ceil(len(shown) / n_columns))
    figure = _new_figure(mpl, max(9.0, 2.0 * n_columns + 1.6), max(4.5, 2.75 * n_rows + 1.3))
    figure.get_layout_engine().set(hspace=0.04, wspace=0.02)
    grid = figure.subplots(n_rows, n_columns, squeeze=False)
    reference = [c for c in shown if _category(c) == "GOOD"] or shown
    peak = max((np.abs(c.solutions["ORIG"].kernel_image).max() for c in reference), default=1)
    norm = mpl.colors.Normalize(vmin=-peak, vmax=peak)
    for axes, candidate in zip(grid.flat, shown, strict=False):
        mappable = _draw_candidate_kernel(axes, candidate, norm)
    for axes in grid.flat[len(shown) :]:
        axes.set_axis_off()
    if shown:
        figure.colorbar(mappable, ax=grid, shrink=0.6, label="kernel pixel value", extend="both")
    counts = [f"{len(g)} {name}" for name, g in _by_category(fitted).items() if g]
    more = f"; {len(shown)} shown, the rejected first" if len(shown) < len(fitted) else ""
    figure.suptitle(
        f"single-candidate kernels (ORIG basis): {len(fitted)} fitted, {', '.join(counts)}"
        f"{more}\nframe: green GOOD; red, orange, magenta rejected by singleKernel, kernelSum, "
        "spatial\ncolour scale set by the GOOD kernels",
        fontsize=11,
    )
    return figure


def _grid_positions(low: float, high: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal bins over ``[low - 0.5, high + 0.5]``."""
    edges = np.linspace(low - 0.5, high + 0.5, n + 1)
    return 0.5 * (edges[:-1] + edges[1:])


def _kernel_mosaic(kernels: np.ndarray, gap: int) -> np.ndarray:
    """Tile kernels ``[j, i, v, u]`` into one image, row ``j`` at the bottom; NaN gaps."""
    n_y, n_x, size, _ = kernels.shape
    step = size + gap
    mosaic = np.full((n_y * step - gap, n_x * step - gap), np.nan)
    for j in range(n_y):
        for i in range(n_x):
            mosaic[j * step : j * step + size, i * step : i * step + size] = kernels[j, i]
    return mosaic


def _show_mosaic(mpl: Any, axes: Any, kernels: np.ndarray, positions: tuple, **text: str) -> None:
    """Draw kernels ``[j, i]`` at field positions ``(xs[i], ys[j])`` as one tiled image.

    The colour scale is symmetric, ``±max|kernels|``; ``text`` holds title and label.
    """
    (xs, ys), gap, size = positions, 2, kernels.shape[-1]
    vmax = float(np.abs(kernels).max()) or 1e-12
    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="white")
    mosaic = _kernel_mosaic(kernels, gap)
    norm = mpl.colors.Normalize(vmin=-vmax, vmax=vmax)
    shown = axes.imshow(mosaic, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    ticks = np.arange(max(len(xs), len(ys))) * (size + gap) + size // 2
    axes.set_xticks(ticks[: len(xs)], [f"{x:.0f}" for x in xs])
    axes.set_yticks(ticks[: len(ys)], [f"{y:.0f}" for y in ys])
    axes.set(xlabel="kernel position x (pixels)", ylabel="kernel position y (pixels)")
    axes.set_title(text["title"])
    axes.figure.colorbar(shown, ax=axes, shrink=0.8, label=text["label"])


def _support_reach(*stacks: np.ndarray) -> int:
    """Half-width of the centred box holding each pixel above KERNEL_SUPPORT_FRACTION of its
    stack's largest ``|value|`` in any kernel of the stacks ``[..., v, u]``, plus one pixel."""
    half = stacks[0].shape[-1] // 2
    strong = np.zeros(stacks[0].shape[-2:], dtype=bool)
    for stack in stacks:
        magnitude = np.abs(stack).reshape(-1, *stack.shape[-2:]).max(axis=0)
        strong |= magnitude > KERNEL_SUPPORT_FRACTION * magnitude.max()
    rows, columns = np.nonzero(strong)
    if rows.size == 0:
        return half
    return min(half, int(np.abs(np.concatenate([rows, columns]) - half).max()) + 1)


def _plot_spatial_kernel(mpl: Any, kernel: SpatialKernel, bbox: BBox) -> Any:
    """spatial_kernel.png: the kernel on a grid over the field, and minus the centre one."""
    xs = _grid_positions(bbox.x_min, bbox.x_max, SPATIAL_GRID)
    ys = _grid_positions(bbox.y_min, bbox.y_max, SPATIAL_GRID)
    kernels = np.array([[kernel.image_at(x, y) for x in xs] for y in ys])
    center = kernel.image_at(*bbox.center)
    peak = float(np.abs(center).max()) or 1.0
    change = kernels - center
    largest = float(np.abs(change).max())
    reach = _support_reach(kernels, change)
    crop = slice(kernel.half_width - reach, kernel.half_width + reach + 1)
    kernels, change = kernels[..., crop, crop], change[..., crop, crop]
    figure = _new_figure(mpl, 16.0, 7.6)
    left, right = figure.subplots(1, 2)
    title = f"kernel K(x, y) on a {SPATIAL_GRID}×{SPATIAL_GRID} grid"
    _show_mosaic(mpl, left, kernels, (xs, ys), title=title, label="kernel pixel value")
    if largest > 0:
        title = (
            f"K(x, y) − K(centre): largest |ΔK| = {largest:.3g}, "
            f"{100 * largest / peak:.0f} % of the centre kernel's peak"
        )
    else:
        title = "K(x, y) − K(centre): zero, the kernel is the same everywhere"
    label = "difference from the centre kernel"
    _show_mosaic(mpl, right, change, (xs, ys), title=title, label=label)
    figure.suptitle(
        f"PSF-matching kernel: {kernel.size}×{kernel.size} px (central {2 * reach + 1}×"
        f"{2 * reach + 1} shown), {kernel.n_basis} basis kernels, spatial order "
        f"{kernel.function.order}; at the centre ({bbox.center[0]:.0f}, {bbox.center[1]:.0f}) "
        f"its sum is {center.sum():.4f}",
        fontsize=12,
    )
    return figure


def _kernel_sum_grid(kernel: SpatialKernel, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Kernel sum on the grid ``ys × xs`` (shape ``(len(ys), len(xs))``)."""
    basis_sums = kernel.basis.sum(axis=(1, 2))
    terms = kernel.function.terms(*np.meshgrid(xs, ys))
    return np.tensordot(basis_sums @ kernel.coefficients, terms, axes=1)


def _value_limits(values: np.ndarray) -> tuple[float, float]:
    """Range of the finite values, widened to at least 0.1 % of their level."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.5e-3 * abs(low + high), 1e-6) if high - low < 1e-4 else 0.0
    return low - pad, high + pad


def _mark_kernel_sums(mpl: Any, axes: Any, groups: dict, norm: Any) -> list:
    """Draw each candidate filled with its own kernel sum; return the legend handles."""
    handles = []
    for category, group in groups.items():
        color, marker = CATEGORY_STYLES[category]
        edge = "black" if category == "GOOD" else color
        if group:
            xs, ys, sums = [c.x for c in group], [c.y for c in group], _kernel_sums(group)
            style = {"marker": marker, "s": 130, "edgecolors": edge, "linewidths": 1.8}
            axes.scatter(xs, ys, c=sums, cmap="viridis", norm=norm, **style)
            handles.append(_legend_handle(mpl, category, len(group), markeredgecolor=edge))
    return handles


def _plot_kernel_sum(mpl: Any, kernel: SpatialKernel, bbox: BBox, candidates: Sequence) -> Any:
    """kernel_sum.png: the spatial model's kernel sum and the candidates' own sums."""
    xs = np.linspace(bbox.x_min, bbox.x_max, KERNEL_SUM_GRID)
    sums = _kernel_sum_grid(kernel, xs, np.linspace(bbox.y_min, bbox.y_max, KERNEL_SUM_GRID))
    groups = _by_category(c for c in candidates if "ORIG" in c.solutions)
    low, high = _value_limits(np.concatenate([sums.ravel(), _kernel_sums(groups["GOOD"])]))
    norm = mpl.colors.Normalize(vmin=low, vmax=high)
    every_sum = _kernel_sums(c for group in groups.values() for c in group)
    outside = bool(np.any((every_sum < low) | (every_sum > high)))
    if np.ptp(sums) > 1e-9 * np.abs(sums).max():
        title = f"kernel sum of the spatial model: {sums.min():.4f} to {sums.max():.4f}"
    else:
        title = f"kernel sum of the spatial model: {sums.mean():.4f}, constant over the field"
    titles = (
        f"{title}\nmarkers: candidates' own sums on the same colour scale",
        "kernel sum (science / template flux ratio)",
    )
    figure = _new_figure(mpl, 10.5, 9.5)
    axes = figure.add_subplot()
    _show(
        mpl,
        axes,
        sums,
        bbox,
        titles,
        cmap="viridis",
        norm=norm,
        extend="both" if outside else "neither",
    )
    handles = _mark_kernel_sums(mpl, axes, groups, norm)
    title = "each candidate's own kernel sum"
    figure.legend(handles=handles, ncols=len(handles), title=title, loc="outside lower center")
    return figure


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


def _plot_candidates(mpl: Any, science: MaskedImage, cell_set: Any) -> Any:
    """candidates.png: accepted and rejected candidates on the science image."""
    median, norm = _asinh_norm(mpl, science.image)
    figure = _new_figure(mpl, 11.0, 10.4)
    axes = figure.add_subplot()
    title = (
        f"{len(cell_set)} kernel candidates on the science image; yellow lines: spatial cells "
        f"of {cell_set.size_x}×{cell_set.size_y} px"
    )
    label = f"ADU above the science median, {median:.1f} (asinh scale)"
    _show(mpl, axes, science.image - median, science.bbox, (title, label), norm=norm)
    for x in sorted({cell.bbox.x_min for cell in cell_set.cells})[1:]:
        axes.axvline(x - 0.5, color="#ffd92f", linewidth=0.7, alpha=0.6)
    for y in sorted({cell.bbox.y_min for cell in cell_set.cells})[1:]:
        axes.axhline(y - 0.5, color="#ffd92f", linewidth=0.7, alpha=0.6)
    handles = []
    for category, group in _by_category(cell_set.candidates()).items():
        color, marker = CATEGORY_STYLES[category]
        face = color if marker in ".X" else "none"
        if group:
            axes.scatter(
                [c.x for c in group],
                [c.y for c in group],
                marker=marker,
                s=50 if marker == "." else 170,
                facecolors=face,
                edgecolors=color,
                linewidths=1.8,
            )
        handles.append(_legend_handle(mpl, category, len(group), markerfacecolor=face))
    figure.legend(handles=handles, ncols=3, title="kernel candidates", loc="outside lower center")
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


# -- public functions -----------------------------------------------------------------------
def write_debug_plots(
    result: Any,
    science: Any,
    template: Any,
    out_dir: str | os.PathLike,
    *,
    config: ImagePsfMatchConfig | None = None,
) -> list[Path]:
    """Write PNG pictures of a subtraction and of its kernel fit into ``out_dir``.

    Parameters
    ----------
    result : ExposureSubtractResult or SubtractResult
        What `diffim.subtract`, ``subtractExposures`` or ``subtractMaskedImages`` returned.
    science, template : Exposure or MaskedImage
        The images given to the subtraction.  The template is drawn from
        ``result.warpedExposure`` (the template on the science grid) when the result has one.
    out_dir : str or os.PathLike
        Folder for the pictures; created if missing.  Files of the same names are replaced,
        each atomically.
    config : ImagePsfMatchConfig, optional
        The configuration of the subtraction, for the clipping limits drawn on the
        histograms and the mask planes left out of the pixel statistics; defaults if omitted.

    Returns
    -------
    list of pathlib.Path
        The files written, in this order:

        - ``images.png``: science, template, matched image (one asinh stretch with the image
          it was matched to) and ``D/σ`` from -5 to 5, masked pixels grey;
        - ``candidate_kernels.png``: each fitted candidate's own kernel, framed by status;
        - ``spatial_kernel.png``: the kernel on a 5×5 grid and its difference from the
          kernel at the centre;
        - ``kernel_sum.png``: map of the kernel sum, with the candidates' own sums;
        - ``residual_histograms.png``: candidates' ``D/σ`` mean and std per fitting stage with
          the clipping limits, and their kernel sums with the clipping band;
        - ``candidates.png``: candidates on the science image by status and rejecting stage;
        - ``normalized_residuals.png``: ``D/σ`` of usable pixels against N(0, 1).

    Raises
    ------
    DiffimError
        When matplotlib is not installed (``pip install 'diffim[plot]'``).
    DiffimValueError
        When ``result`` holds no difference image.

    Notes
    -----
    The inputs are only read.  Images are in parent pixel coordinates, ``y`` up.
    """
    mpl = _matplotlib()
    active = (config if config is not None else ImagePsfMatchConfig()).kernel.active
    science_image = _masked_image(science)
    warped = getattr(result, "warpedExposure", None)
    template_image = _masked_image(warped if warped is not None else template)
    difference = _difference(result)
    kernel, bbox = result.psfMatchingKernel, science_image.bbox
    candidates = list(result.kernelCellSet.candidates())
    figures = {
        "images.png": lambda: _plot_images(mpl, result, science_image, template_image),
        "candidate_kernels.png": lambda: _plot_candidate_kernels(mpl, candidates),
        "spatial_kernel.png": lambda: _plot_spatial_kernel(mpl, kernel, bbox),
        "kernel_sum.png": lambda: _plot_kernel_sum(mpl, kernel, bbox, candidates),
        "residual_histograms.png": lambda: _plot_residual_histograms(
            mpl, candidates, result.metadata, active
        ),
        "candidates.png": lambda: _plot_candidates(mpl, science_image, result.kernelCellSet),
        "normalized_residuals.png": lambda: _plot_normalized_residuals(mpl, difference, active),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_save(draw(), out / name) for name, draw in figures.items()]


def plot_subtraction(
    science: MaskedImage,
    template: MaskedImage,
    difference: MaskedImage,
    kernel: SpatialKernel,
    path: str | os.PathLike,
    *,
    n_kernels: int = 3,
) -> None:
    """Draw science, template and difference side by side, and the kernel over the field.

    Science and template are each shown from their 1st to 99th percentile; the difference
    as ``D / sqrt(var)`` from -5 to 5, with pixels flagged BAD, SAT, CR, EDGE or NO_DATA
    in grey.  Beside them, the kernel images on an ``n_kernels × n_kernels`` grid.

    Parameters
    ----------
    science, template, difference : MaskedImage
        The images (template on the science grid).
    kernel : SpatialKernel
        The PSF-matching kernel.
    path : str or os.PathLike
        PNG file to write (atomically).
    n_kernels : int
        Kernels per axis in the last panel.
    """
    mpl = _matplotlib()
    figure = _new_figure(mpl, 22.0, 5.6)
    grid = figure.subplots(1, 4)
    for axes, name, image in ((grid[0], "science", science), (grid[1], "template", template)):
        low, high = _percentile_stretch(image.image)
        _show(mpl, axes, image.image, image.bbox, (name, "ADU"), vmin=low, vmax=high)
    normalized = _normalized_difference(difference, FLAGGED_PLANES)
    titles = ("difference / √variance", "D / σ")
    _show(mpl, grid[2], normalized, difference.bbox, titles, **DIFFERENCE_STYLE)
    bbox = difference.bbox
    xs = _grid_positions(bbox.x_min, bbox.x_max, n_kernels)
    ys = _grid_positions(bbox.y_min, bbox.y_max, n_kernels)
    kernels = np.array([[kernel.image_at(x, y) for x in xs] for y in ys])
    title = f"kernel (sum {kernel.sum_at(*bbox.center):.4f} at the centre)"
    _show_mosaic(mpl, grid[3], kernels, (xs, ys), title=title, label="kernel pixel value")
    _save(figure, path)
