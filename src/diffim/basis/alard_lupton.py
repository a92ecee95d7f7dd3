"""Alard-Lupton kernels: Gaussians times polynomials, their renormalisation, and the choice
of their sigmas and size from the two PSF FWHMs.

Kernel ``i`` is a circular Gaussian times a polynomial, ``G_i(u, v) u^p v^q``, renormalised
so that only the first kernel carries flux (Alard & Lupton 1998, ApJ 503, 325).  The sigmas
and kernel size follow ip_diffim HEAD's rules (spec §3.2-§3.3): scaled from
``sqrt(|sigma_ref² - sigma_target²|)`` when the FWHMs differ, otherwise the config values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import DiffimConfigError, DiffimValueError
from ..psf import FWHM_PER_SIGMA

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

    from ..config import PsfMatchConfigAL

__all__ = [
    "FLOAT32_EPSILON",
    "FWHM_PER_SIGMA",
    "AlardLuptonParameters",
    "BasisMode",
    "alard_lupton_sigmas",
    "make_alard_lupton_basis",
    "renormalize_kernel_list",
]

#: FWHM of a Gaussian in units of its sigma, ``2 sqrt(2 ln 2)`` = 2.35482.
#: Kernel sums at or below this are treated as zero by `renormalize_kernel_list` (afw).
FLOAT32_EPSILON = float(np.finfo(np.float32).eps)

BasisMode = Literal["config", "convolution", "deconvolution"]


@dataclass(frozen=True, slots=True)
class AlardLuptonParameters:
    """Gaussian sigmas, polynomial degrees and kernel size of an Alard-Lupton basis.

    Attributes
    ----------
    sigmas : tuple of float
        Gaussian sigmas in pixels.
    degrees : tuple of int
        Polynomial degree of each Gaussian.
    kernel_size : int
        Kernel width and height in pixels (odd).
    mode : {"config", "convolution", "deconvolution"}
        Whether the sigmas came from the config or were scaled from the two FWHMs.
    """

    sigmas: tuple[float, ...]
    degrees: tuple[int, ...]
    kernel_size: int
    mode: BasisMode


# --------------------------------------------------------------------------------------------
# Alard-Lupton kernel images


def _term_powers(degree: int) -> list[tuple[int, int]]:
    """Return ``(x power, y power)`` of each term in afw order (1, x, y, x², xy, y², ...)."""
    return [(total - j, j) for total in range(degree + 1) for j in range(total + 1)]


def make_alard_lupton_basis(
    half_width: int, sigmas: Sequence[float], degrees: Sequence[int]
) -> NDArray[np.float64]:
    """Return renormalised Alard-Lupton basis kernels.

    Parameters
    ----------
    half_width : int
        Kernel half-width ``h`` (>= 1); kernels are ``(2h + 1, 2h + 1)`` pixels.
    sigmas : sequence of float
        Gaussian sigmas in pixels (> 0).
    degrees : sequence of int
        Polynomial degree (>= 0) of each Gaussian; same length as ``sigmas``.

    Returns
    -------
    numpy.ndarray, shape (n, 2h + 1, 2h + 1)
        float64 kernels, ``n = sum((d + 1)(d + 2) / 2)``, after `renormalize_kernel_list`.

    Notes
    -----
    Gaussian ``i`` is evaluated at pixel centres and normalised to unit sum, then multiplied
    by ``(u/h)^p (v/h)^q`` for each term of total degree ``<= d_i``, in afw's order
    ``1, u, v, u², uv, v², ...`` with ``(u, v)`` the pixel offset from the kernel centre.

    Examples
    --------
    >>> make_alard_lupton_basis(10, (0.7, 1.5, 3.0), (4, 2, 2)).shape
    (27, 21, 21)
    """
    if int(half_width) != half_width or half_width < 1:
        msg = f"half_width must be an integer >= 1, got {half_width!r}"
        raise DiffimValueError(msg)
    if len(sigmas) != len(degrees):
        msg = f"got {len(sigmas)} sigmas but {len(degrees)} degrees; give one degree per sigma"
        raise DiffimValueError(msg)
    if not all(np.isfinite(s) and s > 0 for s in sigmas):
        msg = f"Gaussian sigmas must be finite and > 0, got {list(sigmas)}"
        raise DiffimValueError(msg)
    if not all(int(d) == d and d >= 0 for d in degrees):
        msg = f"polynomial degrees must be integers >= 0, got {list(degrees)}"
        raise DiffimValueError(msg)
    half_width = int(half_width)
    offsets = np.arange(-half_width, half_width + 1, dtype=np.float64)
    u, v = offsets[np.newaxis, :], offsets[:, np.newaxis]
    kernels = []
    for sigma, degree in zip(sigmas, degrees, strict=True):
        gaussian = np.exp(-0.5 * (u**2 + v**2) / sigma**2)
        gaussian /= gaussian.sum()
        kernels.extend(
            gaussian * (u / half_width) ** px * (v / half_width) ** py
            for px, py in _term_powers(int(degree))
        )
    return renormalize_kernel_list(np.stack(kernels))


def renormalize_kernel_list(kernels: ArrayLike) -> NDArray[np.float64]:
    """Renormalise a basis so that only its first kernel carries flux.

    Parameters
    ----------
    kernels : array_like, shape (n, ny, nx)
        Basis kernel images; not modified.

    Returns
    -------
    numpy.ndarray, shape (n, ny, nx)
        float64 copy: ``B0 / sum(B0)`` (unit sum); for ``k >= 1``, ``B_k / sum(B_k) - B0``
        when ``|sum(B_k)|`` exceeds the float32 epsilon (so it sums to 0), then scaled to
        unit L2 norm. With this basis the kernel sum is the coefficient of ``B0``.

    Raises
    ------
    DiffimValueError
        If the input is not 3-d, ``B0`` sums to zero, or a kernel becomes zero (it was a
        multiple of ``B0``).
    """
    basis = np.array(kernels, dtype=np.float64)
    if basis.size == 0:
        return basis
    if basis.ndim != 3:
        msg = f"kernels must have shape (n, ny, nx), got {basis.shape}"
        raise DiffimValueError(msg)
    first_sum = basis[0].sum()
    if not np.isfinite(first_sum) or first_sum == 0.0:
        msg = f"the first basis kernel must have a finite non-zero sum, got {first_sum}"
        raise DiffimValueError(msg)
    basis[0] /= first_sum
    rest = basis[1:]  # a view: changes go into basis
    sums = rest.sum(axis=(1, 2))
    carries_flux = np.abs(sums) > FLOAT32_EPSILON
    rest[carries_flux] = rest[carries_flux] / sums[carries_flux, None, None] - basis[0]
    norms = np.sqrt(np.sum(rest**2, axis=(1, 2)))
    if np.any(norms == 0.0):
        msg = (
            f"basis kernels {(np.flatnonzero(norms == 0.0) + 1).tolist()} are multiples of the "
            "first kernel; remove them"
        )
        raise DiffimValueError(msg)
    rest /= norms[:, None, None]
    return basis


# --------------------------------------------------------------------------------------------
# Alard-Lupton sigmas and size from the two FWHMs


def _fwhm_to_sigma(name: str, fwhm_pix: float) -> float:
    if not np.isfinite(fwhm_pix) or fwhm_pix <= 0:
        msg = f"{name} must be a finite FWHM > 0 in pixels, got {fwhm_pix!r}"
        raise DiffimValueError(msg)
    return float(fwhm_pix) / FWHM_PER_SIGMA


def _sigma_progression(
    kernel_sigma: float, n_gauss: int, beta: float, min_sigma: float
) -> tuple[float, ...]:
    """Return ip_diffim HEAD's sigmas: ``max(min_sigma, sigma_k / beta)`` then times beta.

    With one Gaussian the sigma is ``max(min_sigma, sigma_k)``. This is continuous in
    ``sigma_k``, unlike the legacy rule that jumped at ``sigma_k = beta * min_sigma``.
    """
    first = max(min_sigma, kernel_sigma / beta if n_gauss > 1 else kernel_sigma)
    return tuple(first * beta**i for i in range(n_gauss))


def _scaled_kernel_size(config: PsfMatchConfigAL, last_sigma: float) -> int:
    """Return ``int(kernelSizeFwhmScaling * sigma)``, made odd, clamped to the size limits."""
    size = int(config.kernelSizeFwhmScaling * last_sigma)
    size += 1 - size % 2
    return min(config.kernelSizeMax, max(size, config.kernelSizeMin))


def _config_values(
    config: PsfMatchConfigAL,
    basis_deg_gauss: Sequence[int] | None,
    basis_sigma_gauss: Sequence[float] | None,
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Return the config (or overriding) sigmas and degrees, checking their lengths."""
    if config.kernelBasisSet != "alard-lupton":
        msg = (
            f"kernelBasisSet={config.kernelBasisSet!r}: an Alard-Lupton basis needs "
            "kernelBasisSet='alard-lupton'"
        )
        raise DiffimConfigError(msg)
    degrees = tuple(
        int(d) for d in (config.alardDegGauss if basis_deg_gauss is None else basis_deg_gauss)
    )
    sigmas = tuple(
        float(s)
        for s in (config.alardSigGauss if basis_sigma_gauss is None else basis_sigma_gauss)
    )
    for name, values in (("alardDegGauss", degrees), ("alardSigGauss", sigmas)):
        if len(values) != config.alardNGauss:
            msg = (
                f"{name} has {len(values)} entries but alardNGauss={config.alardNGauss}; "
                "give one per Gaussian"
            )
            raise DiffimConfigError(msg)
    if config.kernelSize % 2 != 1:
        msg = f"kernelSize={config.kernelSize} must be odd for an Alard-Lupton basis"
        raise DiffimConfigError(msg)
    return sigmas, degrees


def alard_lupton_sigmas(
    config: PsfMatchConfigAL,
    target_fwhm_pix: float | None = None,
    reference_fwhm_pix: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
) -> AlardLuptonParameters:
    """Choose Alard-Lupton sigmas, degrees and kernel size (ip_diffim HEAD rules).

    Parameters
    ----------
    config : PsfMatchConfigAL
        Reads ``alard*``, ``kernelSize*``, ``scaleByFwhm`` and ``kernelBasisSet``.
    target_fwhm_pix, reference_fwhm_pix : float or None
        PSF FWHM (pixels) of the image to be convolved and of the image it is matched to.
        If either is None, or ``scaleByFwhm`` is False, the config values are used.
    basis_deg_gauss, basis_sigma_gauss : sequence, optional
        Replace ``alardDegGauss`` / ``alardSigGauss`` (sigmas only where config sigmas are
        used).

    Returns
    -------
    AlardLuptonParameters

    Raises
    ------
    DiffimConfigError
        If ``kernelBasisSet`` is not "alard-lupton", the degrees or sigmas do not have
        ``alardNGauss`` entries, or ``kernelSize`` is even.

    Notes
    -----
    With ``sigma = FWHM / 2.35482`` and ``sigma_k = sqrt(|sigma_ref² - sigma_target²|)``:
    equal sigmas keep the config sigmas; otherwise the sigmas are ``s, s*beta, s*beta², ...``
    with ``s = max(minSig, sigma_k / beta)`` (``alardMinSig`` when convolving,
    ``alardMinSigDeconv`` when the target is broader). In both scaled cases and for equal
    FWHMs the size is ``int(kernelSizeFwhmScaling * sigma_last)``, made odd and clamped to
    ``[kernelSizeMin, kernelSizeMax]``.

    Examples
    --------
    >>> from diffim.config import PsfMatchConfigAL
    >>> params = alard_lupton_sigmas(PsfMatchConfigAL(), 4.0, 5.0)
    >>> [round(s, 3) for s in params.sigmas], params.kernel_size, params.mode
    ([0.7, 1.4, 2.8], 21, 'convolution')
    """
    sigmas, degrees = _config_values(config, basis_deg_gauss, basis_sigma_gauss)
    if target_fwhm_pix is None or reference_fwhm_pix is None or not config.scaleByFwhm:
        return AlardLuptonParameters(sigmas, degrees, config.kernelSize, "config")
    sigma_target = _fwhm_to_sigma("target_fwhm_pix", target_fwhm_pix)
    sigma_reference = _fwhm_to_sigma("reference_fwhm_pix", reference_fwhm_pix)
    mode: BasisMode = "config"
    if sigma_reference > sigma_target:
        mode, min_sigma = "convolution", config.alardMinSig
    elif sigma_target > sigma_reference:
        mode, min_sigma = "deconvolution", config.alardMinSigDeconv
    if mode != "config":
        kernel_sigma = np.sqrt(abs(sigma_reference**2 - sigma_target**2))
        sigmas = _sigma_progression(
            float(kernel_sigma), config.alardNGauss, config.alardGaussBeta, min_sigma
        )
    return AlardLuptonParameters(sigmas, degrees, _scaled_kernel_size(config, sigmas[-1]), mode)
