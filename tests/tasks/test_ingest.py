"""Ingest end to end: real ND2 and TIFF files, multi-well ND2 plates from the test writer,
resume after interruption, idempotence, and bad input leaving stored data untouched."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import nd2
import numpy as np
import pytest
import tifffile
import zarr
from conftest import CELLOMICS, ND2_MULTI, frame_values, here
from ome_zarr_models.v05 import HCS, Image

from hts.catalog import Catalog
from hts.errors import SourceError, StoreError
from hts.store import PlateStore
from hts.tasks import ingest as ingest_mod
from hts.tasks.ingest import ingest


def _catalog() -> Catalog:
    return Catalog("hts.duckdb")


def _all_fields(store_path: Path) -> dict[str, np.ndarray]:
    """Every array of a store (all levels of all fields), by path."""
    root = zarr.open_group(store_path, mode="r")
    out = {}
    for well in root.attrs["ome"]["plate"]["wells"]:
        wg = root[well["path"]]
        for im in wg.attrs["ome"]["well"]["images"]:
            for level, arr in root[f"{well['path']}/{im['path']}"].arrays():
                out[f"{well['path']}/{im['path']}/{level}"] = arr[:]
    return out


def test_real_nd2_pixels_metadata_and_checksum():
    rep = ingest(ND2_MULTI, tile=128, workspace=here())
    assert rep.status == "ingested" and rep.fields_total == 1 and rep.wells == 1
    assert Path(rep.store) == Path("plates/example-multichannel.zarr").resolve()
    expected = nd2.imread(ND2_MULTI)  # (C, Y, X)
    stored = PlateStore(rep.store).read_field("A/01", 0)[:]
    np.testing.assert_array_equal(stored[0, :, 0], expected)
    cat = _catalog()
    ch = cat.query("SELECT name, emission_nm FROM channels ORDER BY channel_index")
    assert [c["name"] for c in ch] == ["Mono", "DAPI", "FITC BP", "TRITC BP"]
    assert [c["emission_nm"] for c in ch][1:] == [450.0, 512.0, 595.0]
    plate = cat.query("SELECT * FROM plates")[0]
    assert plate["pixel_size_x_um"] == pytest.approx(0.32339, abs=1e-5)
    assert plate["status"] == "complete"
    acq = cat.query("SELECT * FROM acquisitions")[0]
    assert acq["checksum"] == hashlib.sha256(ND2_MULTI.read_bytes()).hexdigest()
    assert acq["objective"].startswith("Plan Apo") and acq["magnification"] == 20.0
    field = cat.query("SELECT * FROM fields")[0]
    assert field["status"] == "complete"
    assert field["checksum"] == hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()
    stats = cat.query("SELECT * FROM field_channel_stats ORDER BY channel_index")
    assert [s["max"] for s in stats] == [float(expected[c].max()) for c in range(4)]
    # display windows were set from the data, not the dtype range
    omero = zarr.open_group(rep.store, mode="r")["A/01/0"].attrs["ome"]["omero"]
    assert omero["channels"][1]["window"]["end"] < 65535


def test_96_well_nd2_plate_with_named_positions(nd2_plate):
    src = nd2_plate(wells="A01:H12", fields=2, shape=(32, 40))
    rep = ingest(src, tile=64, workspace=here())
    assert (rep.wells, rep.fields_total, rep.fields_written) == (96, 192, 192)
    root = zarr.open_group(rep.store, mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hcs = HCS.from_zarr(root)
        Image.from_zarr(root["H/12/1"])
    assert len(hcs.attributes.ome.plate.wells) == 96 and hcs.attributes.ome.plate.field_count == 2
    store = PlateStore(rep.store)
    # position p = 2 * well_index + field, written in row-major well order by the fixture
    for p, (well, field) in [(0, ("A/01", 0)), (1, ("A/01", 1)), (27, ("B/02", 1)), (191, ("H/12", 1))]:
        np.testing.assert_array_equal(store.read_field(well, field)[0, :, 0], frame_values(0, p, 0, 2, (32, 40)))
    names = _catalog().query("SELECT source_name FROM fields WHERE well = 'C07' ORDER BY field_index")
    assert [n["source_name"] for n in names] == ["C07", "C07#2"]


def test_unnamed_positions_are_snapped_to_the_plate_grid(nd2_plate):
    src = nd2_plate(wells="C03:D05", fields=2, named=False, plate_wells=384)
    rep = ingest(src, workspace=here())
    rows = _catalog().query("SELECT DISTINCT well FROM fields ORDER BY well")
    # the grid is fitted to the positions: the top-left imaged well becomes A01
    assert [r["well"] for r in rows] == ["A01", "A02", "A03", "B01", "B02", "B03"]
    assert _catalog().query("SELECT plate_type FROM plates")[0]["plate_type"] == 384
    info = _catalog().query("SELECT instrument FROM acquisitions")[0]["instrument"]
    assert "stage positions" in info
    assert rep.fields_total == 12


def test_z_and_time_are_kept_or_max_projected(nd2_plate):
    src = nd2_plate(wells="A01:A02", fields=1, n_z=3, n_time=2, shape=(32, 32))
    rep = ingest(src, out="stack.zarr", workspace=here())
    a = PlateStore(rep.store).read_field("A/02", 0)[:]
    assert a.shape == (2, 2, 3, 32, 32)
    # ND2 order: T outer, P, Z inner -> position index 1 for A02
    for t in range(2):
        for z in range(3):
            np.testing.assert_array_equal(a[t, :, z], frame_values(t, 1, z, 2, (32, 32)))
    rep2 = ingest(src, out="mip.zarr", max_project=True, workspace=here())
    m = PlateStore(rep2.store).read_field("A/02", 0)[:]
    assert m.shape == (2, 2, 1, 32, 32)
    np.testing.assert_array_equal(m[:, :, 0], a.max(axis=2))
    row = _catalog().query(
        "SELECT size_z, source_size_z, max_projected, pixel_size_z_um FROM plates WHERE store_uri LIKE '%mip.zarr'"
    )[0]
    assert (row["size_z"], row["source_size_z"], row["max_projected"]) == (1, 3, True)


def test_cellomics_folder_real_images():
    rep = ingest(CELLOMICS, workspace=here())
    assert rep.name == "AS_09125_050116030001" and rep.channels == ["d0", "d1", "d2"]
    a = PlateStore(rep.store).read_field("D/03", 0)[:]
    for c in range(3):
        np.testing.assert_array_equal(a[0, c, 0], tifffile.imread(CELLOMICS / f"AS_09125_050116030001_D03f00d{c}.tif"))


def test_reingest_is_a_noop_and_overwrite_redoes(nd2_plate):
    src = nd2_plate()
    first = ingest(src, workspace=here())
    before = _all_fields(Path(first.store))
    again = ingest(src, workspace=here())
    assert again.status == "unchanged" and again.fields_written == 0 and again.plate_id == first.plate_id
    redo = ingest(src, overwrite=True, workspace=here())
    assert redo.status == "ingested" and redo.fields_written == 12 and redo.plate_id != first.plate_id
    after = _all_fields(Path(redo.store))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert len(_catalog().query("SELECT * FROM plates")) == 1


def test_output_holding_another_plate_is_refused_and_untouched(nd2_plate):
    a = nd2_plate("a.nd2", wells="A01:A02")
    b = nd2_plate("b.nd2", wells="B01:B03")
    rep = ingest(a, out="p.zarr", workspace=here())
    before = _all_fields(Path(rep.store))
    with pytest.raises(StoreError, match=r"p\.zarr already holds plate 'a'.*--overwrite"):
        ingest(b, out="p.zarr", workspace=here())
    after = _all_fields(Path(rep.store))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert [r["name"] for r in _catalog().query("SELECT name FROM plates")] == ["a"]
    # a store made outside this catalog is not adopted either
    Path("foreign.zarr").mkdir()
    (Path("foreign.zarr") / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(StoreError, match="not an hts plate"):
        ingest(b, out="foreign.zarr", workspace=here())
    # nor a folder of other files (no zarr.json at all); nothing is registered for it either
    Path("notes.zarr").mkdir()
    (Path("notes.zarr") / "precious.txt").write_text("keep me")
    with pytest.raises(
        StoreError, match=r"notes\.zarr already exists and holds data that is not an hts plate.*--overwrite"
    ):
        ingest(b, out="notes.zarr", workspace=here())
    assert (Path("notes.zarr") / "precious.txt").read_text() == "keep me"
    assert [r["name"] for r in _catalog().query("SELECT name FROM plates")] == ["a"]
    # replaced when asked
    assert ingest(b, out="notes.zarr", overwrite=True, workspace=here()).fields_written == 6
    assert not (Path("notes.zarr") / "precious.txt").exists()


def test_interrupted_ingest_resumes_to_an_identical_plate(nd2_plate, monkeypatch, tmp_path):
    src = nd2_plate(wells="A01:B04", fields=2)
    reference = ingest(src, out=tmp_path / "ref.zarr", workspace=here(db=tmp_path / "ref.duckdb"))
    ref_arrays = _all_fields(Path(reference.store))

    real = ingest_mod.ingest_field
    calls = {"n": 0}

    def dying(field, *args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the plate
        return real(field, *args)

    monkeypatch.setattr(ingest_mod, "ingest_field", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, workspace=here())
    cat = _catalog()
    assert cat.query("SELECT status FROM plates")[0]["status"] == "ingesting"
    assert cat.query("SELECT count(*) AS n FROM fields WHERE status = 'complete'")[0]["n"] == 6

    monkeypatch.setattr(ingest_mod, "ingest_field", real)
    rep = ingest(src, workspace=here())
    assert rep.status == "resumed" and rep.fields_written == 16 - 6
    arrays = _all_fields(Path(rep.store))
    assert arrays.keys() == ref_arrays.keys()
    assert all(np.array_equal(arrays[k], ref_arrays[k]) for k in arrays)
    got = cat.query("SELECT well, field_index, checksum FROM fields ORDER BY ALL")
    want = Catalog(tmp_path / "ref.duckdb").query("SELECT well, field_index, checksum FROM fields ORDER BY ALL")
    assert got == want
    assert cat.query("SELECT status FROM plates")[0]["status"] == "complete"


def test_ingest_interrupted_while_writing_the_skeleton_starts_afresh(nd2_plate, monkeypatch, tmp_path):
    src = nd2_plate(wells="A01:B02", fields=2)
    reference = ingest(src, out=tmp_path / "ref.zarr", workspace=here(db=tmp_path / "ref.duckdb"))
    real = PlateStore._create_nodes

    def dying(self, nodes, **kw):
        real(self, dict(list(nodes.items())[:5]), **kw)  # a few groups and arrays are on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(PlateStore, "_create_nodes", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, workspace=here())
    store = Path("plates/plate.zarr")
    assert store.is_dir() and PlateStore(store).hts_attrs == {}  # no plate id: an unfinished skeleton
    assert _catalog().query("SELECT status FROM plates")[0]["status"] == "ingesting"

    monkeypatch.setattr(PlateStore, "_create_nodes", real)
    rep = ingest(src, workspace=here())  # no --overwrite needed: the store is this catalog's own unfinished plate
    assert rep.status == "ingested" and rep.fields_written == 8
    assert len(_catalog().query("SELECT plate_id FROM plates")) == 1
    arrays, ref = _all_fields(Path(rep.store)), _all_fields(Path(reference.store))
    assert arrays.keys() == ref.keys() and all(np.array_equal(arrays[k], ref[k]) for k in ref)
    q = "SELECT well, field_index, status, checksum FROM fields ORDER BY ALL"
    assert _catalog().query(q) == Catalog(tmp_path / "ref.duckdb").query(q)


def test_skeleton_that_fails_leaves_no_store_and_no_plate(nd2_plate, monkeypatch):
    src = nd2_plate(wells="A01:B02", fields=2)
    real = PlateStore._create_nodes

    def failing(self, nodes, **kw):
        real(self, dict(list(nodes.items())[:5]), **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PlateStore, "_create_nodes", failing)
    with pytest.raises(OSError, match="No space left"):
        ingest(src, workspace=here())
    assert not Path("plates/plate.zarr").exists()
    assert _catalog().query("SELECT count(*) AS n FROM plates")[0]["n"] == 0


def test_local_dask_cluster_gives_the_same_plate(nd2_plate, tmp_path):
    src = nd2_plate(wells="A01:A03", fields=2)
    sync = ingest(src, out=tmp_path / "sync.zarr", workspace=here(db=tmp_path / "s.duckdb", scheduler="sync"))
    dist = ingest(
        src, out=tmp_path / "dist.zarr", workers=2, workspace=here(db=tmp_path / "d.duckdb", scheduler="local")
    )
    q = "SELECT well, field_index, checksum FROM fields ORDER BY ALL"
    assert Catalog(tmp_path / "s.duckdb").query(q) == Catalog(tmp_path / "d.duckdb").query(q)
    assert sync.fields_written == dist.fields_written == 6
    a, b = _all_fields(Path(sync.store)), _all_fields(Path(dist.store))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- bad input
def _nothing_stored() -> None:
    assert not Path("plates").exists() or not any(Path("plates").iterdir())
    if Path("hts.duckdb").exists():
        assert _catalog().query("SELECT count(*) AS n FROM plates")[0]["n"] == 0


def test_truncated_nd2_is_a_clear_error(nd2_plate, tmp_path):
    src = nd2_plate(wells="A01:B03")
    data = src.read_bytes()
    bad = tmp_path / "truncated.nd2"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated.nd2"):
        ingest(bad, workspace=here())
    _nothing_stored()


def test_garbage_nd2_is_a_clear_error(tmp_path):
    bad = tmp_path / "garbage.nd2"
    bad.write_bytes(np.random.default_rng(0).bytes(100_000))
    with pytest.raises(SourceError, match=r"garbage\.nd2: not a readable ND2 file"):
        ingest(bad, workspace=here())
    _nothing_stored()


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        ingest(tmp_path / "nope.nd2", workspace=here())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty"):
        ingest(tmp_path / "empty", workspace=here())
    _nothing_stored()


def test_mixed_named_and_unnamed_positions(tmp_path):
    from hts.formats.base import Channel
    from hts.synth.nd2_writer import Position, write_nd2

    path = tmp_path / "mixed.nd2"
    pos = [Position("A01", 0, 0), Position(None, 9000, 0)]
    write_nd2(
        path, np.zeros((1, 2, 1, 1, 16, 16), np.uint16), positions=pos, channels=[Channel("DAPI")], shape_yx=(16, 16)
    )
    with pytest.raises(SourceError, match="some positions are named by well and some are not"):
        ingest(path, workspace=here())
    _nothing_stored()


def test_failure_midway_keeps_completed_fields_and_other_plates(nd2_plate, monkeypatch):
    good = nd2_plate("good.nd2", wells="A01:A02")
    ingest(good, workspace=here())
    before = _all_fields(Path("plates/good.zarr"))
    src = nd2_plate("second.nd2", wells="B01:B03")
    real = ingest_mod.ingest_field

    def failing(field, *args):
        if field.well.name == "B02":
            raise SourceError("second.nd2: cannot read position 2 (B02) — file truncated or corrupt")
        return real(field, *args)

    monkeypatch.setattr(ingest_mod, "ingest_field", failing)
    with pytest.raises(SourceError, match="B02"):
        ingest(src, workspace=here())
    after = _all_fields(Path("plates/good.zarr"))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    rows = _catalog().query("SELECT name, status FROM plates ORDER BY name")
    assert rows == [{"name": "good", "status": "complete"}, {"name": "second", "status": "ingesting"}]


def test_duplicate_field_names_in_nd2(tmp_path):
    from hts.formats.base import Channel
    from hts.synth.nd2_writer import Position, write_nd2

    path = tmp_path / "dup.nd2"
    pos = [Position("A01", 0, 0), Position("B12#2", 9000, 0), Position("B12#2", 9000, 300)]
    write_nd2(
        path, np.zeros((1, 3, 1, 1, 16, 16), np.uint16), positions=pos, channels=[Channel("DAPI")], shape_yx=(16, 16)
    )
    with pytest.raises(SourceError, match=r"positions 1 and 2 are both named 'B12#2'"):
        ingest(path, workspace=here())
    _nothing_stored()


def test_laplacian_equals_scipy_and_focus_ranks_sharpness():
    from scipy import ndimage as ndi

    from hts.compute.measure.imagestats import focus_score, laplacian

    rng = np.random.default_rng(3)
    ints = rng.integers(0, 4096, (67, 90)).astype(np.float32)
    assert np.array_equal(laplacian(ints), ndi.laplace(ints))  # integer-valued: exact
    floats = rng.random((40, 33)).astype(np.float32)
    np.testing.assert_allclose(laplacian(floats), ndi.laplace(floats), atol=1e-5)
    sharp = (rng.random((128, 128)) > 0.5).astype(np.float32) * 1000 + 100
    blurred = ndi.gaussian_filter(sharp, 3)
    assert focus_score(sharp) > 10 * focus_score(blurred) > 0
    assert focus_score(np.zeros((8, 8))) == 0.0
    # the definition: variance of scipy's Laplacian over the squared mean, on 16-bit fields too
    field = rng.integers(100, 60000, (300, 257)).astype(np.uint16)
    ref = np.var(ndi.laplace(field.astype(np.float64))) / field.mean() ** 2
    assert focus_score(field) == pytest.approx(ref, rel=1e-9)
    assert laplacian(field).dtype == np.float32


def test_percentiles_from_histogram_equal_numpy():
    from hts.compute.measure.imagestats import percentiles

    rng = np.random.default_rng(5)
    qs = (0.0, 1.0, 33.3, 50.0, 99.9, 100.0)
    for dtype, high in ((np.uint16, 65536), (np.uint16, 300), (np.uint8, 256)):
        for n in (1, 2, 7, 1000, 512 * 512):
            sample = rng.integers(0, high, n).astype(dtype)
            np.testing.assert_allclose(percentiles(sample, qs), np.percentile(sample, qs), rtol=1e-12, atol=0)
    # a strided 2-D view (what ingest passes: every other row and column) and other dtypes
    field = rng.integers(0, 4000, (65, 64)).astype(np.uint16)
    np.testing.assert_allclose(percentiles(field[::2, ::2], (1.0, 99.9)), np.percentile(field[::2, ::2], (1.0, 99.9)))
    floats = rng.random(101)
    assert percentiles(floats, (50.0,)) == [float(np.median(floats))]
