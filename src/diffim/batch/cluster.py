"""Many pairs on Dask: `run` submits one `subtract_pair` task per pair of a manifest.

The tasks run on a given ``dask.distributed`` client or on a process-based
``LocalCluster`` started for the run and closed after.  Pairs whose outputs are complete
are skipped (resume), results stream into ``summary.csv`` as they arrive, and a progress
bar is shown on a terminal.  Dask is imported lazily, only where a cluster is used.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ImagePsfMatchConfig
from ..errors import DiffimValueError
from .manifest import (
    QA_COLUMNS,
    SUMMARY_NAME,
    PairSpec,
    _summary_table,
    _write_summary,
    read_manifest,
)
from .pair import _describe, _pair_key, _resolved_config, output_state, subtract_pair

if TYPE_CHECKING:
    from astropy.table import Table

log = logging.getLogger("diffim.batch")

#: While results stream in, the summary is rewritten at most this often (seconds).
SUMMARY_INTERVAL_S = 0.5


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
