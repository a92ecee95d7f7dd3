"""Pictures of a subtraction for people to look at (matplotlib, an optional dependency).

Only this module imports matplotlib, and only inside its functions, so that the rest of
diffim works without it (``pip install diffim[plot]`` brings it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DiffimError
from .image import MaskedImage
from .spatial import SpatialKernel

__all__ = ["plot_subtraction"]

#: Mask planes drawn in grey on the difference.
FLAGGED_PLANES = ("BAD", "SAT", "CR", "EDGE", "NO_DATA")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the installation
        msg = "plots need matplotlib: pip install 'diffim[plot]'"
        raise DiffimError(msg) from error
    return plt


def _stretch(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    return tuple(float(v) for v in np.percentile(finite, [low, high]))


def _save(figure: Any, path: str | os.PathLike) -> None:
    """Save a figure atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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
        PNG file to write.
    n_kernels : int
        Kernels per axis in the lower panel.
    """
    plt = _pyplot()
    figure = plt.figure(figsize=(20, 5.2))
    grid = figure.add_gridspec(1, 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = difference.image / np.sqrt(difference.variance)
    flagged = (difference.mask & difference.bitmask(list(FLAGGED_PLANES))) != 0
    normalized = np.where(flagged, np.nan, normalized)
    panels = (
        (science.image, "science (ADU)", "gray", *_stretch(science.image)),
        (template.image, "template (ADU)", "gray", *_stretch(template.image)),
        (normalized, "difference / sqrt(variance)", "RdBu_r", -5.0, 5.0),
    )
    for column, (image, title, cmap, vmin, vmax) in enumerate(panels):
        axes = figure.add_subplot(grid[0, column])
        colors = plt.get_cmap(cmap).with_extremes(bad="0.6")
        shown = axes.imshow(
            image, origin="lower", cmap=colors, vmin=vmin, vmax=vmax, interpolation="nearest"
        )
        axes.set_title(title)
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.02)
    bbox = difference.bbox
    inner = figure.add_subplot(grid[0, 3])
    inner.set_xticks([])
    inner.set_yticks([])
    xs = np.linspace(bbox.x_min, bbox.x_max, n_kernels + 2)[1:-1]
    ys = np.linspace(bbox.y_min, bbox.y_max, n_kernels + 2)[1:-1]
    images = [[kernel.image_at(x, y) for x in xs] for y in ys[::-1]]
    mosaic = np.block([[np.pad(k, 1, constant_values=np.nan) for k in row] for row in images])
    shown = inner.imshow(mosaic, origin="upper", cmap="viridis", interpolation="nearest")
    inner.set_title(
        f"kernel on a {n_kernels}x{n_kernels} grid\n(sum {kernel.sum_at(*bbox.center):.4f} "
        "at the centre)"
    )
    figure.colorbar(shown, ax=inner, fraction=0.046, pad=0.02)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
