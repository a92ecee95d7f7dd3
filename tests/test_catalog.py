"""`SourceCatalog`: columns, row selection, meta, and the astropy Table round trip."""

import pickle

import numpy as np
import pytest
from astropy.table import Table

from diffim.catalog import SourceCatalog
from diffim.errors import DiffimValueError


@pytest.fixture
def catalog():
    return SourceCatalog(
        {
            "x": np.array([10.0, 20.0, 30.0, 40.0]),
            "flag": np.array([0, 1, 0, 2], dtype=np.int64),
            "reason": np.array(["", "blended", "", "low S/N"], dtype="U16"),
        },
        meta={"fwhm_pix": 3.5, "bad_mask_bits": 7},
    )


def test_columns_length_and_names(catalog):
    assert len(catalog) == 4
    assert catalog.colnames == ["x", "flag", "reason"]
    np.testing.assert_array_equal(catalog["flag"], [0, 1, 0, 2])
    assert len(SourceCatalog()) == 0


@pytest.mark.parametrize(
    ("rows", "expected_x"),
    [
        (np.array([True, False, True, False]), [10.0, 30.0]),
        (np.array([3, 0]), [40.0, 10.0]),
        ([2], [30.0]),
        (slice(None, 2), [10.0, 20.0]),
        (slice(None, None, -1), [40.0, 30.0, 20.0, 10.0]),
    ],
    ids=["mask", "index-array", "index-list", "slice", "reversed"],
)
def test_row_selection_gives_a_new_catalog_of_those_rows(catalog, rows, expected_x):
    """Every column is indexed alike and the meta is carried over (as a copy)."""
    selected = catalog[rows]
    assert isinstance(selected, SourceCatalog)
    assert selected.colnames == catalog.colnames
    np.testing.assert_array_equal(selected["x"], expected_x)
    order = [list(catalog["x"]).index(x) for x in expected_x]
    np.testing.assert_array_equal(selected["reason"], catalog["reason"][order])
    assert selected.meta == catalog.meta
    selected.meta["stellar_fwhm"] = 3.4
    assert "stellar_fwhm" not in catalog.meta


def test_an_integer_row_or_a_column_of_another_length_is_refused(catalog):
    with pytest.raises(DiffimValueError, match="got the integer 1"):
        catalog[1]
    with pytest.raises(DiffimValueError, match=r"column 'y' has shape \(3,\); the catalog has 4"):
        catalog["y"] = [1.0, 2.0, 3.0]
    with pytest.raises(DiffimValueError, match="column 'z' has shape"):
        catalog["z"] = 5.0


def test_to_table_and_back_keeps_columns_dtypes_and_meta(catalog):
    table = catalog.to_table()
    assert isinstance(table, Table)
    assert table.colnames == catalog.colnames
    assert dict(table.meta) == catalog.meta
    back = SourceCatalog.from_table(table)
    for name in catalog.colnames:
        assert back[name].dtype == catalog[name].dtype
        np.testing.assert_array_equal(back[name], catalog[name])
    assert back.meta == catalog.meta


def test_to_table_copies_and_from_table_leaves_the_table_alone(catalog):
    """The Table owns copies; a catalog made from a Table gets new columns and meta keys
    without touching the Table."""
    table = catalog.to_table()
    table["x"][0] = -1.0
    table.meta["fwhm_pix"] = 9.0
    assert catalog["x"][0] == 10.0
    assert catalog.meta["fwhm_pix"] == 3.5
    view = SourceCatalog.from_table(table)
    view["selected"] = view["flag"] == 0
    view.meta["stellar_fwhm"] = 3.4
    assert table.colnames == ["x", "flag", "reason"]
    assert "stellar_fwhm" not in table.meta


def test_pickle_round_trip(catalog):
    copy = pickle.loads(pickle.dumps(catalog))
    assert copy.colnames == catalog.colnames
    np.testing.assert_array_equal(copy["reason"], catalog["reason"])
    assert copy.meta == catalog.meta
