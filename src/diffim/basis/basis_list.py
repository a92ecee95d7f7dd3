"""The `BasisList` container and the builders that make one from a kernel config.

`make_kernel_basis` builds the basis named by ``kernelBasisSet``: Alard-Lupton kernels with
sigmas and size chosen from the two FWHMs (`generate_alard_lupton_basis`), or one delta
function per kernel pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DiffimConfigError
from .alard_lupton import alard_lupton_sigmas, make_alard_lupton_basis
from .delta_function import make_delta_function_basis

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..config import PsfMatchConfig, PsfMatchConfigAL
    from .alard_lupton import BasisMode

__all__ = ["BasisList", "generate_alard_lupton_basis", "make_kernel_basis"]


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
