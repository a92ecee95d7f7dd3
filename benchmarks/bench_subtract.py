"""Benchmark a whole subtraction, stage by stage, and the ``diffim subtract`` CLI process.

Usage::

    python benchmarks/bench_subtract.py --sizes 1024 2048 4096 --repeats 2

For each size a simulated pair (template FWHM 3.2 px, science 4.5 px, FWHM gradient 0.3,
flux ratio 1.15, ``--stars-per-mpix`` stars) is written to a temporary directory (not
timed).  Then, ``--repeats`` times, alternately:

* one subtraction in this process, timed stage by stage with ``time.perf_counter``: read
  (both files), candidates (the science detection, FWHM of both images, kernel-star
  selection, stamps), fit,
  convolve, subtract (difference and its statistics), write;
* the ``diffim subtract`` command as a subprocess: its wall time and its peak resident
  memory (GNU time's ``%M``, or ``ru_maxrss`` from ``os.wait4``; see `run_measured`).

Prints an environment header, a Markdown table of best-of-N times (each stage's best over
the repeats), a breakdown of the candidates stage, and QA numbers per size (kernel sum,
candidates used, robust std of difference/sqrt(variance)) so a reader sees the run was sane.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import scipy

import diffim
import diffim.task
from diffim import stars
from diffim.config import ImagePsfMatchConfig
from diffim.io import read_exposure, write_exposure
from diffim.simulate import SimulatedPair, simulate_pair, write_pair
from diffim.task import ImagePsfMatchTask

#: The simulated pair: the science PSF is broader, so the template is convolved.
PAIR_SETTINGS: dict[str, Any] = {
    "science_fwhm": 4.5,
    "template_fwhm": 3.2,
    "fwhm_gradient": (0.3, 0.3),
    "flux_ratio": 1.15,
}
STAGES = ("read", "candidates", "fit", "convolve", "subtract", "write")
CANDIDATE_PARTS = ("detect", "fwhm", "select", "stamps_cells", "other")


# -- helpers shared with compare_hotpants.py ------------------------------------------------
def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """Return the 1/5/15-minute load averages: other jobs on the machine slow the timings."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return "load average " + " / ".join(f"{value:.1f}" for value in os.getloadavg())


def environment_header(title: str) -> str:
    """Return a Markdown header with the versions, CPU count and date of this run."""
    import ducc0
    import fitsio
    import sep

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = {
        k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ
    }
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {platform.platform()}",
        f"- CPU: {cpu_model()}; os.cpu_count() = {os.cpu_count()}, usable = {affinity}",
        f"- python {platform.python_version()}, numpy {np.__version__}, scipy "
        f"{scipy.__version__}, astropy {astropy.__version__}, sep {sep.__version__}, "
        f"ducc0 {ducc0.__version__}, fitsio {fitsio.__version__}, diffim {diffim.__version__}",
        f"- thread settings: {threads or 'library defaults'}",
        f"- {load_average()} at the start",
    ]
    return "\n".join(lines)


def bytecode_state() -> str:
    """Compile diffim's modules (as ``pip install`` does) and say so for the report.

    Without bytecode every CLI start compiles diffim's sources (0.4 s at 2048²), e.g.
    under ``PYTHONDONTWRITEBYTECODE=1``; compileall writes it whatever that says.
    """
    package = Path(diffim.__file__).parent
    compiled = compileall.compile_dir(package, quiet=1, force=False)
    return "compiled before timing" if compiled else "could not be compiled (read-only?)"


@dataclass
class ProcessRun:
    """Wall time (s), peak resident memory (MiB) and exit status of one child process."""

    wall_s: float
    peak_rss_mib: float
    returncode: int


GNU_TIME = Path("/usr/bin/time")


def rss_method() -> str:
    """Say how `run_measured` reads the peak memory of a child process."""
    if GNU_TIME.is_file():
        return f"{GNU_TIME} -f %M (the command alone)"
    return "ru_maxrss from os.wait4 (may include this forking Python's own RSS)"


def run_measured(command: list[str], log_path: Path) -> ProcessRun:
    """Run ``command`` with stdout+stderr to ``log_path``; time it and read its peak RSS.

    The peak RSS comes from GNU time's ``%M`` when ``/usr/bin/time`` exists: Linux carries a
    process's high-water RSS across ``exec``, so ``ru_maxrss`` of a child forked from this
    (large) Python process would report at least this process's RSS, whereas GNU time is
    small and reports its own child.  Without it, ``os.wait4``'s ``ru_maxrss`` is used.
    Both are in KiB on Linux.  The wall time runs from the fork to the reaping of the child
    (GNU time adds about a millisecond).
    """
    with tempfile.TemporaryDirectory() as tmp, log_path.open("wb") as stream:
        rss_file = Path(tmp) / "rss"
        prefix = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file)] if GNU_TIME.is_file() else []
        start = time.perf_counter()
        process = subprocess.Popen([*prefix, *command], stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        max_rss_kib = float(rss_file.read_text().split()[-1]) if prefix else usage.ru_maxrss
    return ProcessRun(wall, max_rss_kib / 1024.0, process.returncode)


def diffim_command() -> list[str]:
    """Return the argv prefix of the ``diffim`` console script of this interpreter."""
    script = shutil.which("diffim", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "diffim.cli"]


def n_stars_for(size: int, stars_per_mpix: float) -> int:
    """Return the number of stars for a ``size x size`` image at the given density."""
    return round(stars_per_mpix * size * size / 1.0e6)


def simulate(size: int, stars_per_mpix: float, seed: int, **overrides: Any) -> SimulatedPair:
    """Simulate the benchmark pair (see `PAIR_SETTINGS`) of ``size x size`` pixels."""
    settings = {**PAIR_SETTINGS, **overrides}
    return simulate_pair(
        shape=(size, size), seed=seed, n_stars=n_stars_for(size, stars_per_mpix), **settings
    )


IMPORT_STATEMENT = "import diffim.cli, diffim.io, diffim.sources, diffim.task, diffim.warp"


def import_seconds(repeats: int = 3) -> float:
    """Return the best wall time of a fresh interpreter importing what the CLI imports."""
    return min(
        run_measured([sys.executable, "-c", IMPORT_STATEMENT], Path(os.devnull)).wall_s
        for _ in range(repeats)
    )


def median(values: list[float]) -> float:
    """Return the median of a non-empty list."""
    return float(np.median(values))


# -- the in-process subtraction -------------------------------------------------------------
@dataclass
class StageTimes:
    """Seconds spent in each stage of one in-process subtraction."""

    seconds: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        """Accumulate ``seconds`` under ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def _timed(times: StageTimes, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a function so that each call adds its wall time to ``times[name]``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            times.add(name, time.perf_counter() - start)

    return wrapper


#: What `stage_timers` wraps: the science detection (`diffim.stars`) and the Task's methods;
#: the detection and the selection as `diffim.subtract` calls them (their SourceCatalog forms).
TIMED_METHODS = (
    (stars, "_detect_kernel_sources"),
    (ImagePsfMatchTask, "pair_fwhm"),
    (ImagePsfMatchTask, "_select_kernel_sources"),
    (ImagePsfMatchTask, "matchExposures"),
    (ImagePsfMatchTask, "matchMaskedImages"),
    (ImagePsfMatchTask, "subtractExposures"),
)


@contextlib.contextmanager
def stage_timers(times: StageTimes) -> Iterator[None]:
    """Time the Task's stages by wrapping `TIMED_METHODS` for the duration of the block.

    Nothing in diffim is edited: the attributes are replaced by timing wrappers of
    themselves and put back on exit.
    """
    originals = [(owner, name, getattr(owner, name)) for owner, name in TIMED_METHODS]
    try:
        for owner, name, original in originals:
            setattr(owner, name, _timed(times, name, original))
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def subtract_in_process(science_path: Path, template_path: Path, output: Path) -> StageTimes:
    """Run what ``diffim subtract`` runs (`diffim.subtract`) in this process, timing stages.

    The time of the wrapped methods (see `stage_timers`) and the stamp, fit and
    convolution times in the result's metadata split the subtraction into stages.
    """
    times = StageTimes()
    start = time.perf_counter()
    science = read_exposure(science_path)
    template = read_exposure(template_path)
    times.add("read", time.perf_counter() - start)

    with stage_timers(times):
        start = time.perf_counter()
        result = diffim.subtract(science, template, config=ImagePsfMatchConfig())
        total = time.perf_counter() - start
    start = time.perf_counter()
    write_exposure(result.subtractedExposure, output, overwrite=True, header_extra=result.metadata)
    times.add("write", time.perf_counter() - start)

    metadata = result.metadata
    seconds = {name: times.seconds.get(name, 0.0) for _, name in TIMED_METHODS}
    seconds.update(times.seconds)
    seconds["detect"] = seconds["_detect_kernel_sources"]
    seconds["fwhm"] = seconds["pair_fwhm"] - seconds["_detect_kernel_sources"]
    seconds["select"] = seconds["_select_kernel_sources"]
    seconds["stamps_cells"] = metadata["time_candidates"]
    # registration checks and kernel basis: what subtract() and matchExposures() do besides
    # the wrapped calls
    seconds["other"] = (
        total
        - seconds["subtractExposures"]
        + seconds["matchExposures"]
        - seconds["pair_fwhm"]
        - seconds["_select_kernel_sources"]
        - seconds["matchMaskedImages"]
    )
    seconds["candidates"] = sum(seconds[part] for part in CANDIDATE_PARTS)
    seconds["fit"] = metadata["time_fit"]
    seconds["convolve"] = metadata["time_convolve"]
    seconds["subtract"] = seconds["subtractExposures"] - seconds["matchExposures"]
    seconds["total"] = sum(seconds[stage] for stage in STAGES)
    times.seconds = seconds
    times.metadata = dict(metadata)
    return times


def warm_up(work: Path, seed: int) -> None:
    """Run one small subtraction so that lazy imports and first-call costs are not timed."""
    paths = write_pair(simulate(256, 3000.0, seed), work / "warmup", overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small pair warns about its few candidates
        subtract_in_process(paths["science"], paths["template"], work / "warmup" / "diff.fits")


# -- one size ------------------------------------------------------------------------------
@dataclass
class SizeResult:
    """All the measurements of one image size."""

    size: int
    n_stars: int
    runs: list[StageTimes]
    cli_runs: list[ProcessRun]
    true_kernel_sum: float

    def best(self, name: str) -> float:
        """Return the best (smallest) in-process time of a stage over the repeats."""
        return min(run.seconds[name] for run in self.runs)


def bench_size(size: int, args: argparse.Namespace, work: Path) -> SizeResult:
    """Simulate and write one pair, then time in-process and CLI subtractions alternately."""
    start = time.perf_counter()
    pair = simulate(size, args.stars_per_mpix, args.seed)
    paths = write_pair(pair, work / f"pair{size}", overwrite=True)
    true_kernel_sum = pair.truth.kernel_sum()
    del pair  # keep this process's memory to what the subtraction needs
    print(
        f"\n<!-- simulated and wrote the {size}x{size} pair in "
        f"{time.perf_counter() - start:.1f} s -->",
        flush=True,
    )
    runs, cli_runs = [], []
    for repeat in range(args.repeats):
        runs.append(
            subtract_in_process(paths["science"], paths["template"], work / f"inproc{size}.fits")
        )
        command = [
            *diffim_command(),
            "subtract",
            str(paths["science"]),
            str(paths["template"]),
            "-o",
            str(work / f"cli{size}.fits"),
            "--overwrite",
        ]
        cli_log = work / f"cli{size}.log"
        cli = run_measured(command, cli_log)
        if cli.returncode != 0:
            msg = f"diffim subtract failed ({cli.returncode}):\n{cli_log.read_text()[-3000:]}"
            raise RuntimeError(msg)
        cli_runs.append(cli)
        print(
            f"<!-- {size}: repeat {repeat + 1}/{args.repeats}: in-process "
            f"{runs[-1].seconds['total']:.2f} s, CLI {cli.wall_s:.2f} s -->",
            flush=True,
        )
    return SizeResult(
        size, n_stars_for(size, args.stars_per_mpix), runs, cli_runs, true_kernel_sum
    )


# -- tables --------------------------------------------------------------------------------
def print_tables(results: list[SizeResult], repeats: int) -> None:
    """Print the stage table, the candidates breakdown and the QA table."""
    print(f"\n## Stage times (best of {repeats}, seconds; each stage's best over the repeats)\n")
    print(
        "| size | stars | read | candidates | fit | convolve | subtract | write "
        "| in-process total | CLI wall best | CLI wall median | CLI − in-process "
        "| CLI peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        stages = " | ".join(f"{r.best(stage):.2f}" for stage in STAGES)
        walls = [run.wall_s for run in r.cli_runs]
        rss = max(run.peak_rss_mib for run in r.cli_runs)
        print(
            f"| {r.size}² | {r.n_stars} | {stages} | {r.best('total'):.2f} | {min(walls):.2f} "
            f"| {median(walls):.2f} | {min(walls) - r.best('total'):.2f} | {rss:.0f} |"
        )
    print("\n## Candidates stage, broken down (best, seconds)\n")
    print(
        "| size | science detection (sep) | FWHM fits of both images | kernel-star selection "
        "| stamps: cell set in matchMaskedImages | registration checks + basis |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        parts = " | ".join(f"{r.best(part):.2f}" for part in CANDIDATE_PARTS)
        print(f"| {r.size}² | {parts} |")
    print("\n## QA (last in-process run)\n")
    print(
        "| size | FWHM template / science (px) | kernel sum (true) | candidates "
        "| used in spatial fit | rejected single/ksum/spatial | D/σ median | D/σ robust std |"
    )
    print("|---:|---|---|---:|---:|---|---:|---:|")
    for r in results:
        m = r.runs[-1].metadata
        rejected = "/".join(
            str(m.get(f"nRejected_{s}", "?")) for s in ("singleKernel", "kernelSum", "spatial")
        )
        print(
            f"| {r.size}² | {m['templateFwhmPix']:.2f} / {m['scienceFwhmPix']:.2f} "
            f"| {m['spatialKernelSum']:.4f} ({r.true_kernel_sum:.4f}) | {m['nCandidates']} "
            f"| {m['nCandidatesUsedInSpatialFit']} | {rejected} "
            f"| {m['diffimResidualMedian']:.3f} | {m['diffimResidualRobustStd']:.3f} |"
        )


def main() -> None:
    """Parse the arguments, run every size and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument(
        "--stars-per-mpix",
        type=float,
        default=1200.0,
        help="simulated stars per million pixels (1200: ~5000 stars on 2048²)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    print(environment_header("diffim subtraction benchmark"))
    print(f"- command: {' '.join(sys.argv)}")
    print(f"- CLI: {' '.join(diffim_command())}; peak RSS by {rss_method()}")
    print(f"- diffim bytecode: {bytecode_state()}")
    print(f"- interpreter start + `{IMPORT_STATEMENT}`: {import_seconds():.2f} s (best of 3)")
    with tempfile.TemporaryDirectory(prefix="bench_subtract_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        warm_up(work, args.seed)
        results = [bench_size(size, args, work) for size in args.sizes]
    print_tables(results, args.repeats)
    print(f"\n{load_average()} at the end")


if __name__ == "__main__":
    main()
