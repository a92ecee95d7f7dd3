"""Decorrelation of Alard-Lupton difference images, and the point-source score image.

Convolving the template with the matching kernel ``κ`` correlates its noise: the difference
``D = I - κ ⋆ T`` of images with white noise of variances ``σ²_n`` (the unconvolved image)
and ``σ²_c`` (the convolved one) has the noise power spectrum ``σ²_n + σ²_c |K̂(k)|²``, with
``K̂`` the Fourier transform of ``κ``.  Filtering ``D`` with

.. math::

    \\hat\\phi(k) = \\sqrt{\\frac{\\sigma^2_n + \\sigma^2_c \\kappa_s^2}
                             {\\sigma^2_n + \\sigma^2_c |\\hat K(k)|^2}},
    \\qquad \\kappa_s = \\sum \\kappa = \\hat K(0),

makes that spectrum flat, ``σ²_n + σ²_c κ_s²`` at every frequency: white noise of the
variance the two images add up to, and ``φ̂(0) = 1`` keeps fluxes (ip_diffim's
``DecorrelateALKernelTask``, spec §4).  One kernel (at one position) and one clipped-mean
variance per image are used for the whole image.

`score_image` turns a (decorrelated) difference into the matched-filter signal-to-noise of
a point source at every pixel (spec §5.4), which can be thresholded at 5 directly.

Where this differs from ip_diffim (each a choice the spec leaves open or an improvement):

* the FFT grid of spec step 6 is enlarged to a 2-3-5-smooth size (`fft_shape`);
* pixels flagged BAD, SAT, CR or NO_DATA are filled like non-finite ones
  (``fill_mask_planes``), and the mean is removed before the zero-padded FFT;
* a convolve-science difference's variance is divided by the kernel-sum *image* it was
  divided by (ip_diffim uses the sum at the centre).

References
----------
Reiss & Lupton 2016, DMTN-021, "Implementation of image difference decorrelation".
Alard & Lupton 1998, ApJ 503, 325.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .convolve import correlate_fft, fft, resolve_workers
from .errors import DiffimValueError, DiffimWarning
from .image import MaskedImage, bits_set
from .spatial import SpatialKernel
from .stats import clipped_mean_std

__all__ = [
    "ARTEFACT_MASK_PLANES",
    "DEFAULT_IGNORE_MASK_PLANES",
    "DecorrelationFilter",
    "decorrelate_difference",
    "decorrelation_filter",
    "decorrelation_kernel",
    "fft_shape",
    "score_image",
]

log = logging.getLogger(__name__)

#: Mask planes left out of the clipped-mean variances (``DecorrelateALKernelConfig``).
DEFAULT_IGNORE_MASK_PLANES = (
    "INTRP", "EDGE", "DETECTED", "SAT", "CR", "BAD", "NO_DATA", "DETECTED_NEGATIVE",
)  # fmt: skip
#: Artefact planes: their pixels are filled with the mean before filtering (and restored),
#: and get zero weight in the score image.  A cosmic ray or bad column left in would ring
#: through the decorrelation kernel into its unmasked neighbours.
ARTEFACT_MASK_PLANES = ("BAD", "SAT", "CR", "NO_DATA")
#: Above this ratio of the convolved to the unconvolved image's variance the high-frequency
#: gain ``sqrt(σ²_c / σ²_n)`` of the filter amplifies rounding noise (ip_diffim warns too).
MAX_VARIANCE_RATIO = 1.0e8


@dataclass(frozen=True, slots=True)
class DecorrelationFilter:
    """The decorrelation filter on one zero-padded FFT grid (`diffim.convolve.fft.rfft2` layout).

    Attributes
    ----------
    fft_shape : tuple of int
        ``(ny, nx)`` of the padded grid.
    phi_hat : numpy.ndarray, shape (ny, nx // 2 + 1)
        The real, even filter ``φ̂`` (dimensionless); ``phi_hat[0, 0] == 1``.
    kernel_hat : numpy.ndarray, shape (ny, nx // 2 + 1)
        Transform of the convolution that afw's correlation with ``κ`` is, ``conj(K̂)``.
    """

    fft_shape: tuple[int, int]
    phi_hat: np.ndarray
    kernel_hat: np.ndarray

    def real_space(self, transfer: np.ndarray) -> np.ndarray:
        """Return the kernel of a transfer function, centred on pixel ``(0, 0)`` (wrapped)."""
        return fft.irfft2(transfer, self.fft_shape)

    def noise_weights(self) -> tuple[float, float]:
        """Return ``(w_n, w_c)``: the sums of the squared real-space kernels ``φ`` and ``κ ∗ φ``.

        By Parseval these are the means over the full frequency grid of ``φ̂²`` and
        ``|K̂|² φ̂²``; white noise of variance ``v`` in an input becomes ``w · v``.
        """
        nx = self.fft_shape[1]
        columns = np.full(self.phi_hat.shape[1], 2.0)  # rfft2 holds half the columns
        columns[0] = 1.0
        if nx % 2 == 0:
            columns[-1] = 1.0
        power = self.phi_hat**2
        size = self.fft_shape[0] * nx
        w_n = float(np.sum(power * columns) / size)
        w_c = float(np.sum(power * np.abs(self.kernel_hat) ** 2 * columns) / size)
        return w_n, w_c


def fft_shape(*shapes: tuple[int, int], fast: bool = True) -> tuple[int, int]:
    """Return the padded FFT grid for filtering an image with kernels (spec §4 step 6).

    Per axis the two largest sizes are added, less one, and rounded up to even: a linear
    (not circular) convolution of the image with the largest kernel.  With ``fast`` the
    size is then enlarged to `diffim.convolve.fft.good_size` (a 2-3-5-smooth
    length): more padding only delays wrap-around further, and a 2068-pixel axis (2048 +
    21 - 1, with a factor 47) transforms several times slower than 2160.
    """
    result = []
    for axis in range(2):
        sizes = sorted((shape[axis] for shape in shapes), reverse=True)
        n = sizes[0] + (sizes[1] - 1 if len(sizes) > 1 else 0)
        n += n % 2
        result.append(fft.good_size(n) if fast else n)
    return result[0], result[1]


def _centered_at_origin(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``kernel`` to ``shape`` with its centre pixel ``size // 2`` moved to [0, 0]."""
    padded = np.zeros(shape)
    ky, kx = kernel.shape
    padded[:ky, :kx] = kernel
    return np.roll(padded, (-(ky // 2), -(kx // 2)), axis=(0, 1))


def _check_kernel_image(name: str, kernel: Any) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=float)
    if kernel.ndim != 2 or kernel.shape[0] % 2 != 1 or kernel.shape[1] % 2 != 1:
        msg = f"{name} must be a 2-d image with odd sides, got shape {kernel.shape}"
        raise DiffimValueError(msg)
    if not np.all(np.isfinite(kernel)):
        msg = f"{name} has non-finite pixels; evaluate it inside the image it was fitted on"
        raise DiffimValueError(msg)
    return kernel


def decorrelation_filter(
    kernel_image: np.ndarray,
    *,
    variance_unconvolved: float,
    variance_convolved: float,
    shape: tuple[int, int],
) -> DecorrelationFilter:
    """Return the decorrelation filter of a matching kernel on a padded FFT grid.

    Parameters
    ----------
    kernel_image : numpy.ndarray, shape (size_y, size_x)
        The matching kernel ``κ`` (odd sides, centre ``size // 2``), as applied by afw's
        correlation to the convolved image.
    variance_unconvolved, variance_convolved : float
        Mean variances ``σ²_n`` of the unconvolved and ``σ²_c`` of the convolved image
        before convolution, in image units squared; ``σ²_n + σ²_c > 0``.
    shape : tuple of int
        ``(ny, nx)`` of the FFT grid (see `fft_shape`).

    Returns
    -------
    DecorrelationFilter
    """
    kernel = _check_kernel_image("kernel_image", kernel_image)
    s_n, s_c = float(variance_unconvolved), float(variance_convolved)
    if not (s_n >= 0.0 and s_c >= 0.0 and s_n + s_c > 0.0):
        msg = f"mean variances must be >= 0 and not both 0, got σ²_n={s_n}, σ²_c={s_c}"
        raise DiffimValueError(msg)
    padded = _centered_at_origin(kernel, shape)
    kernel_hat = fft.rfft2(padded)
    kernel_sum = float(kernel.sum())
    denominator = np.maximum(s_n + s_c * np.abs(kernel_hat) ** 2, 1000 * np.finfo(float).tiny)
    phi_hat = np.sqrt((s_n + s_c * kernel_sum**2) / denominator)
    phi_hat[0, 0] = 1.0  # exact flux conservation, also against rounding
    return DecorrelationFilter((int(shape[0]), int(shape[1])), phi_hat, np.conj(kernel_hat))


def decorrelation_kernel(
    kernel_image: np.ndarray,
    *,
    variance_unconvolved: float,
    variance_convolved: float,
    size: int | None = None,
) -> np.ndarray:
    """Return the real-space decorrelation kernel ``φ``, e.g. to get the difference's PSF.

    The PSF of a decorrelated difference is the science PSF convolved with ``φ``.

    Parameters
    ----------
    kernel_image, variance_unconvolved, variance_convolved
        As for `decorrelation_filter`.
    size : int, optional
        Odd width and height of the result; the kernel's width by default.

    Returns
    -------
    numpy.ndarray, shape (size, size)
        ``φ`` centred on pixel ``size // 2``, float64; it sums to one up to the part of its
        wings beyond the stamp (7 % for a 25-pixel stamp when ``σ²_c = 100 σ²_n``).
    """
    kernel = _check_kernel_image("kernel_image", kernel_image)
    size = kernel.shape[1] if size is None else int(size)
    if size < 1 or size % 2 != 1:
        msg = f"size must be a positive odd number of pixels, got {size}"
        raise DiffimValueError(msg)
    grid = fft_shape((4 * size, 4 * size), kernel.shape)
    decorrelation = decorrelation_filter(
        kernel,
        variance_unconvolved=variance_unconvolved,
        variance_convolved=variance_convolved,
        shape=grid,
    )
    phi = decorrelation.real_space(decorrelation.phi_hat)
    half = size // 2
    return np.roll(phi, (half, half), axis=(0, 1))[:size, :size]


def _kernel_at(
    psf_matching_kernel: SpatialKernel | np.ndarray, position: tuple[float, float]
) -> np.ndarray:
    if isinstance(psf_matching_kernel, SpatialKernel):
        return psf_matching_kernel.image_at(*position)
    return _check_kernel_image("psf_matching_kernel", psf_matching_kernel)


def _filtered(array: np.ndarray, transfer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filter a finite array by a transfer function on a zero-padded grid; crop it back."""
    ny, nx = array.shape
    spectrum = fft.rfft2(array, shape)
    spectrum *= transfer
    return fft.irfft2(spectrum, shape)[:ny, :nx]


def _propagated_variance(
    planes: tuple[np.ndarray, np.ndarray],
    means: tuple[float, float],
    decorrelation: DecorrelationFilter,
) -> np.ndarray:
    """Return ``v_n ∗ φ² + v_c ∗ (κ ∗ φ)²``; non-finite inputs stay non-finite there."""
    transfers = (decorrelation.phi_hat, decorrelation.kernel_hat * decorrelation.phi_hat)
    total = np.zeros(planes[0].shape)
    bad = np.zeros(planes[0].shape, dtype=bool)
    for plane, mean, transfer in zip(planes, means, transfers, strict=True):
        finite = np.isfinite(plane)
        squared = decorrelation.real_space(transfer) ** 2
        squared_hat = fft.rfft2(squared)
        total += _filtered(np.where(finite, plane, mean), squared_hat, decorrelation.fft_shape)
        bad |= ~finite
    total[bad] = np.inf
    return total


def decorrelate_difference(
    difference: MaskedImage,
    psf_matching_kernel: SpatialKernel | np.ndarray,
    *,
    science_variance: MaskedImage | np.ndarray,
    template_variance: MaskedImage | np.ndarray,
    template_matched: bool = True,
    position: tuple[float, float] | None = None,
    ignore_mask_planes: Sequence[str] = DEFAULT_IGNORE_MASK_PLANES,
    fill_mask_planes: Sequence[str] = ARTEFACT_MASK_PLANES,
    complete_variance_propagation: bool = False,
    kernel_sum: float | np.ndarray | None = None,
) -> MaskedImage:
    """Whiten the noise of an Alard-Lupton difference image (spec §4, steps 2-10).

    Parameters
    ----------
    difference : MaskedImage
        The difference, science minus matched template (ADU); its variance is replaced.
    psf_matching_kernel : SpatialKernel or numpy.ndarray
        The matching kernel, or its image (odd sides) at ``position``.
    science_variance, template_variance : MaskedImage or numpy.ndarray, shape (ny, nx)
        The inputs of the subtraction (their variance planes, ADU², and masks), or their
        bare variance planes (the difference's mask then selects the pixels averaged).
    template_matched : bool
        True if the template was convolved (``I - κ ⋆ T``); False for the convolve-science
        difference ``(κ ⋆ I - T) / κ_s`` of ``subtractExposures(..., convolveTemplate=False)``.
    position : tuple of float, optional
        Parent ``(x, y)`` at which the kernel is evaluated; the box centre by default.
    ignore_mask_planes : sequence of str
        Planes left out of the clipped-mean variances.
    fill_mask_planes : sequence of str
        Pixels with these planes set are treated like non-finite ones: replaced by the
        mean before filtering and restored afterwards.  ip_diffim fills only non-finite
        pixels (pass ``()``); then a cosmic ray's or bad column's value leaks into its
        unmasked neighbours through the wings of ``φ``.
    complete_variance_propagation : bool
        Convolve the input variance planes with the squared filters instead of scaling them
        by the filters' white-noise gains (more exact where the variance varies; slower).
    kernel_sum : float or numpy.ndarray, optional
        If not ``template_matched``, the kernel sum(s) the difference was divided by; the
        variance is divided by its square.  Default: ``sum_image`` of a `SpatialKernel`
        over the box, else the kernel image's sum.

    Returns
    -------
    MaskedImage
        A new image of the input's dtype, box and mask; non-finite difference pixels are
        restored, and where the difference's variance was not finite it is copied.

    Raises
    ------
    DiffimValueError
        For planes of another shape, a bad kernel, or a variance plane with no usable pixel.
    """
    position = difference.bbox.center if position is None else position
    kernel = _kernel_at(psf_matching_kernel, position)
    inputs = {"science_variance": science_variance, "template_variance": template_variance}
    planes, means = _input_variances(difference, inputs, ignore_mask_planes)
    if not template_matched:  # the science image was convolved
        planes, means = planes[::-1], means[::-1]
    if means[0] == 0.0 or means[1] / means[0] > MAX_VARIANCE_RATIO:
        warnings.warn(
            f"the convolved image's mean variance {means[1]:.3g} is over "
            f"{MAX_VARIANCE_RATIO:.0e} times the unconvolved one's {means[0]:.3g}: the "
            "decorrelation gain sqrt(ratio) is unstable; check the variance planes",
            DiffimWarning,
            stacklevel=2,
        )
    shape = fft_shape(difference.shape, kernel.shape)
    log.info("decorrelating: σ²_n=%.4g σ²_c=%.4g, FFT grid %s", means[0], means[1], shape)
    decorrelation = decorrelation_filter(
        kernel,
        variance_unconvolved=means[0],
        variance_convolved=means[1],
        shape=shape,
    )
    image = _decorrelated_image(difference, tuple(fill_mask_planes), decorrelation)
    if complete_variance_propagation:
        variance = _propagated_variance(planes, means, decorrelation)
    else:
        w_n, w_c = decorrelation.noise_weights()
        variance = planes[0] * w_n + planes[1] * w_c
    if not template_matched:
        variance /= _kernel_sum_squared(psf_matching_kernel, kernel, kernel_sum, difference)
    unknown = ~np.isfinite(difference.variance)
    variance[unknown] = difference.variance[unknown]
    return MaskedImage(
        image.astype(difference.dtype),
        difference.mask.copy(),
        variance.astype(difference.dtype),
        xy0=difference.xy0,
        planes=difference.planes.copy(),
    )


def _input_variances(
    difference: MaskedImage,
    inputs: dict[str, MaskedImage | np.ndarray],
    ignore_mask_planes: Sequence[str],
) -> tuple[list[np.ndarray], list[float]]:
    """Return the variance planes of the inputs and their clipped means.

    A bare array is averaged over the pixels that the difference's mask leaves.
    """
    planes, means = [], []
    for name, given in inputs.items():
        owner = given if isinstance(given, MaskedImage) else difference
        plane = given.variance if isinstance(given, MaskedImage) else np.asarray(given)
        if plane.shape != difference.shape or owner.xy0 != difference.xy0:
            msg = f"{name} has shape {plane.shape} at {owner.xy0}, the difference "
            msg += f"{difference.shape} at {difference.xy0}; pass planes on its pixel grid"
            raise DiffimValueError(msg)
        bits = owner.bitmask(tuple(ignore_mask_planes))
        usable = np.isfinite(plane) & ~bits_set(owner.mask, bits)
        if not usable.any():
            msg = f"every pixel of {name} is masked ({', '.join(ignore_mask_planes)}) or "
            msg += "not finite; pass fewer ignore_mask_planes"
            raise DiffimValueError(msg)
        planes.append(plane)
        means.append(clipped_mean_std(plane[usable])[0])
    return planes, means


def _decorrelated_image(
    difference: MaskedImage,
    fill_mask_planes: Sequence[str],
    decorrelation: DecorrelationFilter,
) -> np.ndarray:
    """Filter an image by ``φ̂`` (float64); unusable pixels are filled, then restored.

    Non-finite pixels and those with ``fill_mask_planes`` set take the mean of the others.
    That mean is removed before the zero-padded FFT and added back (``φ̂(0) = 1`` keeps a
    constant), so a residual background does not ring at the edges.
    """
    image = difference.image
    keep = np.isfinite(image) & ~bits_set(difference.mask, difference.bitmask(fill_mask_planes))
    if not keep.any():
        msg = "every pixel of the difference is masked or not finite; nothing to decorrelate"
        raise DiffimValueError(msg)
    mean = float(np.mean(image, where=keep, dtype=np.float64))
    filled = np.where(keep, image - mean, 0.0)
    result = _filtered(filled, decorrelation.phi_hat, decorrelation.fft_shape) + mean
    result[~keep] = image[~keep]
    return result


def _kernel_sum_squared(
    psf_matching_kernel: SpatialKernel | np.ndarray,
    kernel: np.ndarray,
    kernel_sum: float | np.ndarray | None,
    difference: MaskedImage,
) -> float | np.ndarray:
    """Return the square of the kernel sum(s) a convolve-science difference was divided by."""
    if kernel_sum is None:
        if isinstance(psf_matching_kernel, SpatialKernel):
            kernel_sum = psf_matching_kernel.sum_image(difference.bbox)
        else:
            kernel_sum = float(kernel.sum())
    kernel_sum = np.asarray(kernel_sum, dtype=float)
    if kernel_sum.shape not in ((), difference.shape) or not np.all(kernel_sum != 0):
        msg = f"kernel_sum must be a non-zero scalar or a {difference.shape} array, "
        msg += f"got shape {kernel_sum.shape}"
        raise DiffimValueError(msg)
    return kernel_sum**2


def _psf_image(psf: Any, position: tuple[float, float]) -> np.ndarray:
    """Return the unit-sum PSF image of a PSF model (at ``position``) or of an array."""
    if hasattr(psf, "kernel_image"):
        image = np.asarray(psf.kernel_image(*position), dtype=float)
    else:
        image = _check_kernel_image("psf", psf)
    total = image.sum()
    if not np.isfinite(total) or total <= 0:
        msg = f"the PSF image must have a positive finite sum, got {total}"
        raise DiffimValueError(msg)
    return image / total


def score_image(
    difference: MaskedImage,
    psf: Any,
    *,
    position: tuple[float, float] | None = None,
    bad_mask_planes: Sequence[str] = ARTEFACT_MASK_PLANES,
    workers: int | None = None,
) -> MaskedImage:
    """Return the point-source signal-to-noise of every pixel of a difference (spec §5.4).

    Parameters
    ----------
    difference : MaskedImage
        A difference image (ADU) whose noise is uncorrelated, with the variance plane
        giving each pixel's variance (ADU²): the output of `decorrelate_difference`.
    psf : PSF model or numpy.ndarray
        The science PSF (a model with ``kernel_image(x, y)``, or an image with odd sides).
    position : tuple of float, optional
        Parent ``(x, y)`` at which the PSF is evaluated; the box centre by default.
    bad_mask_planes : sequence of str
        Pixels with these planes set, or a non-finite value or variance, get zero weight.
    workers : int, optional
        Threads for the FFTs; all available cores by default.

    Returns
    -------
    MaskedImage
        Image: ``S = (D ⋆ P) / sqrt(var ⋆ P²)`` (dimensionless), variance 1, the input's
        mask; where no usable pixel is in reach, NaN with infinite variance and NO_DATA.

    Notes
    -----
    ``⋆`` is correlation (convolution with the reflected PSF ``P``, normalised to unit
    sum): ``D ⋆ P`` over ``Σ P²`` is the PSF-weighted flux of a point source centred on the
    pixel, and ``S`` is that flux over its standard deviation.  This is exact for
    uncorrelated noise of the given variance, so for a decorrelated difference ``S`` has
    unit variance in empty sky and ``S > 5`` is a 5σ detection.  On a difference that was
    not decorrelated the noise is correlated and ``S`` has a std above 1.
    """
    position = difference.bbox.center if position is None else position
    kernel = _psf_image(psf, position)
    usable = (
        np.isfinite(difference.image)
        & np.isfinite(difference.variance)
        & ~bits_set(difference.mask, difference.bitmask(tuple(bad_mask_planes)))
    )
    workers = resolve_workers(workers)
    image = np.where(usable, difference.image, 0.0)
    variance = np.where(usable, difference.variance, 0.0)
    signal = correlate_fft(image, kernel, workers=workers)
    noise = correlate_fft(variance, kernel**2, workers=workers)
    valid = noise > 100 * np.finfo(float).eps * max(float(noise.max()), 0.0)
    score = np.full(difference.shape, np.nan)
    score[valid] = signal[valid] / np.sqrt(noise[valid])
    result = MaskedImage(
        score.astype(difference.dtype),
        difference.mask.copy(),
        np.where(valid, 1.0, np.inf).astype(difference.dtype),
        xy0=difference.xy0,
        planes=difference.planes.copy(),
    )
    result.set_mask_plane("NO_DATA", ~valid)
    return result
