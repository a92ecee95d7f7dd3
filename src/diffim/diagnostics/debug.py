"""The debug pictures of a subtraction: one PNG per question asked of it.

`write_debug_plots` draws, into one folder, the figures of `overview` (images, candidates),
`kernels` (candidate kernels, spatial kernel, kernel sum) and `residuals` (residual
histograms, normalised residuals), each written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ImagePsfMatchConfig
from .display import _difference, _masked_image, _matplotlib, _save
from .kernels import _plot_candidate_kernels, _plot_kernel_sum, _plot_spatial_kernel
from .overview import _plot_candidates, _plot_images
from .residuals import _plot_normalized_residuals, _plot_residual_histograms


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
