"""The diffim command line, run as a user would (in-process through main(), and once as a
real subprocess to check the exit code and that no traceback is printed)."""

import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import DEBUG_PLOTS

from diffim.cli import main
from diffim.config import ImagePsfMatchConfig
from diffim.io import read_exposure
from diffim.simulate import simulate_pair, write_pair
from diffim.subtraction import choose_convolve_template


def run_subtract(paths, output, *options):
    """Run ``diffim subtract`` on a written pair; return the exit status."""
    return main(
        ["subtract", str(paths["science"]), str(paths["template"]), "-o", str(output), *options]
    )


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    pair = simulate_pair(
        shape=(384, 384), seed=4, n_stars=260, flux_ratio=1.1, science_fwhm=4.0, template_fwhm=3.0
    )
    paths = write_pair(pair, out)
    return pair, paths


def test_subtract_writes_a_clean_difference(pair_files, tmp_path):
    pair, paths = pair_files
    output = tmp_path / "difference.fits"
    status = run_subtract(paths, str(output), "--config", "spatialKernelOrder=1", "-q")
    assert status == 0
    difference = read_exposure(output)
    metadata = difference.metadata
    assert metadata["spatialKernelSum"] == pytest.approx(1.1, rel=0.01)
    assert metadata["DIRECTION"] == "convolveTemplate"
    assert abs(metadata["diffimResidualMedian"]) < 0.05
    assert metadata["diffimResidualRobustStd"] == pytest.approx(1.0, abs=0.05)
    assert "spatialKernelOrder=1" in metadata["CONFIG"]
    assert difference.shape == pair.science.shape
    # the inputs are untouched
    science = read_exposure(paths["science"])
    np.testing.assert_array_equal(science.masked_image.image, pair.science.masked_image.image)


def test_subtract_refuses_to_overwrite(pair_files, tmp_path, capsys):
    _, paths = pair_files
    output = tmp_path / "difference.fits"
    output.write_text("keep me")
    status = run_subtract(paths, output, "-q")
    assert status == 2
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_text() == "keep me"
    status = run_subtract(paths, str(paths["science"]), "-q", "--overwrite")
    assert status == 2


def test_bad_input_exits_2_without_traceback(tmp_path):
    """A missing file is reported in one line, with status 2 and no Python traceback."""
    not_fits = tmp_path / "science.fits"
    not_fits.write_text("this is not FITS")
    command = [
        sys.executable,
        "-m",
        "diffim.cli",
        "subtract",
        str(not_fits),
        str(tmp_path / "missing.fits"),
        "-o",
        str(tmp_path / "out.fits"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("diffim: error:")
    assert "Traceback" not in completed.stderr
    assert "science.fits" in completed.stderr


def test_unknown_config_key_is_named(pair_files, tmp_path, capsys):
    _, paths = pair_files
    status = run_subtract(paths, str(tmp_path / "d.fits"), "--config", "kernelSise=25", "-q")
    assert status == 2
    assert "kernelSize" in capsys.readouterr().err


def test_config_prints_a_loadable_file(tmp_path, capsys):
    assert main(["config", "--config", "kernelSize=25"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)
    config = ImagePsfMatchConfig.load(path)
    assert config.kernel.active.kernelSize == 25


def test_console_run_flushes_its_output_before_the_fast_exit():
    """``run`` ends with ``os._exit``: everything printed must still reach the pipe."""
    command = [sys.executable, "-m", "diffim.cli", "config", "--config", "kernelSize=25"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0
    assert completed.stdout == _captured_config_text(["config", "--config", "kernelSize=25"])


def _captured_config_text(argv):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def test_simulate_writes_pair_and_truth(tmp_path):
    assert (
        main(
            [
                "simulate",
                "--out",
                str(tmp_path),
                "--size",
                "128",
                "--seed",
                "2",
                "--set",
                "n_stars=30",
                "flux_ratio=1.3",
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "science.fits").exists()
    assert (tmp_path / "template.fits").exists()
    assert (tmp_path / "truth.json").exists()
    assert read_exposure(tmp_path / "science.fits").shape == (128, 128)


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--size", "512", "-q"]) == 0
    assert (tmp_path / "difference.fits").exists()
    assert (tmp_path / "demo.png").stat().st_size > 10000
    assert "true kernel sum" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mode", "template_fwhm", "science_fwhm", "expected"),
    [
        ("auto", 3.0, 4.0, True),
        ("auto", 4.0, 3.0, False),
        ("convolveScience", 3.0, 4.0, False),
        ("convolveTemplate", 4.0, 3.0, True),
    ],
)
def test_direction_choice(mode, template_fwhm, science_fwhm, expected):
    assert choose_convolve_template(mode, template_fwhm, science_fwhm) is expected


def test_debug_writes_diagnostic_pictures(pair_files, tmp_path):
    _, paths = pair_files
    debug = tmp_path / "debug"
    status = run_subtract(paths, str(tmp_path / "d.fits"), "-d", str(debug), "-q")
    assert status == 0
    names = {path.name for path in debug.iterdir()}
    assert set(DEBUG_PLOTS) <= names


def test_subtract_writes_requested_extra_outputs(pair_files, tmp_path):
    from astropy.io import fits

    _, paths = pair_files
    names = {name: tmp_path / f"{name}.fits" for name in ("diff", "matched", "kernel", "bg")}
    status = run_subtract(
        paths,
        str(names["diff"]),
        "--matched",
        str(names["matched"]),
        "--kernel",
        str(names["kernel"]),
        "--background",
        str(names["bg"]),
        "-q",
    )
    assert status == 0
    matched = read_exposure(names["matched"])
    assert matched.shape == (384, 384)
    with fits.open(names["kernel"]) as hdus:
        cube = hdus[0].data
        sums = hdus["POSITIONS"].data["kernel_sum"]
    assert cube.shape[0] == 25
    assert cube.shape[1] == cube.shape[2]
    np.testing.assert_allclose(cube.sum(axis=(1, 2)), sums, rtol=1e-5)
    assert np.all(np.abs(sums - 1.1) < 0.02)
    background = read_exposure(names["bg"]).masked_image.image
    assert np.all(np.isfinite(background))


def test_decorrelated_difference_and_score_image(pair_files, tmp_path):
    """--decorrelate whitens the difference (neighbouring pixels uncorrelated, D/σ ~ 1);
    --score writes the point-source S/N image, ~N(0, 1) in empty sky."""
    _, paths = pair_files
    output, score = tmp_path / "diff.fits", tmp_path / "score.fits"
    status = run_subtract(paths, str(output), "--decorrelate", "--score", str(score), "-q")
    assert status == 0
    difference = read_exposure(output)
    assert difference.metadata["DECORR"] is True
    image = difference.masked_image
    with np.errstate(divide="ignore", invalid="ignore"):
        z = image.image / np.sqrt(image.variance)
    good = np.isfinite(z) & (image.mask == 0)
    sky = good & (np.abs(z) < 5)
    shifted = np.roll(z, 1, axis=1)
    pairs = sky & np.roll(sky, 1, axis=1)
    correlation = np.corrcoef(z[pairs], shifted[pairs])[0, 1]
    assert abs(correlation) < 0.05
    assert difference.metadata["diffimResidualRobustStd"] == pytest.approx(1.0, abs=0.05)
    score_image = read_exposure(score).masked_image.image
    finite = np.isfinite(score_image) & good
    assert np.median(np.abs(score_image[finite])) / 0.6745 == pytest.approx(1.0, abs=0.1)


def test_no_warp_refuses_unregistered_images(tmp_path, capsys):
    pair = simulate_pair(shape=(256, 256), seed=2, n_stars=150, shift=(0.4, 0.0))
    paths = write_pair(pair, tmp_path)
    status = run_subtract(paths, str(tmp_path / "d.fits"), "--no-warp", "-q")
    assert status == 2
    assert "not registered" in capsys.readouterr().err


def test_tiled_subtraction_from_the_command_line(pair_files, tmp_path):
    _, paths = pair_files
    output = tmp_path / "tiled.fits"
    status = run_subtract(
        paths, str(output), "--tiles", "2x2", "--config", "spatialKernelOrder=1", "-q"
    )
    assert status == 0
    image = read_exposure(output).masked_image
    with np.errstate(divide="ignore", invalid="ignore"):
        z = image.image / np.sqrt(image.variance)
    good = np.isfinite(z) & (image.mask == 0)
    assert 1.4826 * np.median(np.abs(z[good])) == pytest.approx(1.0, abs=0.1)


def test_batch_command_runs_a_manifest(pair_files, tmp_path, capsys):
    _, paths = pair_files
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"science,template\n{paths['science']},{paths['template']}\n")
    status = main(["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1", "-q"])
    assert status == 0
    assert "1 ok" in capsys.readouterr().out
    assert (tmp_path / "out" / "summary.csv").exists()
