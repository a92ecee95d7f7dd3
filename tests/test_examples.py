"""The programs in ``examples/`` run, and what they write is sane.

Each example runs as a subprocess of this interpreter in a fresh temporary folder, with
``-W error`` so that a warning fails it (all but the Dask one, whose workers are processes of
their own), on the simulator's small pairs (384 x 384).  Numbers are checked against the
simulation's truth with tolerances from its noise.
"""

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import DEBUG_PLOTS, PNG_SIGNATURE

from diffim import read_exposure, simulate_pair
from diffim.simulate import write_pair

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 300
SIZE = 384


def run_example(name, *args, cwd, warnings_as_errors=True, expect=0):
    """Run ``examples/<name>`` with ``args`` in ``cwd``; return its stdout."""
    command = [sys.executable, *(["-W", "error"] if warnings_as_errors else [])]
    command += [str(EXAMPLES / name), *map(str, args)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    process = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert process.returncode == expect, (
        f"{name} {' '.join(map(str, args))} exited with {process.returncode}:\n"
        f"--- stdout ---\n{process.stdout[-4000:]}\n--- stderr ---\n{process.stderr[-4000:]}"
    )
    return process.stdout if expect == 0 else process.stderr


def number_after(label, text):
    """Return the first number that follows ``label`` in ``text``."""
    match = re.search(re.escape(label) + r"\s*(-?\d+(?:\.\d+)?)", text)
    assert match, f"no number after {label!r} in:\n{text}"
    return float(match.group(1))


def check_difference(path, shape):
    """The difference reads back with its QA numbers and has ``D/σ`` close to N(0, 1)."""
    exposure = read_exposure(path)
    masked = exposure.masked_image
    assert masked.shape == shape
    assert "spatialKernelSum" in exposure.metadata
    good = (masked.mask == 0) & np.isfinite(masked.image) & (masked.variance > 0)
    assert good.mean() > 0.7  # the kernel border, masked artefacts and their footprints
    z = masked.image[good] / np.sqrt(masked.variance[good])
    robust_std = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert 0.9 < robust_std < 1.15  # correlated noise and star residuals push it above 1
    return exposure


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_example_is_documented_and_tested():
    """Each example has a docstring that says how long it takes, and a test here."""
    tested = set(re.findall(r'"(\w+\.py)"', Path(__file__).read_text(encoding="utf-8")))
    for path in sorted(EXAMPLES.glob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"))
        docstring = ast.get_docstring(module) or ""
        assert "Runtime" in docstring, f"{path.name}: the docstring should give the runtime"
        assert "argparse" in path.read_text(encoding="utf-8"), f"{path.name} uses no argparse"
        assert path.name in tested, f"{path.name} is not run by tests/test_examples.py"


def test_image_psf_match_task_on_a_simulated_pair(tmp_path):
    """No file arguments: a simulated pair (true kernel sum 1) is subtracted and matched."""
    stdout = run_example(
        "imagePsfMatchTask.py", "--size", SIZE, "--config", "spatialKernelOrder=1", cwd=tmp_path
    )
    assert "config overrides: spatialKernelOrder=1" in stdout
    for line in ("candidates:", "kernel sum:", "residuals:", "returned a MatchResult"):
        assert line in stdout
    # the candidates' kernel sums scatter by ~5 %; 20+ of them fix the sum to ~1 %
    assert number_after("kernel sum:", stdout) == pytest.approx(1.0, abs=0.03)
    assert 0.9 < number_after("robust std", stdout) < 1.15
    assert number_after("candidates:", stdout) >= 10
    check_difference(tmp_path / "imagePsfMatchTask-difference.fits", (SIZE, SIZE))


def test_image_psf_match_task_on_files_with_debug_plots(tmp_path):
    """Two FITS paths, config overrides and -d: the difference, seven PNGs, inputs intact."""
    paths = write_pair(simulate_pair(shape=(SIZE, SIZE), seed=7), tmp_path / "inputs")
    inputs = {name: digest(paths[name]) for name in ("science", "template")}
    stdout = run_example(
        "imagePsfMatchTask.py",
        paths["science"],
        paths["template"],
        "--config",
        "scaleByFwhm=false",
        "kernelSize=25",
        "-d",
        "debug",
        "-o",
        "difference.fits",
        cwd=tmp_path,
    )
    assert "kernel 25 px" in stdout
    assert "kernel stars of subtractExposures" in stdout
    check_difference(tmp_path / "difference.fits", (SIZE, SIZE))
    for name in DEBUG_PLOTS:
        png = (tmp_path / "debug" / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) > 10_000, f"{name} is almost empty"
    # an output that is an input is refused before anything is written
    stderr = run_example(
        "imagePsfMatchTask.py",
        paths["science"],
        paths["template"],
        "-o",
        paths["science"],
        "--overwrite",
        cwd=tmp_path,
        expect=1,
    )
    assert "also an input" in stderr
    assert {name: digest(paths[name]) for name in inputs} == inputs


def test_plain_fits_with_variance(tmp_path):
    stdout = run_example(
        "plain_fits_with_variance.py", "--out", "out", "--size", SIZE, cwd=tmp_path
    )
    out = tmp_path / "out"
    for name in ("science", "science.var", "template", "template.weight"):
        with fits.open(out / f"{name}.fits") as hdulist:
            assert len(hdulist) == 1
            assert hdulist[0].data.shape == (SIZE, SIZE)
    assert "measured FWHM template" in stdout
    check_difference(out / "difference.fits", (SIZE, SIZE))


def test_lsst_calexp(tmp_path):
    stdout = run_example("lsst_calexp.py", "--out", "out", "--size", SIZE, cwd=tmp_path)
    out = tmp_path / "out"
    with fits.open(out / "calexp-science.fits") as hdulist:
        names = [hdu.name for hdu in hdulist]
        tables = [hdu for hdu in hdulist if isinstance(hdu, fits.BinTableHDU)]
    assert names[1:4] == ["IMAGE", "MASK", "VARIANCE"]
    assert len(tables) >= 2
    assert number_after("kernel sum", stdout) == pytest.approx(1.1, abs=0.03)  # flux ratio
    check_difference(out / "difference.fits", (SIZE, SIZE))


def test_fake_injection_completeness(tmp_path):
    """At least 95 % of the fakes with S/N >= 10 are found; few at S/N 2 (threshold 5)."""
    stdout = run_example(
        "fake_injection_completeness.py", "--out", "out", "--size", SIZE, cwd=tmp_path
    )
    assert number_after("recovered at S/N >= 10:", stdout) >= 95.0
    out = tmp_path / "out"
    assert (out / "completeness.png").read_bytes().startswith(PNG_SIGNATURE)
    fakes = Table.read(out / "fakes.ecsv")
    assert len(fakes) >= 100
    faint = fakes["snr"] == 2
    # Gaussian noise gives 0.1 %; the search within 2 px adds a little
    assert np.mean(fakes["recovered"][faint]) < 0.2
    bright = fakes["snr"] >= 10
    ratio = np.median(fakes["flux_measured"][bright] / fakes["flux"][bright])
    assert ratio == pytest.approx(1.0, abs=0.05)  # noise of the median ~1 %, plus sky noise


def test_batch_folder(tmp_path):
    pytest.importorskip("distributed")
    stdout = run_example(
        "batch_folder.py",
        "--out",
        "out",
        "--pairs",
        2,
        "--size",
        SIZE,
        cwd=tmp_path,
        warnings_as_errors=False,
    )
    assert "pair-01" in stdout
    summary = Table.read(tmp_path / "out" / "differences" / "summary.csv", format="ascii.csv")
    assert list(summary["status"]) == ["ok", "ok"]
    for row, true_sum in zip(summary, (1.0, 1.1), strict=True):
        assert row["spatialKernelSum"] == pytest.approx(true_sum, abs=0.03)
        check_difference(row["output"], (SIZE, SIZE))
