"""The package namespace: every public name resolves, and light entry points stay light.

``diffim/__init__.py`` imports its public names on first use (PEP 562), so that the
``diffim`` command loads only what the subtract path needs.  These tests check that the
lazy names are the real objects and that the heavy optional imports stay off that path.
"""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import diffim

#: Imported only on the code paths that need them (warping, simulation, config files).
OFF_THE_SUBTRACT_PATH = (
    "astropy.wcs",
    "astropy.coordinates",
    "scipy.ndimage",
    "scipy.interpolate",
    "yaml",
)


@pytest.mark.parametrize("name", diffim.__all__)
def test_every_public_name_resolves_to_its_defining_object(name):
    value = getattr(diffim, name)
    namespace = {}
    exec(f"from diffim import {name} as value", namespace)
    assert namespace["value"] is value
    module_name = diffim._LAZY_NAMES.get(name)
    if module_name is not None:
        module = importlib.import_module(f"diffim.{module_name}")
        assert getattr(module, name) is value


def test_submodules_are_attributes_and_unknown_names_raise():
    assert diffim.io is importlib.import_module("diffim.io")
    assert set(diffim.__all__) <= set(dir(diffim))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = diffim.no_such_name


def test_star_import_gives_all_names():
    namespace = {}
    exec("from diffim import *", namespace)
    assert set(diffim.__all__) <= set(namespace)


def test_subtracting_an_aligned_pair_on_the_command_line_imports_no_astropy_wcs_nor_table(
    tmp_path,
):
    """Both files carry the same WCS cards: the registration check compares the cards,
    nothing builds a WCS, and the difference is written with the science cards.  The
    detections travel as a `SourceCatalog`, so astropy.table is not imported either."""
    from diffim.simulate import simulate_pair, write_pair

    pair = simulate_pair(shape=(256, 256), seed=4, n_stars=150, flux_ratio=1.1)
    paths = write_pair(pair, tmp_path)
    output = tmp_path / "difference.fits"
    arguments = ["subtract", str(paths["science"]), str(paths["template"]), "-o", str(output)]
    code = (
        "import sys; from diffim.cli import main; "
        f"status = main({[*arguments, '-q']!r}); "
        "print(status, [m for m in ('astropy.wcs', 'astropy.coordinates', 'astropy.table') "
        "if m in sys.modules])"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "0 []"
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(output) as difference:
        wcs = WCS(difference["IMAGE"].header)
    np.testing.assert_allclose(
        wcs.pixel_to_world_values([0.0, 255.0], [0.0, 200.0]),
        pair.science.wcs.pixel_to_world_values([0.0, 255.0], [0.0, 200.0]),
        rtol=0,
        atol=1e-12,
    )


def test_cli_and_reader_do_not_import_heavy_optional_modules():
    """``import diffim.cli, diffim.io`` (what ``diffim subtract`` loads before reading)
    leaves astropy.wcs, scipy.ndimage, scipy.interpolate and yaml unimported."""
    code = (
        "import sys, diffim, diffim.cli, diffim.io; "
        f"print(','.join(m for m in {OFF_THE_SUBTRACT_PATH!r} if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == ""


def test_the_command_line_parser_imports_neither_numpy_nor_astropy():
    """Building ``diffim``'s parser (``--help``, ``diffim config``) takes `diffim.batch`'s
    ``command`` module alone: the package's other names are imported on first use."""
    code = (
        "import sys; from diffim.cli import _parser; _parser(); import diffim.batch as b; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'astropy', 'dask')]; "
        "print(len(heavy), b.subtract_pair.__module__, 'numpy' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.split() == ["0", "diffim.batch.pair", "True"]
