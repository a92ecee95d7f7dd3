"""Exceptions and warnings raised by diffim.

Which class to use when:

=================================  ==========================================================
``DiffimValueError``               a bad argument value or shape (also a ``ValueError``)
``DiffimConfigError``              a configuration field with a bad value or an unknown name
``DiffimIOError``                  a file that cannot be read or written (also an ``OSError``)
``NoOverlapError``                 the two images share no pixels or sky
``NotRegisteredError``             images on different grids while warping is forbidden
``InsufficientKernelSourcesError`` too few stars to even start fitting a kernel
``NoKernelCandidatesError``        the fitting stages rejected every kernel candidate
``KernelSolutionError``            a linear system that cannot be solved (NaN, singular, ...),
                                   or a fitted kernel whose sum (flux ratio) is not positive
=================================  ==========================================================

Every error with extra fields passes them to ``Exception.__init__`` so that it pickles
(Dask returns exceptions from its workers).
"""

from __future__ import annotations

__all__ = [
    "DeconvolutionWarning",
    "DiffimConfigError",
    "DiffimError",
    "DiffimIOError",
    "DiffimValueError",
    "DiffimWarning",
    "InsufficientKernelSourcesError",
    "KernelSolutionError",
    "MaskedPixelsWarning",
    "NoKernelCandidatesError",
    "NoOverlapError",
    "NotRegisteredError",
    "PoorlyConstrainedWarning",
    "VarianceEstimatedWarning",
]


class DiffimError(Exception):
    """Base class of every error raised by diffim."""


class DiffimValueError(DiffimError, ValueError):
    """An argument has a value or shape diffim cannot use."""


class DiffimConfigError(DiffimValueError):
    """A configuration field has a bad value, or a key names no field."""


class DiffimIOError(DiffimError, OSError):
    """A file cannot be read or written."""


class NoOverlapError(DiffimValueError):
    """The science and template images do not overlap."""


class NotRegisteredError(DiffimValueError):
    """The images are on different pixel grids and warping was not allowed."""


class KernelSolutionError(DiffimError):
    """A kernel's normal equations could not be solved, or its solution is unphysical."""


class InsufficientKernelSourcesError(DiffimError):
    """Too few usable stars to constrain the PSF-matching kernel."""

    def __init__(self, n_usable: int, n_required: int, details: str = "") -> None:
        super().__init__(n_usable, n_required, details)
        self.n_usable = n_usable
        self.n_required = n_required
        self.details = details

    def __str__(self) -> str:
        text = f"{self.n_usable} usable kernel stars, {self.n_required} required"
        if self.details:
            text += f" ({self.details})"
        return text + (
            "; pass a candidateList, lower the detection threshold, or check that the images "
            "contain unsaturated stars free of masked pixels"
        )


class NoKernelCandidatesError(DiffimError):
    """The fitting stages rejected every kernel candidate.

    Parameters
    ----------
    n_candidates : int
        Number of candidates put into the spatial cell set.
    rejected : dict of str to int
        Number of candidates rejected by each stage (``singleKernel``, ``kernelSum``,
        ``spatial``), plus any other reason.
    stage : str
        The stage at which no candidate was left.
    """

    def __init__(self, n_candidates: int, rejected: dict[str, int], stage: str) -> None:
        super().__init__(n_candidates, dict(rejected), stage)
        self.n_candidates = n_candidates
        self.rejected = dict(rejected)
        self.stage = stage

    def __str__(self) -> str:
        counts = ", ".join(f"{name}: {count}" for name, count in self.rejected.items())
        return (
            f"no kernel candidates left (most were rejected at the {self.stage} stage): "
            f"{self.n_candidates} "
            f"candidates found, rejected per stage: {counts or 'none'}. Loosen "
            "candidateResidualMeanMax/candidateResidualStdMax (or set singleKernelClipping="
            "False / spatialKernelClipping=False), raise maxKsumSigma, lower "
            "spatialKernelOrder, or provide more stars (candidateList)"
        )


class DiffimWarning(UserWarning):
    """Base class of every warning issued by diffim."""


class MaskedPixelsWarning(DiffimWarning):
    """Non-finite or otherwise unusable pixels were masked."""


class VarianceEstimatedWarning(DiffimWarning):
    """No variance plane was given; it was estimated."""


class PoorlyConstrainedWarning(DiffimWarning):
    """The spatial model has few candidates for its number of parameters."""


class DeconvolutionWarning(DiffimWarning):
    """The kernel has to sharpen (deconvolve) the image it is applied to."""
