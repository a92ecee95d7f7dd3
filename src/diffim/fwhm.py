"""The PSF's full width at half maximum, measured from stars.

`measure_fwhm` fits the profile of the isolated stars `diffim.sources.select_kernel_sources`
keeps and returns their median FWHM; `measure_fwhm_forced` fits it at the positions of stars
found on another image of the same sky, so that a pair of images needs a single detection.
The profile is a pixel-integrated Moffat (a Gaussian in the limit) plus a constant, fitted
to many stars at once by batched Levenberg-Marquardt steps with analytic derivatives.

All lengths are in pixels; positions are parent pixel coordinates.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from .errors import DiffimValueError, InsufficientKernelSourcesError
from .image import MaskedImage
from .sources import (
    _bad_bits,
    _bad_pixels,
    _box_maxima,
    _box_tests,
    _check_positive,
    _detect_sources,
    _select_kernel_sources,
)

if TYPE_CHECKING:
    from astropy.table import Table

    from .catalog import SourceCatalog

__all__ = ["FIT_STAMP_FWHM", "measure_fwhm", "measure_fwhm_forced"]

log = logging.getLogger(__name__)

FIT_STAMP_FWHM = 2.5  # half-width of the profile-fit stamp, in units of the FWHM guess
OVERSAMPLE = 3  # sub-pixels per axis when integrating the profile model over a pixel
MAX_INVERSE_BETA = 1.0 / 1.5  # the profile fit allows Moffat beta from 1.5 to a Gaussian
MIN_INVERSE_BETA = 1e-6  # the Gaussian end: beta = 1e6 differs from a Gaussian by < 1e-6
FIT_BATCH = 32  # stars fitted together (memory ~ FIT_BATCH * stamp pixels * OVERSAMPLE**2)
FIT_MAX_ITERATIONS = 200  # Levenberg-Marquardt steps before a fit counts as failed
FIT_FTOL = 1e-9  # converged when an accepted step lowers chi^2 by less than this fraction
MIN_FORCED_SNR = 20.0  # `measure_fwhm_forced`: least S/N of a fitted amplitude
GUESS_RANGE = (0.5, 1.25)  # `measure_fwhm_forced` refits when FWHM / guess is outside
FORCED_ROUNDS = 3  # `measure_fwhm_forced` replaces failed fits at most this many times


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
    detections: Table | SourceCatalog,
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
    brightest = np.flatnonzero(usable)[np.argsort(-peak[usable])][:n_brightest]
    x, y, background = (
        np.asarray(detections[name])[brightest] for name in ("x", "y", "background")
    )
    widths = []
    for x_k, y_k, background_k in zip(x, y, background, strict=True):
        ix, iy = round(x_k) - x0, round(y_k) - y0
        if not (0 < ix < nx - 1 and 0 < iy < ny - 1) or masked_image.mask[iy, ix] & bad_bits:
            continue
        height = image[iy, ix] - background_k
        half = background_k + height / 2.0
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
    sources: Table | SourceCatalog | None = None,
    *,
    fwhm_pix: float | None = None,
    saturation: float | None = None,
    bad_mask_bits: int | None = None,
    min_sources: int = 3,
    max_sources: int = 12,
    detections: Table | SourceCatalog | None = None,
) -> float:
    """Measure the PSF FWHM from the profiles of isolated, unsaturated stars.

    Parameters
    ----------
    masked_image : MaskedImage
        Image (ADU or e-), mask and variance; not modified.
    sources : astropy.table.Table or SourceCatalog, optional
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
    detections : astropy.table.Table or SourceCatalog, optional
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
            detections = _detect_sources(masked_image, fwhm_pix=fwhm_pix, bad_mask_bits=bad_bits)
        guess = fwhm_pix or _half_maximum_width(masked_image, detections, saturation, bad_bits)
        if not guess or not guess > 0:
            raise InsufficientKernelSourcesError(0, min_sources, "no stars detected")
        fwhm_pix = guess
        options = {
            "stamp_half_width": math.ceil(FIT_STAMP_FWHM * guess), "saturation": saturation,
            "bad_mask_bits": bad_bits, "detections": detections,
        }  # fmt: skip
        sources = _select_kernel_sources(masked_image, **options)
        if len(sources) < min_sources:  # a crowded field: sep flags nearly every star blended
            sources = _select_kernel_sources(masked_image, ignore_tests=("blended",), **options)
    if fwhm_pix is None and "fwhm" not in sources.colnames:
        msg = "sources has no 'fwhm' column; pass fwhm_pix as a starting guess"
        raise DiffimValueError(msg)
    bad = _bad_pixels(masked_image, bad_bits)
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
    sources: Table | SourceCatalog,
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
    sources : astropy.table.Table or SourceCatalog
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
    bad = _bad_pixels(masked_image, bad_bits)
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
