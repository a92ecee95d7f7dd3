"""Pictures of the whole field: the images, the kernel candidates, the one-page summary.

``images.png`` shows science, template, matched image and ``D/σ``; ``candidates.png`` the
kernel candidates on the science image with the spatial cells; `plot_subtraction` draws
science, template and ``D/σ`` side by side with the kernel over the field (the picture of
``diffim demo`` and ``diffim subtract --png``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..image import MaskedImage
from ..spatial import SpatialKernel
from .display import (
    CATEGORY_STYLES,
    DIFFERENCE_STYLE,
    FLAGGED_PLANES,
    _asinh_norm,
    _by_category,
    _difference,
    _legend_handle,
    _matplotlib,
    _new_figure,
    _normalized_difference,
    _percentile_stretch,
    _save,
    _show,
)
from .kernels import _grid_positions, _show_mosaic


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
