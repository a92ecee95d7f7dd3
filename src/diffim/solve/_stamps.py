"""Batches of same-shape candidate stamps, and a stamp's fit region.

Per-candidate work (the fits and their residuals) runs on stacks of stamps of one shape,
in batches small enough to keep their per-pixel work arrays under `BATCH_VALUES` values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..candidates import KernelCandidate

__all__ = ["BATCH_VALUES"]


def _crop(array: np.ndarray, half_width: int) -> np.ndarray:
    """The last two axes of ``array`` shrunk by ``half_width`` pixels on every side."""
    return array[
        ..., half_width : array.shape[-2] - half_width, half_width : array.shape[-1] - half_width
    ]


#: Most float64 values of per-pixel work arrays (stamp pixels x planes, e.g. the design
#: columns of every basis kernel) that one batch of candidates may hold: 4 MB.  Batches of
#: 2**21 values fitted 630 candidates no faster and held 14 MiB more at the peak.
BATCH_VALUES = 2**19


def _batches(candidates: Sequence[KernelCandidate], n_planes: int) -> list[list[int]]:
    """Group candidate indices by stamp shape, in batches of at most `BATCH_VALUES` values.

    ``n_planes`` is the number of stamp-sized arrays a candidate needs in a batch.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, candidate in enumerate(candidates):
        groups.setdefault(candidate.template.image.shape, []).append(index)
    batches = []
    for (ny, nx), indices in groups.items():
        size = max(1, BATCH_VALUES // (n_planes * ny * nx))
        batches.extend(indices[start : start + size] for start in range(0, len(indices), size))
    return batches
