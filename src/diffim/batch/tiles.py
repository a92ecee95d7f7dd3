"""The tiles of one large pair: `subtract_tiled` fits and subtracts each tile on its own.

`tile_layout` cuts the image into overlapping tiles (interiors grown by a margin,
`default_margin`), `subtract_tile` fits one tile's kernel and subtracts it, serially or as
a Dask task per tile, and the tile interiors are stitched into one difference exposure.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import ImagePsfMatchConfig
from ..errors import DiffimValueError
from ..image import BBox, Exposure, MaskedImage
from ..psf import GaussianPsf

log = logging.getLogger("diffim.batch")


@dataclasses.dataclass(frozen=True, slots=True)
class TileResult:
    """What `subtract_tile` returns: the difference over the tile interior, QA, warnings."""

    interior: BBox
    difference: MaskedImage
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[tuple[type[Warning], str], ...] = ()


def tile_layout(bbox: BBox, tiles: tuple[int, int], margin: int) -> list[tuple[BBox, BBox]]:
    """Cut ``bbox`` into ``tiles = (ny, nx)`` interiors, each with a box grown by ``margin``.

    Returns
    -------
    list of (BBox, BBox)
        ``(interior, box)``, row by row.  The interiors partition ``bbox`` (their sizes
        differ by one pixel at most); a box is its interior grown by ``margin`` pixels and
        clipped to ``bbox``.

    Raises
    ------
    DiffimValueError
        A tile count below 1 or above the image size, or a negative margin.
    """
    n_y, n_x = (int(n) for n in tiles)
    if not (1 <= n_y <= bbox.height and 1 <= n_x <= bbox.width) or margin < 0:
        msg = (
            f"cannot cut a {bbox.height}x{bbox.width} image into {n_y}x{n_x} tiles with "
            f"margin {margin}; give 1 <= tiles <= the image size and margin >= 0"
        )
        raise DiffimValueError(msg)
    ys = np.linspace(bbox.y_min, bbox.y_min + bbox.height, n_y + 1).round().astype(int)
    xs = np.linspace(bbox.x_min, bbox.x_min + bbox.width, n_x + 1).round().astype(int)
    layout = []
    for (y0, y1), (x0, x1) in itertools.product(itertools.pairwise(ys), itertools.pairwise(xs)):
        interior = BBox.from_corners(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
        layout.append((interior, interior.grown(margin).intersection(bbox)))
    return layout


def default_margin(config: ImagePsfMatchConfig, kernel_size: int) -> int:
    """Return the tile margin ``2 (c + h)``, for kernel and stamp half-widths ``c`` and ``h``.

    A tile's convolution is undefined within ``c`` of its edge, and a kernel star counts
    only if its whole stamp (half-width ``h``) lies in the tile.  With ``2 (c + h)`` the
    undefined band lies in the margin, and the stars within ``c + h`` of a seam, on both
    sides, are used by both tiles that meet there: each tile's spatial kernel interpolates
    across the seam instead of extrapolating.  62 px for the default 21-px kernel.
    """
    from ..task import ImagePsfMatchTask  # lazy: CLI start-up

    return 2 * (kernel_size // 2 + ImagePsfMatchTask(config).stamp_half_width(kernel_size))


def subtract_tile(
    science: Exposure,
    template: Exposure,
    interior: BBox,
    config_dict: Mapping[str, Any],
    fwhm_pix: tuple[float, float],
    convolve_template: bool,
) -> TileResult:
    """Fit and subtract one tile; return the difference over its interior only.

    Parameters
    ----------
    science, template : Exposure
        The tile (interior plus margin) of both images, on one pixel grid.
    interior : BBox
        The part of the tile to keep (parent pixels).
    config_dict : mapping
        The configuration, as `ImagePsfMatchConfig.to_dict` gives it.
    fwhm_pix : tuple of float
        ``(template, science)`` PSF FWHMs of the whole image (pixels): all tiles share one
        basis and one kernel size.
    convolve_template : bool
        Which image to convolve, decided once for the whole image.

    Returns
    -------
    TileResult
        With the warnings recorded as ``(category, message)``, not issued.
    """
    from ..task import ImagePsfMatchTask  # lazy: CLI start-up

    task = ImagePsfMatchTask(ImagePsfMatchConfig.from_dict(config_dict))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = task.subtractExposures(
                template, science, *fwhm_pix, convolveTemplate=convolve_template
            )
        except Exception as error:
            error.add_note(f"in the tile of interior {interior}")
            raise
    difference = result.subtractedExposure.masked_image.subimage(interior).copy()
    recorded = tuple(dict.fromkeys((w.category, str(w.message)) for w in caught))
    return TileResult(interior, difference, dict(result.metadata), recorded)


def _map_tiles(
    client: Any, science: Exposure, template: Exposure, layout: list, arguments: tuple
) -> list[TileResult]:
    """Run `subtract_tile` on every tile, serially or on Dask; return them in layout order."""
    if client is None:
        return [
            subtract_tile(science.subimage(box), template.subimage(box), interior, *arguments)
            for interior, box in layout
        ]
    from dask.distributed import as_completed

    limit = 2 * max(1, sum(client.nthreads().values()))  # tiles in flight, to bound memory
    todo, queue, results = list(layout), as_completed(), []
    while todo or queue.count():
        while todo and queue.count() < limit:  # each task receives its own tile only
            interior, box = todo.pop(0)
            tiles = client.scatter([science.subimage(box), template.subimage(box)], hash=False)
            queue.add(client.submit(subtract_tile, *tiles, interior, *arguments, pure=False))
        results.append(next(queue).result())
    return sorted(results, key=lambda result: (result.interior.y_min, result.interior.x_min))


def _stitch(science: Exposure, results: list[TileResult], psf: Any, bad: Any) -> Exposure:
    """Assemble the tile interiors into a difference exposure with the science metadata."""
    from ..stats import difference_statistics

    first = results[0].difference
    image, mask = np.empty(science.shape, first.dtype), np.empty(science.shape, first.mask.dtype)
    variance, planes = np.empty_like(image), first.planes
    for result in results:
        rows, cols = result.interior.slices(science.masked_image.xy0)
        image[rows, cols] = result.difference.image
        mask[rows, cols] = result.difference.mask
        variance[rows, cols] = result.difference.variance
        planes = planes.merged(result.difference.planes)
    difference = MaskedImage(image, mask, variance, xy0=science.masked_image.xy0, planes=planes)
    shared = ("diffimVersion", "DIRECTION", "DIFFSIGN", "CONFIG")
    metadata = {**science.metadata, **{key: results[0].metadata[key] for key in shared}}
    metadata.update(difference_statistics(difference, bad))
    metadata["tileKernelSums"] = [round(r.metadata["spatialKernelSum"], 6) for r in results]
    metadata["nCandidates"] = sum(r.metadata["nCandidates"] for r in results)
    stitched = science.with_pixels(difference)  # keeps an unread WCS unread
    stitched.psf, stitched.metadata = psf, metadata
    return stitched


def _reissue_warnings(results: list[TileResult]) -> None:
    """Issue the tiles' warnings here, once per category, naming the tiles."""
    by_category: dict[type[Warning], list[str]] = {}
    for result in results:
        for category, message in result.warnings:
            by_category.setdefault(category, []).append(f"tile {result.interior}: {message}")
    for category, messages in by_category.items():
        warnings.warn("; ".join(messages), category, stacklevel=3)


def subtract_tiled(
    science: Any,
    template: Any,
    *,
    tiles: tuple[int, int] = (2, 2),
    margin: int | None = None,
    client: Any = None,
    config: ImagePsfMatchConfig | None = None,
    mode: str | None = None,
    warp: bool = True,
    **overrides: Any,
) -> Exposure:
    """Subtract a large pair tile by tile, each tile with its own kernel fit.

    Parameters
    ----------
    science, template : str, os.PathLike, Exposure, MaskedImage or CCDData
        The pair, as `diffim.subtract` takes it; a template on another pixel grid is
        warped onto the science grid first, in this process (whole images in memory).
    tiles : tuple of int, optional
        Tiles per axis, ``(ny, nx)``.
    margin : int, optional
        Pixels added to each side of a tile interior (clipped at the image edge); at least
        the kernel half-width.  Default: `default_margin`.
    client : dask.distributed.Client, optional
        Run the tiles on Dask, each task receiving only its tile; serially if None.
    config : ImagePsfMatchConfig, optional
        Base configuration; ``**overrides`` (``kernelSize=25``, ...) apply on top.
    mode : {"auto", "convolveTemplate", "convolveScience"}, optional
        Which image to convolve, decided once from the whole-image FWHMs.
    warp : bool, optional
        Resample a template on another pixel grid; if False it raises `NotRegisteredError`.

    Returns
    -------
    Exposure
        Science minus template, stitched from the tile interiors only, with the science
        WCS and PSF; metadata adds ``TILES``, ``TILEMARG``, ``tileKernelSums``,
        ``DIRECTION`` and the difference statistics.

    Warns
    -----
    DiffimWarning
        Once per category that some tiles issued, naming those tiles.
    """
    from ..stars import exposure_fwhm
    from ..subtraction import as_exposure, choose_convolve_template
    from ..task import ImagePsfMatchTask  # lazy: CLI start-up

    config = ImagePsfMatchConfig() if config is None else copy.deepcopy(config)
    if overrides:
        config.apply_overrides([f"{key}={value!r}" for key, value in overrides.items()])
    task = ImagePsfMatchTask(config)
    science = as_exposure(science, "science")
    warped = task.registered_template(as_exposure(template, "template"), science, warp)
    fwhm = (exposure_fwhm(warped, "template", log), exposure_fwhm(science, "science", log))
    convolve_template = choose_convolve_template(mode or config.mode, *fwhm)
    convolved_first = fwhm if convolve_template else fwhm[::-1]
    kernel_size = task.makeKernelBasisList(*convolved_first).kernel_size
    margin = default_margin(config, kernel_size) if margin is None else int(margin)
    if margin < kernel_size // 2:
        msg = f"margin={margin} is below the kernel half-width {kernel_size // 2}; raise it"
        raise DiffimValueError(msg)
    layout = tile_layout(science.bbox, tiles, margin)
    log.info("%d tiles with a %d-px margin", len(layout), margin)
    arguments = (config.to_dict(), fwhm, convolve_template)
    results = _map_tiles(client, science, warped, layout, arguments)
    _reissue_warnings(results)
    # the difference has the PSF of the image that was not convolved (as subtractExposures)
    unconvolved, fwhm_unconvolved = (science, fwhm[1]) if convolve_template else (warped, fwhm[0])
    psf = unconvolved.psf
    if psf is None:
        psf = GaussianPsf.from_fwhm(fwhm_unconvolved)
    stitched = _stitch(science, results, psf, config.kernel.active.badMaskPlanes)
    stitched.metadata.update(TILES=f"{tiles[0]}x{tiles[1]}", TILEMARG=margin)
    return stitched
