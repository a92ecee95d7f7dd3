"""`SourceCatalog`: the columns of a source list, without astropy.table.

Detection and kernel-star selection pass their sources around as a `SourceCatalog`: an
ordered mapping of equal-length numpy columns plus a ``meta`` dict.  It offers the part of
`astropy.table.Table` that diffim's own code uses (``cat["x"]``, ``cat[rows]``, ``len``,
``colnames``, ``meta``), so that code takes either, while ``diffim subtract`` never
imports astropy.table (~0.2 s and ~15 MiB).  `SourceCatalog.to_table` gives the astropy
Table that the public functions (`diffim.sources.detect_sources`,
`ImagePsfMatchTask.getSelectSources`, ...) return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DiffimValueError

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["SourceCatalog"]


class SourceCatalog:
    """Equal-length numpy columns, in order, and a ``meta`` dict.

    Parameters
    ----------
    columns : mapping of str to array_like, optional
        Column name -> values, one per row (along the first axis); each becomes an array.
    meta : mapping, optional
        Metadata (copied, shallowly).

    Raises
    ------
    DiffimValueError
        If the columns have different lengths.

    Examples
    --------
    >>> catalog = SourceCatalog({"x": [1.0, 2.0, 3.0], "snr": [5.0, 20.0, 9.0]}, {"fwhm_pix": 3})
    >>> bright = catalog[catalog["snr"] > 8]
    >>> len(bright), bright["x"].tolist(), bright.meta
    (2, [2.0, 3.0], {'fwhm_pix': 3})
    """

    __slots__ = ("_columns", "meta")

    def __init__(
        self, columns: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        self._columns: dict[str, np.ndarray] = {}
        self.meta: dict[str, Any] = dict(meta or {})
        for name, values in (columns or {}).items():
            self[name] = values

    @classmethod
    def from_table(cls, table: Any) -> SourceCatalog:
        """Return a catalog of the columns and meta of an astropy Table or `SourceCatalog`.

        The columns are numpy views of the table's (no copy); ``meta`` is a shallow copy.
        """
        return cls({name: np.asarray(table[name]) for name in table.colnames}, table.meta)

    @property
    def colnames(self) -> list[str]:
        """Column names, in order."""
        return list(self._columns)

    def __len__(self) -> int:
        first = next(iter(self._columns.values()), None)
        return 0 if first is None else len(first)

    def __getitem__(self, key: str | slice | np.ndarray | list[int]) -> Any:
        """Return a column by name, or a new catalog of the rows that ``key`` selects.

        ``key`` is a column name, a slice, a boolean mask or an array of row indices; the
        new catalog's columns are numpy's ``column[key]`` and its ``meta`` a copy.
        """
        if isinstance(key, str):
            return self._columns[key]
        if isinstance(key, int | np.integer):
            msg = f"rows are selected by a slice, mask or index array, got the integer {key}"
            raise DiffimValueError(msg)
        return SourceCatalog(
            {name: column[key] for name, column in self._columns.items()}, self.meta
        )

    def __setitem__(self, name: str, values: Any) -> None:
        """Add or replace a column; its length must be the catalog's."""
        column = np.asarray(values)
        if column.ndim == 0 or (self._columns and len(column) != len(self)):
            msg = f"column {name!r} has shape {column.shape}; the catalog has {len(self)} rows"
            raise DiffimValueError(msg)
        self._columns[name] = column

    def __repr__(self) -> str:
        return f"<SourceCatalog: {len(self)} rows, columns {self.colnames}>"

    def to_table(self) -> Table:
        """Return an `astropy.table.Table` of copies of the columns, with a copy of ``meta``."""
        from astropy.table import Table  # lazy: astropy.table costs ~0.2 s to import

        return Table(self._columns, meta=self.meta)
