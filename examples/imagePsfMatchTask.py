#!/usr/bin/env python
"""Match a template's PSF to a science image with `ImagePsfMatchTask`, and subtract.

diffim's front door, after ip_diffim's ``examples/imagePsfMatchTask.py``.  With no file
arguments it simulates a science/template pair with known truth (template FWHM 3 px, science
4 px, 512 x 512 pixels); given two FITS files it reads them instead (the template is warped
onto the science pixel grid if their WCSs differ)::

    python examples/imagePsfMatchTask.py
    python examples/imagePsfMatchTask.py science.fits template.fits
    python examples/imagePsfMatchTask.py --config scaleByFwhm=false kernelSize=25 -d debug

It builds an `ImagePsfMatchTask` from an `ImagePsfMatchConfig` whose fields ``--config
field=value`` changes, runs ``subtractExposures``, prints the QA numbers (kernel stars used
and rejected per fitting stage, the kernel sum and its range over the field, statistics of the
normalised residuals ``D/σ``) and writes the difference (``--output``, by default
``./imagePsfMatchTask-difference.fits``; an existing file is replaced only with
``--overwrite``, and never when it is an input).  ``-d DIR`` also draws the diagnostic PNGs of
`diffim.diagnostics.write_debug_plots` into ``DIR``.

Then it shows the lower-level ``matchMaskedImages`` on two aligned masked images with a given
candidate list (the simulated stars; with files, the kernel stars ``subtractExposures``
kept) and prints what it returns.

Runtime on two cores: about 5 s for the simulated 512 x 512 pair, plus about 10-20 s with
``--debug`` (matplotlib).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

import diffim
from diffim import Exposure, ImagePsfMatchConfig, ImagePsfMatchTask, read_exposure
from diffim.io import check_not_input
from diffim.results import ExposureSubtractResult, MatchResult
from diffim.simulate import SimulationTruth
from diffim.stars import exposure_fwhm
from diffim.subtraction import choose_convolve_template

log = logging.getLogger("imagePsfMatchTask")

DEFAULT_OUTPUT = "imagePsfMatchTask-difference.fits"
#: Template flux range (ADU) of the simulated stars given to matchMaskedImages: bright enough
#: to constrain the kernel, faint enough to stay clear of saturation.
CANDIDATE_FLUX_RANGE = (5.0e3, 2.0e5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: %(prog)s --config scaleByFwhm=false kernelSize=25 -d debug",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="FITS",
        help="science and template FITS files (none: simulate a pair)",
    )
    parser.add_argument(
        "-c",
        "--config",
        nargs="+",
        action="extend",
        default=[],
        metavar="FIELD=VALUE",
        help="change ImagePsfMatchConfig fields, e.g. kernelSize=25 kernel.name=DF",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(DEFAULT_OUTPUT), help="difference FITS file"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "-d", "--debug", type=Path, metavar="DIR", help="write the diagnostic PNGs into DIR"
    )
    parser.add_argument("--size", type=int, default=512, help="side of the simulated pair (px)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated pair")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the task's progress")
    args = parser.parse_args(argv)
    if len(args.images) not in (0, 2):
        parser.error(f"give a science and a template FITS file, or none; got {args.images}")
    if not 128 <= args.size <= 4096:
        parser.error(f"--size must be between 128 and 4096 pixels, got {args.size}")
    return args


def load_images(args: argparse.Namespace) -> tuple[Exposure, Exposure, SimulationTruth | None]:
    """Return the science and template exposures, and the truth if they were simulated."""
    if args.images:
        science_path, template_path = args.images
        check_not_input(args.output, [science_path, template_path])
        print(f"reading science {science_path} and template {template_path}")
        return read_exposure(science_path), read_exposure(template_path), None
    pair = diffim.simulate_pair(shape=(args.size, args.size), seed=args.seed)
    parameters = pair.truth.parameters
    print(
        f"simulated a {args.size}x{args.size} pair (seed {args.seed}): template FWHM "
        f"{parameters.template_fwhm} px, science {parameters.science_fwhm} px, "
        f"{len(pair.truth.stars)} stars, true kernel sum {pair.truth.kernel_sum():.4f}"
    )
    return pair.science, pair.template, pair.truth


def make_config(overrides: list[str]) -> ImagePsfMatchConfig:
    """Return the default configuration with the command line's ``field=value`` applied."""
    config = ImagePsfMatchConfig()
    if overrides:
        config.apply_overrides(overrides)  # all or nothing; unknown fields get suggestions
        print(f"config overrides: {' '.join(overrides)}")
    active = config.kernel.active
    named = {override.partition("=")[0].strip().rsplit(".", 1)[-1] for override in overrides}
    if "kernelSize" in named and getattr(active, "scaleByFwhm", False):
        print(
            "note: kernelSize is used only with scaleByFwhm=false; otherwise the kernel size is "
            f"kernelSizeFwhmScaling x FWHM, between {active.kernelSizeMin} and "
            f"{active.kernelSizeMax} px"
        )
    return config


def subtract(
    task: ImagePsfMatchTask, science: Exposure, template: Exposure
) -> ExposureSubtractResult:
    """Run ``subtractExposures`` in the direction the config's ``mode`` asks for.

    ``subtractExposures`` itself does what its ``convolveTemplate`` argument says; with
    ``mode="auto"`` (the default) the image with the narrower PSF is convolved, so that the
    kernel never has to deconvolve.  The FWHMs come from the PSF models, or are measured from
    the stars of images without one (FITS files).
    """
    template_fwhm = exposure_fwhm(template, "template", log)
    science_fwhm = exposure_fwhm(science, "science", log)
    convolve_template = choose_convolve_template(task.config.mode, template_fwhm, science_fwhm)
    return task.subtractExposures(
        template,
        science,
        templateFwhmPix=template_fwhm,
        scienceFwhmPix=science_fwhm,
        convolveTemplate=convolve_template,
    )


def print_qa(result: ExposureSubtractResult, truth: SimulationTruth | None) -> None:
    """Print the QA numbers that ``subtractExposures`` put into ``result.metadata``."""
    m = result.metadata
    convolved = "template" if result.convolveTemplate else "science image"
    print(f"\n{result!r}")
    print(
        f"direction:  convolved the {convolved} (FWHM template {m['templateFwhmPix']:.2f} px, "
        f"science {m['scienceFwhmPix']:.2f} px); kernel {m['ALKernelSize']} px"
    )
    rejected = ", ".join(
        f"{key.removeprefix('nRejected_')} {value}"
        for key, value in m.items()
        if key.startswith("nRejected_")
    )
    dropped = sum(value for key, value in m.items() if key.startswith("nDropped_"))
    print(
        f"candidates: {m['nCandidates']} kernel stars ({dropped} dropped before fitting), "
        f"{m['nCandidatesUsedInSpatialFit']} used in the spatial fit; rejected: {rejected}"
    )
    true_sum = f"; true {truth.kernel_sum():.4f}" if truth is not None else ""
    print(
        f"kernel sum: {m['spatialKernelSum']:.4f} at the centre, "
        f"{m['kernelSumMin']:.4f} to {m['kernelSumMax']:.4f} over the field "
        f"(candidates {m['kernelSumClippedMean']:.4f} ± {m['kernelSumClippedStd']:.4f}"
        f"{true_sum})"
    )
    print(
        f"residuals:  D/σ median {m['diffimResidualMedian']:.3f}, robust std "
        f"{m['diffimResidualRobustStd']:.3f} over {100 * m['diffimGoodPixelFraction']:.1f} % "
        "of the pixels (0 and 1 for a perfect subtraction); spatial-fit D/σ of the stars: "
        f"mean {m['spatialResidualMean']:.3f}, std {m['spatialResidualStd']:.3f}"
    )


def truth_candidates(truth: SimulationTruth) -> list[tuple[float, float]]:
    """Return ``(x, y)`` of the simulated constant, unsaturated, moderately bright stars."""
    stars = truth.stars
    flux = np.asarray(stars["flux_template"])
    keep = (
        ~np.asarray(stars["saturated"])
        & ~np.asarray(stars["is_variable"])
        & (flux >= CANDIDATE_FLUX_RANGE[0])
        & (flux <= CANDIDATE_FLUX_RANGE[1])
    )
    return [
        (float(x), float(y))
        for x, y in zip(stars["x_science"][keep], stars["y_science"][keep], strict=True)
    ]


def show_match_masked_images(
    task: ImagePsfMatchTask,
    result: ExposureSubtractResult,
    science: Exposure,
    truth: SimulationTruth | None,
) -> MatchResult:
    """Call ``matchMaskedImages`` on the aligned pair with a given candidate list; print it."""
    if truth is not None:
        candidates, origin = truth_candidates(truth), "simulated stars"
    else:
        good = [c for c in result.kernelCellSet.candidates() if c.status.value == "GOOD"]
        candidates, origin = [(c.x, c.y) for c in good], "kernel stars of subtractExposures"
    # the template on the science pixel grid; convolve the one with the narrower PSF
    template_mi, science_mi = result.warpedExposure.masked_image, science.masked_image
    fwhm = (result.metadata["templateFwhmPix"], result.metadata["scienceFwhmPix"])
    if result.convolveTemplate:
        to_convolve, reference, names = template_mi, science_mi, ("template", "science")
    else:
        to_convolve, reference, names = science_mi, template_mi, ("science", "template")
        fwhm = fwhm[::-1]
    match = task.matchMaskedImages(
        to_convolve,
        reference,
        candidates,
        templateFwhmPix=fwhm[0],
        scienceFwhmPix=fwhm[1],
    )
    kernel, m = match.psfMatchingKernel, match.metadata
    x_center, y_center = reference.bbox.center
    no_data = match.matchedImage.mask_plane("NO_DATA")
    print(
        f"\nmatchMaskedImages({names[0]}, {names[1]}, candidateList=<{len(candidates)} "
        f"{origin}>) returned a {type(match).__name__}:"
    )
    print(
        f"  matchedImage       {match.matchedImage!r}; {100 * no_data.mean():.1f} % NO_DATA "
        "(the kernel's half-width at the border)"
    )
    kernel_sum = kernel.sum_at(x_center, y_center)
    print(
        f"  psfMatchingKernel  {kernel.size}x{kernel.size} px, {kernel.n_basis} basis kernels "
        f"x {kernel.coefficients.shape[1]} spatial terms; sum {kernel_sum:.4f} at the centre "
        f"(subtractExposures: {result.metadata['spatialKernelSum']:.4f})"
    )
    print(
        f"  backgroundModel    {float(match.backgroundModel(x_center, y_center)):.2f} ADU at the "
        f"centre ({names[1]} minus convolved {names[0]})"
    )
    print(f"  kernelCellSet      {match.kernelCellSet!r}")
    print(
        f"  metadata           {len(m)} QA numbers, e.g. nCandidates={m['nCandidates']}, "
        f"nCandidatesUsedInSpatialFit={m['nCandidatesUsedInSpatialFit']}, "
        f"spatialConditionNum={m['spatialConditionNum']:.3g}"
    )
    return match


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s %(levelname)s: %(message)s",
    )
    try:
        config = make_config(args.config)
        science, template, truth = load_images(args)
        task = ImagePsfMatchTask(config)
        result = subtract(task, science, template)
        print_qa(result, truth)
        result.write(args.output, overwrite=args.overwrite)
        print(f"difference written to {args.output}")
        if args.debug is not None:
            from diffim.diagnostics import write_debug_plots  # needs matplotlib

            paths = write_debug_plots(result, science, template, args.debug, config=config)
            print(f"debug plots in {args.debug}: {', '.join(path.name for path in paths)}")
        show_match_masked_images(task, result, science, truth)
    except (diffim.DiffimError, OSError) as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
