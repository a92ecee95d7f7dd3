"""The ``diffim`` command: subtract, simulate, demo, config.

Only this module prints, parses arguments, configures logging or exits.  Errors of the
input (a missing file, a bad option) exit with status 2, failures of the algorithm (no
usable kernel stars) with 1, both with a one-line ``diffim: error: ...`` and no traceback
unless ``--traceback`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import progress
from ._version import __version__
from .allocator import collect_cycles_less_often, keep_freed_memory
from .config import ImagePsfMatchConfig, config_documentation
from .errors import DiffimError, DiffimValueError

log = logging.getLogger("diffim.cli")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

EPILOG_SUBTRACT = """examples:
  diffim subtract science.fits template.fits -o diff.fits
  diffim subtract sci.fits tmpl.fits -o diff.fits --config spatialKernelOrder=1 maxKsumSigma=4
  diffim subtract sci.fits tmpl.fits -o diff.fits --science-variance sci.var.fits --gain 1.6
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every stage in detail")
    group.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--traceback", action="store_true", help="show the Python traceback of errors"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffim",
        description="PSF-matched difference imaging (Alard-Lupton, as in LSST ip_diffim).",
    )
    parser.add_argument("--version", action="version", version=f"diffim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    subtract = commands.add_parser(
        "subtract",
        help="subtract a template from a science image",
        description="PSF-match TEMPLATE to SCIENCE and write SCIENCE - TEMPLATE ⋆ K - B.",
        epilog=EPILOG_SUBTRACT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subtract.add_argument("science", help="science image (LSST-style or plain FITS)")
    subtract.add_argument(
        "template", help="template image (resampled onto the science grid if its WCS differs)"
    )
    subtract.add_argument("-o", "--output", required=True, help="difference image to write")
    subtract.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="configuration overrides, e.g. spatialKernelOrder=1",
    )
    subtract.add_argument("--config-file", help="YAML or TOML configuration (see diffim config)")
    subtract.add_argument(
        "--mode",
        choices=["auto", "convolveTemplate", "convolveScience"],
        help="which image to convolve (default: the config's mode, auto)",
    )
    subtract.add_argument("--overwrite", action="store_true", help="replace an existing output")
    subtract.add_argument(
        "--tiles",
        metavar="NYxNX",
        type=_parse_tiles,
        help="split a large pair into NYxNX overlapping tiles, each with its own kernel fit",
    )
    subtract.add_argument(
        "--no-warp",
        action="store_true",
        help="refuse to resample the template when the two pixel grids (WCSs) differ",
    )
    subtract.add_argument("--png", help="also draw science, template, difference, kernel to PNG")
    subtract.add_argument(
        "-d",
        "--debug",
        metavar="DIR",
        help="write diagnostic pictures (images, kernels, clipping, residuals) to DIR",
    )
    subtract.add_argument("--matched", metavar="OUT", help="also write the PSF-matched image")
    subtract.add_argument(
        "--decorrelate",
        action="store_true",
        help="whiten the difference's noise correlated by the convolution (and its variance)",
    )
    subtract.add_argument(
        "--score",
        metavar="OUT",
        help="also write the score image: point-source S/N per pixel (threshold it at 5)",
    )
    subtract.add_argument(
        "--kernel", metavar="OUT", help="also write the kernel on a 5x5 grid (FITS cube)"
    )
    subtract.add_argument(
        "--background", metavar="OUT", help="also write the fitted differential background"
    )
    for frame in ("science", "template"):
        subtract.add_argument(f"--{frame}-variance", help=f"variance map of the {frame} image")
        subtract.add_argument(f"--{frame}-mask", help=f"mask of the {frame} image")
    subtract.add_argument("--gain", type=float, help="gain in e-/ADU when files lack GAIN")
    subtract.add_argument("--saturation", type=float, help="saturation level in ADU")
    _add_common(subtract)

    simulate = commands.add_parser(
        "simulate",
        help="simulate a science/template pair with known truth",
        description="Write science.fits, template.fits and truth.json to --out.",
        epilog="example:\n  diffim simulate --out sim --size 1024 --seed 3 --set flux_ratio=1.2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--out", required=True, help="output folder")
    simulate.add_argument("--size", type=int, default=512, help="image side in pixels")
    simulate.add_argument("--seed", type=int, default=0, help="random seed")
    simulate.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="simulation parameters, e.g. n_stars=2000 profile=moffat",
    )
    simulate.add_argument("--overwrite", action="store_true", help="replace existing files")
    _add_common(simulate)

    batch = commands.add_parser(
        "batch",
        help="subtract many pairs listed in a manifest, on Dask",
        description="Subtract every science/template pair of MANIFEST (CSV or Parquet with "
        "columns science, template and optionally output and config) on a Dask cluster; "
        "DIR/summary.csv records each pair's status, runtime and QA numbers.",
        epilog="example:\n  diffim batch pairs.csv --out diffs --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_batch_arguments(batch)
    _add_common(batch)

    demo = commands.add_parser(
        "demo",
        help="simulate a pair, subtract it, and draw the result",
        description="Runs the whole chain on built-in simulated data.",
    )
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--size", type=int, default=1024, help="image side in pixels")
    demo.add_argument("--seed", type=int, default=1, help="random seed")
    _add_common(demo)

    config = commands.add_parser(
        "config",
        help="print the default configuration as an editable YAML file",
        description="Print every configuration field with its default and meaning.",
        epilog="example:\n  diffim config > my.yaml   # edit, then --config-file my.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides to apply before printing",
    )
    _add_common(config)
    return parser


def _parse_tiles(text: str) -> tuple[int, int]:
    from .batch import parse_tiles

    return parse_tiles(text)


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from .batch import add_batch_arguments

    add_batch_arguments(parser)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    logging.getLogger("distributed").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    progress.enable(sys.stderr.isatty() and not args.quiet)


def _make_config(overrides: list[str], config_file: str | None) -> ImagePsfMatchConfig:
    config = ImagePsfMatchConfig.load(config_file) if config_file else ImagePsfMatchConfig()
    if overrides:
        config.apply_overrides(overrides)
    return config


def _parse_values(pairs: list[str]) -> dict[str, Any]:
    import yaml

    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            msg = f"expected NAME=VALUE, got {pair!r}"
            raise DiffimValueError(msg)
        value = yaml.safe_load(text)
        values[name.strip()] = tuple(value) if isinstance(value, list) else value
    return values


def _summary(result: Any) -> str:
    m = result.metadata
    return (
        f"kernel sum {m['spatialKernelSum']:.4f} (range {m['kernelSumMin']:.4f}..."
        f"{m['kernelSumMax']:.4f}); candidates {m['nCandidates']}, used "
        f"{m['nCandidatesUsedInSpatialFit']}, rejected single/ksum/spatial "
        f"{m['nRejected_singleKernel']}/{m['nRejected_kernelSum']}/{m['nRejected_spatial']}; "
        f"difference/sqrt(var): median {m['diffimResidualMedian']:.3f}, robust std "
        f"{m['diffimResidualRobustStd']:.3f}"
    )


def _run_subtract(args: argparse.Namespace) -> int:
    from .io import check_not_input, read_exposure
    from .subtraction import subtract

    for output in (args.output, args.matched, args.kernel, args.background, args.png, args.score):
        if output:
            check_not_input(output, [args.science, args.template])
    if Path(args.output).exists() and not args.overwrite:
        msg = f"{args.output} exists; pass --overwrite to replace it"
        raise DiffimValueError(msg)
    config = _make_config(args.config, args.config_file)
    started = time.perf_counter()
    options = {"gain": args.gain, "saturation": args.saturation}
    science = read_exposure(
        args.science, variance=args.science_variance, mask=args.science_mask, **options
    )
    log.info("read the science image in %.2f s", time.perf_counter() - started)
    detections = None
    if not args.tiles:  # detect while the template is still on disk: a lower memory peak
        from .stars import _detect_kernel_sources  # a SourceCatalog: no astropy.table

        config.validate()  # as the task would: a bad field is reported before detecting
        detections = _detect_kernel_sources(science, config)
    read_start = time.perf_counter()
    template = read_exposure(
        args.template, variance=args.template_variance, mask=args.template_mask, **options
    )
    log.info("read the template in %.2f s", time.perf_counter() - read_start)
    if args.tiles:
        return _run_tiled(args, science, template, config, started)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = subtract(
            science,
            template,
            config=config,
            mode=args.mode,
            decorrelate=args.decorrelate,
            warp=not args.no_warp,
            keep_matched=bool(args.matched or args.debug),
            overwrite_science=not (args.debug or args.png),  # both draw the science image
            science_detections=detections,
        )
    for number, warning in enumerate(caught, start=1):
        log.warning("%s: %s", warning.category.__name__, warning.message)
        result.subtractedExposure.metadata[f"WARN{number}"] = str(warning.message)
    if not (args.debug or args.png):  # the rest needs neither the template nor the stamps
        result = replace(result, kernelCellSet=None, warpedExposure=None)
        del template  # the stamps of the kernel cell set were views of it: 48 MiB freed
    result.write(args.output, overwrite=args.overwrite)
    for option, writer in (
        (args.matched, result.write_matched),
        (args.kernel, result.write_kernel),
        (args.background, result.write_background),
    ):
        if option:
            writer(option, overwrite=args.overwrite)
    if args.score:
        from .decorrelate import score_image
        from .io import write_exposure

        difference = result.subtractedExposure
        write_exposure(
            score_image(difference.masked_image, difference.psf),
            args.score,
            overwrite=args.overwrite,
        )
    if args.debug:
        from .diagnostics import write_debug_plots

        for path in write_debug_plots(result, science, template, args.debug, config=config):
            log.info("wrote %s", path)
    if args.png:
        from .diagnostics import plot_subtraction

        plot_subtraction(
            science.masked_image,
            result.warpedExposure.masked_image,
            result.subtractedExposure.masked_image,
            result.psfMatchingKernel,
            args.png,
        )
    log.info("%s", _summary(result))
    log.info("wrote %s in %.2f s in all", args.output, time.perf_counter() - started)
    return 0


def _run_tiled(
    args: argparse.Namespace, science: Any, template: Any, config: Any, started: float
) -> int:
    """``diffim subtract --tiles``: one kernel fit per tile, the differences stitched."""
    from .batch import subtract_tiled
    from .io import write_exposure

    extras = [
        name
        for name in ("matched", "kernel", "background", "debug", "png", "score")
        if getattr(args, name)
    ]
    if extras or args.decorrelate:
        msg = "--tiles writes only the difference; drop --" + ", --".join(
            extras + (["decorrelate"] if args.decorrelate else [])
        )
        raise DiffimValueError(msg)
    difference = subtract_tiled(
        science, template, tiles=args.tiles, config=config, mode=args.mode, warp=not args.no_warp
    )
    write_exposure(difference, args.output, overwrite=args.overwrite)
    log.info(
        "wrote %s (%dx%d tiles) in %.2f s in all",
        args.output,
        *args.tiles,
        time.perf_counter() - started,
    )
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate_pair, write_pair

    overrides = _parse_values(args.set)
    pair = simulate_pair(shape=(args.size, args.size), seed=args.seed, **overrides)
    paths = write_pair(pair, args.out, overwrite=args.overwrite)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .diagnostics import plot_subtraction
    from .simulate import simulate_pair, write_pair

    started = time.perf_counter()
    n_stars = max(600, int(1500 * (args.size / 1024) ** 2))
    pair = simulate_pair(
        shape=(args.size, args.size),
        seed=args.seed,
        n_stars=n_stars,
        flux_ratio=1.15,
        science_fwhm=4.5,
        template_fwhm=3.2,
        fwhm_gradient=(0.3, 0.1),
    )
    paths = write_pair(pair, args.out, overwrite=True)
    log.info(
        "simulated a %d x %d pair in %.2f s", args.size, args.size, time.perf_counter() - started
    )
    from .subtraction import subtract

    config = ImagePsfMatchConfig()
    result = subtract(pair.science, pair.template, config=config)
    out = Path(args.out)
    result.write(out / "difference.fits", overwrite=True)
    plot_subtraction(
        pair.science.masked_image,
        pair.template.masked_image,
        result.subtractedExposure.masked_image,
        result.psfMatchingKernel,
        out / "demo.png",
    )
    print(f"simulated pair: {paths['science']}, {paths['template']} (truth: {paths['truth']})")
    print(f"true kernel sum {pair.truth.flux_ratio:.4f}; {_summary(result)}")
    print(f"difference: {out / 'difference.fits'}; picture: {out / 'demo.png'}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    config = _make_config(args.config, None)
    print(config_documentation(config))
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch_command

    return run_batch_command(args)


COMMANDS = {
    "subtract": _run_subtract,
    "batch": _run_batch,
    "simulate": _run_simulate,
    "demo": _run_demo,
    "config": _run_config,
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``diffim`` command line; return the exit status."""
    return _run_command(argv)[1]


def _run_command(argv: list[str] | None) -> tuple[str, int]:
    """Parse ``argv``, run its command; return the command's name and the exit status."""
    collect_cycles_less_often()  # before the commands import numpy, scipy and astropy
    args = _parser().parse_args(argv)
    _setup_logging(args)
    keep_freed_memory()
    try:
        return args.command, COMMANDS[args.command](args)
    except BrokenPipeError:  # e.g. `diffim config | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return args.command, 0
    except (DiffimValueError, OSError) as error:
        if args.traceback:
            raise
        print(f"diffim: error: {error}", file=sys.stderr)
        return args.command, EXIT_BAD_INPUT
    except DiffimError as error:
        if args.traceback:
            raise
        print(f"diffim: error: {error}", file=sys.stderr)
        return args.command, EXIT_FAILED


#: Commands that start no other process: their console run may end without the
#: interpreter's teardown (see `run`).
FAST_EXIT_COMMANDS = frozenset({"subtract", "simulate", "demo", "config"})


def run() -> None:
    """The ``diffim`` console script: run the command line and exit with its status.

    A command that started no other process has written and closed its outputs when it
    returns, so the process then ends with ``os._exit`` once logging and the standard
    streams are flushed: the interpreter's teardown of numpy, scipy and astropy would
    take 0.2-0.4 s more, a tenth of a 2048² subtraction.  ``batch`` (Dask workers) exits
    normally.
    """
    command, status = _run_command(None)
    if command not in FAST_EXIT_COMMANDS:
        sys.exit(status)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # the reader left, or stderr was closed
        pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
