"""Compare ``diffim subtract`` with HOTPANTS on the same simulated pair: speed, memory, quality.

Usage::

    python benchmarks/compare_hotpants.py --size 2048 --repeats 3
    python benchmarks/compare_hotpants.py --hotpants /path/to/hotpants   # skip the build

HOTPANTS (https://github.com/acbecker/hotpants) is built, unless ``--hotpants`` names a
binary, from a source copy found in ``--build-dir`` (default /tmp/hotpants) or in a git
mirror (``--source``); nothing is downloaded and nothing is written to the repository.  The
build needs cfitsio's headers and library (Debian: ``apt-get install libcfitsio-dev``).

The pair of `bench_subtract.PAIR_SETTINGS` is written twice (not timed): LSST-style for
diffim, and as plain single-HDU FITS for HOTPANTS (image, noise = sqrt(variance) for
``-ini/-tni``, and a bad-pixel mask of BAD|SAT|CR|NO_DATA|EDGE for ``-imi/-tmi``).  HOTPANTS
gets diffim's settings: the same Gaussian basis (sigmas, degrees, kernel size, from
diffim's own FWHM measurement), spatial kernel order 2, background order 1, one stamp per
diffim cell with ``nStarPerCell`` substamps whose fit area is diffim's (stamp less kernel
half-width), the template convolved, gain, read noise and saturation of the simulation.
Its difference is normalised to the science image (``-n i``), the units of diffim's
difference; ``--normalize t`` gives HOTPANTS' default, template units.  The two whole
processes then run alternately (diffim, hotpants, diffim, ...), each timed with
``time.perf_counter`` and its peak RSS from GNU time (see `bench_subtract.run_measured`).

Quality is measured on the simulated truth over the pixels both tools leave unmasked: in
empty sky (where the noise-free source image is below 0.05 sigma in both exposures), the
median and robust std (1.4826 MAD) of difference/sigma, each tool with its own noise
image, and the robust std of the difference itself; and over all those pixels outside
``--transient-radius`` FWHMs of the known transients and variable stars, the number of
|difference/sigma| > 5 pixels and of their 8-connected groups.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from bench_subtract import (
    ProcessRun,
    bytecode_state,
    diffim_command,
    environment_header,
    load_average,
    median,
    rss_method,
    run_measured,
    simulate,
)
from scipy import ndimage

from diffim.config import ImagePsfMatchConfig
from diffim.io import read_exposure
from diffim.simulate import SimulatedPair, write_pair
from diffim.stars import exposure_fwhm
from diffim.stats import median_robust_std
from diffim.task import ImagePsfMatchTask

BAD_PLANES = ["BAD", "SAT", "CR", "NO_DATA", "EDGE"]
EMPTY_SKY_SIGMA = 0.05  # sky pixel: noise-free sources below this fraction of the noise
DETECTION_SIGMA = 5.0
DEFAULT_MIRROR = Path("/work/.mirror/acbecker+hotpants/repo")
BUILD_COPTS = "-funroll-loops -O3 -std=c99 -Wall -fcommon -D_GNU_SOURCE"


# -- building HOTPANTS ----------------------------------------------------------------------
def _is_source(directory: Path) -> bool:
    return (directory / "alard.c").is_file() and (directory / "Makefile").is_file()


def _extract_git(git_dir: Path, destination: Path) -> bool:
    """Extract HEAD of a (bare) git repository into ``destination``; False if not a repo."""
    if not (git_dir / "HEAD").is_file():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "hotpants.tar"
        command = ["git", "--git-dir", str(git_dir), "archive", "-o", str(archive), "HEAD"]
        if subprocess.run(command, check=False, capture_output=True).returncode != 0:
            return False
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
    return _is_source(destination)


def obtain_source(build_dir: Path, source: Path | None) -> None:
    """Put the HOTPANTS sources into ``build_dir`` from ``source`` or a known local copy."""
    if _is_source(build_dir):
        return
    for candidate in [source] if source else [DEFAULT_MIRROR]:
        if _is_source(candidate):
            shutil.copytree(candidate, build_dir, dirs_exist_ok=True)
            return
        if _extract_git(candidate, build_dir):
            return
    msg = (
        f"no HOTPANTS source in {build_dir} or {source or DEFAULT_MIRROR}; put a copy of "
        "https://github.com/acbecker/hotpants there (or pass --source DIR), or pass "
        "--hotpants PATH to an existing binary"
    )
    raise SystemExit(msg)


def _cfitsio_lib_dir(include_dir: Path) -> Path:
    patterns = [
        "/usr/lib/*/libcfitsio.so",
        "/usr/lib/libcfitsio.so",
        "/usr/local/lib/libcfitsio.*",
    ]
    found = [path for pattern in patterns for path in glob.glob(pattern)]
    if not (include_dir / "fitsio.h").is_file() or not found:
        msg = (
            f"cfitsio not found (fitsio.h in {include_dir}, libcfitsio.so under /usr/lib): "
            "install it (Debian: apt-get install libcfitsio-dev) or pass --hotpants PATH"
        )
        raise SystemExit(msg)
    return Path(found[0]).parent


def build_hotpants(args: argparse.Namespace) -> Path:
    """Return the HOTPANTS binary: ``--hotpants``, an earlier build, or a fresh build."""
    if args.hotpants:
        if not args.hotpants.is_file():
            msg = f"--hotpants {args.hotpants} is not a file"
            raise SystemExit(msg)
        return args.hotpants
    binary = args.build_dir / "hotpants"
    if binary.is_file():
        return binary
    obtain_source(args.build_dir, args.source)
    include = args.cfitsio_include
    lib = _cfitsio_lib_dir(include)
    command = [
        "make",
        "-C",
        str(args.build_dir),
        "hotpants",
        f"CFITSIOINCDIR={include}",
        f"LIBDIR={lib}",
        f"COPTS={BUILD_COPTS} -I{include}",
    ]
    print(f"<!-- building HOTPANTS: {' '.join(command)} -->", flush=True)
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0 or not binary.is_file():
        msg = f"HOTPANTS build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        raise SystemExit(msg)
    return binary


# -- the inputs -----------------------------------------------------------------------------
def write_plain_fits(pair: SimulatedPair, directory: Path) -> dict[str, Path]:
    """Write image, noise (sigma) and bad-pixel mask of both exposures as single-HDU FITS."""
    paths = {}
    for frame in ("science", "template"):
        masked = getattr(pair, frame).masked_image
        bad = (masked.mask & masked.bitmask(BAD_PLANES)) != 0
        planes = {
            "image": masked.image.astype(np.float32),
            "noise": np.sqrt(masked.variance).astype(np.float32),
            "mask": bad.astype(np.int16),
        }
        for plane, data in planes.items():
            path = directory / f"{frame}_{plane}.fits"
            fits.PrimaryHDU(data).writeto(path, overwrite=True)
            paths[f"{frame}_{plane}"] = path
    return paths


@dataclass
class DiffimSettings:
    """What diffim's CLI will choose on this pair, to give HOTPANTS the same settings."""

    kernel_size: int
    sigmas: tuple[float, ...]
    degrees: tuple[int, ...]
    fit_half_width: int
    n_cells: tuple[int, int]
    n_star_per_cell: int
    science_fwhm: float


def diffim_settings(science_path: Path, template_path: Path) -> DiffimSettings:
    """Measure the FWHMs and build the kernel basis exactly as ``diffim subtract`` does."""
    config = ImagePsfMatchConfig()
    task = ImagePsfMatchTask(config)
    science, template = read_exposure(science_path), read_exposure(template_path)
    log = task.log
    template_fwhm = exposure_fwhm(template, "template", log)
    science_fwhm = exposure_fwhm(science, "science", log)
    basis = task.makeKernelBasisList(template_fwhm, science_fwhm)
    cfg = config.kernel.active
    stamp_half_width = int(cfg.detectionConfig.fpGrowKernelScaling * basis.kernel_size + 0.5)
    ny, nx = science.shape
    return DiffimSettings(
        kernel_size=basis.kernel_size,
        sigmas=tuple(float(s) for s in basis.sigmas),
        degrees=tuple(int(d) for d in basis.degrees),
        fit_half_width=stamp_half_width - basis.kernel_size // 2,
        n_cells=(max(1, nx // cfg.sizeCellX), max(1, ny // cfg.sizeCellY)),
        n_star_per_cell=cfg.nStarPerCell,
        science_fwhm=science_fwhm,
    )


def hotpants_command(
    binary: Path,
    plain: dict[str, Path],
    work: Path,
    settings: DiffimSettings,
    pair: SimulatedPair,
    normalize: str,
) -> list[str]:
    """Return HOTPANTS' argv with settings comparable to diffim's (see the module notes)."""
    p = pair.truth.parameters
    gauss = [str(len(settings.sigmas))]
    for degree, sigma in zip(settings.degrees, settings.sigmas, strict=True):
        gauss += [str(degree), f"{sigma:.4f}"]
    options = {
        "-inim": plain["science_image"],
        "-tmplim": plain["template_image"],
        "-outim": work / "hotpants_diff.fits",
        "-ini": plain["science_noise"],
        "-tni": plain["template_noise"],
        "-imi": plain["science_mask"],
        "-tmi": plain["template_mask"],
        "-oni": work / "hotpants_noise.fits",
        "-omi": work / "hotpants_mask.fits",
        "-iu": p.saturation,
        "-tu": p.saturation,
        "-il": 0.0,  # sky is > 150 ADU everywhere; the zeroed bad columns are masked anyway
        "-tl": 0.0,
        "-ig": p.gain,
        "-tg": p.gain,
        "-ir": p.read_noise,
        "-tr": p.read_noise,
        "-r": settings.kernel_size // 2,
        "-rss": settings.fit_half_width,
        "-nsx": settings.n_cells[0],
        "-nsy": settings.n_cells[1],
        "-nss": settings.n_star_per_cell,
        "-ko": 2,
        "-bgo": 1,
        "-c": "t",
        "-v": 0,
    }
    argv = [str(binary)]
    for key, value in options.items():
        argv += [key, str(value)]
    return [*argv, "-n", normalize, "-ng", *gauss]


# -- quality on the truth -------------------------------------------------------------------
@dataclass
class Truth:
    """Pixel sets from the simulation, shared by both tools' evaluations."""

    empty_sky: np.ndarray  # bool (ny, nx)
    near_variable: np.ndarray  # bool (ny, nx): near a transient or a variable star
    transients_xy: np.ndarray  # (n, 2) science pixels
    kernel_sum: float


def truth_masks(args: argparse.Namespace, pair: SimulatedPair, radius_pix: float) -> Truth:
    """Find empty sky from a noise-free twin of the pair, and the zones of varying sources."""
    noiseless = simulate(args.size, args.stars_per_mpix, args.seed, noise=False)
    ny, nx = pair.science.shape
    y, x = np.mgrid[0:ny, 0:nx]
    empty = np.ones((ny, nx), dtype=bool)
    for frame in ("science", "template"):
        sky = getattr(pair.truth, f"{frame}_sky")(x, y)
        sources = getattr(noiseless, frame).masked_image.image - sky
        noise = np.sqrt(getattr(pair, frame).masked_image.variance)
        empty &= sources < EMPTY_SKY_SIGMA * noise
    transients = pair.truth.transients
    stars = pair.truth.stars[np.asarray(pair.truth.stars["is_variable"], dtype=bool)]
    xy = np.vstack(
        [
            np.column_stack([table["x_science"], table["y_science"]])
            for table in (transients, stars)
            if len(table)
        ]
    )
    seeds = np.zeros((ny, nx), dtype=bool)
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    seeds[iy[inside], ix[inside]] = True
    near = ndimage.distance_transform_edt(~seeds) <= radius_pix
    transients_xy = np.column_stack([transients["x_science"], transients["y_science"]])
    return Truth(empty, near, transients_xy, pair.truth.kernel_sum())


@dataclass
class Difference:
    """A difference image, its sigma and its bad pixels, from either tool."""

    image: np.ndarray
    sigma: np.ndarray
    bad: np.ndarray
    kernel_sum: float


def read_diffim(path: Path) -> Difference:
    """Read diffim's difference (LSST-style FITS)."""
    masked = read_exposure(path).masked_image
    bad = (masked.mask & masked.bitmask(BAD_PLANES)) != 0
    kernel_sum = float(fits.getheader(path, 0).get("spatialKernelSum", np.nan))
    return Difference(masked.image, np.sqrt(masked.variance), bad, kernel_sum)


def read_hotpants(work: Path) -> Difference:
    """Read HOTPANTS' difference, noise image (sigma) and output mask (non-zero is bad)."""
    with fits.open(work / "hotpants_diff.fits") as hdus:
        image, header = hdus[0].data.astype(np.float32), hdus[0].header
    sigma = fits.getdata(work / "hotpants_noise.fits").astype(np.float32)
    bad = fits.getdata(work / "hotpants_mask.fits") != 0
    return Difference(image, sigma, bad, float(header.get("KSUM00", np.nan)))


def quality(diff: Difference, valid: np.ndarray, truth: Truth) -> dict[str, float]:
    """Return the quality numbers of one difference over the common ``valid`` pixels."""
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = diff.image / diff.sigma
    sky = valid & truth.empty_sky
    sky_median, sky_std = median_robust_std(normalized[sky])
    _, sky_adu_std = median_robust_std(diff.image[sky])
    outliers = valid & ~truth.near_variable & (np.abs(normalized) > DETECTION_SIGMA)
    _, n_groups = ndimage.label(outliers, structure=np.ones((3, 3)))
    peaks = ndimage.maximum_filter(np.where(valid, normalized, 0.0), size=5)
    ix = np.round(truth.transients_xy[:, 0]).astype(int)
    iy = np.round(truth.transients_xy[:, 1]).astype(int)
    ny, nx = valid.shape
    usable = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    usable[usable] = valid[iy[usable], ix[usable]]
    found = peaks[iy[usable], ix[usable]] > DETECTION_SIGMA
    return {
        "kernel_sum": diff.kernel_sum,
        "sky_median": sky_median,
        "sky_std": sky_std,
        "sky_adu_std": sky_adu_std,
        "n_outliers": int(outliers.sum()),
        "n_groups": int(n_groups),
        "transients": f"{int(found.sum())}/{int(usable.sum())}",
        "n_sky": int(sky.sum()),
    }


# -- timing ---------------------------------------------------------------------------------
def run_alternately(
    commands: dict[str, list[str]], repeats: int, work: Path
) -> dict[str, list[ProcessRun]]:
    """Run each command ``repeats`` times, interleaved; stop on the first failure."""
    runs: dict[str, list[ProcessRun]] = {name: [] for name in commands}
    for repeat in range(repeats):
        for name, command in commands.items():
            log_path = work / f"{name}.log"
            run = run_measured(command, log_path)
            if run.returncode != 0:
                msg = f"{name} failed ({run.returncode}):\n{log_path.read_text()[-3000:]}"
                raise SystemExit(msg)
            runs[name].append(run)
            print(
                f"<!-- repeat {repeat + 1}/{repeats}: {name} {run.wall_s:.2f} s, "
                f"{run.peak_rss_mib:.0f} MiB -->",
                flush=True,
            )
    return runs


def print_tables(runs: dict[str, list[ProcessRun]], scores: dict[str, dict], n_valid: int) -> None:
    """Print the speed/memory table and the quality table."""
    reference = min(run.wall_s for run in runs["hotpants"])
    print(f"\n## Whole process, best of {len(runs['hotpants'])} (alternating runs)\n")
    print("| tool | best wall (s) | median wall (s) | peak RSS (MiB) | best wall / hotpants |")
    print("|---|---:|---:|---:|---:|")
    for name, tool_runs in runs.items():
        walls = [run.wall_s for run in tool_runs]
        rss = max(run.peak_rss_mib for run in tool_runs)
        print(
            f"| {name} | {min(walls):.2f} | {median(walls):.2f} | {rss:.0f} "
            f"| {min(walls) / reference:.2f} |"
        )
    some = next(iter(scores.values()))
    print(
        f"\n## Quality on the truth ({n_valid} pixels unmasked by both tools, "
        f"{some['n_sky']} of them empty sky)\n"
    )
    print(
        "| tool | kernel sum (true) | sky D/σ median | sky D/σ robust std | sky D robust std "
        "(ADU) | abs(D/σ) > 5 pixels away from transients/variables | their 8-connected groups "
        "| transients with a >5σ peak |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, q in scores.items():
        print(
            f"| {name} | {q['kernel_sum']:.4f} ({q['true_kernel_sum']:.4f}) | "
            f"{q['sky_median']:.3f} | {q['sky_std']:.3f} | {q['sky_adu_std']:.2f} | "
            f"{q['n_outliers']} | {q['n_groups']} | {q['transients']} |"
        )


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--stars-per-mpix", type=float, default=1200.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hotpants", type=Path, default=None, help="existing binary; no build")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/hotpants"))
    parser.add_argument(
        "--source", type=Path, default=None, help=f"source dir or git mirror ({DEFAULT_MIRROR})"
    )
    parser.add_argument("--cfitsio-include", type=Path, default=Path("/usr/include"))
    parser.add_argument(
        "--normalize",
        choices=["i", "t"],
        default="i",
        help="HOTPANTS -n: i keeps science units like diffim's difference; t divides by the "
        "kernel sum (template units)",
    )
    parser.add_argument(
        "--transient-radius",
        type=float,
        default=3.0,
        help="5σ pixels closer than this many science FWHMs to a transient are not counted",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main() -> None:
    """Build or find HOTPANTS, prepare the pair, time both tools, and compare the results."""
    args = parse_args()
    binary = build_hotpants(args)
    print(environment_header("diffim vs HOTPANTS"))
    print(f"- command: {' '.join(sys.argv)}")
    print(f"- HOTPANTS: {binary} (built with gcc {BUILD_COPTS}; single-threaded)")
    print(f"- peak RSS by {rss_method()}")
    print(f"- diffim bytecode: {bytecode_state()}")
    with tempfile.TemporaryDirectory(prefix="compare_hotpants_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pair = simulate(args.size, args.stars_per_mpix, args.seed)
        paths = write_pair(pair, work / "pair", overwrite=True)
        plain = write_plain_fits(pair, work)
        settings = diffim_settings(paths["science"], paths["template"])
        commands = {
            "diffim": [
                *diffim_command(),
                "subtract",
                str(paths["science"]),
                str(paths["template"]),
                "-o",
                str(work / "diffim_diff.fits"),
                "--overwrite",
            ],
            "hotpants": hotpants_command(binary, plain, work, settings, pair, args.normalize),
        }
        print(f"- pair: {args.size}², {len(pair.truth.stars)} stars, seed {args.seed}")
        print(f"- diffim: `{' '.join(commands['diffim'][1:])}`")
        print(f"- hotpants: `{' '.join(commands['hotpants'][1:])}`", flush=True)
        runs = run_alternately(commands, args.repeats, work)
        truth = truth_masks(args, pair, args.transient_radius * settings.science_fwhm)
        differences = {"diffim": read_diffim(work / "diffim_diff.fits")}
        differences["hotpants"] = read_hotpants(work)
        valid = np.ones(pair.science.shape, dtype=bool)
        for diff in differences.values():
            valid &= ~diff.bad & np.isfinite(diff.image) & (diff.sigma > 0)
        scores = {name: quality(diff, valid, truth) for name, diff in differences.items()}
        for score in scores.values():
            score["true_kernel_sum"] = truth.kernel_sum
        print_tables(runs, scores, int(valid.sum()))
        print(f"\n{load_average()} at the end")


if __name__ == "__main__":
    main()
