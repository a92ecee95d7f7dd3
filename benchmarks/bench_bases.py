"""Benchmark the kernel fit plus the template convolution for each kernel basis.

Usage::

    python benchmarks/bench_bases.py --size 1024 --repeats 2

One simulated pair (the `bench_subtract` pair: template FWHM 3.2 px, science 4.5 px, FWHM
gradient 0.3, flux ratio 1.15, ``--stars-per-mpix`` stars) is made in memory and its kernel
stars are selected once (``getSelectSources`` on the science image, not timed).  Then, for
each basis, ``subtractMaskedImages`` runs ``--repeats`` times on the same pixels and stars:

* ``AL``: the default Alard-Lupton basis;
* ``AL+BIC``: the same, polynomial degrees chosen by BIC (``useBicForKernelBasis``);
* ``DF+PCA``: the delta-function default (regularised candidates, PCA spatial basis);
* ``DF+regularization``: regularised delta functions without PCA (every kernel pixel gets
  its own spatial polynomial).

Prints an environment header and a Markdown table: best-of-N seconds of the fit and of the
convolution (from the task's ``time_*`` metadata) and of the whole call, the spatial kernel
sum (true 1.15), the candidates used, and the robust std of difference / sqrt(variance).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_subtract import PAIR_SETTINGS, environment_header, load_average, simulate

from diffim.config import ImagePsfMatchConfig
from diffim.task import ImagePsfMatchTask

BASES: dict[str, tuple[str, dict[str, Any]]] = {
    "AL": ("AL", {}),
    "AL+BIC": ("AL", {"useBicForKernelBasis": True}),
    "DF+PCA": ("DF", {}),
    "DF+regularization": ("DF", {"usePcaForSpatialKernel": False}),
}


def config_for(name: str) -> ImagePsfMatchConfig:
    """Return the task config of one row of `BASES`."""
    family, overrides = BASES[name]
    config = ImagePsfMatchConfig()
    config.kernel.name = family
    for field_name, value in overrides.items():
        setattr(config.kernel.active, field_name, value)
    return config


def bench_basis(name: str, pair: Any, positions: list, repeats: int) -> dict[str, Any]:
    """Run one basis ``repeats`` times; return its best times and last QA numbers."""
    center = pair.science.bbox.center
    fwhms = (pair.template.psf.fwhm(*center), pair.science.psf.fwhm(*center))
    task = ImagePsfMatchTask(config_for(name))
    best = {"fit": float("inf"), "convolve": float("inf"), "total": float("inf")}
    for _ in range(repeats):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = task.subtractMaskedImages(
                pair.template.masked_image, pair.science.masked_image, positions, *fwhms
            )
        total = time.perf_counter() - started
        metadata = result.metadata
        best["fit"] = min(best["fit"], metadata["time_fit"])
        best["convolve"] = min(best["convolve"], metadata["time_convolve"])
        best["total"] = min(best["total"], total)
    return {"name": name, **best, "metadata": metadata}


def main() -> None:
    """Parse the arguments, run every basis and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--stars-per-mpix", type=float, default=1200.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bases", nargs="+", choices=list(BASES), default=list(BASES))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    print(environment_header("diffim kernel-basis benchmark"))
    print(f"- command: {' '.join(sys.argv)}")
    pair = simulate(args.size, args.stars_per_mpix, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars = ImagePsfMatchTask().getSelectSources(pair.science)
    positions = list(zip(stars["x"], stars["y"], strict=True))
    print(
        f"- {args.size}² pair, {len(positions)} kernel stars; true kernel sum "
        f"{PAIR_SETTINGS['flux_ratio']}\n"
    )
    print(
        "| basis | fit (s) | convolve (s) | fit + convolve + subtract (s) | kernel sum "
        "| candidates used | D/σ robust std |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.bases:
        row = bench_basis(name, pair, positions, args.repeats)
        m = row["metadata"]
        print(
            f"| {name} | {row['fit']:.2f} | {row['convolve']:.2f} | {row['total']:.2f} "
            f"| {m['spatialKernelSum']:.4f} | {m['nCandidatesUsedInSpatialFit']} "
            f"| {m['diffimResidualRobustStd']:.3f} |",
            flush=True,
        )
    print(f"\n{load_average()} at the end")


if __name__ == "__main__":
    main()
