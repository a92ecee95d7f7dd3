"""Debug pictures of a subtraction: every file written, valid, atomic, inputs untouched.

Two simulated pairs: a spatially varying kernel with rejected candidates (template
convolved), and a spatially constant kernel with the science image convolved.
"""

import copy
import importlib
import sys
import warnings
from dataclasses import dataclass

import matplotlib.image
import numpy as np
import pytest
from conftest import DEBUG_PLOTS, PNG_SIGNATURE
from matplotlib.figure import Figure

import diffim
import diffim.diagnostics
from diffim.candidates import CandidateStatus
from diffim.diagnostics import _save, plot_subtraction, write_debug_plots
from diffim.errors import DiffimError, DiffimValueError, DiffimWarning
from diffim.results import MatchResult
from diffim.simulate import simulate_pair


@dataclass
class Plotted:
    pair: object
    result: object
    paths: list
    out_dir: object
    before: dict
    after: dict


def _snapshot(pair, result):
    """Copies of every array and record the plotting could have touched."""
    images = {
        "science": pair.science.masked_image,
        "template": pair.template.masked_image,
        "difference": result.subtractedExposure.masked_image,
        "matched": result.matchedImage,
        "warped": result.warpedExposure.masked_image,
    }
    state = {
        f"{name}.{plane}": getattr(image, plane).copy()
        for name, image in images.items()
        for plane in ("image", "mask", "variance")
    }
    state["metadata"] = copy.deepcopy(result.metadata)
    state["candidates"] = [
        (c.x, c.y, c.status, c.rejected_by, dict(c.residuals))
        for c in result.kernelCellSet.candidates()
    ]
    state["kernel"] = result.psfMatchingKernel.coefficients.copy()
    return state


def _plot(tmp_path_factory, simulation, overrides, *, stale=False):
    """Subtract a simulated pair and draw it; ``stale`` puts an old images.png there first."""
    pair = simulate_pair(**simulation)
    with warnings.catch_warnings():  # the engine's own warnings are not under test here
        warnings.simplefilter("ignore", DiffimWarning)
        result = diffim.subtract(pair.science, pair.template, **overrides)
    out_dir = tmp_path_factory.mktemp("debug") / "plots"  # created by write_debug_plots
    if stale:
        out_dir.mkdir()
        (out_dir / "images.png").write_bytes(b"stale")
    before = _snapshot(pair, result)
    paths = write_debug_plots(result, pair.science, pair.template, out_dir)
    return Plotted(pair, result, paths, out_dir, before, _snapshot(pair, result))


@pytest.fixture(scope="module")
def varying(tmp_path_factory):
    """Kernel varying over the field (order 1), some candidates rejected, template convolved."""
    simulation = {
        "shape": (384, 384),
        "seed": 4,
        "n_stars": 300,
        "flux_ratio": 1.1,
        "fwhm_gradient": (0.3, 0.1),
    }
    return _plot(tmp_path_factory, simulation, {"spatialKernelOrder": 1})


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    """A spatially constant kernel; the science PSF is the narrower, so it is convolved."""
    simulation = {
        "shape": (256, 256),
        "seed": 5,
        "n_stars": 200,
        "science_fwhm": 3.0,
        "template_fwhm": 4.0,
    }
    return _plot(tmp_path_factory, simulation, {"spatialKernelOrder": 0}, stale=True)


def _check_pictures(plotted):
    assert [path.name for path in plotted.paths] == list(DEBUG_PLOTS)
    assert all(path.parent == plotted.out_dir for path in plotted.paths)
    for path in plotted.paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path.name
        assert path.stat().st_size > 10_000, path.name
        height, width, _ = matplotlib.image.imread(path).shape
        assert height >= 400, path.name
        assert width >= 600, path.name


def test_varying_kernel_case_has_rejections(varying):
    statuses = [c.status for c in varying.result.kernelCellSet.candidates()]
    assert CandidateStatus.BAD in statuses
    assert CandidateStatus.GOOD in statuses
    assert varying.result.psfMatchingKernel.is_spatially_varying
    assert varying.result.convolveTemplate


def test_every_picture_is_a_readable_png(varying):
    _check_pictures(varying)


def test_no_temporary_files_are_left(varying):
    assert sorted(p.name for p in varying.out_dir.iterdir()) == sorted(DEBUG_PLOTS)


def test_inputs_and_result_are_unchanged(varying):
    before, after = varying.before, varying.after
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


def test_constant_kernel_with_the_science_convolved(constant):
    assert not constant.result.psfMatchingKernel.is_spatially_varying
    assert not constant.result.convolveTemplate
    _check_pictures(constant)  # the stale images.png among them was replaced


def test_existing_folder_keeps_only_the_pictures(constant):
    assert sorted(p.name for p in constant.out_dir.iterdir()) == sorted(DEBUG_PLOTS)


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "figure.png"
    path.write_bytes(b"previous picture")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])

    def broken_savefig(target, **_):
        with open(target, "wb") as handle:
            handle.write(PNG_SIGNATURE)  # half-written
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        _save(figure, path)
    assert path.read_bytes() == b"previous picture"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_result_without_a_difference_is_rejected(varying, tmp_path):
    result = varying.result
    match = MatchResult(
        matchedImage=result.matchedImage,
        psfMatchingKernel=result.psfMatchingKernel,
        backgroundModel=result.backgroundModel,
        kernelCellSet=result.kernelCellSet,
        metadata=result.metadata,
    )
    with pytest.raises(DiffimValueError, match="no difference image"):
        write_debug_plots(match, varying.pair.science, varying.pair.template, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_says_how_to_install_it(varying, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DiffimError, match=r"pip install 'diffim\[plot\]'"):
        write_debug_plots(varying.result, varying.pair.science, varying.pair.template, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_module_imports_without_matplotlib(monkeypatch):
    """Re-running the package's code with matplotlib unimportable must not fail."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for name in ("display", "kernels", "residuals", "overview", "debug"):  # imported first
        importlib.reload(importlib.import_module(f"diffim.diagnostics.{name}"))
    module = importlib.reload(diffim.diagnostics)
    assert callable(module.write_debug_plots)


def test_plot_subtraction_keeps_working(varying, tmp_path):
    result = varying.result
    path = tmp_path / "summary.png"
    plot_subtraction(
        varying.pair.science.masked_image,
        result.warpedExposure.masked_image,
        result.subtractedExposure.masked_image,
        result.psfMatchingKernel,
        path,
    )
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["summary.png"]
