"""The tables of a batch: the manifest of pairs it reads and the summary it writes.

`read_manifest` turns a CSV file (Parquet with pyarrow), table or list of rows into
`PairSpec` rows, with absolute paths and each row's config overrides.  The summary has one
row per manifest row, with the `SUMMARY_COLUMNS`; it is written as ``summary.csv``
(`SUMMARY_NAME`) and returned as an astropy table.  ``astropy.table`` is imported lazily.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DiffimValueError
from ..io import atomic_write_text

if TYPE_CHECKING:
    from astropy.table import Column, Table

SUMMARY_NAME = "summary.csv"
#: Summary columns and their types; the QA numbers are `result.metadata` keys.
SUMMARY_COLUMNS: dict[str, type] = {
    "index": int, "science": str, "template": str, "output": str, "status": str,
    "error": str, "runtime_s": float, "direction": str, "spatialKernelSum": float,
    "kernelSumMin": float, "kernelSumMax": float, "spatialConditionNum": float,
    "nCandidates": int, "nCandidatesUsedInSpatialFit": int, "diffimResidualMedian": float,
    "diffimResidualRobustStd": float, "diffimGoodPixelFraction": float, "warnings": str,
}  # fmt: skip
QA_COLUMNS = tuple(list(SUMMARY_COLUMNS)[8:-1])


@dataclasses.dataclass(frozen=True, slots=True)
class PairSpec:
    """One manifest row: absolute paths and the row's ``field=value`` config overrides."""

    index: int
    science: str
    template: str
    output: str
    overrides: tuple[str, ...] = ()


def _manifest_rows(manifest: Any) -> tuple[list[Mapping[str, Any]], Path]:
    """Return the rows of a manifest and the folder its relative paths start from."""
    from astropy.table import Table  # the CLI imports this module for its options only

    if not isinstance(manifest, str | os.PathLike):
        if isinstance(manifest, Table):
            return [dict(zip(manifest.colnames, row, strict=True)) for row in manifest], Path.cwd()
        return [dict(row) for row in manifest], Path.cwd()
    path = Path(manifest)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            msg = f"reading {path} needs pyarrow; pip install pyarrow or convert it to CSV"
            raise DiffimValueError(msg) from None
        return _manifest_rows(Table.read(path, format="parquet"))[0], path.parent
    with path.open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream)), path.parent


def _text(value: Any) -> str:
    """Return a cell as text: empty for None, NaN and masked cells."""
    if value is None or value is np.ma.masked or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def read_manifest(manifest: Any, out_dir: str | os.PathLike) -> list[PairSpec]:
    """Read a manifest into `PairSpec` rows.

    Parameters
    ----------
    manifest : str, os.PathLike, astropy.table.Table or list of dict
        A CSV file (Parquet with pyarrow), table or list with columns ``science``,
        ``template`` and optionally ``output`` and ``config`` (``"key=value;key=value"``);
        other columns are ignored.  Relative inputs start from the manifest's folder (the
        working directory for a table or list), relative outputs from ``out_dir``.
    out_dir : str or os.PathLike
        Folder of the outputs; the default output is ``<science stem>.diff.fits``.

    Returns
    -------
    list of PairSpec

    Raises
    ------
    DiffimValueError
        No rows, a row without science or template, or two rows with one output.
    """
    rows, base = _manifest_rows(manifest)
    if not rows:
        msg = f"manifest {manifest!r} has no rows; give one science,template pair per row"
        raise DiffimValueError(msg)
    pairs = []
    for index, row in enumerate(rows):
        science, template = _text(row.get("science")), _text(row.get("template"))
        if not science or not template:
            msg = f"manifest row {index} needs both 'science' and 'template'; got {dict(row)}"
            raise DiffimValueError(msg)
        stem = Path(science).name.removesuffix(".fz").removesuffix(".gz").removesuffix(".fits")
        output = Path(out_dir) / (_text(row.get("output")) or f"{stem}.diff.fits")
        overrides = (s.strip() for s in _text(row.get("config")).split(";"))
        paths = (os.path.abspath(path) for path in (base / science, base / template, output))
        pairs.append(PairSpec(index, *paths, tuple(filter(None, overrides))))
    repeated = [out for out, n in Counter(p.output for p in pairs).items() if n > 1]
    if repeated:
        msg = f"several rows write {repeated[:3]}; give each row its own 'output'"
        raise DiffimValueError(msg)
    return pairs


def _write_summary(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the summary CSV atomically (`diffim.io.atomic_write_text`)."""
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_text(path, text.getvalue(), overwrite=True)


def _summary_table(rows: list[dict[str, Any]]) -> Table:
    """Return the rows as a table; numbers missing from a row are masked."""
    from astropy.table import Column, MaskedColumn, Table

    columns: list[Column] = []
    for name, kind in SUMMARY_COLUMNS.items():
        values = [row.get(name) for row in rows]
        if kind is str:
            columns.append(Column([_text(v) for v in values], name=name, dtype=str))
            continue
        missing = [v is None or v == "" for v in values]
        data = [kind(0) if gone else kind(v) for v, gone in zip(values, missing, strict=True)]
        columns.append(MaskedColumn(data, name=name, mask=missing, dtype=kind))
    return Table(columns)
