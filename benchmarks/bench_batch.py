"""Benchmark ``diffim.batch.run``: pairs per minute on 1, 2, ... Dask worker processes.

Usage::

    python benchmarks/bench_batch.py --size 1024 --pairs 6 --workers 1 2 --repeats 1

``--pairs`` simulated pairs of ``--size``² pixels (template FWHM 3.2 px, science 4.5 px,
FWHM gradient 0.3, flux ratio 1.15, ``--stars-per-mpix`` stars; distinct seeds) are written
to a temporary folder (not timed).  Then, as a baseline, the same pairs go through
`diffim.batch.subtract_pair` one after the other in this process, with no Dask.  For each
``--workers`` count the ``LocalCluster`` that ``batch.run`` starts by itself (processes,
one thread per worker) is started and
warmed up (diffim imported on every worker; with ``--pin`` each worker is pinned to its own
core; none of this is timed), and ``batch.run(..., force=True)`` over all pairs is timed
``--repeats`` times (best kept).

Prints an environment header and a Markdown table: wall time, throughput (pairs per
minute), speed-up and scaling efficiency (throughput / (workers x one-worker throughput)),
the median per-pair task time and the peak resident memory of a worker process.  Other
jobs on the machine (see the load average) and each worker's own FFT threads (diffim's
convolution uses every usable core in every process) both lower the efficiency.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_subtract import environment_header, load_average

from diffim import batch
from diffim.config import ImagePsfMatchConfig
from diffim.simulate import simulate_pair, write_pair

PAIR_SETTINGS = {
    "science_fwhm": 4.5,
    "template_fwhm": 3.2,
    "fwhm_gradient": (0.3, 0.3),
    "flux_ratio": 1.15,
}


def write_pairs(folder: Path, size: int, n_pairs: int, stars_per_mpix: float) -> list[dict]:
    """Simulate and write ``n_pairs`` pairs; return the manifest rows."""
    n_stars = round(stars_per_mpix * size * size / 1.0e6)
    rows = []
    for seed in range(1, n_pairs + 1):
        pair = simulate_pair(shape=(size, size), seed=seed, n_stars=n_stars, **PAIR_SETTINGS)
        paths = write_pair(pair, folder / f"pair{seed}")
        rows.append(
            {
                "science": str(paths["science"]),
                "template": str(paths["template"]),
                "output": f"diff{seed}.fits",
            }
        )
    return rows


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    ``VmHWM`` from ``/proc/self/status`` where it exists: ``ru_maxrss`` would carry over
    the high-water mark of the process that forked a spawned worker.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def serial_baseline(rows: list[dict], out: Path) -> tuple[float, list[float]]:
    """Run every pair in this process, one after the other; return wall and task times."""
    config = ImagePsfMatchConfig().to_dict()
    start = time.perf_counter()
    summaries = [
        batch.subtract_pair(row["science"], row["template"], str(out / row["output"]), [], config)
        for row in rows
    ]
    failed = [s["error"] for s in summaries if s["status"] != "ok"]
    if failed:
        sys.exit(f"baseline failed: {failed[0]}")
    return time.perf_counter() - start, [s["runtime_s"] for s in summaries]


def pin_to_one_core(dask_worker: Any) -> int:
    """Pin a worker process to one core (worker ``i`` to core ``i``); return that core.

    diffim's FFT convolution uses every core in ``os.sched_getaffinity``, so a pinned
    worker runs one thread, and ``n`` workers use ``n`` cores, no more.
    """
    cores = sorted(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else {0})
    core = cores[int(dask_worker.name) % len(cores)]
    os.sched_setaffinity(0, {core})
    return core


def time_cluster(rows: list[dict], out: Path, n_workers: int, repeats: int, pin: bool) -> dict:
    """Time ``batch.run`` on a fresh local cluster of ``n_workers`` processes.

    The cluster is the one ``batch.run`` starts when given no client (same Dask settings).
    """
    with batch._client_for(None, n_workers, 1, 2) as client:
        client.wait_for_workers(n_workers, timeout=300)
        client.run(importlib.import_module, "diffim.task")
        if pin:
            client.run(pin_to_one_core)
        walls, tasks = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            summary = batch.run(rows, out, client=client, force=True, progress=False)
            walls.append(time.perf_counter() - start)
            tasks.extend(summary["runtime_s"])
            if set(summary["status"]) != {"ok"}:
                sys.exit(f"batch run failed: {summary['error'][summary['status'] != 'ok'][0]}")
        rss = max(client.run(peak_rss_mib).values())
    return {"wall_s": min(walls), "task_s": statistics.median(tasks), "rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--pairs", type=int, default=6, help="number of pairs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per worker count")
    parser.add_argument("--stars-per-mpix", type=float, default=1200.0)
    parser.add_argument("--pin", action="store_true", help="pin each worker to its own core")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    args = parser.parse_args()

    print(environment_header("diffim batch benchmark"))
    print(f"- {args.pairs} pairs of {args.size}² px, {args.stars_per_mpix:g} stars per Mpix")
    print(f"- workers pinned to one core each: {'yes' if args.pin else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        rows = write_pairs(folder / "pairs", args.size, args.pairs, args.stars_per_mpix)
        (folder / "serial").mkdir(parents=True, exist_ok=True)
        serial_wall, serial_tasks = serial_baseline(rows, folder / "serial")
        results = {
            n: time_cluster(rows, folder / f"w{n}", n, args.repeats, args.pin)
            for n in args.workers
        }
    print(f"- {load_average()} at the end\n")
    columns = ["workers", "wall s", "pairs/min", "speed-up", "efficiency", "task s (median)"]
    print("| " + " | ".join([*columns, "peak RSS/worker MiB"]) + " |")
    print("|---|---|---|---|---|---|---|")
    serial_rate = 60.0 * args.pairs / serial_wall
    print(
        f"| in-process, no Dask | {serial_wall:.1f} | {serial_rate:.2f} | - | - "
        f"| {statistics.median(serial_tasks):.2f} | {peak_rss_mib():.0f} (this process) |"
    )
    one = results.get(1)
    for n, result in results.items():
        rate = 60.0 * args.pairs / result["wall_s"]
        speedup = one["wall_s"] / result["wall_s"] if one else float("nan")
        print(
            f"| {n} | {result['wall_s']:.1f} | {rate:.2f} | {speedup:.2f} | {speedup / n:.0%} "
            f"| {result['task_s']:.2f} | {result['rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
