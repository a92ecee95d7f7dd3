"""Pictures of the PSF-matching kernel: the candidates' own kernels, and the spatial model.

``candidate_kernels.png`` shows each fitted candidate's kernel framed by status;
``spatial_kernel.png`` the kernel on a grid over the field and its change from the centre;
``kernel_sum.png`` the map of the model's kernel sum with the candidates' own sums.  The
tiled kernel mosaic (`_show_mosaic`) also draws the last panel of `plot_subtraction`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..candidates import KernelCandidate
from ..image import BBox
from ..spatial import SpatialKernel
from .display import (
    CATEGORY_STYLES,
    _by_category,
    _category,
    _kernel_sums,
    _legend_handle,
    _new_figure,
    _show,
)

#: Most candidate kernels drawn in candidate_kernels.png (the rejected ones first).
MAX_KERNEL_PANELS = 64
#: Kernels per axis in spatial_kernel.png.
SPATIAL_GRID = 5
#: spatial_kernel.png shows the central box holding every pixel above this fraction of the peak.
KERNEL_SUPPORT_FRACTION = 0.01
#: Points per axis on which the kernel-sum map is evaluated.
KERNEL_SUM_GRID = 128


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
