"""The kernel configs: `PsfMatchConfig`, its Alard-Lupton and delta-function forms and parts.

`PsfMatchConfig` holds the settings shared by both kernel families (ip_diffim's
``psfMatch.py``), with its sub-configs `WarpingConfig`, `DetectionConfig` and
`BackgroundConfig`; `PsfMatchConfigAL` and `PsfMatchConfigDF` add each family's fields and
defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..errors import DiffimConfigError
from .base import ConfigBase
from .fields import _redefault, param

_PLANES = ("NO_DATA", "EDGE", "SAT")


@dataclass(kw_only=True)
class WarpingConfig(ConfigBase):
    """How the template is resampled onto the science pixel grid (afw ``WarperConfig``)."""

    _KERNELS: ClassVar[tuple[str, ...]] = (
        "bilinear",
        "lanczos2",
        "lanczos3",
        "lanczos4",
        "lanczos5",
        "nearest",
    )

    warpingKernelName: str = param(
        "lanczos3", "Interpolation kernel for the image and variance.", choices=_KERNELS
    )
    maskWarpingKernelName: str = param(
        "bilinear", "Interpolation kernel for the mask planes.", choices=_KERNELS
    )
    interpLength: int = param(10, "Distance (pixels) over which the WCS is interpolated.", min=0)
    cacheSize: int = param(1000000, "Size of the warping-kernel cache (0 = none).", min=0)
    growFullMask: tuple[str, ...] = param(
        ("EDGE",), "Mask planes grown by the full warping kernel rather than the mask kernel."
    )


@dataclass(kw_only=True)
class BackgroundConfig(ConfigBase):
    """Background subtraction before kernel-star detection (meas_algorithms defaults)."""

    binSize: int = param(128, "Size of the background superpixels (pixels).", min=1)
    algorithm: Literal[
        "CONSTANT",
        "LINEAR",
        "NATURAL_SPLINE",
        "CUBIC_SPLINE",
        "CUBIC_SPLINE_PERIODIC",
        "AKIMA_SPLINE",
        "AKIMA_SPLINE_PERIODIC",
    ] = param("AKIMA_SPLINE", "Interpolation between superpixels.")
    statisticsProperty: Literal["MEANCLIP", "MEAN", "MEDIAN"] = param(
        "MEANCLIP", "Statistic of each superpixel."
    )
    undersampleStyle: Literal["THROW_EXCEPTION", "REDUCE_INTERP_ORDER", "INCREASE_NXNYSAMPLE"] = (
        param("REDUCE_INTERP_ORDER", "What to do with too few superpixels.")
    )
    useApprox: bool = param(True, "Fit a Chebyshev approximation instead of interpolating.")
    approxOrderX: int = param(6, "Order of the Chebyshev approximation in x.", min=0)
    approxOrderY: int = param(-1, "Order in y; -1 means the same as approxOrderX.", min=-1)
    weighting: bool = param(True, "Weight the approximation by the superpixel variance.")
    ignoredPixelMask: tuple[str, ...] = param(
        ("BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"),
        "Mask planes ignored when measuring the background.",
    )


@dataclass(kw_only=True)
class DetectionConfig(ConfigBase):
    """Kernel-candidate footprints (legacy ``PsfMatchConfig.detectionConfig``)."""

    detThreshold: float = param(10.0, "Detection threshold for kernel candidates.", min=3.0)
    detThresholdType: Literal["value", "stdev", "variance", "pixel_stdev"] = param(
        "pixel_stdev", "Units of detThreshold."
    )
    detOnTemplate: bool = param(True, "Detect candidates on the template (else the science).")
    badMaskPlanes: tuple[str, ...] = param(
        _PLANES, "Mask planes that reject a candidate if set anywhere in its stamp."
    )
    fpNpixMin: int = param(5, "Minimum number of pixels in a candidate footprint.", min=5)
    fpNpixMax: int = param(500, "Maximum footprint size; larger ones shrink to a core.", max=500)
    fpGrowKernelScaling: float = param(
        1.0, "With scaleByFwhm: stamp half-size = int(this * kernelSize + 0.5).", min=1.0
    )
    fpGrowPix: int = param(30, "Stamp half-size (pixels) when not scaleByFwhm.", min=10)
    scaleByFwhm: bool = param(True, "Scale the stamp size with the kernel size.")


@dataclass(kw_only=True)
class PsfMatchConfig(ConfigBase):
    """Settings shared by the Alard-Lupton and delta-function kernels (ip_diffim §2.3)."""

    #: The kernelBasisSet a subclass requires (None: any).
    _basis_family: ClassVar[str | None] = None

    warpingConfig: WarpingConfig = dataclasses.field(
        default_factory=WarpingConfig, metadata={"doc": "Resampling of the template."}
    )
    detectionConfig: DetectionConfig = dataclasses.field(
        default_factory=DetectionConfig, metadata={"doc": "Kernel-candidate footprints."}
    )
    afwBackgroundConfig: BackgroundConfig = dataclasses.field(
        default_factory=BackgroundConfig,
        metadata={"doc": "Background model used before detecting kernel stars."},
    )
    useAfwBackground: bool = param(False, "Subtract afwBackgroundConfig's model (unused).")
    fitForBackground: bool = param(
        False, "Fit a differential background: a constant per stamp, a polynomial in space."
    )
    kernelBasisSet: Literal["alard-lupton", "delta-function"] = param(
        "alard-lupton", "Kernel basis family."
    )
    kernelSize: int = param(
        21, "Kernel width and height (pixels); AL derives it from the FWHMs.", min=1, odd=True
    )
    scaleByFwhm: bool = param(True, "AL: derive basis sigmas and kernel size from the FWHMs.")
    kernelSizeFwhmScaling: float = param(
        6.0, "Kernel size = this times the largest basis sigma.", min=1.0
    )
    kernelSizeMin: int = param(21, "Smallest kernel size when scaling.", min=1, odd=True)
    kernelSizeMax: int = param(35, "Largest kernel size when scaling.", min=1, odd=True)
    spatialModelType: Literal["chebyshev1", "polynomial"] = param(
        "chebyshev1", "Spatial functions of the kernel coefficients and background."
    )
    spatialKernelOrder: int = param(
        2, "Polynomial order of the kernel's spatial variation.", min=0
    )
    spatialBgOrder: int = param(1, "Polynomial order of the spatial background.", min=0)
    sizeCellX: int = param(128, "SpatialCell width (pixels).", min=32)
    sizeCellY: int = param(128, "SpatialCell height (pixels).", min=32)
    nStarPerCell: int = param(
        3, "Candidates used per cell; -1 means all (ip_diffim HEAD: 5).", min=1, sentinel=-1
    )
    maxSpatialIterations: int = param(3, "Spatial fit/reject iterations.", min=1, max=5)
    usePcaForSpatialKernel: bool = param(False, "PCA-reduce the basis before the spatial fit.")
    subtractMeanForPca: bool = param(True, "Subtract the mean kernel before PCA.")
    numPrincipalComponents: int = param(
        5, "Number of PCA basis kernels, including the mean.", min=3
    )
    singleKernelClipping: bool = param(True, "Reject candidates with bad single-kernel residuals.")
    kernelSumClipping: bool = param(True, "Reject candidates whose kernel sum is an outlier.")
    spatialKernelClipping: bool = param(True, "Reject candidates badly fit by the spatial model.")
    checkConditionNumber: bool = param(
        False, "Reject candidates with cond(M) > maxConditionNumber."
    )
    badMaskPlanes: tuple[str, ...] = param(
        _PLANES, "Mask planes ignored in residual statistics and the core S/N."
    )
    candidateResidualMeanMax: float = param(
        0.25, "Largest |mean| of a candidate's difference / sigma.", min=0.0
    )
    candidateResidualStdMax: float = param(
        1.5, "Largest std of a candidate's difference / sigma.", min=0.0
    )
    useCoreStats: bool = param(False, "Residual statistics from the core box only.")
    candidateCoreRadius: int = param(3, "Core box half-size: (2r+1)^2 pixels.", min=1)
    maxKsumSigma: float = param(3.0, "Kernel-sum clipping threshold (sigma).", min=0.0)
    maxConditionNumber: float = param(
        5.0e7, "Largest candidate condition number (AL 5e7, DF 5e6).", min=0.0
    )
    conditionNumberType: Literal["SVD", "EIGENVALUE"] = param(
        "EIGENVALUE", "Condition number from singular values or eigenvalues."
    )
    maxSpatialConditionNumber: float = param(
        1.0e10, "Spatial-solution condition number above which a warning is issued.", min=0.0
    )
    iterateSingleKernel: bool = param(False, "Re-fit each candidate with the diffim variance.")
    constantVarianceWeighting: bool = param(True, "Weight each stamp by its median variance.")
    calculateKernelUncertainty: bool = param(False, "Kernel uncertainties (not implemented).")
    useBicForKernelBasis: bool = param(False, "Choose AL polynomial degrees by BIC.")

    def _check_rules(self, prefix: str) -> None:
        super()._check_rules(prefix)
        if self.kernelSizeMin > self.kernelSizeMax:
            msg = (
                f"{prefix}kernelSizeMin={self.kernelSizeMin} is larger than "
                f"{prefix}kernelSizeMax={self.kernelSizeMax}; lower one or raise the other"
            )
            raise DiffimConfigError(msg)
        family = self._basis_family
        if family is not None and self.kernelBasisSet != family:
            msg = (
                f"{prefix}kernelBasisSet={self.kernelBasisSet!r} but {type(self).__name__} "
                f"builds {family!r} kernels; select the other family with kernel.name"
            )
            raise DiffimConfigError(msg)


@dataclass(kw_only=True)
class PsfMatchConfigAL(PsfMatchConfig):
    """Alard-Lupton basis: Gaussians times polynomials (ip_diffim §2.4)."""

    _basis_family: ClassVar[str | None] = "alard-lupton"

    kernelBasisSet: Literal["alard-lupton", "delta-function"] = _redefault(
        PsfMatchConfig, "kernelBasisSet", default="alard-lupton"
    )
    maxConditionNumber: float = _redefault(PsfMatchConfig, "maxConditionNumber", default=5.0e7)
    alardNGauss: int = param(3, "Number of Gaussians.", min=1)
    alardDegGauss: tuple[int, ...] = param(
        (4, 2, 2), "Polynomial degree of each Gaussian.", min=0, length_of="alardNGauss"
    )
    alardSigGauss: tuple[float, ...] = param(
        (0.7, 1.5, 3.0),
        "Gaussian sigmas (pixels) when not scaling by FWHM.",
        gt=0.0,
        length_of="alardNGauss",
    )
    alardGaussBeta: float = param(2.0, "Ratio of successive sigmas when scaling.", gt=0.0)
    alardMinSig: float = param(0.7, "Smallest sigma (pixels) when convolving.", min=0.25)
    alardDegGaussDeconv: int = param(3, "Legacy deconvolution degree (unused).", min=1)
    alardMinSigDeconv: float = param(0.4, "Smallest sigma (pixels) when deconvolving.", min=0.25)
    alardNGaussDeconv: int = param(3, "Legacy deconvolution Gaussians (unused).", min=1)


@dataclass(kw_only=True)
class PsfMatchConfigDF(PsfMatchConfig):
    """Delta-function basis, optionally regularised (ip_diffim §2.5)."""

    _basis_family: ClassVar[str | None] = "delta-function"

    kernelBasisSet: Literal["alard-lupton", "delta-function"] = _redefault(
        PsfMatchConfig, "kernelBasisSet", default="delta-function"
    )
    maxConditionNumber: float = _redefault(PsfMatchConfig, "maxConditionNumber", default=5.0e6)
    usePcaForSpatialKernel: bool = _redefault(
        PsfMatchConfig, "usePcaForSpatialKernel", default=True
    )
    subtractMeanForPca: bool = _redefault(PsfMatchConfig, "subtractMeanForPca", default=True)
    useBicForKernelBasis: bool = _redefault(PsfMatchConfig, "useBicForKernelBasis", default=False)
    useRegularization: bool = param(True, "Add lambda * H to each candidate's normal matrix.")
    regularizationType: Literal["centralDifference", "forwardDifference"] = param(
        "centralDifference", "Form of the regularization matrix H."
    )
    centralRegularizationStencil: Literal[5, 9] = param(9, "Laplacian stencil: 5 or 9 points.")
    forwardRegularizationOrders: tuple[int, ...] = param(
        (1, 2), "Forward-difference orders penalised (each 1..3).", min=1, max=3
    )
    regularizationBorderPenalty: float = param(
        3.0, "Penalty on the kernel's border pixels.", min=0.0
    )
    lambdaType: Literal["absolute", "relative", "minimizeBiasedRisk", "minimizeUnbiasedRisk"] = (
        param("absolute", "How the regularization strength lambda is chosen.")
    )
    lambdaValue: float = param(0.2, "Lambda for lambdaType='absolute'.")
    lambdaScaling: float = param(1e-4, "Lambda = this * tr(M)/tr(H) for lambdaType='relative'.")
    lambdaStepType: Literal["log", "linear"] = param("log", "Lambda scan spacing.")
    lambdaMin: float = param(-1.0, "Lambda scan start (log10 for 'log').")
    lambdaMax: float = param(2.0, "Lambda scan end (log10 for 'log').")
    lambdaStep: float = param(0.1, "Lambda scan step (log10 for 'log').", gt=0.0)

    def _check_rules(self, prefix: str) -> None:
        super()._check_rules(prefix)
        if self.lambdaMin > self.lambdaMax:
            msg = f"{prefix}lambdaMin={self.lambdaMin} is above {prefix}lambdaMax={self.lambdaMax}"
            raise DiffimConfigError(msg)
        if self.regularizationType == "forwardDifference" and not (
            self.forwardRegularizationOrders
        ):
            msg = f"{prefix}forwardRegularizationOrders is empty; give orders among 1, 2, 3"
            raise DiffimConfigError(msg)
