#!/usr/bin/env python
"""Read and subtract LSST-style ``calexp`` files: IMAGE/MASK/VARIANCE plus table HDUs.

An LSST calibrated exposure (``calexp``) written by ``afw`` holds an empty primary HDU with
the metadata, three image HDUs named ``IMAGE``, ``MASK`` (integer bits named by ``MP_<NAME>``
cards) and ``VARIANCE``, each with the WCS and ``LTV1``/``LTV2`` (minus the parent ``xy0``),
and then binary tables in which ``afw`` persists the PSF model, the photometric calibration,
the visit information and so on.  This example simulates a pair, writes each image in that
layout (``calexp-science.fits``, ``calexp-template.fits``, with stand-in tables), reads them
with `diffim.read_exposure` (which picks the three planes and ignores the tables), subtracts
them with `diffim.subtract` and writes the difference in the same layout.  diffim does not
read ``afw``'s persisted PSF: the PSFs are measured from the stars.

Usage: ``python examples/lsst_calexp.py [--out DIR] [--size N]``; the default folder is
``./lsst_calexp-output``.  Runtime: about 5 s at 512 x 512.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

import diffim
from diffim import Exposure
from diffim.psf import FWHM_PER_SIGMA

DEFAULT_OUT = Path("lsst_calexp-output")


def plane_header(exposure: Exposure, extname: str) -> fits.Header:
    """Header of one pixel HDU, as ``afw`` writes it (WCS, EXTTYPE, xy0 as LTV1/LTV2)."""
    header = exposure.wcs.to_header()
    header["EXTNAME"] = extname
    header["EXTTYPE"] = extname
    x0, y0 = exposure.masked_image.xy0
    header["LTV1"], header["LTV2"] = -x0, -y0
    return header


def archive_tables(exposure: Exposure, visit: int) -> list[fits.BinTableHDU]:
    """Stand-ins for the tables in which ``afw`` persists a calexp's components."""
    index = Table(
        {
            "id": [1, 2, 3],
            "name": ["PSF", "PHOTOCALIB", "VISITINFO"],
            "row0": [0, 0, 0],
            "nrows": [1, 1, 1],
        }
    )
    psf = Table({"sigma": [exposure.psf.fwhm() / FWHM_PER_SIGMA], "width": [25], "height": [25]})
    calibration = Table({"calibrationMean": [10 ** (-0.4 * (exposure.zero_point - 31.4))]})
    visit_info = Table(
        {"visit": [visit], "exposureTime": [30.0], "filter": [exposure.filter_name]}
    )
    return [
        fits.BinTableHDU(table, name=name)
        for table, name in (
            (index, "ARCHIVE_INDEX"),
            (psf, "PSF"),
            (calibration, "PHOTOCALIB"),
            (visit_info, "VISITINFO"),
        )
    ]


def write_calexp(exposure: Exposure, path: Path, *, visit: int) -> None:
    """Write an exposure in the layout of an LSST calexp."""
    masked = exposure.masked_image
    primary = fits.Header()
    primary["HIERARCH LSST BUTLER DATASETTYPE"] = "calexp"
    primary["HIERARCH LSST BUTLER DATAID VISIT"] = visit
    primary["FILTER"] = exposure.filter_name
    primary["GAIN"] = exposure.gain
    primary["SATURATE"] = exposure.saturation
    mask_header = plane_header(exposure, "MASK")
    for name, bit in masked.planes.as_dict().items():
        key = f"MP_{name}"
        mask_header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit  # as afw writes them
    hdus = [
        fits.PrimaryHDU(header=primary),
        fits.ImageHDU(masked.image, header=plane_header(exposure, "IMAGE")),
        fits.ImageHDU(masked.mask, header=mask_header),
        fits.ImageHDU(masked.variance, header=plane_header(exposure, "VARIANCE")),
        *archive_tables(exposure, visit),
    ]
    fits.HDUList(hdus).writeto(path)


def main(argv: list[str] | None = None) -> int:
    """Run the example; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (new)")
    parser.add_argument("--size", type=int, default=512, help="side of the simulated pair (px)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the simulated pair")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new folder with --out")
    args.out.mkdir(parents=True, exist_ok=True)

    pair = diffim.simulate_pair(shape=(args.size, args.size), seed=args.seed, flux_ratio=1.1)
    science_path = args.out / "calexp-science.fits"
    template_path = args.out / "calexp-template.fits"
    write_calexp(pair.science, science_path, visit=1234)
    write_calexp(pair.template, template_path, visit=1000)
    print(f"wrote {science_path}:")
    fits.info(science_path)

    science = diffim.read_exposure(science_path)
    template = diffim.read_exposure(template_path)
    masked = science.masked_image
    print(f"\nread {science!r}")
    print(f"  mask planes {masked.planes.as_dict()}")
    print(f"  pixels flagged: {np.count_nonzero(masked.mask)}, gain {science.gain} e-/ADU")

    result = diffim.subtract(science, template)
    m = result.metadata
    print(result)
    print(
        f"kernel sum {m['spatialKernelSum']:.4f} (true {pair.truth.kernel_sum():.4f}), "
        f"{m['nCandidatesUsedInSpatialFit']}/{m['nCandidates']} kernel stars used; "
        f"D/σ median {m['diffimResidualMedian']:.3f}, robust std "
        f"{m['diffimResidualRobustStd']:.3f}"
    )
    output = args.out / "difference.fits"
    result.write(output)
    print(f"difference written to {output}:")
    fits.info(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
