"""Delta-function kernel bases and their regularization matrices.

A delta-function basis has one kernel per pixel; its solution may be regularised by a
finite-difference penalty ``lambda * a^T H a`` on the kernel image (spec §3.4, §3.8), with
``H = B^T B`` for a central (Laplacian) or forward-difference operator ``B``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import DiffimConfigError, DiffimValueError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ..config import PsfMatchConfigDF

__all__ = ["make_delta_function_basis", "make_regularization_matrix", "regularization_matrix"]


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
