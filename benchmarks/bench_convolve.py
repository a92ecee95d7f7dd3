"""Benchmark diffim.convolve: whole-image spatially varying convolution and stamp stacks.

Usage::

    python benchmarks/bench_convolve.py --sizes 1024 2048 4096 --kernel-size 21 --order 2 \\
        --repeats 3 --workers 2

Prints an environment header and Markdown tables of best-of-N wall times (``perf_counter``)
and the peak of memory allocated during one call (``tracemalloc``, which sees numpy's
arrays but not pocketfft's internal scratch).  ``--tile-steps`` adds a sweep of the
overlap-save tile size (a step larger than the image is one whole-image FFT per term).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy

from diffim import convolve
from diffim.convolve import tiles
from diffim.image import BBox, MaskedImage
from diffim.spatial import SpatialFunction, SpatialKernel


def gaussian_basis(size: int) -> np.ndarray:
    """Return 27 Alard-Lupton-like kernels: 3 Gaussians times polynomials of degree 4, 3, 2."""
    c = size // 2
    v, u = np.mgrid[-c : c + 1, -c : c + 1].astype(float)
    kernels = []
    for sigma, degree in ((0.7, 4), (1.5, 3), (3.0, 2)):
        gauss = np.exp(-0.5 * (u**2 + v**2) / sigma**2)
        for total in range(degree + 1):
            for j in range(total + 1):
                kernels.append(gauss * u ** (total - j) * v**j)
    return np.array([k / np.abs(k).sum() for k in kernels])


def make_kernel(size: int, order: int, bbox: BBox, rng: np.random.Generator) -> SpatialKernel:
    """Return a smooth spatial kernel: a constant part plus 10 % spatial variation."""
    basis = gaussian_basis(size)
    function = SpatialFunction("chebyshev1", order, bbox)
    coefficients = rng.normal(0.0, 0.1, (len(basis), function.n_terms))
    coefficients[:, 0] = rng.normal(0.0, 1.0, len(basis))
    return SpatialKernel(basis, coefficients, function)


def make_image(n: int, dtype: type, rng: np.random.Generator) -> MaskedImage:
    """Return an ``n x n`` noise image with a realistic mask (BAD column, CRs, SAT, DETECTED)."""
    image = rng.normal(100.0, 10.0, (n, n)).astype(dtype)
    mask = np.zeros((n, n), dtype=np.int32)
    mask[:, n // 3] |= 1  # BAD column
    mask[rng.integers(0, n, n), rng.integers(0, n, n)] |= 8  # CR hits
    for y, x in rng.integers(0, n - 8, (n // 64, 2)):
        mask[y : y + 8, x : x + 8] |= 2  # saturated cores
    mask[rng.random((n, n)) < 0.1] |= 32  # DETECTED footprints
    return MaskedImage(image, mask, np.full((n, n), 100.0, dtype=dtype))


def best_time(func: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Return the best wall time and best process CPU time (all threads) of ``repeats`` calls.

    CPU time is less sensitive than wall time to other jobs competing for the cores.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        func()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def peak_mib(func: Callable[[], object]) -> float:
    """Return the peak memory allocated during one call, in MiB (tracemalloc)."""
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def bench_images(args: argparse.Namespace) -> None:
    """Print the whole-image table."""
    print("\n| size | dtype | what | best wall (s) | best CPU (s) | peak alloc (MiB) |")
    print("|---:|---|---|---:|---:|---:|")
    rng = np.random.default_rng(1)
    for n in args.sizes:
        kernel = make_kernel(args.kernel_size, args.order, BBox(0, 0, n, n), rng)
        for dtype in (np.float32, np.float64):
            masked = make_image(n, dtype, rng)
            cases = {
                "image only": partial(
                    convolve.convolve_image, masked.image, kernel, workers=args.workers
                ),
                "image+variance+mask": partial(
                    convolve.convolve_masked_image, masked, kernel, workers=args.workers
                ),
                "mask only": partial(
                    convolve.spread_mask, masked.mask, kernel.half_width, workers=args.workers
                ),
            }
            for what, func in cases.items():
                wall, cpu = best_time(func, args.repeats)
                name = np.dtype(dtype).name
                print(f"| {n} | {name} | {what} | {wall:.3f} | {cpu:.3f} | {peak_mib(func):.0f} |")


def bench_tile_steps(args: argparse.Namespace) -> None:
    """Print the tile-size sweep (image + variance, float32)."""
    print("\n| size | tile step (px) | image+variance+mask float32, wall (s) | CPU (s) |")
    print("|---:|---:|---:|---:|")
    rng = np.random.default_rng(2)
    default = tiles.TILE_STEP  # read by the tile engine, so set there
    for n in args.sizes:
        kernel = make_kernel(args.kernel_size, args.order, BBox(0, 0, n, n), rng)
        masked = make_image(n, np.float32, rng)
        func = partial(convolve.convolve_masked_image, masked, kernel, workers=args.workers)
        best = dict.fromkeys(args.tile_steps, (np.inf, np.inf))
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits every step
            for step in args.tile_steps:
                tiles.TILE_STEP = step
                times = best_time(func, 1)
                best[step] = (min(best[step][0], times[0]), min(best[step][1], times[1]))
        for step, (wall, cpu) in best.items():
            print(f"| {n} | {step} | {wall:.3f} | {cpu:.3f} |")
    tiles.TILE_STEP = default


def bench_stacks(args: argparse.Namespace) -> None:
    """Print the candidate-stamp table."""
    print(
        "\n| stamp | kernel | n_basis | dtype | auto picks | fft (ms) | direct (ms) | auto (ms) |"
    )
    print("|---:|---:|---:|---|---|---:|---:|---:|")
    rng = np.random.default_rng(3)
    for stamp_size, kernel_size in ((43, 21), (57, 27), (71, 21), (71, 35)):
        for n_basis in (27, 441):
            for dtype in (np.float64, np.float32):
                stamp = rng.normal(size=(stamp_size, stamp_size)).astype(dtype)
                if n_basis == 27:
                    basis = gaussian_basis(kernel_size).astype(dtype)
                else:
                    basis = rng.normal(size=(n_basis, kernel_size, kernel_size)).astype(dtype)
                picks = convolve._auto_method(basis)
                row = []
                for method in ("fft", "direct", "auto"):
                    seconds, _ = best_time(
                        lambda s=stamp, b=basis, m=method: convolve.correlate_valid_stack(
                            s, b, method=m
                        ),
                        args.repeats * 10,
                    )
                    row.append(f"{1e3 * seconds:.2f}")
                name = np.dtype(dtype).name
                print(
                    f"| {stamp_size} | {kernel_size} | {n_basis} | {name} | {picks} | "
                    + " | ".join(row)
                    + " |"
                )
        delta = np.zeros((kernel_size**2, kernel_size, kernel_size))
        delta.reshape(kernel_size**2, -1)[np.arange(kernel_size**2), np.arange(kernel_size**2)] = 1
        stamp = rng.normal(size=(stamp_size, stamp_size))
        seconds, _ = best_time(lambda s=stamp, d=delta: convolve.correlate_valid_stack(s, d), 30)
        print(
            f"| {stamp_size} | {kernel_size} | {kernel_size**2} delta | float64 | gather "
            f"| | | {1e3 * seconds:.2f} |"
        )


def main() -> None:
    """Parse arguments and print every table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--kernel-size", type=int, default=21)
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tile-steps", type=int, nargs="*", default=[])
    parser.add_argument("--skip-stacks", action="store_true")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"numpy {np.__version__}, scipy {scipy.__version__}, python {platform.python_version()}, "
        f"{cpus} CPUs, workers={args.workers}, kernel {args.kernel_size}, "
        f"spatial order {args.order}, best of {args.repeats}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}, "
        f"load average at start {os.getloadavg()[0]:.2f} (other jobs inflate wall times)"
    )
    bench_images(args)
    if args.tile_steps:
        bench_tile_steps(args)
    if not args.skip_stacks:
        bench_stacks(args)


if __name__ == "__main__":
    main()
