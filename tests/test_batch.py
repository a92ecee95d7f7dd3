"""Tests of diffim.batch: many pairs on a real process-based Dask cluster, and tiles.

The cluster tests use a module-scoped ``LocalCluster(n_workers=2, processes=True,
threads_per_worker=1)`` and 256² pairs, so they fit a 2-core CI machine; every wait on the
cluster has a Dask timeout of ``CLUSTER_TIMEOUT_S``.
"""

import argparse
import csv
import importlib
import io
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import diffim
from diffim import batch
from diffim.config import ImagePsfMatchConfig
from diffim.errors import DiffimValueError, PoorlyConstrainedWarning
from diffim.image import BBox
from diffim.simulate import simulate_pair, write_pair

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("dask.distributed")

CLUSTER_TIMEOUT_S = 120
#: Sparse, bright 256² fields: a few isolated kernel stars, low spatial orders.
SMALL_PAIR = {
    "shape": (256, 256),
    "n_stars": 80,
    "flux_min": 2e4,
    "flux_max": 3e5,
    "n_galaxies": 2,
}
ORDER_1 = "spatialKernelOrder=1;spatialBgOrder=1"
ORDER_0 = "spatialKernelOrder=0;spatialBgOrder=0"
#: seed -> per-row config of the good pairs.
GOOD_SEEDS = {1: ORDER_1, 6: ORDER_1, 2: ORDER_0, 3: ORDER_0}
ARTEFACT_PLANES = ["BAD", "SAT", "CR", "NO_DATA", "EDGE"]


@pytest.fixture(scope="module")
def manifest_rows(tmp_path_factory):
    """Four good pairs (two with default output names) and two broken ones."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for seed, overrides in GOOD_SEEDS.items():
        paths = write_pair(simulate_pair(seed=seed, **SMALL_PAIR), root / f"pair{seed}")
        science = paths["science"].rename(root / f"science{seed}.fits")
        rows.append(
            {"science": str(science), "template": str(paths["template"]), "config": overrides}
        )
    rows[0]["output"], rows[1]["output"] = "first.fits", "second.fits"
    garbage = root / "garbage.fits"
    garbage.write_text("this is not a FITS file\n")
    rows.append({"science": str(garbage), "template": rows[0]["template"]})
    no_stars = simulate_pair(
        seed=5,
        **{**SMALL_PAIR, "n_stars": 0, "n_galaxies": 0, "n_transients": 0, "n_variables": 0},
    )
    paths = write_pair(no_stars, root / "empty")
    rows.append({"science": str(paths["science"]), "template": str(paths["template"])})
    rows[-1]["output"] = "empty.fits"
    return rows


@pytest.fixture(scope="module")
def client():
    """A real two-process local cluster, warmed up (diffim imported on both workers)."""
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    )
    with cluster, distributed.Client(cluster, timeout=CLUSTER_TIMEOUT_S) as dask_client:
        dask_client.wait_for_workers(2, timeout=CLUSTER_TIMEOUT_S)
        dask_client.run(importlib.import_module, "diffim.task")
        yield dask_client


def reference(row):
    """One manifest row through a single-process `diffim.subtract`: the difference, and
    the warnings issued, as the summary's ``warnings`` column lists them."""
    config = ImagePsfMatchConfig()
    config.apply_overrides(row["config"].split(";"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = diffim.subtract(row["science"], row["template"], config=config)
    issued = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)
    return result.subtractedExposure, " | ".join(issued)


@pytest.fixture(scope="module")
def references(manifest_rows):
    return [reference(row) for row in manifest_rows[:4]]


def assert_same_pixels(exposure, other):
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(
            getattr(exposure.masked_image, plane), getattr(other.masked_image, plane)
        )


def assert_file_holds(path, exposure):
    """The IMAGE, MASK and VARIANCE HDUs of ``path`` equal the exposure's planes (files
    hold every non-finite value as NaN, FITS's undefined value)."""
    with fits.open(path) as hdulist:
        for plane in ("image", "mask", "variance"):
            expected = getattr(exposure.masked_image, plane)
            if expected.dtype.kind == "f":
                expected = np.where(np.isfinite(expected), expected, np.nan)
            np.testing.assert_array_equal(hdulist[plane.upper()].data, expected)


def temp_files(folder):
    return sorted(Path(folder).glob(".*.tmp"))


# -- manifests ---------------------------------------------------------------------------------
def test_csv_manifest_paths_outputs_and_overrides(tmp_path):
    """Relative inputs start from the manifest's folder, outputs from out_dir; the
    default output is <science stem>.diff.fits; config cells split on ';'."""
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "science,template,output,config\n"
        "a/sci1.fits,a/tmpl1.fits,,kernelSize=25; spatialKernelOrder=1\n"
        "/data/sci2.fits.fz,/data/tmpl2.fits,custom/out.fits,\n"
    )
    pairs = batch.read_manifest(manifest, tmp_path / "out")
    assert pairs[0].science == str(tmp_path / "a" / "sci1.fits")
    assert pairs[0].output == str(tmp_path / "out" / "sci1.diff.fits")
    assert pairs[0].overrides == ("kernelSize=25", "spatialKernelOrder=1")
    assert pairs[1].science == "/data/sci2.fits.fz"
    assert pairs[1].output == str(tmp_path / "out" / "custom" / "out.fits")
    assert pairs[1].overrides == ()
    table = Table({"science": ["s.fits"], "template": ["t.fits"]})
    assert batch.read_manifest(table, "out")[0].output == os.path.abspath("out/s.diff.fits")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "has no rows"),
        ([{"science": "a.fits"}], "needs both 'science' and 'template'"),
        (
            [{"science": "x/a.fits", "template": "t"}, {"science": "y/a.fits", "template": "t"}],
            "give each row its own 'output'",
        ),
    ],
)
def test_bad_manifests_are_refused(rows, match, tmp_path):
    with pytest.raises(DiffimValueError, match=match):
        batch.read_manifest(rows, tmp_path)


def test_parquet_manifest_without_pyarrow_says_what_to_install(tmp_path):
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed")
    with pytest.raises(DiffimValueError, match="pip install pyarrow"):
        batch.read_manifest(tmp_path / "pairs.parquet", tmp_path)


# -- outputs and resume ----------------------------------------------------------------------
def test_output_state_recognises_only_complete_diffim_outputs(tmp_path):
    """A missing, non-diffim, truncated or other-config file is never "complete"."""
    assert batch.output_state(tmp_path / "none.fits")[0] == "missing"
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(plain)
    assert batch.output_state(plain)[0] == "foreign"
    paths = write_pair(simulate_pair(seed=1, **SMALL_PAIR), tmp_path)
    row = batch.subtract_pair(
        str(paths["science"]),
        str(paths["template"]),
        str(tmp_path / "diff.fits"),
        ORDER_1.split(";"),
        ImagePsfMatchConfig().to_dict(),
    )
    assert row["status"] == "ok", row["error"]
    state, header = batch.output_state(tmp_path / "diff.fits")
    assert state == "complete"
    assert header["nCandidates"] == row["nCandidates"]
    assert batch.output_state(tmp_path / "diff.fits", key="another")[0] == "stale"
    data = (tmp_path / "diff.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) - 5000])
    assert batch.output_state(tmp_path / "cut.fits")[0] == "foreign"


def test_foreign_file_at_an_output_path_is_not_replaced(manifest_rows, tmp_path):
    """A file that is not a diffim output is never overwritten without force (and the
    run starts no cluster when nothing is left to compute)."""
    foreign = tmp_path / "first.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(foreign)
    summary = batch.run(manifest_rows[:1], tmp_path)
    expected = "is not a diffim output; pass force=True (--force) to replace it"
    assert summary["error"][0].endswith(expected)
    assert fits.getdata(foreign).shape == (4, 4)


def test_run_matches_single_process_and_resumes(client, manifest_rows, references, tmp_path):
    """Every good output equals a single-process diffim.subtract pixel for pixel (and
    lists its warnings); broken pairs fail with their error and do not stop the others; a
    re-run skips the completed pairs."""
    summary = batch.run(manifest_rows, tmp_path, client=client)
    assert list(summary["status"]) == ["ok"] * 4 + ["failed"] * 2
    assert summary["error"][4].startswith("DiffimIOError: cannot read")
    assert "not a FITS file" in summary["error"][4] or "SIMPLE" in summary["error"][4]
    assert summary["error"][5].startswith("InsufficientKernelSourcesError: ")
    assert summary["output"][2] == str(tmp_path / "science2.diff.fits")
    for (expected, issued), row in zip(references, summary[:4], strict=True):
        assert_file_holds(row["output"], expected)
        assert row["warnings"] == issued
    with (tmp_path / "summary.csv").open() as stream:
        on_disk = list(csv.DictReader(stream))
    assert [r["status"] for r in on_disk] == list(summary["status"])
    assert temp_files(tmp_path) == []

    again = batch.run(manifest_rows, tmp_path, client=client)
    assert list(again["status"]) == ["skipped"] * 4 + ["failed"] * 2
    assert list(again["nCandidates"][:4]) == list(summary["nCandidates"][:4])
    refused = batch.run(manifest_rows[:4], tmp_path, client=client, resume=False)
    assert all("exists; pass force=True" in error for error in refused["error"])


def test_changed_config_or_force_recomputes(client, manifest_rows, tmp_path):
    """A resumed pair is redone when its config changed (its output is stale) or with force."""
    row = dict(manifest_rows[0])
    assert batch.run([row], tmp_path, client=client)["status"][0] == "ok"
    assert batch.run([row], tmp_path, client=client)["status"][0] == "skipped"
    assert batch.run([row], tmp_path, client=client, force=True)["status"][0] == "ok"
    key = fits.getval(tmp_path / "first.fits", batch.KEY_CARD)
    row["config"] = ORDER_0
    assert batch.run([row], tmp_path, client=client)["status"][0] == "ok"
    assert fits.getval(tmp_path / "first.fits", batch.KEY_CARD) != key


def test_bad_override_fails_only_its_row(client, manifest_rows, tmp_path):
    rows = [dict(manifest_rows[0], config="kernelSise=25"), manifest_rows[4]]
    summary = batch.run(rows, tmp_path, client=client)
    assert summary["error"][0].startswith("DiffimConfigError:")
    assert "kernelSize" in summary["error"][0]
    assert summary["error"][1].startswith("DiffimIOError:")


def test_killed_worker_is_replaced_and_leaves_no_partial_file(client, manifest_rows, tmp_path):
    """A worker process that dies (SIGKILL) while running a pair: Dask re-runs the task
    elsewhere, every good pair completes once, and no temporary file stays behind."""
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = tmp_path / "killed.pid"

    class KillOnce(WorkerPlugin):  # defined here so that it is pickled by value
        def __init__(self, path):
            self.path = str(path)

        def transition(self, key, start, finish, **kwargs):
            if finish != "executing" or "subtract_pair" not in str(key):
                return
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            os.kill(os.getpid(), signal.SIGKILL)

    out = tmp_path / "out"
    out.mkdir()
    stray = out / ".first.fits.interrupted.tmp"  # what a write killed midway leaves
    stray.write_bytes(b"SIMPLE  =")
    client.register_plugin(KillOnce(marker), name="kill-once")
    try:
        summary = batch.run(manifest_rows[:2], out, client=client)
    finally:
        client.unregister_worker_plugin("kill-once")
        client.wait_for_workers(2, timeout=CLUSTER_TIMEOUT_S)
    killed_pid = int(marker.read_text())
    assert killed_pid not in client.run(os.getpid).values()
    assert list(summary["status"]) == ["ok"] * 2
    assert all(batch.output_state(path)[0] == "complete" for path in summary["output"])
    assert temp_files(out) == []


def test_own_local_cluster_is_sized_and_closed(manifest_rows, tmp_path, monkeypatch):
    """Without a client, run starts a process-based LocalCluster of n_workers workers with
    one thread each, re-running a task whose worker died up to max_retries times, and
    closes it.  (Here the cluster is built with threads, to start in a second.)"""
    started = []

    def local_cluster(**options):
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        started.append((options, environ, real_cluster(**{**options, "processes": False})))
        return started[-1][2]

    real_cluster = distributed.LocalCluster
    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    summary = batch.run(manifest_rows[4:5], tmp_path, n_workers=1, max_retries=1)
    assert summary["error"][0].startswith("DiffimIOError: cannot read")
    ((options, environ, cluster),) = started
    assert options["n_workers"] == 1
    assert options["processes"] is True
    assert options["threads_per_worker"] == 1
    assert environ["MALLOC_TRIM_THRESHOLD_"] is None  # unset: large arrays stay fast
    assert cluster.scheduler.allowed_failures == 1
    assert cluster.status.name == "closed"


# -- command line --------------------------------------------------------------------------
def test_batch_command_reports_failures_with_exit_status_1(
    client, manifest_rows, tmp_path, capsys
):
    manifest = tmp_path / "pairs.csv"
    Table(manifest_rows[4:6], names=["science", "template", "output"]).write(manifest)
    parser = argparse.ArgumentParser()
    batch.add_batch_arguments(parser)
    address = client.scheduler.address
    args = parser.parse_args([str(manifest), "--out", str(tmp_path / "o"), "--scheduler", address])
    assert batch.run_batch_command(args) == 1
    assert capsys.readouterr().out.endswith("summary.csv: 2 failed\n")
    args = parser.parse_args(
        [str(manifest), "--out", "o", "--scheduler", address, "--workers", "2"]
    )
    with pytest.raises(DiffimValueError, match="drop them with --scheduler"):
        batch.run_batch_command(args)


@pytest.mark.parametrize(("text", "tiles"), [("2x3", (2, 3)), ("1X1", (1, 1))])
def test_parse_tiles(text, tiles):
    assert batch.parse_tiles(text) == tiles


@pytest.mark.parametrize("text", ["2", "0x2", "2x", "axb", "2x2x2"])
def test_parse_tiles_refuses_bad_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NYxNX"):
        batch.parse_tiles(text)


def test_progress_line_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expected in ((Terminal(), "2/2 (1 failed, 1 ok)"), (io.StringIO(), "")):
        monkeypatch.setattr("sys.stderr", stream)
        monkeypatch.setitem(__import__("sys").modules, "tqdm", None)
        bar = batch._Progress(2, enabled=True)
        bar.update("ok")
        bar.update("failed")
        bar.close()
        assert expected in stream.getvalue()
        assert bool(stream.getvalue()) == bool(expected)


# -- tiles ---------------------------------------------------------------------------------------
def test_tile_layout_partitions_the_image():
    bbox = BBox(10, 20, 101, 50)
    layout = batch.tile_layout(bbox, (2, 3), margin=7)
    covered = np.zeros(bbox.shape, dtype=int)
    for interior, box in layout:
        covered[interior.slices(xy0=(10, 20))] += 1
        assert box == interior.grown(7).intersection(bbox)
    assert np.all(covered == 1)
    assert {interior.width for interior, _ in layout} <= {33, 34}
    with pytest.raises(DiffimValueError, match="into 51x1 tiles"):
        batch.tile_layout(bbox, (51, 1), margin=7)


def test_one_tile_equals_subtract():
    """A 1x1 tiling is the untiled subtraction, pixel for pixel."""
    pair = simulate_pair(seed=1, **SMALL_PAIR)
    overrides = {"spatialKernelOrder": 1, "spatialBgOrder": 1}
    tiled = batch.subtract_tiled(pair.science, pair.template, tiles=(1, 1), **overrides)
    untiled = diffim.subtract(pair.science, pair.template, **overrides)
    assert_same_pixels(tiled, untiled.subtractedExposure)


@pytest.fixture(scope="module")
def tiled_pair():
    """A 512² pair, its 2x2-tiled difference (serial) and its untiled difference."""
    pair = simulate_pair(
        **{**SMALL_PAIR, "shape": (512, 512), "n_stars": 200, "n_galaxies": 4}, seed=2
    )
    tiled = batch.subtract_tiled(pair.science, pair.template, tiles=(2, 2), spatialKernelOrder=1)
    untiled = diffim.subtract(pair.science, pair.template, spatialKernelOrder=1)
    return pair, tiled, untiled.subtractedExposure


def test_tile_seams_are_invisible(tiled_pair):
    """D/sqrt(var) within ±5 px of the seams has the robust std of the rest (within 5 %)
    and the same median within 5 standard errors; the stitched image is NaN only where
    the untiled one is."""
    _, tiled, untiled = tiled_pair
    difference = tiled.masked_image
    with np.errstate(divide="ignore", invalid="ignore"):
        z = difference.image / np.sqrt(difference.variance)
    good = np.isfinite(z) & ((difference.mask & difference.bitmask(ARTEFACT_PLANES)) == 0)
    yy, xx = np.indices(z.shape)
    band = (np.abs(yy - 255.5) <= 5) | (np.abs(xx - 255.5) <= 5)
    seam, rest = z[good & band], z[good & ~band]

    def robust_std(values):
        return 1.4826 * np.median(np.abs(values - np.median(values)))

    assert robust_std(seam) == pytest.approx(robust_std(rest), rel=0.05)
    standard_error = 1.2533 * np.sqrt(1 / seam.size + 1 / rest.size)  # of a median, sigma 1
    assert abs(np.median(seam) - np.median(rest)) < 5 * standard_error
    new_nan = np.isnan(difference.image) & ~np.isnan(untiled.masked_image.image)
    assert not new_nan.any()
    assert tiled.metadata["TILES"] == "2x2"
    assert tiled.metadata["TILEMARG"] == 62  # 2 * (10 + 21) for the 21-px kernel


def test_tiles_on_dask_equal_serial_tiles(client, tiled_pair):
    pair, serial, _ = tiled_pair
    on_dask = batch.subtract_tiled(
        pair.science, pair.template, tiles=(2, 2), client=client, spatialKernelOrder=1
    )
    assert_same_pixels(on_dask, serial)


def test_tile_warnings_are_issued_once_per_category_naming_the_tiles():
    """The default order-2 kernel is poorly constrained on 128² tiles: one warning, here."""
    pair = simulate_pair(seed=1, **SMALL_PAIR)
    with pytest.warns(PoorlyConstrainedWarning, match=r"^tile BBox\(x_min=0, y_min=0") as caught:
        batch.subtract_tiled(pair.science, pair.template, tiles=(2, 2))
    assert [w.category for w in caught] == [PoorlyConstrainedWarning]
    assert caught[0].filename == __file__


def test_tile_margin_below_the_kernel_half_width_is_refused():
    pair = simulate_pair(seed=1, **SMALL_PAIR)
    with pytest.raises(DiffimValueError, match="below the kernel half-width"):
        batch.subtract_tiled(pair.science, pair.template, tiles=(2, 2), margin=3)
