"""Analytic PSF models: Gaussian and Moffat profiles whose shape may vary over the field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..errors import DiffimValueError
from ._render import _gaussian_stamps, _moffat_stamps
from .model import PsfModel, _odd_size
from .moments import FWHM_PER_SIGMA

Field = float | Callable[[np.ndarray, np.ndarray], Any]


@dataclass(frozen=True)
class PolynomialField:
    """A quantity that varies smoothly (to second order) over the field.

    ``value(x, y) = value + gx dx + gy dy + cxx dx**2 + cxy dx dy + cyy dy**2`` with
    ``dx = x - center[0]`` and ``dy = y - center[1]`` in pixels.

    Parameters
    ----------
    value : float
        Value at ``center``.
    center : tuple of float
        Parent position ``(x, y)`` of the expansion, pixels.
    gradient : tuple of float
        ``(gx, gy)``: change per pixel along x and y.
    curvature : tuple of float
        ``(cxx, cxy, cyy)``: second-order coefficients per pixel squared.
    """

    value: float
    center: tuple[float, float] = (0.0, 0.0)
    gradient: tuple[float, float] = (0.0, 0.0)
    curvature: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __call__(self, x: Any, y: Any) -> np.ndarray:
        """Return the value at parent positions ``(x, y)`` (arrays broadcast)."""
        dx = np.asarray(x, dtype=float) - self.center[0]
        dy = np.asarray(y, dtype=float) - self.center[1]
        cxx, cxy, cyy = self.curvature
        quadratic = cxx * dx * dx + cxy * dx * dy + cyy * dy * dy
        return self.value + self.gradient[0] * dx + self.gradient[1] * dy + quadratic


def _shape_matrix(scale: np.ndarray, ellipticity: np.ndarray, angle_deg: np.ndarray) -> tuple:
    """Return ``(cxx, cyy, cxy)`` of ``scale**2 R diag(1/(1-e), 1-e) R^T``."""
    if np.any(ellipticity >= 1.0) or np.any(scale <= 0):
        msg = "PSF size must be > 0 and ellipticity < 1 everywhere; check the field models"
        raise DiffimValueError(msg)
    major2, minor2 = scale**2 / (1.0 - ellipticity), scale**2 * (1.0 - ellipticity)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return (
        major2 * c * c + minor2 * s * s,
        major2 * s * s + minor2 * c * c,
        (major2 - minor2) * c * s,
    )


def _evaluate(field: Field, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if callable(field):
        return np.broadcast_to(np.asarray(field(x, y), dtype=float), x.shape)
    return np.full(x.shape, float(field))


class FieldVaryingPsf(PsfModel):
    """An analytic Gaussian or Moffat PSF whose FWHM and shape vary smoothly over the field.

    Parameters
    ----------
    profile : {"gaussian", "moffat"}
        Radial profile.
    fwhm_pix : float, PolynomialField or callable
        FWHM in pixels (geometric mean of the major- and minor-axis FWHMs, equal to the
        determinant-radius FWHM for a Gaussian), constant or a function ``f(x, y)`` of parent
        position that accepts arrays.  Use `PolynomialField` (picklable) rather than lambdas.
    ellipticity : float, PolynomialField or callable, optional
        ``1 - b/a``, 0 (round) by default; must stay below 1.  A negative value ``e`` is
        allowed (so that a gradient may cross zero): the major axis is then at
        ``position_angle_deg + 90`` with ellipticity ``-e / (1 - e)``.
    position_angle_deg : float, PolynomialField or callable, optional
        Major-axis angle counter-clockwise from ``+x``, degrees.
    beta : float, optional
        Moffat index (> 1); ignored for Gaussians.
    center : tuple of float, optional
        Average position ``(x, y)`` used when ``kernel_image``/``fwhm`` get no position.
    default_size : int, optional
        Odd stamp size; by default out to 5.5 major-axis sigmas (Gaussian) or to 1e-5 of the
        peak (Moffat), evaluated where requested.
    oversample : int, optional
        Pixel subdivision of the numerical pixel integration: sub-rows of elliptical
        Gaussians (default 5; round ones are integrated exactly with erf), sub-pixels per
        axis of Moffats (default 2, with a second-order midpoint correction).

    Notes
    -----
    Moffat: ``I(r) ∝ (1 + r²/α²)**-beta`` with ``FWHM = 2 α sqrt(2**(1/beta) - 1)``.  Stamps
    are normalised to unit sum, so flux outside a stamp is put back inside it.
    """

    def __init__(
        self,
        profile: Literal["gaussian", "moffat"],
        fwhm_pix: Field,
        *,
        ellipticity: Field = 0.0,
        position_angle_deg: Field = 0.0,
        beta: float = 3.0,
        center: tuple[float, float] = (0.0, 0.0),
        default_size: int | None = None,
        oversample: int | None = None,
    ) -> None:
        if profile not in ("gaussian", "moffat"):
            msg = f"profile must be 'gaussian' or 'moffat', got {profile!r}"
            raise DiffimValueError(msg)
        if profile == "moffat" and not beta > 1.0:
            msg = f"Moffat beta must be > 1 for a finite flux, got {beta}"
            raise DiffimValueError(msg)
        if oversample is None:
            oversample = 5 if profile == "gaussian" else 2
        if int(oversample) != oversample or oversample < 1:
            msg = f"oversample must be a positive integer, got {oversample!r}"
            raise DiffimValueError(msg)
        self.profile, self.beta, self.oversample = profile, float(beta), int(oversample)
        self.fwhm_pix, self.ellipticity, self.position_angle_deg = (
            fwhm_pix,
            ellipticity,
            position_angle_deg,
        )
        self.average_position = (float(center[0]), float(center[1]))
        self.default_size = (
            None if default_size is None else _odd_size("default_size", default_size)
        )
        self._check()

    def _check(self) -> None:
        x, y = np.array(self.average_position[:1]), np.array(self.average_position[1:])
        self.shape_matrix(x, y)

    def _scale(self, fwhm: np.ndarray) -> np.ndarray:
        """Gaussian sigma or Moffat alpha (pixels) from the FWHM (pixels)."""
        if self.profile == "gaussian":
            return fwhm / FWHM_PER_SIGMA
        return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def shape_matrix(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the shape matrix ``(cxx, cyy, cxy)`` in px**2 at parent positions.

        This is the covariance of a Gaussian, or ``alpha**2`` times the unit-determinant
        shape matrix of a Moffat.
        """
        x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
        scale = self._scale(_evaluate(self.fwhm_pix, x, y))
        ellipticity = _evaluate(self.ellipticity, x, y)
        return _shape_matrix(scale, ellipticity, _evaluate(self.position_angle_deg, x, y))

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """Return the true FWHM (pixels) at ``(x, y)``: the geometric mean of the axis FWHMs."""
        xy = self._position(x, y)
        return float(_evaluate(self.fwhm_pix, np.array([xy[0]]), np.array([xy[1]]))[0])

    def _radius(self, x: Any, y: Any, ratio: Any) -> np.ndarray:
        """Major-axis radius (px) where the profile falls to ``ratio`` times its peak."""
        cxx, cyy, cxy = self.shape_matrix(x, y)
        major2 = 0.5 * (cxx + cyy) + np.sqrt(0.25 * (cxx - cyy) ** 2 + cxy**2)
        ratio = np.clip(ratio, 1e-300, 1.0)
        if self.profile == "gaussian":
            return np.sqrt(major2 * -2.0 * np.log(ratio))
        return np.sqrt(major2 * (ratio ** (-1.0 / self.beta) - 1.0))

    def isophote_radius(self, x: Any, y: Any, level: Any) -> np.ndarray:
        """Return the major-axis radius (pixels) where a unit-flux PSF falls to ``level``.

        Parameters
        ----------
        x, y : array_like of float
            Parent positions, pixels.
        level : array_like of float
            Surface brightness as a fraction of the total flux per pixel**2 (e.g. a
            threshold in e- divided by the source flux in e-).

        Returns
        -------
        ndarray
            Radius in pixels, 0 where ``level`` exceeds the peak.
        """
        cxx, cyy, cxy = self.shape_matrix(x, y)
        root_det = np.sqrt(cxx * cyy - cxy**2)
        peak = (1.0 / 2.0 if self.profile == "gaussian" else self.beta - 1.0) / (np.pi * root_det)
        return self._radius(x, y, np.asarray(level) / peak)

    def _default_size(self, x: np.ndarray, y: np.ndarray) -> int:
        if self.default_size is not None:
            return self.default_size
        # Gaussian: 5.5 major-axis sigmas (1-d tail 2e-8); Moffat: down to 1e-5 of the peak
        ratio = np.exp(-0.5 * 5.5**2) if self.profile == "gaussian" else 1e-5
        return 2 * int(np.ceil(self._radius(x, y, ratio).max())) + 1

    def _render(
        self, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, size: int
    ) -> np.ndarray:
        cov = self.shape_matrix(x, y)
        if self.profile == "gaussian":
            return _gaussian_stamps(cov, dx, dy, size, self.oversample)
        return _moffat_stamps(cov, self.beta, dx, dy, size, self.oversample)

    def to_dict(self) -> dict[str, Any]:
        """Describe the model with JSON-friendly values (callables by their ``repr``)."""

        def describe(field: Field) -> Any:
            if isinstance(field, PolynomialField):
                return asdict(field)
            return repr(field) if callable(field) else float(field)

        return {
            "type": type(self).__name__,
            "profile": self.profile,
            "fwhm_pix": describe(self.fwhm_pix),
            "ellipticity": describe(self.ellipticity),
            "position_angle_deg": describe(self.position_angle_deg),
            "beta": self.beta,
            "center": list(self.average_position),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.profile!r}, fwhm_pix={self.fwhm_pix!r}, "
            f"ellipticity={self.ellipticity!r}, position_angle_deg={self.position_angle_deg!r}, "
            f"beta={self.beta!r}, center={self.average_position!r})"
        )


class GaussianPsf(FieldVaryingPsf):
    """A constant (possibly elliptical) Gaussian PSF.

    Parameters
    ----------
    sigma_pix : float
        Determinant-radius sigma ``sqrt(sigma_major * sigma_minor)`` in pixels; the FWHM is
        ``FWHM_PER_SIGMA * sigma_pix`` whatever the ellipticity.
    ellipticity : float, optional
        ``1 - sigma_minor / sigma_major``.
    position_angle_deg : float, optional
        Major-axis angle counter-clockwise from ``+x``, degrees.
    default_size : int, optional
        Odd stamp size; ``2 ceil(5.5 sigma_major) + 1`` if omitted.
    """

    def __init__(
        self,
        sigma_pix: float,
        *,
        ellipticity: float = 0.0,
        position_angle_deg: float = 0.0,
        default_size: int | None = None,
    ) -> None:
        super().__init__(
            "gaussian",
            FWHM_PER_SIGMA * float(sigma_pix),
            ellipticity=float(ellipticity),
            position_angle_deg=float(position_angle_deg),
            default_size=default_size,
        )
        self.sigma_pix = float(sigma_pix)

    @classmethod
    def from_fwhm(cls, fwhm_pix: float, **kwargs: Any) -> GaussianPsf:
        """Make a Gaussian of FWHM ``fwhm_pix`` (pixels); keywords as for the constructor."""
        return cls(fwhm_pix / FWHM_PER_SIGMA, **kwargs)

    def __repr__(self) -> str:
        return (
            f"GaussianPsf({self.sigma_pix!r}, ellipticity={self.ellipticity!r}, "
            f"position_angle_deg={self.position_angle_deg!r})"
        )


class MoffatPsf(FieldVaryingPsf):
    """A constant (possibly elliptical) Moffat PSF ``(1 + r²/α²)**-beta``.

    Parameters
    ----------
    fwhm_pix : float
        FWHM in pixels (geometric mean of the axis FWHMs).
    beta : float
        Moffat index, > 1 (atmospheric seeing: 2.5 to 4.765).
    ellipticity, position_angle_deg, default_size, oversample
        As for `FieldVaryingPsf`.
    """

    def __init__(
        self,
        fwhm_pix: float,
        beta: float,
        *,
        ellipticity: float = 0.0,
        position_angle_deg: float = 0.0,
        default_size: int | None = None,
        oversample: int | None = None,
    ) -> None:
        super().__init__(
            "moffat",
            float(fwhm_pix),
            ellipticity=float(ellipticity),
            position_angle_deg=float(position_angle_deg),
            beta=beta,
            default_size=default_size,
            oversample=oversample,
        )

    def __repr__(self) -> str:
        return (
            f"MoffatPsf({self.fwhm_pix!r}, {self.beta!r}, ellipticity={self.ellipticity!r}, "
            f"position_angle_deg={self.position_angle_deg!r})"
        )
