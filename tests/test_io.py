"""Tests of diffim.io: FITS round trips, layouts, variance estimation, CCDData, errors."""

import logging
import os
import pickle

import astropy.units as u
import fitsio
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance, StdDevUncertainty
from astropy.wcs import WCS, Sip

from diffim.errors import (
    DiffimIOError,
    DiffimValueError,
    DiffimWarning,
    MaskedPixelsWarning,
    VarianceEstimatedWarning,
)
from diffim.image import BBox, Exposure, MaskedImage
from diffim.io import (
    Header,
    HeaderWcs,
    atomic_write_hdulist,
    check_not_input,
    exposure_to_hdulist,
    from_ccddata,
    read_exposure,
    to_ccddata,
    write_exposure,
)

SHAPE = (40, 50)  # (ny, nx)


def make_wcs(sip=False):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [30.5, 20.5]
    wcs.wcs.cd = [[-5.5e-5, 1e-6], [2e-6, 5.5e-5]]
    if sip:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a, b = np.zeros((3, 3)), np.zeros((3, 3))
        a[2, 0], b[0, 2], a[1, 1] = 2e-5, -1e-5, 3e-6
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def make_masked_image(dtype=np.float32, seed=1, xy0=(0, 0)):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, SHAPE).astype(dtype)
    variance = rng.uniform(20.0, 30.0, SHAPE).astype(dtype)
    masked = MaskedImage(image, None, variance, xy0=xy0)
    masked.mask[:] = rng.integers(0, 1 << 9, SHAPE, dtype=np.int32)
    masked.set_mask_plane("FAKE_SOURCE_INJECTED", rng.random(SHAPE) < 0.1)
    return masked


def write_plain(path, data, header=None):
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_pixels_and_every_mask_bit(tmp_path, dtype):
    masked = make_masked_image(dtype, xy0=(17, -4))
    path = tmp_path / "exposure.fits"
    write_exposure(masked, path)
    result = read_exposure(path).masked_image
    assert result.dtype == dtype
    assert result.mask.dtype == np.int32
    np.testing.assert_array_equal(result.image, masked.image)
    np.testing.assert_array_equal(result.variance, masked.variance)
    np.testing.assert_array_equal(result.mask, masked.mask)
    assert result.planes == masked.planes
    assert result.planes.bit("FAKE_SOURCE_INJECTED") == 9
    assert result.xy0 == (17, -4)
    assert result.image.dtype.isnative  # sep needs native byte order


def test_file_layout_is_lsst_style(tmp_path):
    path = tmp_path / "exposure.fits"
    write_exposure(make_masked_image(xy0=(5, 7)), path, header_extra={"OBSERVER": "me"})
    with fits.open(path) as hdulist:
        assert [hdu.name for hdu in hdulist] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert hdulist[0].data is None
        assert hdulist[0].header["OBSERVER"] == "me"
        mask_header = hdulist["MASK"].header
        assert mask_header["MP_DETECTED_NEGATIVE"] == 6
        assert mask_header["MP_FAKE_SOURCE_INJECTED"] == 9
        assert (hdulist["IMAGE"].header["LTV1"], hdulist["IMAGE"].header["LTV2"]) == (-5, -7)
        assert hdulist["IMAGE"].header["CRVAL1A"] == 5


def test_header_cards_lookup_and_astropy_round_trip():
    """Keywords are looked up without regard to case, the first card of a repeated keyword
    wins, commentary cards accumulate, and astropy headers convert both ways."""
    header = Header([("GAIN", 2.0, "e-/ADU"), ("spatialKernelSum", 0.98, "")])
    header["COMMENT"] = "first"
    header["COMMENT"] = "second"
    header["gain"] = (2.5, "updated")
    header.append("GAIN", 9.0)
    assert header["Gain"] == 2.5
    assert header["SPATIALKERNELSUM"] == 0.98
    assert "HIERARCH spatialKernelSum" in header
    assert list(header) == ["GAIN", "spatialKernelSum", "COMMENT"]
    assert [card for card in header.cards if card[0] == "COMMENT"] == [
        ("COMMENT", "first", ""),
        ("COMMENT", "second", ""),
    ]
    converted = header.to_astropy()
    assert converted["spatialKernelSum"] == 0.98
    assert converted.comments["GAIN"] == "updated"
    assert list(converted["COMMENT"]) == ["first", "second"]
    assert Header.from_astropy(converted).cards == header.cards


def test_cards_fits_cannot_hold_are_skipped_with_a_warning(tmp_path, caplog):
    """A metadata keyword with '=' or a card longer than 80 characters is not written (cfitsio
    would fail the whole file, or truncate the value silently); the rest is."""
    metadata = {"bad key=1": 3, "k" * 60: "x" * 10, "good key": "x" * 10, "GAINCOR": 1.5}
    path = tmp_path / "cards.fits"
    with caplog.at_level("WARNING", logger="diffim.io"):
        write_exposure(Exposure(make_masked_image(), metadata=metadata), path)
    written = read_exposure(path).metadata
    assert written["good key"] == "x" * 10
    assert written["GAINCOR"] == 1.5
    assert "bad key=1" not in written
    assert "k" * 60 not in written
    assert caplog.text.count("a HIERARCH card holds at most 80 characters") == 2


def test_blank_keyword_cards_are_read(tmp_path):
    """A header with blank-keyword (commentary) cards, common in observatory files, reads."""
    header = fits.Header([("OBJECT", "M31", ""), ("", "------ exposure ------", "")])
    path = tmp_path / "blank.fits"
    fits.PrimaryHDU(np.ones(SHAPE, dtype=np.float32), header=header).writeto(path)
    with pytest.warns(VarianceEstimatedWarning):
        exposure = read_exposure(path, gain=2.0)
    assert exposure.metadata["OBJECT"] == "M31"
    write_exposure(exposure, tmp_path / "out.fits")
    assert read_exposure(tmp_path / "out.fits").metadata["OBJECT"] == "M31"


def test_metadata_round_trip(tmp_path):
    exposure = Exposure(
        make_masked_image(),
        gain=1.7,
        saturation=60000.0,
        zero_point=27.5,
        filter_name="r",
        metadata={
            "AIRMASS": 1.2,
            "spatialKernelSum": 0.98,
            "BADVALUE": float("nan"),
            "ALBasisDegGauss": [4, 2, 2],
        },
    )
    path = tmp_path / "exposure.fits"
    write_exposure(exposure, path, header_extra={"AIRMASS": 1.3})
    result = read_exposure(path)
    assert (result.gain, result.saturation) == (1.7, 60000.0)
    assert (result.zero_point, result.filter_name) == (27.5, "r")
    assert result.metadata["AIRMASS"] == 1.3  # header_extra overrides metadata
    assert result.metadata["spatialKernelSum"] == 0.98
    assert result.metadata["BADVALUE"] == "nan"  # FITS has no NaN: written as a string
    assert result.metadata["ALBasisDegGauss"] == "4,2,2"
    with fits.open(path) as hdulist:  # HIERARCH keywords keep their case in the file
        assert "HIERARCH spatialKernelSum = 0.98" in hdulist[0].header.tostring()


@pytest.mark.parametrize("sip", [False, True])
def test_wcs_round_trip_of_cutout_keeps_parent_coordinates(tmp_path, sip):
    parent = Exposure(make_masked_image(), wcs=make_wcs(sip))
    cutout = parent.subimage(BBox(12, 9, 25, 20))
    path = tmp_path / "cutout.fits"
    write_exposure(cutout, path)
    result = read_exposure(path)
    x = np.array([12.0, 20.5, 36.0])
    y = np.array([9.0, 15.25, 28.0])
    expected = np.array(parent.wcs.pixel_to_world_values(x, y))
    got = np.array(result.wcs.pixel_to_world_values(x, y))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # A plain FITS viewer sees the cut-out's first pixel at the parent's (x0, y0).
    with fits.open(path) as hdulist:
        file_wcs = WCS(hdulist["IMAGE"].header)
    np.testing.assert_allclose(
        file_wcs.pixel_to_world_values(0, 0), parent.wcs.pixel_to_world_values(12, 9), atol=1e-12
    )


def test_header_without_celestial_wcs_gives_none(tmp_path):
    path = write_plain(tmp_path / "plain.fits", np.ones(SHAPE), fits.Header({"GAIN": 2.0}))
    with pytest.warns(VarianceEstimatedWarning):
        assert read_exposure(path).wcs is None


def write_calexp(path, masked, *, named=True):
    """Simulate an LSST calexp: primary + image/mask/variance + binary tables."""
    table = fits.BinTableHDU.from_columns([fits.Column("x", "D", array=np.arange(3.0))])
    names = ("IMAGE", "MASK", "VARIANCE") if named else (None, None, None)
    header = fits.Header()
    for name, bit in masked.planes.as_dict().items():
        header[f"HIERARCH MP_{name}"] = bit
    hdus = [
        fits.PrimaryHDU(header=fits.Header({"FILTER": "i", "GAIN": 1.1})),
        fits.ImageHDU(masked.image, name=names[0]),
        fits.ImageHDU(masked.mask, header=header, name=names[1]),
        fits.ImageHDU(masked.variance, name=names[2]),
        table,
        table.copy(),
    ]
    fits.HDUList(hdus).writeto(path)


@pytest.mark.parametrize("named", [True, False])
def test_calexp_with_extra_hdus(tmp_path, caplog, named):
    masked = make_masked_image()
    path = tmp_path / "calexp.fits"
    write_calexp(path, masked, named=named)
    with caplog.at_level(logging.DEBUG, logger="diffim.io"):
        result = read_exposure(path)
    assert "ignoring 2 extra HDUs" in caplog.text
    np.testing.assert_array_equal(result.masked_image.variance, masked.variance)
    np.testing.assert_array_equal(result.masked_image.mask, masked.mask)
    assert (result.filter_name, result.gain) == ("i", 1.1)


def test_tile_compressed_lsst_file(tmp_path):
    masked = make_masked_image()
    path = tmp_path / "calexp.fits.fz"
    hdus = [fits.PrimaryHDU()]
    for name, data in (
        ("IMAGE", masked.image),
        ("MASK", masked.mask),
        ("VARIANCE", masked.variance),
    ):
        hdus.append(fits.CompImageHDU(data, name=name, compression_type="RICE_1"))
    fits.HDUList(hdus).writeto(path)
    result = read_exposure(path).masked_image
    np.testing.assert_array_equal(result.mask, masked.mask)  # integers compress losslessly
    # Rice quantizes floats to about sigma/16 of the noise; sigma here is ~5 ADU.
    np.testing.assert_allclose(result.image, masked.image, atol=1.0)
    np.testing.assert_allclose(result.variance, masked.variance, atol=0.5)
    assert result.dtype == np.float32


def test_plain_image_with_separate_variance_and_mask(tmp_path):
    masked = make_masked_image()
    image = write_plain(tmp_path / "image.fits", masked.image)
    variance = write_plain(tmp_path / "variance.fits", masked.variance)
    header = fits.Header({"MP_BAD": 0, "MP_SAT": 1, "MP_CR": 3})
    mask = write_plain(tmp_path / "mask.fits", np.array([[1, 2, 8, 0]] * 10), header)
    with pytest.raises(DiffimIOError, match=r"mask\.fits has shape \(10, 4\)"):
        read_exposure(image, variance=variance, mask=mask)
    mask_values = np.where(masked.image > 105, 8, 0).astype(np.int16)
    mask = write_plain(tmp_path / "mask2.fits", mask_values, header)
    result = read_exposure(image, variance=variance, mask=mask).masked_image
    np.testing.assert_array_equal(result.variance, masked.variance)
    np.testing.assert_array_equal(result.mask_plane("CR"), masked.image > 105)
    assert result.planes.bit("CR") == 3


def test_mask_file_without_plane_names_marks_bad(tmp_path):
    masked = make_masked_image()
    image = write_plain(tmp_path / "image.fits", masked.image)
    mask = write_plain(tmp_path / "mask.fits", np.where(masked.image > 105, 7, 0).astype(np.uint8))
    result = read_exposure(image, variance=masked.variance, mask=mask).masked_image
    np.testing.assert_array_equal(result.mask_plane("BAD"), masked.image > 105)
    assert set(np.unique(result.mask)) <= {0, 1}


@pytest.mark.parametrize(("kind", "transform"), [("weight", np.reciprocal), ("sigma", np.sqrt)])
def test_weight_and_sigma_maps(tmp_path, kind, transform):
    masked = make_masked_image(np.float64)
    image = write_plain(tmp_path / "image.fits", masked.image)
    noise_map = write_plain(tmp_path / f"{kind}.fits", transform(masked.variance))
    result = read_exposure(image, **{kind: noise_map}).masked_image
    np.testing.assert_allclose(result.variance, masked.variance, rtol=1e-12)


def test_zero_weight_is_no_data(tmp_path):
    masked = make_masked_image(np.float64)
    weight = 1.0 / masked.variance
    weight[3, 4] = 0.0
    image = write_plain(tmp_path / "image.fits", masked.image)
    with pytest.warns(MaskedPixelsWarning, match=r"image\.fits: 1 pixels") as record:
        result = read_exposure(image, weight=weight).masked_image
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert weight[3, 4] == 0.0  # the input array is not modified
    assert result.mask_plane("NO_DATA")[3, 4]
    assert result.image[3, 4] == 0
    assert result.variance[3, 4] == 0


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("gain", -1.0, "gain must be a positive number of e-/ADU"),
        ("gain", float("nan"), "gain must be a positive number"),
        ("saturation", float("nan"), "saturation must be a positive number"),
        ("saturation", 0.0, "saturation must be a positive number"),
    ],
)
def test_bad_gain_or_saturation_is_named(tmp_path, option, value, match):
    """A NaN saturation would mark every star saturated and leave none for the kernel."""
    image = write_plain(tmp_path / "image.fits", np.ones(SHAPE))
    with pytest.raises(DiffimValueError, match=match):
        read_exposure(image, **{option: value})


def test_more_than_one_noise_map_is_an_error(tmp_path):
    image = write_plain(tmp_path / "image.fits", np.ones(SHAPE))
    with pytest.raises(DiffimValueError, match="at most one of variance=, weight=, sigma="):
        read_exposure(image, variance=np.ones(SHAPE), sigma=np.ones(SHAPE))


def test_variance_estimated_from_gain(tmp_path):
    """Poisson image: sky 1000 ADU, gain 2 e-/ADU, read noise 6 e- -> sky variance
    1000/2 + (6/2)**2 = 509 ADU**2; a 20000 ADU star pixel has variance ~ 21000/2 + 9."""
    rng = np.random.default_rng(3)
    gain, read_noise = 2.0, 6.0
    truth = np.full((200, 200), 1000.0)
    truth[100, 100] = 21000.0
    electrons = rng.poisson(truth * gain) + rng.normal(0.0, read_noise, truth.shape)
    header = fits.Header({"GAIN": gain, "RDNOISE": read_noise})
    path = write_plain(tmp_path / "raw.fits", (electrons / gain).astype(np.float32), header)
    with pytest.warns(VarianceEstimatedWarning, match=r"raw\.fits.*gain 2 e-/ADU"):
        exposure = read_exposure(path)
    variance = exposure.masked_image.variance
    assert exposure.metadata["VARSRC"] == "gain"
    assert exposure.gain == gain
    assert np.median(variance) == pytest.approx(509.0, rel=0.01)
    assert variance[100, 100] == pytest.approx(10509.0, rel=0.03)
    assert np.var(exposure.masked_image.image[:90]) == pytest.approx(509.0, rel=0.03)


def test_variance_of_a_background_subtracted_image(tmp_path):
    """Sky 1000 ADU subtracted before writing: the gain model alone would give a sky
    variance of (6/2)**2 = 9 ADU**2; the measured 509 is used, plus the star's Poisson term."""
    rng = np.random.default_rng(5)
    gain, read_noise = 2.0, 6.0
    truth = np.full((200, 200), 1000.0)
    truth[100, 100] = 21000.0
    electrons = rng.poisson(truth * gain) + rng.normal(0.0, read_noise, truth.shape)
    image = (electrons / gain - 1000.0).astype(np.float32)
    path = write_plain(
        tmp_path / "skysub.fits", image, fits.Header({"GAIN": gain, "RDNOISE": read_noise})
    )
    with pytest.warns(VarianceEstimatedWarning, match="background-subtracted"):
        exposure = read_exposure(path)
    variance = exposure.masked_image.variance
    assert exposure.metadata["VARSRC"] == "gain+sky-noise"
    assert np.median(variance) == pytest.approx(509.0, rel=0.03)
    assert variance[100, 100] == pytest.approx(10509.0, rel=0.05)


def test_variance_estimated_from_sky_noise(tmp_path):
    """Gaussian noise of sigma 5 plus a few bright stars: variance 25 within 3%."""
    rng = np.random.default_rng(4)
    image = rng.normal(300.0, 5.0, (200, 200))
    image[rng.integers(0, 200, 30), rng.integers(0, 200, 30)] += 5000.0
    path = write_plain(tmp_path / "nogain.fits", image)
    with pytest.warns(VarianceEstimatedWarning, match=r"nogain\.fits.*sky noise"):
        exposure = read_exposure(path)
    assert exposure.metadata["VARSRC"] == "sky-noise"
    np.testing.assert_allclose(exposure.masked_image.variance, 25.0, rtol=0.03)
    output = tmp_path / "out.fits"
    write_exposure(exposure, output)
    assert fits.getheader(output)["VARSRC"] == "sky-noise"


def test_non_finite_pixels_masked_with_warning(tmp_path):
    masked = make_masked_image()
    masked.image[0, :3] = np.nan
    masked.image[5, 5] = np.inf
    masked.mask[0, :3] = masked.mask[5, 5] = 0  # pixels already NO_DATA are not counted
    masked.mask[0, 0] = 1 << masked.planes.bit("NO_DATA")
    path = tmp_path / "nan.fits"
    write_exposure(masked, path)
    with pytest.warns(MaskedPixelsWarning, match=r"nan\.fits: 3 pixels"):
        result = read_exposure(path).masked_image
    assert result.mask_plane("NO_DATA")[0, :3].all()
    assert result.mask_plane("NO_DATA")[5, 5]
    assert np.isfinite(result.image).all()
    assert result.variance[5, 5] == 0


def test_select_hdu_by_name(tmp_path):
    path = tmp_path / "multi.fits"
    images = [np.full(SHAPE, 1.0), np.full(SHAPE, 2.0)]
    fits.HDUList([fits.PrimaryHDU(images[0]), fits.ImageHDU(images[1], name="SCI")]).writeto(path)
    result = read_exposure(path, hdu="SCI", variance=np.ones(SHAPE))
    assert (result.masked_image.image == 2.0).all()
    with pytest.raises(DiffimIOError, match=r"multi\.fits has no HDU 'NOPE'"):
        read_exposure(path, hdu="NOPE")


# -- errors ---------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DiffimIOError, match=r"missing\.fits does not exist"):
        read_exposure(tmp_path / "missing.fits")


def test_not_a_fits_file(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is not FITS\n" * 300)
    with pytest.raises(DiffimIOError, match=r"cannot read .*notes\.fits: not a FITS file"):
        read_exposure(path)


def test_file_without_image(tmp_path):
    path = tmp_path / "table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column("x", "D", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(DiffimIOError, match=r"table\.fits has no 2-d image"):
        read_exposure(path)


def test_plane_shape_mismatch(tmp_path):
    hdulist = exposure_to_hdulist(make_masked_image())
    hdulist["VARIANCE"].data = np.ones((3, 3), dtype=np.float32)
    path = tmp_path / "mismatch.fits"
    hdulist.writeto(path)
    with pytest.raises(DiffimIOError, match=r"mismatch\.fits.*\(3, 3\).*\(40, 50\)"):
        read_exposure(path)


def test_negative_variance(tmp_path):
    masked = make_masked_image()
    masked.variance[2, 2] = -1.0
    path = tmp_path / "negative.fits"
    write_exposure(masked, path)
    with pytest.raises(DiffimIOError, match=r"negative\.fits\[VARIANCE\]: 1 variance values"):
        read_exposure(path)


# -- writing --------------------------------------------------------------------------------
def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.fits"
    write_exposure(make_masked_image(seed=1), path)
    with pytest.raises(DiffimIOError, match=r"out\.fits already exists; pass overwrite=True"):
        write_exposure(make_masked_image(seed=2), path)
    write_exposure(make_masked_image(seed=2), path, overwrite=True)
    result = read_exposure(path).masked_image
    np.testing.assert_array_equal(result.image, make_masked_image(seed=2).image)
    assert os.listdir(tmp_path) == ["out.fits"]  # no temporary file left behind
    assert (path.stat().st_mode & 0o777) == 0o644


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_write(self, data, **kwargs):
        with open(self._filename, "ab") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fitsio.FITS, "write", broken_write)
    with pytest.raises(DiffimIOError, match=r"cannot write .*out\.fits: disk full"):
        write_exposure(make_masked_image(), tmp_path / "out.fits")
    assert os.listdir(tmp_path) == []


def test_write_into_missing_folder(tmp_path):
    hdulist = fits.HDUList([fits.PrimaryHDU()])
    with pytest.raises(DiffimIOError, match="does not exist; create it first"):
        atomic_write_hdulist(hdulist, tmp_path / "nope" / "out.fits")


def test_check_not_input(tmp_path):
    image = write_plain(tmp_path / "image.fits", np.ones(SHAPE))
    check_not_input(tmp_path / "diff.fits", [image, None, np.ones(3)])
    with pytest.raises(DiffimIOError, match="is also an input"):
        check_not_input(tmp_path / "sub" / ".." / "image.fits", [None, image])


# -- CCDData --------------------------------------------------------------------------------
def test_ccddata_round_trip(tmp_path):
    exposure = Exposure(make_masked_image(xy0=(3, 4)), wcs=make_wcs(), gain=1.5, filter_name="g")
    ccd = to_ccddata(exposure)
    assert isinstance(ccd.uncertainty.array, np.ndarray)
    np.testing.assert_array_equal(ccd.mask, exposure.masked_image.mask != 0)
    np.testing.assert_allclose(
        ccd.wcs.pixel_to_world_values(0, 0), exposure.wcs.pixel_to_world_values(3, 4)
    )
    result = from_ccddata(ccd)
    for plane in ("image", "mask", "variance"):
        np.testing.assert_array_equal(
            getattr(result.masked_image, plane), getattr(exposure.masked_image, plane)
        )
    assert result.masked_image.planes == exposure.masked_image.planes
    assert result.masked_image.xy0 == (3, 4)
    assert (result.gain, result.filter_name) == (1.5, "g")
    np.testing.assert_allclose(
        result.wcs.pixel_to_world_values(10, 12), exposure.wcs.pixel_to_world_values(10, 12)
    )
    ccd.write(tmp_path / "ccd.fits", hdu_flags="FLAGS")  # astropy can write it


@pytest.mark.parametrize(
    "uncertainty",
    [StdDevUncertainty(np.full(SHAPE, 2.0)), InverseVariance(np.full(SHAPE, 0.25))],
)
def test_from_ccddata_uncertainty_types_and_boolean_mask(uncertainty):
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1, 2] = True
    ccd = CCDData(np.ones(SHAPE, np.float32), unit=u.adu, uncertainty=uncertainty, mask=mask)
    masked = from_ccddata(ccd).masked_image
    np.testing.assert_allclose(masked.variance, 4.0)
    np.testing.assert_array_equal(masked.mask_plane("BAD"), mask)
    assert masked.dtype == np.float32


def test_from_ccddata_without_uncertainty_estimates_variance():
    rng = np.random.default_rng(5)
    ccd = CCDData(rng.normal(0.0, 3.0, (100, 100)), unit="adu")
    with pytest.warns(VarianceEstimatedWarning, match="CCDData has no variance"):
        exposure = from_ccddata(ccd)
    np.testing.assert_allclose(exposure.masked_image.variance, 9.0, rtol=0.05)


def test_plain_tile_compressed_image_in_first_extension(tmp_path):
    rng = np.random.default_rng(6)
    data = rng.normal(0.0, 4.0, (64, 64)).astype(np.float32)
    path = tmp_path / "plain.fits.fz"
    header = fits.Header({"FILTER": "z"})
    fits.HDUList([fits.PrimaryHDU(header=header), fits.CompImageHDU(data)]).writeto(path)
    with pytest.warns(VarianceEstimatedWarning, match="sky noise"):
        exposure = read_exposure(path)
    assert exposure.filter_name == "z"
    np.testing.assert_allclose(exposure.masked_image.image, data, atol=0.5)


def test_saturated_pixels_of_plain_files_are_flagged(tmp_path):
    """A plain image with a SATURATE card gets SAT on pixels at or above it."""
    image = np.full((20, 20), 100.0, dtype=np.float32)
    image[5, 6] = 60000.0
    path = write_plain(tmp_path / "sat.fits", image, fits.Header({"SATURATE": 50000.0}))
    with pytest.warns(VarianceEstimatedWarning):
        exposure = read_exposure(path)
    saturated = exposure.masked_image.mask_plane("SAT")
    assert saturated[5, 6]
    assert saturated.sum() == 1


def test_user_mask_and_variance_arrays_are_not_modified(tmp_path):
    """Read planes are taken over without copies; arrays passed in must still be copied,
    because non-finite pixels are then zeroed and flagged NO_DATA."""
    masked = make_masked_image()
    image = masked.image.copy()
    image[5, 6] = np.nan
    path = write_plain(tmp_path / "image.fits", image)
    mask, variance = masked.mask.copy(), masked.variance.copy()
    with pytest.warns(MaskedPixelsWarning, match="1 pixels"):
        result = read_exposure(path, mask=mask, variance=variance).masked_image
    np.testing.assert_array_equal(mask, masked.mask)
    np.testing.assert_array_equal(variance, masked.variance)
    assert result.variance[5, 6] == 0
    assert result.mask_plane("NO_DATA")[5, 6]
    result.mask[:] = 0
    result.variance[:] = 0
    assert np.array_equal(mask, masked.mask)
    assert np.array_equal(variance, masked.variance)


def test_read_planes_are_native_writable_and_independent(tmp_path):
    """FITS is big-endian: the planes come back in native byte order, writable, and two
    reads of one file share no memory."""
    path = tmp_path / "exposure.fits"
    write_exposure(make_masked_image(), path)
    first, second = read_exposure(path).masked_image, read_exposure(path).masked_image
    for plane in (first.image, first.mask, first.variance):
        assert plane.dtype.isnative
        assert plane.flags.writeable
        assert plane.flags.c_contiguous
    first.image += 1.0
    np.testing.assert_array_equal(first.image, second.image + 1.0)


def test_integer_image_keeps_a_fractional_variance(tmp_path):
    """An integer image is read as float64, and so is its variance map (0.25 stays 0.25)."""
    path = write_plain(tmp_path / "counts.fits", np.arange(12, dtype=np.int16).reshape(3, 4))
    result = read_exposure(path, variance=np.full((3, 4), 0.25)).masked_image
    assert result.image.dtype == np.float64
    assert result.variance.dtype == np.float64
    np.testing.assert_array_equal(result.variance, 0.25)


# -- the WCS read from a header is built on first use -----------------------------------------
def written_exposure(tmp_path, *, sip=False, xy0=(0, 0), name="exposure.fits"):
    """Write an exposure with a TAN (or TAN-SIP) WCS of parent pixels; return path, WCS."""
    masked = make_masked_image(xy0=xy0)
    wcs = make_wcs(sip)
    path = tmp_path / name
    write_exposure(Exposure(masked, wcs=wcs), path)
    return path, wcs


def assert_same_mapping(wcs, expected, xy0=(0, 0)):
    """Both WCSs put parent pixels at the same sky positions (1e-12 deg)."""
    x = xy0[0] + np.array([0.0, 17.5, 49.0])
    y = xy0[1] + np.array([0.0, 30.25, 39.0])
    np.testing.assert_allclose(
        wcs.pixel_to_world_values(x, y), expected.pixel_to_world_values(x, y), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("sip", [False, True])
def test_plain_wcs_is_kept_as_cards_until_first_use(tmp_path, sip):
    path, wcs = written_exposure(tmp_path, sip=sip, xy0=(7, 3))
    exposure = read_exposure(path)
    stored = exposure.stored_wcs
    assert isinstance(stored, HeaderWcs)
    assert stored.xy0 == (7, 3)
    assert repr(exposure).count("wcs=unread") == 1
    built = exposure.wcs  # the first read builds the astropy WCS of parent pixels ...
    assert isinstance(built, WCS)
    assert exposure.wcs is built  # ... once
    assert exposure.stored_wcs is built
    assert (built.sip is not None) == sip
    assert_same_mapping(built, wcs, xy0=(7, 3))


def test_unbuilt_wcs_is_written_as_the_cards_it_was_read_from(tmp_path):
    path, wcs = written_exposure(tmp_path, sip=True, xy0=(7, 3))
    exposure = read_exposure(path)
    out = tmp_path / "copy.fits"
    write_exposure(exposure.with_pixels(exposure.masked_image), out)
    assert isinstance(exposure.stored_wcs, HeaderWcs)  # writing did not build it
    with fits.open(path) as original, fits.open(out) as written:
        for name in ("IMAGE", "MASK", "VARIANCE"):
            # the same cards, in the same order, as write_exposure wrote from astropy's WCS
            assert list(written[name].header.items()) == list(original[name].header.items())
            assert written[name].header["LTV1"] == -7
            # any FITS reader sees the cut-out's first pixel at parent (7, 3)
            file_wcs = WCS(written[name].header)
            np.testing.assert_allclose(
                file_wcs.pixel_to_world_values(0, 0), wcs.pixel_to_world_values(7, 3), atol=1e-12
            )
    assert_same_mapping(read_exposure(out).wcs, wcs, xy0=(7, 3))


def test_cutout_of_an_unbuilt_wcs_is_written_for_its_own_origin(tmp_path):
    path, wcs = written_exposure(tmp_path, sip=True)
    cutout = read_exposure(path).subimage(BBox(12, 9, 25, 20))
    assert isinstance(cutout.stored_wcs, HeaderWcs)
    out = tmp_path / "cutout.fits"
    write_exposure(cutout, out)
    with fits.open(out) as hdulist:
        file_wcs = WCS(hdulist["IMAGE"].header)
    np.testing.assert_allclose(
        file_wcs.pixel_to_world_values(0, 0), wcs.pixel_to_world_values(12, 9), atol=1e-12
    )
    assert_same_mapping(read_exposure(out).wcs, wcs, xy0=(12, 9))


def test_copies_share_an_unbuilt_wcs_and_deep_copy_a_built_one(tmp_path):
    path, wcs = written_exposure(tmp_path)
    exposure = read_exposure(path)
    stored = exposure.stored_wcs
    assert exposure.copy().stored_wcs is stored
    assert exposure.with_pixels(exposure.masked_image).stored_wcs is stored
    assert exposure.subimage(BBox(2, 2, 5, 5)).stored_wcs is stored
    copy = exposure.copy()
    assert copy.wcs is not exposure.wcs  # each exposure builds its own
    assert isinstance(exposure.stored_wcs, WCS)
    assert exposure.copy().stored_wcs is not exposure.wcs  # built: deep-copied, as before
    assert_same_mapping(exposure.copy().wcs, wcs)


def test_a_built_wcs_changed_in_place_is_written_not_the_stale_cards(tmp_path):
    path, _ = written_exposure(tmp_path)
    exposure = read_exposure(path)
    exposure.wcs.wcs.crval = [151.0, 2.5]
    out = tmp_path / "moved.fits"
    write_exposure(exposure, out)
    np.testing.assert_allclose(read_exposure(out).wcs.wcs.crval, [151.0, 2.5])


def test_unbuilt_wcs_pickles(tmp_path):
    path, wcs = written_exposure(tmp_path, sip=True)
    exposure = pickle.loads(pickle.dumps(read_exposure(path)))
    assert isinstance(exposure.stored_wcs, HeaderWcs)
    assert_same_mapping(exposure.wcs, wcs)


def test_same_grid_compares_cards_and_origin(tmp_path):
    path, _ = written_exposure(tmp_path, xy0=(7, 3))
    header = fits.getheader(path, "IMAGE")
    first = HeaderWcs.from_header(header, (7, 3))
    reordered = fits.Header(list(reversed(header.cards)))
    assert first.same_grid(HeaderWcs.from_header(reordered, (7, 3)))
    assert not first.same_grid(HeaderWcs.from_header(header, (7, 4)))
    moved = header.copy()
    moved["CRVAL1"] += 1e-9
    assert not first.same_grid(HeaderWcs.from_header(moved, (7, 3)))


PLAIN = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
         "CRPIX1": 10.0, "CRPIX2": 10.0, "CD1_1": -1e-4, "CD2_2": 1e-4}  # fmt: skip


@pytest.mark.parametrize(
    "cards",
    [
        {"CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "PV1_1": 1.0},  # distortion parameters
        {"PV2_1": 0.5},
        {"CD2_2": 0.0},  # singular
        {"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP"},  # SIP suffix, no SIP cards
        {"RADECSYS": "FK5"},  # obsolete: astropy fixes it
        {"CUNIT1": "arcsec", "CUNIT2": "arcsec"},
        {"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"},
        {"CRPIX1": "10"},
    ],
)
def test_headers_that_are_not_plain_are_built_when_read(tmp_path, cards):
    """Anything but a plain celestial WCS is built by astropy at read time, as before."""
    header = fits.Header({**PLAIN, **cards, "GAIN": 2.0})
    path = write_plain(tmp_path / "image.fits", np.ones(SHAPE, np.float32), header)
    exposure = read_exposure(path, variance=np.ones(SHAPE))
    assert not isinstance(exposure.stored_wcs, HeaderWcs)
    assert exposure.stored_wcs is None or isinstance(exposure.stored_wcs, WCS)


@pytest.mark.parametrize(
    "ctypes",
    [("RA---ZPN", "DEC--ZPN"), ("GLON-TAN", "DEC--TAN")],  # ZPN needs PV cards; mixed axes
)
def test_unreadable_wcs_still_warns_when_read(tmp_path, ctypes):
    """Such headers are built (and refused) at read time, with the warning there."""
    header = fits.Header({**PLAIN, "CTYPE1": ctypes[0], "CTYPE2": ctypes[1], "GAIN": 2.0})
    path = write_plain(tmp_path / "image.fits", np.ones(SHAPE, np.float32), header)
    with pytest.warns(DiffimWarning, match="unreadable WCS"):
        exposure = read_exposure(path, variance=np.ones(SHAPE))
    assert exposure.wcs is None


@pytest.mark.parametrize("projection", ["TAN", "SIN", "ARC", "ZEA", "CAR", "AIT", "HPX"])
@pytest.mark.parametrize("axes", [("RA--", "DEC-"), ("GLON", "GLAT"), ("ELON", "ELAT")])
def test_every_deferred_header_builds_a_celestial_wcs(projection, axes):
    """A header deferred as plain must build without warnings (nothing moves to later)."""
    ctypes = {"CTYPE1": f"{axes[0]}-{projection}", "CTYPE2": f"{axes[1]}-{projection}"}
    header = fits.Header({"NAXIS": 2, "NAXIS1": 50, "NAXIS2": 40, **PLAIN, **ctypes})
    deferred = HeaderWcs.from_header(header, (0, 0))
    assert deferred is not None
    wcs = deferred.build()  # pytest turns any warning into an error
    assert wcs.has_celestial
    x, y = wcs.world_to_pixel_values(*wcs.pixel_to_world_values(3.0, 4.0))
    assert (x, y) == (pytest.approx(3.0, abs=1e-9), pytest.approx(4.0, abs=1e-9))
