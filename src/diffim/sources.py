"""Detection of sources and selection of the stars that constrain a PSF-matching kernel.

Detection uses `sep` (Source Extractor as a library): a 64-pixel background mesh, a
threshold in units of the per-pixel noise, deblending, then windowed centroids and circular
aperture fluxes.  Selection keeps the isolated, unsaturated, unmasked, point-like stars with
enough S/N, as ip_diffim's kernel source selector does (spec §3.5, §5.2).  `measure_fwhm`
fits the profile of those stars to return the PSF's full width at half maximum;
`measure_fwhm_forced` fits it at the positions of stars found on another image of the same
sky, so that a pair of images needs a single detection.

All coordinates in the returned tables are *parent* pixel coordinates (``xy0`` added), with
pixel centres on integers; all lengths are in pixels and fluxes in image units (ADU or e-).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import sep

from .errors import DiffimValueError, InsufficientKernelSourcesError, MaskedPixelsWarning
from .image import MaskedImage

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["detect_sources", "measure_fwhm", "measure_fwhm_forced", "select_kernel_sources"]

log = logging.getLogger(__name__)

Noise = np.ndarray | float | None  # per-pixel noise sigma (image units), a scalar, or unknown

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Mask planes that make a pixel unusable when ``bad_mask_bits`` is None (ip_diffim's
#: ``excludeMaskPlanes`` minus the planes diffim does not create).
DEFAULT_BAD_PLANES = ("NO_DATA", "BAD", "SAT", "EDGE")
BACKGROUND_BOX_PIX = 64
APERTURE_RADIUS_FWHM = 2.0  # aperture radius / PSF FWHM: 99.9% of a Gaussian, ~96% of a Moffat
ISOLATION_FLUX_RATIO = 0.1  # a neighbour brighter than this fraction spoils a stamp
LOCUS_WIDTH = 1.25  # the stellar locus is the densest FWHM interval of this max/min ratio
FIT_STAMP_FWHM = 2.5  # half-width of the profile-fit stamp, in units of the FWHM guess
OVERSAMPLE = 3  # sub-pixels per axis when integrating the profile model over a pixel
MAX_INVERSE_BETA = 1.0 / 1.5  # the profile fit allows Moffat beta from 1.5 to a Gaussian
MIN_INVERSE_BETA = 1e-6  # the Gaussian end: beta = 1e6 differs from a Gaussian by < 1e-6
PEAK_BOX_PIX = 16  # `_peaks` takes the footprint boxes up to this size together
SPARSE_BAD_PIXELS = 100_000  # up to this many bad pixels, `_box_tests` uses a k-d tree
FIT_BATCH = 32  # stars fitted together (memory ~ FIT_BATCH * stamp pixels * OVERSAMPLE**2)
FIT_MAX_ITERATIONS = 200  # Levenberg-Marquardt steps before a fit counts as failed
FIT_FTOL = 1e-9  # converged when an accepted step lowers chi^2 by less than this fraction
MIN_FORCED_SNR = 20.0  # `measure_fwhm_forced`: least S/N of a fitted amplitude
GUESS_RANGE = (0.5, 1.25)  # `measure_fwhm_forced` refits when FWHM / guess is outside
FORCED_ROUNDS = 3  # `measure_fwhm_forced` replaces failed fits at most this many times
DETECTION_DTYPES = {
    "id": np.int64, "x": np.float64, "y": np.float64, "flux": np.float64,
    "flux_err": np.float64, "snr": np.float64, "peak": np.float64, "background": np.float64,
    "a": np.float64, "b": np.float64, "theta": np.float64, "fwhm": np.float64,
    "flag": np.int64, "npix": np.int64,
}  # fmt: skip
#: Rejection tests in the order that picks ``reject_reason`` (the first failing one).
REJECT_REASONS = {
    "blended": "blended", "truncated": "truncated", "singular": "singular",
    "saturated": "saturated", "masked": "masked", "low_snr": "low S/N",
    "high_snr": "high S/N", "extended": "extended", "compact": "compact",
    "elongated": "elongated", "not_isolated": "not isolated",
}  # fmt: skip


#: Tests that ``crowded=True`` switches off: they fail for most stars of a crowded field.
CROWDING_TESTS = ("blended", "extended", "compact", "elongated", "not_isolated")


def _bad_bits(masked_image: MaskedImage, bad_mask_bits: int | None) -> int:
    """Check the image type; return ``bad_mask_bits`` or, if None, the image's default bits."""
    if not isinstance(masked_image, MaskedImage):
        msg = f"expected a MaskedImage, got {type(masked_image).__name__}; pass .masked_image"
        raise DiffimValueError(msg)
    if bad_mask_bits is None:
        return masked_image.bitmask(list(DEFAULT_BAD_PLANES))
    return int(bad_mask_bits)


def _check_positive(**values: float | None) -> None:
    """Raise DiffimValueError naming the first value that is not None and not > 0."""
    for name, value in values.items():
        if value is not None and not value > 0:
            msg = f"{name} must be positive, got {value!r}"
            raise DiffimValueError(msg)


def _prepare(masked_image: MaskedImage, bad_bits: int) -> tuple[np.ndarray, np.ndarray, Noise]:
    """Return native-order float data (a copy), its bad-pixel map and noise ready for sep.

    float32 images stay float32: sep computes in single precision whatever it is given.
    Bad pixels are set to 0; sep ignores them through its mask.
    """
    image = masked_image.image
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    data = np.array(image, dtype=dtype, order="C")  # native byte order, a copy
    variance = np.asarray(masked_image.variance)
    masked = (masked_image.mask & bad_bits) != 0
    good_variance = variance > 0  # False for nan
    good_variance &= np.isfinite(variance)
    has_variance = bool(np.any(good_variance & ~masked))
    unusable = ~np.isfinite(data)
    if has_variance:
        unusable |= ~good_variance
    bad = masked | unusable
    if bad.all():
        msg = (
            f"all {bad.size} pixels are masked (bad_mask_bits={bad_bits:#x}) or have "
            "non-finite values or variance; no sources can be detected"
        )
        raise DiffimValueError(msg)
    n_new = int(np.count_nonzero(unusable & ~masked))
    if n_new:
        msg = (
            f"ignored {n_new} unmasked pixels with non-finite values or non-positive variance; "
            "mask them (e.g. NO_DATA) to silence this warning"
        )
        warnings.warn(msg, MaskedPixelsWarning, stacklevel=3)
    data[bad] = 0.0
    if not has_variance:
        return data, bad, None
    with np.errstate(invalid="ignore"):  # negative variances are replaced below
        noise = np.sqrt(variance, dtype=dtype)
    noise[~good_variance] = 1.0  # any finite value: these pixels are bad, masked for sep
    return data, bad, noise


def _extract(data: np.ndarray, noise: Noise, bad: np.ndarray, **kwargs: object) -> np.ndarray:
    """Run `sep.extract`, raising sep's active-pixel limit (a global) when it is too low."""
    while True:
        try:
            return sep.extract(data, err=noise, mask=bad, **kwargs)
        except Exception as error:
            limit = sep.get_extract_pixstack()
            if "pixel buffer full" not in str(error) or limit >= data.size:
                raise
            sep.set_extract_pixstack(min(4 * limit, data.size))


def _stellar_locus_fwhm(fwhm: np.ndarray) -> float:
    """Return the FWHM (pixels) around which most of the given sources cluster.

    Stars share one width while galaxies spread over many, so the densest interval of
    width ratio `LOCUS_WIDTH` in log(FWHM) finds the stars even where galaxies dominate.
    """
    values = np.sort(np.log(fwhm[np.isfinite(fwhm) & (fwhm > 0)]))
    if values.size < 3:
        return float(np.exp(np.median(values))) if values.size else math.nan
    ends = np.searchsorted(values, values + math.log(LOCUS_WIDTH), side="right")
    start = int(np.argmax(ends - np.arange(values.size)))
    return float(np.exp(np.median(values[start : ends[start]])))


def _box_maxima(
    image: np.ndarray, x_min: np.ndarray, x_max: np.ndarray, y_min: np.ndarray, y_max: np.ndarray
) -> np.ndarray:
    """Return the largest finite pixel value in each box (inclusive array indices, already
    within the image); -inf for an empty box or one without a finite pixel."""
    ny, nx = image.shape
    peaks = np.empty(len(x_min))
    small = (x_max - x_min < PEAK_BOX_PIX) & (y_max - y_min < PEAK_BOX_PIX)
    index = np.flatnonzero(small)  # boxes up to PEAK_BOX_PIX square: all at once
    offsets = np.arange(PEAK_BOX_PIX)
    cols = x_min[index, None, None] + offsets
    rows = y_min[index, None, None] + offsets[:, None]
    inside = (cols <= x_max[index, None, None]) & (rows <= y_max[index, None, None])
    values = image[np.minimum(rows, ny - 1), np.minimum(cols, nx - 1)]
    peaks[index] = np.where(inside & np.isfinite(values), values, -np.inf).max(
        axis=(1, 2), initial=-np.inf
    )
    empty = (x_max < x_min) | (y_max < y_min)
    peaks[~small & empty] = -np.inf
    for k in np.flatnonzero(~small & ~empty):
        box = image[y_min[k] : y_max[k] + 1, x_min[k] : x_max[k] + 1]
        peaks[k] = np.max(box, where=np.isfinite(box), initial=-np.inf)
    return peaks


def _peaks(image: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Return the largest finite raw pixel value inside each object's bounding box."""
    return _box_maxima(
        image, *(objects[k].astype(np.int64) for k in ("xmin", "xmax", "ymin", "ymax"))
    )


def _subtract_background(data: np.ndarray, bad: np.ndarray, noise: Noise) -> tuple:
    """Subtract sep's background map in place; return it and the noise to detect with."""
    ny, nx = data.shape
    box = {"bw": min(BACKGROUND_BOX_PIX, nx), "bh": min(BACKGROUND_BOX_PIX, ny)}
    background = sep.Background(data, mask=bad, **box)
    back = background.back()
    data -= back
    data[bad] = 0.0
    if noise is None:
        noise = float(background.globalrms)
        log.info("no variance plane; using the background rms %.4g as the noise", noise)
        if not noise > 0:
            msg = "the image has zero variance and no background noise; supply a variance plane"
            raise DiffimValueError(msg)
    return back, noise


def _measure(objects: np.ndarray, data: np.ndarray, noise: Noise, bad: np.ndarray,
             fwhm_pix: float | None) -> tuple[dict, float]:  # fmt: skip
    """Return the FWHM, windowed centroid and aperture flux of sep objects (array pixels)."""
    x, y, a = objects["x"], objects["y"], objects["a"]
    r_half, _ = sep.flux_radius(data, x, y, np.clip(6.0 * a, 3.0, None), 0.5, mask=bad)
    fwhm = 2.0 * r_half  # exact for a Gaussian, wider for profiles with wings
    clean = (objects["flag"] == 0) & (objects["flux"] >= np.median(objects["flux"]))
    reference = fwhm_pix or _stellar_locus_fwhm(fwhm[clean])
    if not reference > 0:
        reference = float(np.nanmedian(np.where(fwhm > 0, fwhm, np.nan)))
    x_win, y_win, _ = sep.winpos(data, x, y, reference / FWHM_PER_SIGMA, mask=bad, subpix=5)
    jumped = ~(np.hypot(x_win - x, y_win - y) < 0.5 * reference)  # windowing diverged
    x_win, y_win = np.where(jumped, x, x_win), np.where(jumped, y, y_win)
    flux, flux_err, aperture_flag = sep.sum_circle(
        data, x_win, y_win, APERTURE_RADIUS_FWHM * reference, err=noise, mask=bad, subpix=5
    )
    columns = {"x": x_win, "y": y_win, "flux": flux, "flux_err": flux_err,
               "snr": flux / flux_err, "fwhm": fwhm,
               "flag": objects["flag"].astype(np.int64) | aperture_flag}  # fmt: skip
    return columns, reference


def detect_sources(
    masked_image: MaskedImage,
    *,
    threshold_sigma: float = 5.0,
    min_area: int = 5,
    fwhm_pix: float | None = None,
    bad_mask_bits: int | None = None,
) -> Table:
    """Detect and measure the sources of an image with sep.

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), mask and variance (image units squared); not modified.
    threshold_sigma : float
        Detection threshold per (filtered) pixel, in units of the pixel noise
        ``sqrt(variance)``; the sep background's global rms if the variance is all zero.
    min_area : int
        Minimum number of pixels above the threshold.
    fwhm_pix : float, optional
        PSF FWHM in pixels: sets the Gaussian matched filter, the centroid window and the
        aperture radius.  If None: sep's 3x3 filter and the stellar locus (see Notes).
    bad_mask_bits : int, optional
        Mask bits of unusable pixels, excluded from background, detection and measurement;
        None means the image's NO_DATA, BAD, SAT and EDGE planes.  Non-finite pixels are
        always excluded (with a `MaskedPixelsWarning` when no bad bit covers them).

    Returns
    -------
    astropy.table.Table
        One row per detection, in sep's order: ``id``; ``x``, ``y`` windowed centroid
        (parent pixels); ``flux``, ``flux_err`` in a circular aperture of radius 2 FWHM on
        the background-subtracted image (image units); ``snr = flux / flux_err``; ``peak``,
        the largest raw pixel value in the footprint box *including* background;
        ``background`` at the centroid; ``a``, ``b`` (pixels), ``theta`` (radians) of
        sep's isophotal moments; ``fwhm`` = 2 x half-light radius (pixels; the true FWHM
        for a Gaussian, wider for a Moffat); ``flag`` (sep OBJ_* | APER_* bits); ``npix``.
        ``meta`` holds ``fwhm_pix`` (the FWHM used for the aperture), ``threshold_sigma``
        and ``bad_mask_bits`` (the bits actually used).

    Raises
    ------
    DiffimValueError
        If every pixel is masked or non-finite, or the image has no noise at all.

    Notes
    -----
    Without ``fwhm_pix`` the reference FWHM is the stellar locus: the densest 25%-wide
    interval of ``fwhm`` among unflagged detections brighter than the median.
    """
    from astropy.table import Table  # lazy: astropy.table costs ~0.2 s to import

    _check_positive(threshold_sigma=threshold_sigma, min_area=min_area, fwhm_pix=fwhm_pix)
    bad_bits = _bad_bits(masked_image, bad_mask_bits)
    data, bad, noise = _prepare(masked_image, bad_bits)
    back, noise = _subtract_background(data, bad, noise)
    objects = _extract(
        data, noise, bad, thresh=threshold_sigma, minarea=int(min_area), **_filter(fwhm_pix)
    )
    meta = {"threshold_sigma": float(threshold_sigma), "bad_mask_bits": bad_bits}
    if len(objects) == 0:
        columns = {name: np.zeros(0, dtype) for name, dtype in DETECTION_DTYPES.items()}
        return Table(columns, meta={"fwhm_pix": fwhm_pix, **meta})
    columns, reference = _measure(objects, data, noise, bad, fwhm_pix)
    ny, nx = data.shape
    ix = np.clip(np.rint(columns["x"]).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(columns["y"]).astype(int), 0, ny - 1)
    columns.update(
        id=np.arange(len(objects)), peak=_peaks(masked_image.image, objects),
        background=back[iy, ix], x=columns["x"] + masked_image.xy0[0],
        y=columns["y"] + masked_image.xy0[1], a=objects["a"], b=objects["b"],
        theta=objects["theta"], npix=objects["npix"],
    )  # fmt: skip
    log.debug("detected %d sources above %.1f sigma", len(objects), threshold_sigma)
    return Table(
        [np.asarray(columns[name], dtype) for name, dtype in DETECTION_DTYPES.items()],
        names=list(DETECTION_DTYPES),
        meta={"fwhm_pix": float(reference), **meta},
    )


def _filter(fwhm_pix: float | None) -> dict:
    """Return sep.extract's filter keyword: a Gaussian matched to the PSF, if known."""
    if fwhm_pix is None:
        return {}
    sigma = fwhm_pix / FWHM_PER_SIGMA
    offsets = np.arange(-math.ceil(2.0 * sigma), math.ceil(2.0 * sigma) + 1)
    profile = np.exp(-0.5 * (offsets / sigma) ** 2)
    return {"filter_kernel": np.outer(profile, profile)}


def _box_tests(
    masked_image: MaskedImage, bad_bits: int, x: np.ndarray, y: np.ndarray, half_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (any bad pixel in the box, box leaves the image) for boxes around (x, y)."""
    bad = np.bitwise_and(masked_image.mask, bad_bits).astype(bool, copy=False)
    finite = np.isfinite(masked_image.image)
    if not finite.all():
        bad |= ~finite
    ny, nx = bad.shape
    ix = np.rint(np.asarray(x) - masked_image.xy0[0]).astype(np.int64)
    iy = np.rint(np.asarray(y) - masked_image.xy0[1]).astype(np.int64)
    x_lo, x_hi = ix - half_width, ix + half_width + 1
    y_lo, y_hi = iy - half_width, iy + half_width + 1
    edge = (x_lo < 0) | (y_lo < 0) | (x_hi > nx) | (y_hi > ny)
    x_lo, x_hi = np.clip(x_lo, 0, nx), np.clip(x_hi, 0, nx)
    y_lo, y_hi = np.clip(y_lo, 0, ny), np.clip(y_hi, 0, ny)
    n_bad = int(np.count_nonzero(bad))
    if n_bad <= SPARSE_BAD_PIXELS:  # few bad pixels: is the nearest one inside the box?
        if n_bad == 0:
            return np.zeros(ix.shape, dtype=bool), edge
        from scipy.spatial import cKDTree  # lazy: scipy.spatial costs ~0.1 s to import

        rows, cols = np.divmod(np.flatnonzero(bad), nx)  # 15x faster than a 2-d nonzero
        distance, _ = cKDTree(np.column_stack([cols, rows])).query(
            np.column_stack([ix, iy]), p=np.inf, distance_upper_bound=half_width + 0.5
        )
        return np.isfinite(distance), edge
    # counts[j, i]: bad pixels in rows < j and columns < i (a summed-area table)
    counts = np.zeros((ny + 1, nx + 1), dtype=np.int32)
    np.cumsum(bad, axis=0, dtype=np.int32, out=counts[1:, 1:])
    np.cumsum(counts[1:, 1:], axis=1, out=counts[1:, 1:])
    n_bad = counts[y_hi, x_hi] - counts[y_lo, x_hi] - counts[y_hi, x_lo] + counts[y_lo, x_lo]
    return n_bad > 0, edge


def _crowded(x: np.ndarray, y: np.ndarray, flux: np.ndarray, half_width: int) -> np.ndarray:
    """Return True where a source brighter than 0.1x this one lies within the stamp box."""
    flux = np.nan_to_num(np.asarray(flux, dtype=np.float64), nan=0.0)
    crowded = np.zeros(flux.size, dtype=bool)
    if flux.size < 2:
        return crowded
    from scipy.spatial import cKDTree  # lazy: scipy.spatial costs ~0.1 s to import

    tree = cKDTree(np.column_stack([x, y]))
    first, second = tree.query_pairs(half_width, p=np.inf, output_type="ndarray").T
    crowded[first[flux[second] > ISOLATION_FLUX_RATIO * flux[first]]] = True
    crowded[second[flux[first] > ISOLATION_FLUX_RATIO * flux[second]]] = True
    return crowded


def _rejections(table: Table, masked_image: MaskedImage, bad_bits: int, options: dict) -> dict:
    """Return a boolean array per rejection test (True = rejected) plus ``edge``."""
    flag, snr, fwhm = (np.asarray(table[name]) for name in ("flag", "snr", "fwhm"))
    none = np.zeros(len(table), dtype=bool)
    half_width = options["stamp_half_width"]
    masked, edge = _box_tests(masked_image, bad_bits, table["x"], table["y"], half_width)
    saturation, max_snr = options["saturation"], options["max_snr"]
    limit = None if saturation is None else options["saturation_fraction"] * saturation
    tests = {
        "blended": (flag & (sep.OBJ_MERGED | sep.OBJ_DOVERFLOW)) != 0,
        "truncated": (flag & sep.OBJ_TRUNC) != 0,
        "singular": (flag & sep.OBJ_SINGU) != 0,
        "saturated": none if limit is None else ~(np.asarray(table["peak"]) < limit),
        "masked": masked,
        "low_snr": ~(snr >= options["min_snr"]),
        "high_snr": none if max_snr is None else snr > max_snr,
    }
    clean = ~np.any(list(tests.values()), axis=0)
    reference = _stellar_locus_fwhm(fwhm[clean])
    low, high = options["fwhm_band"]
    tests["extended"] = ~(fwhm <= high * reference)
    tests["compact"] = fwhm < low * reference
    axis_ratio = np.asarray(table["b"]) / np.asarray(table["a"])
    stars = clean & ~tests["extended"] & ~tests["compact"]
    typical = float(np.median(axis_ratio[stars])) if stars.any() else 1.0
    tests["elongated"] = ~(axis_ratio >= options["min_axis_ratio"] * typical)
    tests["not_isolated"] = _crowded(table["x"], table["y"], table["flux"], half_width)
    return {**tests, "edge": edge, "reference": reference}


def select_kernel_sources(
    masked_image: MaskedImage,
    *,
    stamp_half_width: int,
    fwhm_pix: float | None = None,
    threshold_sigma: float = 5.0,
    min_snr: float = 10.0,
    max_snr: float | None = None,
    saturation: float | None = None,
    saturation_fraction: float = 0.8,
    bad_mask_bits: int | None = None,
    max_sources: int | None = None,
    fwhm_band: tuple[float, float] = (0.75, 1.3),
    min_axis_ratio: float = 0.7,
    detections: Table | None = None,
    return_all: bool = False,
    ignore_tests: tuple[str, ...] = (),
) -> Table:
    """Detect sources and keep those fit to constrain a PSF-matching kernel.

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), mask and variance; not modified.
    stamp_half_width : int
        Half-width in pixels of the square stamp (side ``2 * stamp_half_width + 1``) that
        must be free of bad pixels and of neighbours.
    fwhm_pix, threshold_sigma : float, optional
        Passed to `detect_sources`.
    min_snr, max_snr : float, optional
        Accepted range of the aperture S/N (``max_snr=None``: no upper limit).
    saturation : float, optional
        Saturation level in image units; sources whose ``peak`` (with background) reaches
        ``saturation_fraction * saturation`` are rejected.  None disables the test.
    saturation_fraction : float
        See ``saturation``.
    bad_mask_bits : int, optional
        Mask bits that reject a stamp; None means NO_DATA, BAD, SAT and EDGE.
    max_sources : int, optional
        Keep at most this many (the highest S/N).
    fwhm_band : tuple of float
        Accepted ``fwhm`` range relative to the stellar locus (see `detect_sources` Notes).
    min_axis_ratio : float
        Smallest accepted b/a of sep's isophotal ellipse, relative to the median b/a of the
        locus stars (so an elongated PSF does not reject every star).
    detections : astropy.table.Table, optional
        A `detect_sources` table to select from instead of detecting again.
    return_all : bool
        If True return every detection with the test columns, else only the kept ones.
    ignore_tests : tuple of str
        Names of tests (keys of `REJECT_REASONS`) that reject nothing.  For a crowded
        field `CROWDING_TESTS`: the kernel fit needs only that a stamp's content is the
        same in both epochs, so blends and neighbours may stay.

    Returns
    -------
    astropy.table.Table
        The detection columns plus one boolean column per test in `REJECT_REASONS`
        (True = fails it), ``edge`` (the stamp leaves the image: not a rejection, the
        caller shrinks it), ``selected`` and ``reject_reason`` (the first failed test's
        text, "" when kept).  Sorted by S/N, highest first.  ``meta["stellar_fwhm"]`` is
        the locus FWHM in pixels.

    Notes
    -----
    Rejected: sep flags OBJ_MERGED or OBJ_DOVERFLOW (blended), OBJ_TRUNC (touches the
    image edge), OBJ_SINGU (degenerate moments); saturated; a bad pixel in the stamp; S/N
    out of range; ``fwhm`` outside ``fwhm_band`` times the locus (galaxies, unresolved
    pairs, cosmic rays); too elongated (unresolved pairs); any detection within the stamp
    box (Chebyshev distance <= ``stamp_half_width``) brighter than 0.1 times the source,
    which rejects both members of a close pair.  On simulations the defaults keep every
    isolated star with S/N >= 10 (noise scatters ``fwhm`` by < 22% and b/a by < 26%
    there), while pairs 6 px apart that sep cannot deblend (PSF FWHM 4-5 px) have
    ``fwhm`` 1.37-1.42 times the locus and b/a 0.60-0.65.
    """
    _check_positive(stamp_half_width=stamp_half_width, min_snr=min_snr, max_sources=max_sources)
    if not 0 < saturation_fraction <= 1:
        msg = f"saturation_fraction must be in (0, 1], got {saturation_fraction!r}"
        raise DiffimValueError(msg)
    bad_bits = _bad_bits(masked_image, bad_mask_bits)
    if detections is None:
        detections = detect_sources(
            masked_image, threshold_sigma=threshold_sigma, fwhm_pix=fwhm_pix,
            bad_mask_bits=bad_bits,
        )  # fmt: skip
    options = {
        "stamp_half_width": int(stamp_half_width), "min_snr": min_snr, "max_snr": max_snr,
        "saturation": saturation, "saturation_fraction": saturation_fraction,
        "fwhm_band": fwhm_band, "min_axis_ratio": min_axis_ratio,
    }  # fmt: skip
    table = detections.copy()
    tests = _rejections(table, masked_image, bad_bits, options)
    table.meta["stellar_fwhm"] = tests.pop("reference")
    for name in ignore_tests:
        tests[name] = np.zeros(len(table), dtype=bool)
    reasons = np.full(len(table), "", dtype="U16")
    for name in reversed(REJECT_REASONS):  # the first failed test writes last
        reasons[tests[name]] = REJECT_REASONS[name]
    for name in (*REJECT_REASONS, "edge"):
        table[name] = tests[name]
    table["reject_reason"] = reasons
    table["selected"] = reasons == ""
    table.sort("snr", reverse=True)
    log.info("kernel sources: %d of %d detections kept", table["selected"].sum(), len(table))
    if return_all:
        return table
    return table[table["selected"]][:max_sources]


def _fit_stamps(
    masked_image: MaskedImage, bad: np.ndarray, x: np.ndarray, y: np.ndarray, guess: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Cut each star's fit stamp (half-width 2.5 guessed FWHM) into padded ``(n, npix)`` rows.

    Returns the pixel coordinates ``px``, ``py`` (array pixels), the weighted data, the
    weights (``1/sigma``, or 1 for a star whose stamp has a variance <= 0; 0 off the stamp,
    off the image and on bad pixels) and the number of usable pixels of each star.
    """
    half = np.ceil(FIT_STAMP_FWHM * guess).astype(np.int64)
    offsets = np.arange(-half.max(), half.max() + 1)
    dy, dx = (grid.ravel() for grid in np.meshgrid(offsets, offsets, indexing="ij"))
    px = np.rint(x).astype(np.int64)[:, None] + dx
    py = np.rint(y).astype(np.int64)[:, None] + dy
    ny, nx = bad.shape
    own = (np.abs(dx) <= half[:, None]) & (np.abs(dy) <= half[:, None])
    inside = own & (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    rows, cols = np.clip(py, 0, ny - 1), np.clip(px, 0, nx - 1)
    good = inside & ~bad[rows, cols]
    variance = np.where(good, masked_image.variance[rows, cols], 1.0).astype(np.float64)
    positive = np.all(variance > 0, axis=1)
    weight = np.where(positive[:, None], 1.0 / np.sqrt(np.where(variance > 0, variance, 1.0)), 1.0)
    weight = np.where(good, weight, 0.0)
    data = np.where(good, masked_image.image[rows, cols], 0.0) * weight
    return px.astype(np.float64), py.astype(np.float64), data, weight, good.sum(axis=1)


def _profile_terms(
    params: np.ndarray, px: np.ndarray, py: np.ndarray, *, jacobian: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the pixel-integrated unit-peak profile of each star and, optionally, its
    derivatives with respect to ``x0, y0, fwhm, 1/beta`` (shape ``(n, npix, 4)``).

    The profile is the Moffat ``(1 + s)**(-beta)``, ``s = (2**(1/beta) - 1) (2 r / FWHM)**2``,
    averaged over ``OVERSAMPLE**2`` points of each pixel; ``1/beta -> 0`` is the Gaussian.
    """
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    n_sub = OVERSAMPLE**2
    x0, y0, fwhm, u = (params[:, k, None] for k in range(4))  # (n, 1) each
    dx = (px - x0) + np.tile(sub, OVERSAMPLE)[:, None, None]  # (OVERSAMPLE**2, n, npix)
    dy = (py - y0) + np.repeat(sub, OVERSAMPLE)[:, None, None]
    r2_scaled = dx * dx
    r2_scaled += dy * dy
    r2_scaled /= fwhm**2  # (r / FWHM)**2
    k_over_u = 4.0 * np.expm1(u * math.log(2.0)) / u  # 4 (2**u - 1) / u -> 4 ln 2 as u -> 0
    log1p_s = np.log1p(r2_scaled * (k_over_u * u))
    profile = np.exp(log1p_s * (-1.0 / u))
    model = profile.sum(axis=0) / n_sub
    if not jacobian:
        return model, None
    # d(log profile)/d(r**2 / FWHM**2) = -k/u / (1 + s), with 1 + s = exp(log1p_s)
    slope = profile * np.exp(-log1p_s)
    slope *= k_over_u
    d_u = profile * log1p_s
    d_u /= u
    d_u -= slope * r2_scaled * (4.0 * math.log(2.0) * 2.0**u / k_over_u)
    d_u /= u
    common = slope * (2.0 / fwhm**2)  # -d(profile)/d(r**2)
    terms = [
        (common * dx).sum(axis=0),
        (common * dy).sum(axis=0),
        (slope * r2_scaled).sum(axis=0) * (2.0 / fwhm),
        d_u.sum(axis=0),
    ]
    return model, np.stack(terms, axis=-1) / n_sub


def _residuals(
    params: np.ndarray, stamps: tuple[np.ndarray, ...], *, jacobian: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted residuals ``w (A m + c) - w d`` and their Jacobian over all six parameters."""
    px, py, data, weight, _ = stamps
    model, derivatives = _profile_terms(params, px, py, jacobian=jacobian)
    amplitude, constant = params[:, 4, None], params[:, 5, None]
    residuals = weight * (amplitude * model + constant) - data
    if not jacobian:
        return residuals, None
    columns = [derivatives * (weight * amplitude)[:, :, None], (weight * model)[..., None]]
    return residuals, np.concatenate([*columns, weight[..., None]], axis=-1)


def _linear_start(params: np.ndarray, stamps: tuple[np.ndarray, ...]) -> None:
    """Set the amplitude and constant (columns 4, 5) to their best fit for the profile."""
    px, py, data, weight, _ = stamps
    model, _ = _profile_terms(params, px, py, jacobian=False)
    design = np.stack([weight * model, weight], axis=-1)
    normal = np.einsum("npi,npj->nij", design, design)
    normal += np.eye(2) * 1e-12 * normal.diagonal(axis1=1, axis2=2).max(axis=1)[:, None, None]
    projection = np.einsum("npi,np->ni", design, data)[..., None]
    params[:, 4:] = np.linalg.solve(normal, projection)[..., 0]


def _levenberg_marquardt(
    params: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], stamps: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the chi^2 of every star at once by projected Levenberg-Marquardt steps.

    ``params`` (n, 6) is updated in place; a parameter at a bound whose gradient points out
    of the box is held fixed for that step.  Returns True where the fit converged, and the
    amplitude's S/N from the curvature of chi^2 (scaled by the reduced chi^2 when > 1).
    """
    lower, upper = bounds
    residuals, jacobian = _residuals(params, stamps, jacobian=True)
    chi2 = np.sum(residuals**2, axis=1)
    damping = np.full(len(params), 1e-3)
    converged = np.zeros(len(params), dtype=bool)
    for _ in range(FIT_MAX_ITERATIONS):
        active = np.flatnonzero(~converged)
        if active.size == 0:
            break
        jac = jacobian[active]
        gradient = np.einsum("npi,np->ni", jac, residuals[active])
        hessian = np.einsum("npi,npj->nij", jac, jac)
        point = params[active]
        fixed = ((point <= lower[active]) & (gradient > 0)) | (
            (point >= upper[active]) & (gradient < 0)
        )
        diagonal = hessian.diagonal(axis1=1, axis2=2)
        scale = np.where(diagonal > 0, diagonal, 1.0) * damping[active, None]
        hessian[:, np.arange(6), np.arange(6)] += np.where(fixed, 1.0, scale)
        hessian[fixed[:, :, None] & ~np.eye(6, dtype=bool)] = 0.0
        hessian[fixed[:, None, :] & ~np.eye(6, dtype=bool)] = 0.0
        step = -np.linalg.solve(hessian, np.where(fixed, 0.0, gradient)[..., None])[..., 0]
        trial = np.clip(point + step, lower[active], upper[active])
        trial_stamps = tuple(array[active] for array in stamps)
        trial_residuals, trial_jacobian = _residuals(trial, trial_stamps, jacobian=True)
        trial_chi2 = np.sum(trial_residuals**2, axis=1)
        better = trial_chi2 < chi2[active]
        decrease = chi2[active] - trial_chi2
        accepted = active[better]
        params[accepted] = trial[better]
        residuals[accepted], jacobian[accepted] = trial_residuals[better], trial_jacobian[better]
        chi2[accepted] = trial_chi2[better]
        damping[active] = np.where(better, damping[active] / 3.0, damping[active] * 4.0)
        small = decrease <= FIT_FTOL * chi2[active]
        converged[active] = (better & small) | (~better & (damping[active] > 1e12))
    hessian = np.einsum("npi,npj->nij", jacobian, jacobian)
    dof = np.maximum(stamps[4] - params.shape[1], 1)
    variance = np.linalg.pinv(hessian)[:, 4, 4] * np.maximum(chi2 / dof, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        amplitude_snr = params[:, 4] / np.sqrt(variance)
    return converged, amplitude_snr


def _fit_fwhm(
    masked_image: MaskedImage, bad: np.ndarray, x: np.ndarray, y: np.ndarray, guess: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a pixel-integrated Moffat/Gaussian plus a constant to each star.

    ``x``, ``y`` are array pixel positions and ``guess`` the FWHM guesses (pixels); the
    stars are fitted together, ``FIT_BATCH`` at a time.  Returns the FWHMs (pixels) and the
    S/N of the fitted amplitudes; a failed fit (no convergence, an amplitude <= 0, a FWHM
    at the 0.3x-3x bounds, fewer than 9 pixels) gives nan for both.
    """
    x, y, guess = (np.asarray(value, dtype=np.float64) for value in (x, y, guess))
    fwhm, snr = np.full(x.size, np.nan), np.full(x.size, np.nan)
    valid = np.flatnonzero(np.isfinite(guess) & (guess > 0) & np.isfinite(x) & np.isfinite(y))
    for chunk in (valid[i : i + FIT_BATCH] for i in range(0, valid.size, FIT_BATCH)):
        stamps = _fit_stamps(masked_image, bad, x[chunk], y[chunk], guess[chunk])
        enough = stamps[4] >= 9
        stamps = tuple(array[enough] for array in stamps)
        chunk, g = chunk[enough], guess[chunk][enough]
        if chunk.size == 0:
            continue
        zero, infinity = np.zeros_like(g), np.full_like(g, np.inf)
        params = np.column_stack([x[chunk], y[chunk], g, np.full_like(g, 0.25), zero, zero])
        lower = np.column_stack([x[chunk] - 2, y[chunk] - 2, 0.3 * g, zero + MIN_INVERSE_BETA,
                                 -infinity, -infinity])  # fmt: skip
        upper = np.column_stack([x[chunk] + 2, y[chunk] + 2, 3.0 * g, zero + MAX_INVERSE_BETA,
                                 infinity, infinity])  # fmt: skip
        _linear_start(params, stamps)
        converged, amplitude_snr = _levenberg_marquardt(params, (lower, upper), stamps)
        width = params[:, 2]
        usable = converged & (params[:, 4] > 0) & (0.31 * g < width) & (width < 2.99 * g)
        fwhm[chunk] = np.where(usable, width, np.nan)
        snr[chunk] = np.where(usable, amplitude_snr, np.nan)
    return fwhm, snr


def _half_maximum_width(
    masked_image: MaskedImage,
    detections: Table,
    saturation: float | None,
    bad_bits: int,
    n_brightest: int = 30,
) -> float:
    """Return the median FWHM (pixels) of the brightest clean peaks, from half-maximum crossings.

    Along the row and the column through each peak the profile is followed outwards until it
    drops below half the peak height above the local background; the crossings are
    interpolated linearly (ip_diffim's legacy ``getPsfFwhm``).  Neighbours farther than half
    a FWHM do not affect it, so it stays right in crowded fields where isophotal sizes are
    those of blends.  Returns nan when no peak is usable.
    """
    image, (x0, y0) = masked_image.image, masked_image.xy0
    ny, nx = image.shape
    peak = np.asarray(detections["peak"])
    usable = np.isfinite(peak) if saturation is None else peak < 0.8 * saturation
    widths = []
    for row in detections[usable][np.argsort(-peak[usable])][:n_brightest]:
        ix, iy = round(row["x"]) - x0, round(row["y"]) - y0
        if not (0 < ix < nx - 1 and 0 < iy < ny - 1) or masked_image.mask[iy, ix] & bad_bits:
            continue
        height = image[iy, ix] - row["background"]
        half = row["background"] + height / 2.0
        sides = [image[iy, ix::-1], image[iy, ix:], image[iy::-1, ix], image[iy:, ix]]
        crossings = []
        for profile in sides:
            below = np.flatnonzero(profile < half)
            if height <= 0 or below.size == 0:
                break
            k = below[0]
            crossings.append(k - 1 + (profile[k - 1] - half) / (profile[k - 1] - profile[k]))
        if len(crossings) == 4:
            widths.append(0.5 * (crossings[0] + crossings[1] + crossings[2] + crossings[3]))
    return float(np.median(widths)) if widths else float("nan")


def measure_fwhm(
    masked_image: MaskedImage,
    sources: Table | None = None,
    *,
    fwhm_pix: float | None = None,
    saturation: float | None = None,
    bad_mask_bits: int | None = None,
    min_sources: int = 3,
    max_sources: int = 12,
    detections: Table | None = None,
) -> float:
    """Measure the PSF FWHM from the profiles of isolated, unsaturated stars.

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), mask and variance; not modified.
    sources : astropy.table.Table, optional
        Stars to use, with parent ``x``, ``y`` and (unless ``fwhm_pix``) ``fwhm`` columns,
        e.g. from `select_kernel_sources`.  If None they are detected and selected here.
    fwhm_pix : float, optional
        Starting guess of the FWHM in pixels; also sets the detection filter.
    saturation, bad_mask_bits
        As in `select_kernel_sources`; ``bad_mask_bits=None`` with ``detections`` means
        the bits those were detected with (``detections.meta["bad_mask_bits"]``).
    min_sources : int
        Fewest stars with a successful fit.
    max_sources : int
        Most stars fitted (the first rows of ``sources``, i.e. the highest S/N).
    detections : astropy.table.Table, optional
        A `detect_sources` table of this image to select the stars from (when ``sources``
        is None) instead of detecting again, e.g. the detections kernel stars are
        selected from.

    Returns
    -------
    float
        Median over stars of the fitted FWHM, in pixels.

    Raises
    ------
    InsufficientKernelSourcesError
        If fewer than ``min_sources`` stars could be fitted.

    Notes
    -----
    Each star is fitted on a stamp of half-width 2.5 guessed FWHM, by least squares with
    inverse-variance weights (Levenberg-Marquardt with analytic derivatives, all stars at
    once), with ``A m(r) + c``: ``m`` a circular Moffat profile
    ``(1 + (2**(1/beta) - 1) (2 r / FWHM)**2)**(-beta)`` integrated over each pixel.  Its
    parameters are the FWHM itself and ``1/beta`` in [0, 1/1.5], 0 being the Gaussian
    limit, so Gaussian and Moffat stars both return their true FWHM.
    """
    _check_positive(fwhm_pix=fwhm_pix, min_sources=min_sources, max_sources=max_sources)
    if bad_mask_bits is None and detections is not None:
        bad_mask_bits = detections.meta.get("bad_mask_bits")
    bad_bits = _bad_bits(masked_image, bad_mask_bits)
    if sources is None:
        if detections is None:
            detections = detect_sources(masked_image, fwhm_pix=fwhm_pix, bad_mask_bits=bad_bits)
        guess = fwhm_pix or _half_maximum_width(masked_image, detections, saturation, bad_bits)
        if not guess or not guess > 0:
            raise InsufficientKernelSourcesError(0, min_sources, "no stars detected")
        fwhm_pix = guess
        options = {
            "stamp_half_width": math.ceil(FIT_STAMP_FWHM * guess), "saturation": saturation,
            "bad_mask_bits": bad_bits, "detections": detections,
        }  # fmt: skip
        sources = select_kernel_sources(masked_image, **options)
        if len(sources) < min_sources:  # a crowded field: sep flags nearly every star blended
            sources = select_kernel_sources(masked_image, ignore_tests=("blended",), **options)
    if fwhm_pix is None and "fwhm" not in sources.colnames:
        msg = "sources has no 'fwhm' column; pass fwhm_pix as a starting guess"
        raise DiffimValueError(msg)
    bad = ((masked_image.mask & bad_bits) != 0) | ~np.isfinite(masked_image.image)
    x0, y0 = masked_image.xy0
    stars = sources[:max_sources]
    guess = np.full(len(stars), fwhm_pix) if fwhm_pix else np.asarray(stars["fwhm"], float)
    x = np.asarray(stars["x"], dtype=np.float64) - x0
    fwhm, _ = _fit_fwhm(masked_image, bad, x, np.asarray(stars["y"], dtype=np.float64) - y0, guess)
    usable = fwhm[np.isfinite(fwhm)]
    if usable.size < min_sources:
        details = f"profile fits succeeded for {usable.size} of {len(fwhm)} stars"
        raise InsufficientKernelSourcesError(usable.size, min_sources, details)
    log.info("PSF FWHM %.3f px from %d stars", np.median(usable), usable.size)
    return float(np.median(usable))


def _local_peaks(masked_image: MaskedImage, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """Return the largest finite raw pixel value within ``half`` pixels of each (x, y)."""
    ny, nx = masked_image.shape
    cols = np.rint(np.asarray(x) - masked_image.xy0[0]).astype(np.int64)
    rows = np.rint(np.asarray(y) - masked_image.xy0[1]).astype(np.int64)
    return _box_maxima(
        masked_image.image,
        np.maximum(cols - half, 0), np.minimum(cols + half, nx - 1),
        np.maximum(rows - half, 0), np.minimum(rows + half, ny - 1),
    )  # fmt: skip


def measure_fwhm_forced(
    masked_image: MaskedImage,
    sources: Table,
    *,
    fwhm_pix: float,
    saturation: float | None = None,
    saturation_fraction: float = 0.8,
    bad_mask_bits: int | None = None,
    min_sources: int = 3,
    max_sources: int = 12,
) -> float:
    """Measure the PSF FWHM at the positions of stars found on another image of the same sky.

    This spares a detection of, e.g., a warped template whose science image has been
    detected already: the science stars are vetted on the template and fitted there.

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), mask and variance, on the pixel grid the stars were found on;
        not modified.
    sources : astropy.table.Table
        Stars with parent ``x``, ``y``, best first, e.g. `select_kernel_sources` of the
        other image.
    fwhm_pix : float
        Starting guess of the FWHM in pixels (the other image's); the fit is repeated once
        from the measured value when that is over 1.25 or under 0.5 times the guess.
    saturation : float, optional
        Saturation level of this image (image units); a star whose largest pixel within
        one FWHM of its position reaches ``saturation_fraction * saturation`` is skipped.
    saturation_fraction : float
        See ``saturation``.
    bad_mask_bits : int, optional
        A star whose fit stamp holds a pixel with these bits (or a non-finite one) is
        skipped; None means NO_DATA, BAD, SAT and EDGE.
    min_sources, max_sources : int
        As in `measure_fwhm`.

    Returns
    -------
    float
        Median over stars of the fitted FWHM, in pixels.

    Raises
    ------
    InsufficientKernelSourcesError
        If fewer than ``min_sources`` stars could be fitted.

    Notes
    -----
    The first ``max_sources`` vetted stars are fitted as in `measure_fwhm`; a fit whose
    amplitude has S/N below ``MIN_FORCED_SNR`` is dropped (a source this image lacks: a
    transient, a star that faded) and replaced by the next stars, for at most
    ``FORCED_ROUNDS`` rounds of fits.  The median of the remaining fits is returned.
    """
    _check_positive(fwhm_pix=fwhm_pix, min_sources=min_sources, max_sources=max_sources)
    bad_bits = _bad_bits(masked_image, bad_mask_bits)
    bad = ((masked_image.mask & bad_bits) != 0) | ~np.isfinite(masked_image.image)
    x0, y0 = masked_image.xy0
    x, y = np.asarray(sources["x"], dtype=np.float64), np.asarray(sources["y"], dtype=np.float64)
    guess = float(fwhm_pix)
    for _ in range(2):
        masked, _ = _box_tests(masked_image, bad_bits, x, y, math.ceil(FIT_STAMP_FWHM * guess))
        usable = ~masked
        if saturation is not None:
            peaks = _local_peaks(masked_image, x, y, math.ceil(guess))
            usable &= peaks < saturation_fraction * saturation
        chosen, fitted = np.flatnonzero(usable), np.zeros(0)
        for _ in range(FORCED_ROUNDS):  # each round fits as many stars as are still missing
            batch, chosen = np.split(chosen, [max_sources - fitted.size])
            fwhm, snr = _fit_fwhm(
                masked_image, bad, x[batch] - x0, y[batch] - y0, np.full(batch.size, guess)
            )
            fitted = np.concatenate([fitted, fwhm[snr >= MIN_FORCED_SNR]])
            if fitted.size == max_sources or chosen.size == 0:
                break
        # a stamp of 2.5 guessed FWHM is too small for a broader PSF, needlessly large for
        # a much sharper one: fit again from the measured FWHM
        low, high = GUESS_RANGE
        if fitted.size < min_sources or low < np.median(fitted) / guess < high:
            break
        guess = float(np.median(fitted))
    if fitted.size < min_sources:
        details = f"forced profile fits succeeded for {fitted.size} of {len(sources)} stars"
        raise InsufficientKernelSourcesError(fitted.size, min_sources, details)
    log.info(
        "PSF FWHM %.3f px from %d stars found on another image", np.median(fitted), fitted.size
    )
    return float(np.median(fitted))
