"""Kernel basis lists and the regularization matrix of delta-function kernels.

Two families (ip_diffim spec §3.2-§3.4):

* **Alard-Lupton**: circular Gaussians times polynomials, ``G_i(u, v) u^p v^q``, renormalised
  so that only the first kernel carries flux (Alard & Lupton 1998, ApJ 503, 325).
* **Delta functions**: one kernel per pixel, optionally regularised by a finite-difference
  penalty ``lambda * a^T H a`` on the kernel image.

Kernel images are float64 arrays of shape ``(n_kernels, size, size)`` indexed
``[k, y, x]`` with odd ``size`` and the centre at pixel ``size // 2``.

The package is split by concept: `alard_lupton` (`make_alard_lupton_basis`,
`renormalize_kernel_list`, the choice of sigmas and kernel size from the FWHMs
`alard_lupton_sigmas` with `AlardLuptonParameters`, `FWHM_PER_SIGMA`, `FLOAT32_EPSILON`),
`delta_function` (`make_delta_function_basis`, `regularization_matrix`,
`make_regularization_matrix`), `pca` (`kernel_pca_basis`) and `basis_list` (the `BasisList`
container and the builders that return one from a config: `generate_alard_lupton_basis`,
`make_kernel_basis`).  Every public name is re-exported here: import from ``diffim.basis``.
"""

from .alard_lupton import (
    FLOAT32_EPSILON,
    FWHM_PER_SIGMA,
    AlardLuptonParameters,
    alard_lupton_sigmas,
    make_alard_lupton_basis,
    renormalize_kernel_list,
)
from .alard_lupton import BasisMode as BasisMode
from .basis_list import BasisList, generate_alard_lupton_basis, make_kernel_basis
from .delta_function import (
    make_delta_function_basis,
    make_regularization_matrix,
    regularization_matrix,
)
from .pca import kernel_pca_basis

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
