"""Many image pairs, or the tiles of one large pair, on Dask (``dask.distributed``).

`run` subtracts every pair of a manifest, one `subtract_pair` task per pair, and streams
a summary into ``<out_dir>/summary.csv``.  `subtract_tiled` cuts one pair into overlapping
tiles, fits and subtracts each tile as its own task and stitches the tile interiors.  Dask
is imported lazily, only where a cluster is used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from .allocator import keep_freed_memory
from .config import ImagePsfMatchConfig
from .errors import DiffimValueError
from .image import BBox, Exposure, MaskedImage
from .io import atomic_write_text, check_not_input, write_exposure
from .psf import GaussianPsf

if TYPE_CHECKING:
    from astropy.table import Column, Table

__all__ = [
    "PairSpec", "TileResult", "add_batch_arguments", "default_margin", "output_state",
    "parse_tiles", "read_manifest", "run", "run_batch_command", "subtract_pair",
    "subtract_tile", "subtract_tiled", "tile_layout",
]  # fmt: skip

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
#: Primary-header cards of a batch output: True once written, and a hash of its inputs.
DONE_CARD, KEY_CARD = "DIFFDONE", "BATCHKEY"
#: While results stream in, the summary is rewritten at most this often (seconds).
SUMMARY_INTERVAL_S = 0.5
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


# -- manifest ---------------------------------------------------------------------------------
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


# -- one pair ---------------------------------------------------------------------------------
def _resolved_config(config_dict: Mapping[str, Any], overrides: Sequence[str]) -> Any:
    config = ImagePsfMatchConfig.from_dict(config_dict)
    if overrides:
        config.apply_overrides(list(overrides))
    return config


def _pair_key(science: str, template: str, config: ImagePsfMatchConfig) -> str:
    """Return a hash of what an output depends on: the input paths and the whole config."""
    text = json.dumps([science, template, config.to_dict()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def subtract_pair(
    science: str,
    template: str,
    output: str,
    overrides: Sequence[str],
    config_dict: Mapping[str, Any],
) -> dict[str, Any]:
    """Read, subtract and write one pair; return its summary row (never raises).

    Parameters
    ----------
    science, template : str
        Paths of the two images.
    output : str
        Path of the difference; its folder is created, an existing file replaced
        atomically (temporary file, then ``os.replace``).
    overrides : sequence of str
        ``"field=value"`` overrides applied on top of ``config_dict``.
    config_dict : mapping
        Base configuration, as `ImagePsfMatchConfig.to_dict` gives it.

    Returns
    -------
    dict
        `SUMMARY_COLUMNS` but ``index``: status ``"ok"`` or ``"failed"``, error as
        ``"Type: message"``, runtime in seconds, QA numbers, and the warnings issued.
    """
    from .subtraction import subtract  # lazy: CLI start-up

    keep_freed_memory()  # this runs in a worker process of our own
    row: dict[str, Any] = {"science": science, "template": template, "output": output}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = _resolved_config(config_dict, overrides)
            check_not_input(output, [science, template])
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            result = subtract(science, template, config=config, keep_matched=False)
            header = {KEY_CARD: _pair_key(science, template, config), DONE_CARD: True}
            write_exposure(result.subtractedExposure, output, overwrite=True, header_extra=header)
            header.update(result.metadata)
        except Exception as error:  # one bad pair must not stop the batch
            log.warning("%s - %s failed: %s", science, template, _describe(error))
            row.update(status="failed", error=_describe(error))
        else:
            row.update({name: header.get(name) for name in QA_COLUMNS})
            row.update(status="ok", error="", direction=header["DIRECTION"])
    row["runtime_s"] = time.perf_counter() - started
    issued = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    row["warnings"] = " | ".join(issued)
    return row


def output_state(path: str | os.PathLike, key: str | None = None) -> tuple[str, dict[str, Any]]:
    """Say whether ``path`` is a complete diffim batch output, reading its headers only.

    Returns
    -------
    state : {"missing", "complete", "stale", "foreign"}
        ``complete``: readable, with IMAGE, MASK and VARIANCE HDUs whose data lie within
        the file, the ``diffimVersion`` and completion cards, and made from the inputs and
        config hashed in ``key`` (any if None); ``stale``: the same, made otherwise;
        ``foreign``: anything else.
    header : dict
        The primary header of a complete or stale output, else empty.
    """
    path = Path(path)
    if not path.exists():
        return "missing", {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a truncated file warns; its size tells below
            hdulist = fits.open(path, lazy_load_hdus=False)
        with hdulist:
            header, names = dict(hdulist[0].header), [hdu.name for hdu in hdulist[1:]]
            spans = [hdulist.fileinfo(i) for i in range(len(hdulist))]
    except (OSError, ValueError, KeyError):
        return "foreign", {}
    end = max(span["datLoc"] + span["datSpan"] for span in spans)
    complete = end <= path.stat().st_size and names[:3] == ["IMAGE", "MASK", "VARIANCE"]
    if not (complete and header.get(DONE_CARD) is True and "diffimVersion" in header):
        return "foreign", {}
    return ("stale" if key not in (None, header.get(KEY_CARD)) else "complete"), header


# -- many pairs -------------------------------------------------------------------------------
def _plan(
    pairs: list[PairSpec], config: ImagePsfMatchConfig, *, resume: bool, force: bool
) -> tuple[list[dict[str, Any]], list[PairSpec]]:
    """Return the initial summary rows (skips and refusals filled in) and the pairs to run."""
    rows, todo = [], []
    for pair in pairs:
        row = {"index": pair.index, "science": pair.science, "template": pair.template}
        rows.append({**row, "output": pair.output, "status": "pending", "error": ""})
        try:
            resolved = _resolved_config(config.to_dict(), pair.overrides)
        except DiffimValueError as error:
            rows[-1].update(status="failed", error=_describe(error))
            continue
        key = _pair_key(pair.science, pair.template, resolved)
        state, header = ("missing", {}) if force else output_state(pair.output, key)
        if state == "complete" and resume:
            rows[-1].update({name: header.get(name) for name in QA_COLUMNS})
            rows[-1].update(status="skipped", direction=header.get("DIRECTION", ""))
        elif state == "missing" or (state == "stale" and resume):
            todo.append(pair)
        else:
            why = "is not a diffim output" if state == "foreign" else "exists"
            msg = f"DiffimIOError: {pair.output} {why}; pass force=True (--force) to replace it"
            rows[-1].update(status="failed", error=msg)
    return rows, todo


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


class _Progress:
    """A progress bar on stderr (tqdm if installed), shown only when stderr is a terminal."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.counts = total, Counter()
        self.enabled, self.bar = enabled and sys.stderr.isatty(), None
        if self.enabled:
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="pair", desc="diffim batch", file=sys.stderr)

    def update(self, status: str) -> None:
        self.counts[status] += 1
        if self.bar is not None:
            self.bar.set_postfix(self.counts, refresh=False)
            self.bar.update()
        elif self.enabled:
            done = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
            sys.stderr.write(f"\rdiffim batch: {self.counts.total()}/{self.total} ({done})")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


@contextlib.contextmanager
def _client_for(client: Any, n_workers: int | None, threads: int, retries: int) -> Iterator[Any]:
    """Yield ``client``, or the client of a new process-based LocalCluster, closed after."""
    if client is not None:
        yield client
        return
    import dask
    from dask.distributed import Client, LocalCluster

    if n_workers is None:
        n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    settings = {
        # a task whose worker died is re-run on another worker, up to `retries` times
        "distributed.scheduler.allowed-failures": retries,
        # Dask's small trim threshold makes every large array a fresh mmap: 25 % slower
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",  # a free port: no warning that 8787 is taken
        )
    with cluster, Client(cluster) as owned:
        yield owned


def _remove_temp_files(paths: list[Path]) -> None:
    """Delete the temporary files that interrupted writes of ``paths`` left behind."""
    strays = [stray for path in paths for stray in path.parent.glob(f".{path.name}.*.tmp")]
    for stray in strays:
        stray.unlink(missing_ok=True)
    if strays:
        log.warning("removed %d temporary files left by interrupted writes", len(strays))


def _check_count(name: str, value: int | None, least: int) -> None:
    if value is not None and (type(value) is not int or value < least):
        msg = f"{name} must be an integer >= {least}, got {value!r}"
        raise DiffimValueError(msg)


def run(
    manifest: Any,
    out_dir: str | os.PathLike,
    *,
    client: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    resume: bool = True,
    force: bool = False,
    max_retries: int = 2,
    config: ImagePsfMatchConfig | None = None,
    progress: bool = True,
) -> Table:
    """Subtract every pair of a manifest on Dask, one `subtract_pair` task per pair.

    Parameters
    ----------
    manifest : str, os.PathLike, astropy.table.Table or list of dict
        The pairs; see `read_manifest`.
    out_dir : str or os.PathLike
        Folder of the outputs and of ``summary.csv``; created if missing.
    client : dask.distributed.Client, optional
        Where to run; by default a process-based ``LocalCluster`` of ``n_workers``
        workers (default: the usable CPU cores) with ``threads_per_worker`` threads each
        is started, and closed at the end.
    n_workers, threads_per_worker : int, optional
        Size of that local cluster.
    resume : bool, optional
        Skip a pair whose output is complete and made from the same inputs and config
        (status ``"skipped"``, QA from its header); redo one made otherwise.  With False,
        an existing output fails its pair.
    force : bool, optional
        Recompute every pair, replacing the outputs.
    max_retries : int, optional
        Re-runs of a task that raised or whose worker died (the latter for the local
        cluster; a given client keeps its scheduler's ``allowed-failures``).
    config : ImagePsfMatchConfig, optional
        Base configuration; each row's ``config`` overrides apply on top of it.
    progress : bool, optional
        Show a progress bar when stderr is a terminal.

    Returns
    -------
    astropy.table.Table
        `SUMMARY_COLUMNS`, one row per manifest row in manifest order; status ``"ok"``,
        ``"skipped"`` or ``"failed"`` (with ``error`` as ``"Type: message"``).

    Notes
    -----
    ``summary.csv`` is rewritten atomically as results arrive (rows not yet done are
    ``"pending"``).  Outputs are written atomically, so a killed worker leaves no partial
    output; the temporary files of interrupted writes are deleted at the end.  Each pair's
    warnings go to its ``warnings`` column (exact with one thread per worker).
    """
    _check_count("n_workers", n_workers, 1)
    _check_count("threads_per_worker", threads_per_worker, 1)
    _check_count("max_retries", max_retries, 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = ImagePsfMatchConfig() if config is None else copy.deepcopy(config)
    config.validate()
    pairs = read_manifest(manifest, out)
    rows, todo = _plan(pairs, config, resume=resume, force=force)
    bar, summary = _Progress(len(rows), enabled=progress), out / SUMMARY_NAME
    for row in rows:
        if row["status"] != "pending":
            bar.update(row["status"])
    try:
        if todo:
            with _client_for(client, n_workers, threads_per_worker, max_retries) as active:
                _execute(active, todo, rows, (config.to_dict(), max_retries), bar, summary)
    finally:
        bar.close()
        _remove_temp_files([*(Path(pair.output) for pair in pairs), summary])
        _write_summary(rows, summary)
    log.info("%s in %s", dict(Counter(row["status"] for row in rows)), summary)
    return _summary_table(rows)


def _execute(
    client: Any, todo: list[PairSpec], rows: list, settings: tuple, bar: _Progress, path: Path
) -> None:
    """Submit one task per pair; fill ``rows`` and rewrite the summary as tasks complete."""
    from dask.distributed import as_completed

    config_dict, max_retries = settings
    futures = {
        client.submit(
            subtract_pair,
            *(pair.science, pair.template, pair.output, list(pair.overrides), config_dict),
            retries=max_retries,
            pure=False,
        ): pair
        for pair in todo
    }
    _write_summary(rows, path)
    written = time.monotonic()
    try:
        for future in as_completed(futures):
            row = rows[futures[future].index]
            if future.status == "finished":
                row.update(future.result())
            else:  # subtract_pair does not raise: its worker died too often, or it was cancelled
                error = _describe(future.exception()) if future.status == "error" else ""
                row.update(status="failed", error=error or f"CancelledError: {future.status}")
            bar.update(row["status"])
            if time.monotonic() - written >= SUMMARY_INTERVAL_S:
                _write_summary(rows, path)
                written = time.monotonic()
    finally:  # on an interrupt, stop what has not started
        client.cancel([future for future in futures if not future.done()])


# -- tiles of one pair ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class TileResult:
    """What `subtract_tile` returns: the difference over the tile interior, QA, warnings."""

    interior: BBox
    difference: MaskedImage
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[tuple[type[Warning], str], ...] = ()


def tile_layout(bbox: BBox, tiles: tuple[int, int], margin: int) -> list[tuple[BBox, BBox]]:
    """Cut ``bbox`` into ``tiles = (ny, nx)`` interiors, each with a box grown by ``margin``.

    Returns
    -------
    list of (BBox, BBox)
        ``(interior, box)``, row by row.  The interiors partition ``bbox`` (their sizes
        differ by one pixel at most); a box is its interior grown by ``margin`` pixels and
        clipped to ``bbox``.

    Raises
    ------
    DiffimValueError
        A tile count below 1 or above the image size, or a negative margin.
    """
    n_y, n_x = (int(n) for n in tiles)
    if not (1 <= n_y <= bbox.height and 1 <= n_x <= bbox.width) or margin < 0:
        msg = (
            f"cannot cut a {bbox.height}x{bbox.width} image into {n_y}x{n_x} tiles with "
            f"margin {margin}; give 1 <= tiles <= the image size and margin >= 0"
        )
        raise DiffimValueError(msg)
    ys = np.linspace(bbox.y_min, bbox.y_min + bbox.height, n_y + 1).round().astype(int)
    xs = np.linspace(bbox.x_min, bbox.x_min + bbox.width, n_x + 1).round().astype(int)
    layout = []
    for (y0, y1), (x0, x1) in itertools.product(itertools.pairwise(ys), itertools.pairwise(xs)):
        interior = BBox.from_corners(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
        layout.append((interior, interior.grown(margin).intersection(bbox)))
    return layout


def default_margin(config: ImagePsfMatchConfig, kernel_size: int) -> int:
    """Return the tile margin ``2 (c + h)``, for kernel and stamp half-widths ``c`` and ``h``.

    A tile's convolution is undefined within ``c`` of its edge, and a kernel star counts
    only if its whole stamp (half-width ``h``) lies in the tile.  With ``2 (c + h)`` the
    undefined band lies in the margin, and the stars within ``c + h`` of a seam, on both
    sides, are used by both tiles that meet there: each tile's spatial kernel interpolates
    across the seam instead of extrapolating.  62 px for the default 21-px kernel.
    """
    from .task import ImagePsfMatchTask  # lazy: CLI start-up

    return 2 * (kernel_size // 2 + ImagePsfMatchTask(config).stamp_half_width(kernel_size))


def subtract_tile(
    science: Exposure,
    template: Exposure,
    interior: BBox,
    config_dict: Mapping[str, Any],
    fwhm_pix: tuple[float, float],
    convolve_template: bool,
) -> TileResult:
    """Fit and subtract one tile; return the difference over its interior only.

    Parameters
    ----------
    science, template : Exposure
        The tile (interior plus margin) of both images, on one pixel grid.
    interior : BBox
        The part of the tile to keep (parent pixels).
    config_dict : mapping
        The configuration, as `ImagePsfMatchConfig.to_dict` gives it.
    fwhm_pix : tuple of float
        ``(template, science)`` PSF FWHMs of the whole image (pixels): all tiles share one
        basis and one kernel size.
    convolve_template : bool
        Which image to convolve, decided once for the whole image.

    Returns
    -------
    TileResult
        With the warnings recorded as ``(category, message)``, not issued.
    """
    from .task import ImagePsfMatchTask  # lazy: CLI start-up

    task = ImagePsfMatchTask(ImagePsfMatchConfig.from_dict(config_dict))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = task.subtractExposures(
                template, science, *fwhm_pix, convolveTemplate=convolve_template
            )
        except Exception as error:
            error.add_note(f"in the tile of interior {interior}")
            raise
    difference = result.subtractedExposure.masked_image.subimage(interior).copy()
    recorded = tuple(dict.fromkeys((w.category, str(w.message)) for w in caught))
    return TileResult(interior, difference, dict(result.metadata), recorded)


def _map_tiles(
    client: Any, science: Exposure, template: Exposure, layout: list, arguments: tuple
) -> list[TileResult]:
    """Run `subtract_tile` on every tile, serially or on Dask; return them in layout order."""
    if client is None:
        return [
            subtract_tile(science.subimage(box), template.subimage(box), interior, *arguments)
            for interior, box in layout
        ]
    from dask.distributed import as_completed

    limit = 2 * max(1, sum(client.nthreads().values()))  # tiles in flight, to bound memory
    todo, queue, results = list(layout), as_completed(), []
    while todo or queue.count():
        while todo and queue.count() < limit:  # each task receives its own tile only
            interior, box = todo.pop(0)
            tiles = client.scatter([science.subimage(box), template.subimage(box)], hash=False)
            queue.add(client.submit(subtract_tile, *tiles, interior, *arguments, pure=False))
        results.append(next(queue).result())
    return sorted(results, key=lambda result: (result.interior.y_min, result.interior.x_min))


def _stitch(science: Exposure, results: list[TileResult], psf: Any, bad: Any) -> Exposure:
    """Assemble the tile interiors into a difference exposure with the science metadata."""
    from .stats import difference_statistics

    first = results[0].difference
    image, mask = np.empty(science.shape, first.dtype), np.empty(science.shape, first.mask.dtype)
    variance, planes = np.empty_like(image), first.planes
    for result in results:
        rows, cols = result.interior.slices(science.masked_image.xy0)
        image[rows, cols] = result.difference.image
        mask[rows, cols] = result.difference.mask
        variance[rows, cols] = result.difference.variance
        planes = planes.merged(result.difference.planes)
    difference = MaskedImage(image, mask, variance, xy0=science.masked_image.xy0, planes=planes)
    shared = ("diffimVersion", "DIRECTION", "DIFFSIGN", "CONFIG")
    metadata = {**science.metadata, **{key: results[0].metadata[key] for key in shared}}
    metadata.update(difference_statistics(difference, bad))
    metadata["tileKernelSums"] = [round(r.metadata["spatialKernelSum"], 6) for r in results]
    metadata["nCandidates"] = sum(r.metadata["nCandidates"] for r in results)
    stitched = science.with_pixels(difference)  # keeps an unread WCS unread
    stitched.psf, stitched.metadata = psf, metadata
    return stitched


def _reissue_warnings(results: list[TileResult]) -> None:
    """Issue the tiles' warnings here, once per category, naming the tiles."""
    by_category: dict[type[Warning], list[str]] = {}
    for result in results:
        for category, message in result.warnings:
            by_category.setdefault(category, []).append(f"tile {result.interior}: {message}")
    for category, messages in by_category.items():
        warnings.warn("; ".join(messages), category, stacklevel=3)


def subtract_tiled(
    science: Any,
    template: Any,
    *,
    tiles: tuple[int, int] = (2, 2),
    margin: int | None = None,
    client: Any = None,
    config: ImagePsfMatchConfig | None = None,
    mode: str | None = None,
    warp: bool = True,
    **overrides: Any,
) -> Exposure:
    """Subtract a large pair tile by tile, each tile with its own kernel fit.

    Parameters
    ----------
    science, template : str, os.PathLike, Exposure, MaskedImage or CCDData
        The pair, as `diffim.subtract` takes it; a template on another pixel grid is
        warped onto the science grid first, in this process (whole images in memory).
    tiles : tuple of int, optional
        Tiles per axis, ``(ny, nx)``.
    margin : int, optional
        Pixels added to each side of a tile interior (clipped at the image edge); at least
        the kernel half-width.  Default: `default_margin`.
    client : dask.distributed.Client, optional
        Run the tiles on Dask, each task receiving only its tile; serially if None.
    config : ImagePsfMatchConfig, optional
        Base configuration; ``**overrides`` (``kernelSize=25``, ...) apply on top.
    mode : {"auto", "convolveTemplate", "convolveScience"}, optional
        Which image to convolve, decided once from the whole-image FWHMs.
    warp : bool, optional
        Resample a template on another pixel grid; if False it raises `NotRegisteredError`.

    Returns
    -------
    Exposure
        Science minus template, stitched from the tile interiors only, with the science
        WCS and PSF; metadata adds ``TILES``, ``TILEMARG``, ``tileKernelSums``,
        ``DIRECTION`` and the difference statistics.

    Warns
    -----
    DiffimWarning
        Once per category that some tiles issued, naming those tiles.
    """
    from .stars import exposure_fwhm
    from .subtraction import as_exposure, choose_convolve_template
    from .task import ImagePsfMatchTask  # lazy: CLI start-up

    config = ImagePsfMatchConfig() if config is None else copy.deepcopy(config)
    if overrides:
        config.apply_overrides([f"{key}={value!r}" for key, value in overrides.items()])
    task = ImagePsfMatchTask(config)
    science = as_exposure(science, "science")
    warped = task.registered_template(as_exposure(template, "template"), science, warp)
    fwhm = (exposure_fwhm(warped, "template", log), exposure_fwhm(science, "science", log))
    convolve_template = choose_convolve_template(mode or config.mode, *fwhm)
    convolved_first = fwhm if convolve_template else fwhm[::-1]
    kernel_size = task.makeKernelBasisList(*convolved_first).kernel_size
    margin = default_margin(config, kernel_size) if margin is None else int(margin)
    if margin < kernel_size // 2:
        msg = f"margin={margin} is below the kernel half-width {kernel_size // 2}; raise it"
        raise DiffimValueError(msg)
    layout = tile_layout(science.bbox, tiles, margin)
    log.info("%d tiles with a %d-px margin", len(layout), margin)
    arguments = (config.to_dict(), fwhm, convolve_template)
    results = _map_tiles(client, science, warped, layout, arguments)
    _reissue_warnings(results)
    # the difference has the PSF of the image that was not convolved (as subtractExposures)
    unconvolved, fwhm_unconvolved = (science, fwhm[1]) if convolve_template else (warped, fwhm[0])
    psf = unconvolved.psf
    if psf is None:
        psf = GaussianPsf.from_fwhm(fwhm_unconvolved)
    stitched = _stitch(science, results, psf, config.kernel.active.badMaskPlanes)
    stitched.metadata.update(TILES=f"{tiles[0]}x{tiles[1]}", TILEMARG=margin)
    return stitched


# -- command line (wired into diffim.cli) ----------------------------------------------------
def parse_tiles(text: str) -> tuple[int, int]:
    """Parse ``"NYxNX"`` (``"2x3"``: 2 rows of 3 tiles), the ``--tiles`` argument type."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        msg = f"--tiles wants NYxNX with positive integers, e.g. 2x2; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(parts[0]), int(parts[1])


#: ``diffim batch`` options: flag and argparse keywords.
BATCH_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--out", {"required": True, "metavar": "DIR", "help": "folder of outputs and summary.csv"}),
    ("--scheduler", {"metavar": "ADDRESS", "help": "Dask scheduler (default: a local cluster)"}),
    ("--workers", {"type": int, "metavar": "N", "help": "local worker processes (all cores)"}),
    ("--threads-per-worker", {"type": int, "metavar": "M", "help": "threads per local worker"}),
    ("--retries", {"type": int, "default": 2, "metavar": "R", "help": "re-runs of a task (2)"}),
    ("--force", {"action": "store_true", "help": "recompute and replace every output"}),
    (
        "--no-resume",
        {
            "dest": "resume",
            "action": "store_false",
            "help": "do not skip completed pairs: an existing output fails its pair",
        },
    ),
    (
        "--config",
        {
            "nargs": "+",
            "default": [],
            "metavar": "KEY=VALUE",
            "help": "configuration overrides for every pair, e.g. kernelSize=25",
        },
    ),
    ("--config-file", {"help": "YAML or TOML configuration (see diffim config)"}),
)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``diffim batch`` arguments (MANIFEST and `BATCH_OPTIONS`) to ``parser``."""
    parser.add_argument(
        "manifest", metavar="MANIFEST", help="CSV/Parquet: science,template[,output][,config]"
    )
    for flag, options in BATCH_OPTIONS:
        parser.add_argument(flag, **options)


def run_batch_command(args: argparse.Namespace) -> int:
    """Run ``diffim batch``; print the summary path; return 0 if no pair failed, else 1."""
    if args.scheduler and (args.workers is not None or args.threads_per_worker is not None):
        msg = "--workers and --threads-per-worker size a local cluster; drop them with --scheduler"
        raise DiffimValueError(msg)
    if args.config_file:
        config = ImagePsfMatchConfig.load(args.config_file)
    else:
        config = ImagePsfMatchConfig()
    config.apply_overrides(args.config)
    with contextlib.ExitStack() as stack:
        client = None
        if args.scheduler:
            from dask.distributed import Client

            client = stack.enter_context(Client(args.scheduler, timeout=60))
        summary = run(
            args.manifest,
            args.out,
            client=client,
            n_workers=args.workers,
            threads_per_worker=1 if args.threads_per_worker is None else args.threads_per_worker,
            resume=args.resume,
            force=args.force,
            max_retries=args.retries,
            config=config,
        )
    counts = Counter(summary["status"])
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{Path(args.out) / SUMMARY_NAME}: {done}")  # noqa: T201 - the command's report
    return 1 if counts["failed"] else 0
