"""How every diagnostic picture is drawn: matplotlib, figures, stretches, candidate styles.

matplotlib is imported only inside `_matplotlib`, so that importing this module needs no
matplotlib.  Figures are made with matplotlib's object interface (`_new_figure`) and
written atomically (`_save`).  Images are drawn in parent pixel coordinates with an asinh or
percentile stretch (`_show`); a difference as ``D / sqrt(var)`` with its flagged pixels in
grey.  Kernel candidates are classed by status and rejecting stage (`_category`), each class
with the same colour and marker in every figure (`CATEGORY_STYLES`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..candidates import CandidateStatus, KernelCandidate
from ..errors import DiffimError, DiffimValueError
from ..image import BBox, MaskedImage, bits_set
from ..stats import median_robust_std, sampling_step

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
#: Pixels used to estimate a stretch: larger images are sampled on a regular grid of >= this.
STRETCH_SAMPLE = 1_000_000


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
    flagged = bits_set(difference.mask, difference.bitmask(list(planes)))
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
