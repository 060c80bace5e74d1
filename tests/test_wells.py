import numpy as np
import pytest

from hts.errors import SourceError
from hts.wells import (
    PLATE_TYPES,
    WellRef,
    parse_well,
    parse_well_range,
    plate_type_for,
    snap_to_wells,
    well_field_suffix,
)


@pytest.mark.parametrize(
    "text, name",
    [
        ("A01", "A01"),
        ("A1", "A01"),
        ("Well A01", "A01"),
        ("well_b3", "B03"),
        ("B12#2", "B12"),
        ("h12", "H12"),
        ("P24", "P24"),
        ("AF48", "AF48"),
        ("C05_s3", "C05"),
    ],
)
def test_parse_well_names(text, name):
    assert parse_well(text).name == name


@pytest.mark.parametrize("text", ["", "Point0001", "XY01", "A00", "A-", "12A", "Position 3"])
def test_parse_well_rejects(text):
    with pytest.raises(ValueError):
        parse_well(text)


def test_field_suffix_and_paths():
    assert well_field_suffix("B12#2") == 2
    assert well_field_suffix("B12") is None
    w = parse_well("B3")
    assert (w.row, w.column, w.path, w.row_name, w.column_name) == (1, 2, "B/03", "B", "03")


def test_plate_type_for():
    assert plate_type_for([WellRef(7, 11)]).wells == 96
    assert plate_type_for([WellRef(8, 0)]).wells == 384
    assert plate_type_for([WellRef(31, 47)]).wells == 1536
    assert plate_type_for([WellRef(0, 0)], hint=384).wells == 384
    with pytest.raises(SourceError, match="does not fit"):
        plate_type_for([WellRef(40, 0)])


def test_parse_well_range():
    assert [w.name for w in parse_well_range("A01:B02")] == ["A01", "A02", "B01", "B02"]
    assert len(parse_well_range("B", PLATE_TYPES[96])) == 12
    assert [w.name for w in parse_well_range("C5,A1")] == ["A01", "C05"]


def _grid(pitch, rows, cols, fields, offset=(31_000.0, -12_000.0), spread=400.0):
    pts, truth = [], []
    for r in range(rows):
        for c in range(cols):
            for f in range(fields):
                pts.append([offset[0] + c * pitch + f * spread, offset[1] + r * pitch + (f % 2) * spread])
                truth.append(WellRef(r, c))
    return np.array(pts), truth


@pytest.mark.parametrize("wells, rows, cols", [(96, 8, 12), (384, 16, 24), (1536, 32, 48)])
def test_snap_whole_plates(wells, rows, cols):
    pitch = PLATE_TYPES[wells].pitch_um
    pts, truth = _grid(pitch, rows, cols, fields=2, spread=min(400.0, pitch / 8))
    got, pt = snap_to_wells(pts)
    assert pt.wells == wells
    assert got == truth


def test_snap_partial_384_with_jitter():
    rng = np.random.default_rng(1)
    pts, truth = _grid(4500.0, 3, 5, fields=3, spread=300.0)
    pts += rng.normal(0, 50, pts.shape)
    got, pt = snap_to_wells(pts)
    assert pt.wells == 384 and got == truth


def test_snap_off_grid_is_an_error():
    pts = np.random.default_rng(3).uniform(0, 60_000, size=(16, 2))
    with pytest.raises(SourceError, match="grid"):
        snap_to_wells(pts)
