"""Kernel basis lists and the regularization matrix of delta-function kernels.

Two families (ip_diffim spec §3.2-§3.4):

* **Alard-Lupton**: circular Gaussians times polynomials, ``G_i(u, v) u^p v^q``, renormalised
  so that only the first kernel carries flux (Alard & Lupton 1998, ApJ 503, 325).
* **Delta functions**: one kernel per pixel, optionally regularised by a finite-difference
  penalty ``lambda * a^T H a`` on the kernel image.

Kernel images are float64 arrays of shape ``(n_kernels, size, size)`` indexed
``[k, y, x]`` with odd ``size`` and the centre at pixel ``size // 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import DiffimConfigError, DiffimValueError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

    from .config import PsfMatchConfig, PsfMatchConfigAL, PsfMatchConfigDF

__all__ = [
    "FLOAT32_EPSILON",
    "FWHM_PER_SIGMA",
    "AlardLuptonParameters",
    "BasisList",
    "alard_lupton_sigmas",
    "generate_alard_lupton_basis",
    "kernel_pca_basis",
    "make_alard_lupton_basis",
    "make_delta_function_basis",
    "make_kernel_basis",
    "make_regularization_matrix",
    "regularization_matrix",
    "renormalize_kernel_list",
]

#: FWHM of a Gaussian in units of its sigma, ``2 sqrt(2 ln 2)`` = 2.35482.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
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


@dataclass(frozen=True, slots=True, eq=False)
class BasisList:
    """A list of basis kernels and how it was built.

    Attributes
    ----------
    kernels : numpy.ndarray, shape (n_kernels, kernel_size, kernel_size)
        Basis kernel images, float64, indexed ``[k, y, x]``.
    sigmas, degrees : tuple
        Alard-Lupton Gaussian sigmas (pixels) and polynomial degrees; empty for delta
        functions.
    kernel_size : int
        Kernel width and height in pixels (odd).
    mode : {"config", "convolution", "deconvolution"}
        How the sigmas were chosen (always "config" for delta functions).
    """

    kernels: NDArray[np.float64]
    sigmas: tuple[float, ...]
    degrees: tuple[int, ...]
    kernel_size: int
    mode: BasisMode

    def __len__(self) -> int:
        return int(self.kernels.shape[0])

    def metadata(self) -> dict[str, Any]:
        """Return ip_diffim's ``ALBasis*`` metadata (empty for a delta-function basis)."""
        if not self.sigmas:
            return {}
        return {
            "ALBasisNGauss": len(self.sigmas),
            "ALBasisDegGauss": list(self.degrees),
            "ALBasisSigGauss": list(self.sigmas),
            "ALKernelSize": self.kernel_size,
            "ALBasisMode": self.mode,
        }


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


def generate_alard_lupton_basis(
    config: PsfMatchConfigAL,
    target_fwhm_pix: float | None = None,
    reference_fwhm_pix: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
    basis_sigma_gauss: Sequence[float] | None = None,
) -> BasisList:
    """Build the Alard-Lupton basis for matching a target PSF to a reference PSF.

    The parameters are those of `alard_lupton_sigmas`; the kernels come from
    `make_alard_lupton_basis`.
    """
    params = alard_lupton_sigmas(
        config, target_fwhm_pix, reference_fwhm_pix, basis_deg_gauss, basis_sigma_gauss
    )
    kernels = make_alard_lupton_basis(params.kernel_size // 2, params.sigmas, params.degrees)
    return BasisList(kernels, params.sigmas, params.degrees, params.kernel_size, params.mode)


# --------------------------------------------------------------------------------------------
# Delta functions and their regularization


def make_delta_function_basis(width: int, height: int) -> NDArray[np.float64]:
    """Return one kernel per pixel: kernel ``n`` is 1 at ``(x, y) = (n % width, n // width)``.

    Parameters
    ----------
    width, height : int
        Kernel size in pixels (>= 1).

    Returns
    -------
    numpy.ndarray, shape (width * height, height, width)
        float64 kernels (not renormalised).
    """
    if int(width) != width or int(height) != height or width < 1 or height < 1:
        msg = (
            f"delta-function kernel width and height must be integers >= 1, got {width}, {height}"
        )
        raise DiffimValueError(msg)
    n = int(width) * int(height)
    return np.eye(n).reshape(n, int(height), int(width))


_CENTRAL_STENCILS = {
    5: np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
    9: np.array([[1.0, 4.0, 1.0], [4.0, -20.0, 4.0], [1.0, 4.0, 1.0]]) / 6.0,
}
_FORWARD_COEFFICIENTS = {1: (-1.0, 1.0), 2: (-1.0, 2.0, -1.0), 3: (-1.0, 3.0, -3.0, 1.0)}


def _check_regularization(
    regularization_type: str,
    central_stencil: int,
    forward_orders: Sequence[int],
    border_penalty: float,
) -> None:
    problem = None
    if regularization_type not in ("centralDifference", "forwardDifference"):
        problem = (
            f"regularizationType={regularization_type!r} is not 'centralDifference' "
            "or 'forwardDifference'"
        )
    elif central_stencil not in _CENTRAL_STENCILS:
        problem = f"centralRegularizationStencil={central_stencil!r} must be 5 or 9"
    elif not border_penalty >= 0:
        problem = f"regularizationBorderPenalty={border_penalty!r} must be >= 0"
    elif regularization_type == "forwardDifference" and (
        not forward_orders or any(o not in _FORWARD_COEFFICIENTS for o in forward_orders)
    ):
        problem = (
            f"forwardRegularizationOrders={list(forward_orders)} must be a non-empty list "
            "of orders among 1, 2, 3"
        )
    if problem is not None:
        raise DiffimConfigError(problem)


def _central_difference(
    width: int, height: int, stencil: NDArray[np.float64], border_penalty: float
) -> tuple[list[NDArray[Any]], list[NDArray[Any]], list[NDArray[Any]]]:
    """Return (rows, columns, values) of the central-difference operator B."""
    index = np.arange(width * height)
    x0, y0 = index % width, index // width
    interior = (x0 > 0) & (x0 < width - 1) & (y0 > 0) & (y0 < height - 1)
    border, inner = index[~interior], index[interior]
    rows, cols, vals = [border], [border], [np.full(border.size, float(border_penalty))]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            coefficient = stencil[dx + 1, dy + 1]
            if coefficient != 0.0:
                rows.append(inner)
                cols.append(inner + dx + dy * width)
                vals.append(np.full(inner.size, coefficient))
    return rows, cols, vals


def _forward_difference(
    width: int, height: int, orders: Sequence[int], border_penalty: float
) -> tuple[list[NDArray[Any]], list[NDArray[Any]], list[NDArray[Any]]]:
    """Return (rows, columns, values) of the summed forward-difference operators B."""
    coefficients = {0: (float(border_penalty),), **_FORWARD_COEFFICIENTS}
    index = np.arange(width * height)
    x0, y0 = index % width, index // width
    rows: list[NDArray[Any]] = []
    cols: list[NDArray[Any]] = []
    vals: list[NDArray[Any]] = []
    for order in orders:
        # near the high-x (high-y) edge the order drops to the pixels left
        for room, step in (
            (np.minimum(width - 1 - x0, order), 1),
            (np.minimum(height - 1 - y0, order), width),
        ):
            for reduced in range(order + 1):
                pixels = index[room == reduced]
                for j, coefficient in enumerate(coefficients[reduced]):
                    rows.append(pixels)
                    cols.append(pixels + j * step)
                    vals.append(np.full(pixels.size, coefficient))
    return rows, cols, vals


def regularization_matrix(
    width: int,
    height: int,
    *,
    regularization_type: Literal["centralDifference", "forwardDifference"] = "centralDifference",
    central_stencil: int = 9,
    forward_orders: Sequence[int] = (1, 2),
    border_penalty: float = 3.0,
    fit_for_background: bool = False,
) -> NDArray[np.float64]:
    """Return the regularization matrix ``H = B^T B`` of a delta-function kernel.

    Parameters
    ----------
    width, height : int
        Kernel size in pixels; kernel pixel ``(x, y)`` is parameter ``y * width + x``.
    regularization_type : {"centralDifference", "forwardDifference"}
        Penalise the discrete Laplacian, or the forward differences of ``forward_orders``.
    central_stencil : {5, 9}
        Laplacian stencil for "centralDifference".
    forward_orders : sequence of int
        Orders (each 1..3) for "forwardDifference".
    border_penalty : float
        Weight (>= 0) of the kernel pixels where the stencil does not fit.
    fit_for_background : bool
        Add one trailing all-zero row and column for the background parameter.

    Returns
    -------
    numpy.ndarray, shape (m, m)
        Symmetric positive semi-definite float64 matrix, ``m = width * height`` (+1 with a
        background); ``a^T H a`` is small for smooth kernel images ``a``.

    Raises
    ------
    DiffimConfigError
        For an unknown type, a stencil other than 5 or 9, a negative border penalty, or
        forward orders outside 1..3; the message names the config field.
    """
    _check_regularization(regularization_type, central_stencil, forward_orders, border_penalty)
    if regularization_type == "centralDifference":
        stencil = _CENTRAL_STENCILS[central_stencil]
        rows, cols, vals = _central_difference(width, height, stencil, border_penalty)
    else:
        rows, cols, vals = _forward_difference(width, height, forward_orders, border_penalty)
    from scipy import sparse  # delta-function bases only: keeps 0.25 s off every start-up

    size = width * height + int(fit_for_background)
    operator = sparse.coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size)
    ).tocsr()  # duplicate entries are summed
    return (operator.T @ operator).toarray()


def make_regularization_matrix(config: PsfMatchConfigDF) -> NDArray[np.float64]:
    """Return `regularization_matrix` for a ``kernelSize`` x ``kernelSize`` DF kernel.

    Reads ``kernelSize``, ``regularizationType``, ``centralRegularizationStencil``,
    ``forwardRegularizationOrders``, ``regularizationBorderPenalty`` and ``fitForBackground``.
    """
    return regularization_matrix(
        config.kernelSize,
        config.kernelSize,
        regularization_type=config.regularizationType,
        central_stencil=config.centralRegularizationStencil,
        forward_orders=config.forwardRegularizationOrders,
        border_penalty=config.regularizationBorderPenalty,
        fit_for_background=config.fitForBackground,
    )


def make_kernel_basis(
    config: PsfMatchConfig,
    target_fwhm_pix: float | None = None,
    reference_fwhm_pix: float | None = None,
    basis_deg_gauss: Sequence[int] | None = None,
) -> BasisList:
    """Build the basis named by ``config.kernelBasisSet``.

    Parameters
    ----------
    config : PsfMatchConfigAL or PsfMatchConfigDF
        The active kernel config.
    target_fwhm_pix, reference_fwhm_pix : float or None
        PSF FWHMs (pixels) of the image to convolve and of the image matched to (AL only).
    basis_deg_gauss : sequence of int, optional
        Replaces ``alardDegGauss`` (AL only).

    Returns
    -------
    BasisList
        AL: see `generate_alard_lupton_basis`. DF: ``kernelSize²`` delta functions, mode
        "config", no sigmas.
    """
    if config.kernelBasisSet == "alard-lupton":
        return generate_alard_lupton_basis(
            config, target_fwhm_pix, reference_fwhm_pix, basis_deg_gauss
        )
    if config.kernelBasisSet == "delta-function":
        size = config.kernelSize
        return BasisList(make_delta_function_basis(size, size), (), (), size, "config")
    msg = f"kernelBasisSet={config.kernelBasisSet!r} is not 'alard-lupton' or 'delta-function'"
    raise DiffimConfigError(msg)


# --------------------------------------------------------------------------------------------
# Principal components of per-candidate kernels (spec §3.10)


def kernel_pca_basis(
    kernels: ArrayLike,
    *,
    n_components: int,
    subtract_mean: bool = True,
    noise: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return a basis of principal-component kernels and the eigenvalues.

    Parameters
    ----------
    kernels : array_like, shape (n, size, size)
        Per-candidate kernel images, each normalised to unit sum by the caller.
    n_components : int
        Number of basis kernels to keep, the mean kernel included.
    subtract_mean : bool
        Subtract the mean kernel before the analysis and make it the first basis kernel.
    noise : array_like, shape (n,), optional
        Noise rms of each kernel image, in any unit common to all (e.g. the relative
        error of its sum); positive and finite.  The mean becomes the inverse-variance
        weighted mean and each kernel is divided by its noise before the analysis.  None
        (ip_diffim): equal weights.

    Returns
    -------
    basis : numpy.ndarray, shape (m, size, size)
        ``[mean], e_0, e_1, ...`` renormalised with `renormalize_kernel_list` (the first
        sums to 1, the others to 0 with unit norm); ``m <= n_components``.
    eigenvalues : numpy.ndarray
        Eigenvalues of the Gram matrix ``<I_i, I_j> / n_pixels`` (of the noise-scaled
        kernels when ``noise`` is given), descending.

    Raises
    ------
    DiffimValueError
        If the kernels are all identical after mean subtraction (zero eigenvalues) and no
        mean kernel is kept.

    Notes
    -----
    The snapshot method: the eigenvectors ``Q`` of the small Gram matrix give the
    eigen-images ``e_k = sum_j Q_jk I_j``, each divided by its pixel of largest ``|value|``.
    Eigenvalues below ``1e-12`` of the largest are round-off and give no component.

    With ``noise`` the analysis is that of the whitened kernels ``(I_j - mean) / σ_j``:
    every kernel's noise then adds the same amount to the Gram matrix, so the leading
    components are the kernels' real differences (the PSFs' variation over the field)
    instead of the noise of the faintest stars, which dominates an unweighted analysis
    of delta-function kernels (their noise grows as 1 / flux).
    """
    images = np.asarray(kernels, dtype=float)
    n_images, size = images.shape[0], images.shape[1]
    flat = images.reshape(n_images, -1)
    if noise is None:
        mean = flat.mean(axis=0)
    else:
        scale = 1.0 / np.asarray(noise, dtype=float)
        mean = scale**2 @ flat / np.sum(scale**2)
    if subtract_mean:
        flat = flat - mean
    if noise is not None:
        flat = flat * scale[:, None]
    gram = flat @ flat.T / flat.shape[1]
    eigenvalues, vectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    components = []
    significant = eigenvalues > 1e-12 * max(eigenvalues[0], 0.0)  # round-off is not a component
    for k in np.flatnonzero(significant)[:100]:
        image = vectors[:, k] @ flat
        extreme = image[np.argmax(np.abs(image))]
        if extreme != 0 and np.isfinite(extreme):
            components.append(image / extreme)
    candidates = ([mean] if subtract_mean else []) + components
    if not candidates:
        msg = "the candidate kernels are identical: a PCA basis needs subtractMeanForPca=True"
        raise DiffimValueError(msg)
    chosen = [
        c for c in candidates[: min(n_components, len(candidates))] if np.all(np.isfinite(c))
    ]
    basis = renormalize_kernel_list(np.array(chosen).reshape(-1, size, size))
    return basis, np.clip(eigenvalues, 0.0, None)
