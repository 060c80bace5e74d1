"""The NGFF plate store: structure validated by ome-zarr-models, pixel and pyramid values."""

import json
import warnings

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05 import HCS, Image, Well
from skimage.transform import downscale_local_mean

from hts.errors import StoreError
from hts.formats.base import Channel, PlateDescription, SourceField
from hts.store import PlateStore, downsample2, pyramid_levels
from hts.wells import PLATE_TYPES, parse_well


def _desc(wells=("A01", "B03"), fields=2, shape=(1, 2, 1, 600, 520), pixel=0.5):
    fl = [
        SourceField(well=parse_well(w), index=i, key=k)
        for k, (w, i) in enumerate((w, i) for w in wells for i in range(fields))
    ]
    return PlateDescription(
        name="P1",
        format="nd2",
        plate_type=PLATE_TYPES[96],
        channels=[Channel("DAPI", 461.0), Channel("GFP", 510.0, color="00FF00")],
        shape=shape,
        dtype="uint16",
        fields=fl,
        files=[],
        pixel_size_um=(pixel, pixel, None),
    )


def test_pyramid_levels():
    assert pyramid_levels((256, 256)) == 1
    assert pyramid_levels((257, 100)) == 2
    assert pyramid_levels((2048, 2048)) == 4
    assert pyramid_levels((600, 520)) == 3


def test_downsample2_matches_skimage_block_mean():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4000, size=(1, 2, 1, 64, 48)).astype(np.uint16)
    ref = np.rint(downscale_local_mean(a.astype(float), (1, 1, 1, 2, 2))).astype(np.uint16)
    np.testing.assert_array_equal(downsample2(a), ref)
    odd = rng.integers(0, 255, size=(5, 7)).astype(np.uint8)
    assert downsample2(odd).shape == (3, 4)
    # the packed-pair integer path: full 8- and 16-bit range (no overflow), odd edges replicated,
    # rounding half to even, and an input that is not C-contiguous
    for dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        a = rng.integers(0, top + 1, size=(2, 3, 1, 33, 47)).astype(dtype)
        a[0, 0, 0, :2, :2] = top
        padded = np.pad(a, [(0, 0)] * 3 + [(0, 1), (0, 1)], mode="edge").astype(float)
        ref = np.rint(downscale_local_mean(padded, (1, 1, 1, 2, 2))).astype(dtype)
        np.testing.assert_array_equal(downsample2(a), ref)
        assert downsample2(a)[0, 0, 0, 0, 0] == top
        np.testing.assert_array_equal(downsample2(np.asfortranarray(a)), ref)
    halves = np.array([[1, 1], [0, 0]], np.uint16), np.array([[3, 3], [0, 0]], np.uint16)  # means 0.5, 1.5
    assert [int(downsample2(h)[0, 0]) for h in halves] == [0, 2]


def test_create_validates_against_ngff_05(tmp_path):
    desc = _desc()
    store = PlateStore.create(tmp_path / "p.zarr", desc, plate_id="pid", fingerprint="fp", tile=256)
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fix-ups by the validator
        hcs = HCS.from_zarr(root)
    plate = hcs.attributes.ome.plate
    assert [w.path for w in plate.wells] == ["A/01", "B/03"]
    assert [r.name for r in plate.rows] == list("ABCDEFGH") and len(plate.columns) == 12
    assert plate.field_count == 2
    well = Well.from_zarr(root["B/03"])
    assert [im.path for im in well.attributes.ome.well.images] == ["0", "1"]
    img = Image.from_zarr(root["B/03/1"])
    ms = img.attributes.ome.multiscales[0]
    assert [a.name for a in ms.axes] == ["t", "c", "z", "y", "x"]
    scales = [d.coordinateTransformations[0].scale for d in ms.datasets]
    assert scales == [[1.0, 1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0, 2.0]]
    arr = root["B/03/1/0"]
    assert arr.shape == (1, 2, 1, 600, 520) and arr.chunks == (1, 1, 1, 256, 256)
    assert arr.metadata.dimension_names == ("t", "c", "z", "y", "x")
    assert root["B/03/1/2"].shape == (1, 2, 1, 150, 130)
    omero = root["B/03/1"].attrs["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == ["DAPI", "GFP"]
    assert store.hts_attrs["plate_id"] == "pid"


def test_write_and_read_field_with_pyramid(tmp_path):
    desc = _desc()
    store = PlateStore.create(tmp_path / "p.zarr", desc, plate_id="pid", fingerprint="fp", tile=256)
    data = np.random.default_rng(1).integers(0, 65535, size=desc.shape, dtype=np.uint16)
    store.write_field(parse_well("B03"), 1, data)
    np.testing.assert_array_equal(store.read_field("B/03", 1)[:], data)
    np.testing.assert_array_equal(store.read_field("B/03", 1, level=1)[:], downsample2(data))
    np.testing.assert_array_equal(store.read_field("B/03", 1, level=2)[:], downsample2(downsample2(data)))
    # other fields untouched
    assert not store.read_field("A/01", 0)[:].any()
    with pytest.raises(StoreError, match="expects shape"):
        store.write_field(parse_well("A01"), 0, data[..., :100])


def test_field_rewrite_replaces_every_chunk_in_place(tmp_path):
    # chunks are written one by one, in place (no temporary files); a second write of a
    # field (what an interrupted ingest does on resume) replaces all of them
    desc = _desc(shape=(2, 2, 1, 600, 520))
    store = PlateStore.create(tmp_path / "p.zarr", desc, plate_id="pid", fingerprint="fp", tile=256)
    rng = np.random.default_rng(2)
    first, second = (rng.integers(0, 65535, size=desc.shape, dtype=np.uint16) for _ in range(2))
    store.write_field(parse_well("A01"), 0, first)
    level0 = tmp_path / "p.zarr" / "A" / "01" / "0" / "0"
    chunk_files = sorted(p for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) == 2 * 2 * 3 * 3  # t, c, 3 rows x 3 columns of 256² tiles over 600 x 520
    store.write_field(parse_well("A01"), 0, second)
    assert not list((tmp_path / "p.zarr").rglob("*.partial"))
    np.testing.assert_array_equal(store.read_field("A/01", 0)[:], second)
    np.testing.assert_array_equal(store.read_field("A/01", 0, level=2)[:], downsample2(downsample2(second)))


def test_writes_split_into_chunks_that_tile_the_region_exactly():
    from hts.store.ngff import _by_chunk

    label = np.arange(600 * 520, dtype=np.int32).reshape(600, 520)
    writes = list(_by_chunk((1, 0, 0), label, (1, 1, 1, 256, 256)))
    assert len(writes) == 9
    covered = np.zeros((600, 520), int)
    for sel, value in writes:
        assert sel[:3] == (slice(1, 2), slice(0, 1), slice(0, 1))
        assert all(s.stop <= n for s, n in zip(sel[3:], label.shape))  # never past the array
        assert value.shape == (1, 1, 1, sel[3].stop - sel[3].start, sel[4].stop - sel[4].start)
        np.testing.assert_array_equal(value[0, 0, 0], label[sel[3], sel[4]])
        covered[sel[3], sel[4]] += 1
    assert (covered == 1).all()


def test_create_refuses_existing(tmp_path):
    PlateStore.create(tmp_path / "p.zarr", _desc(), plate_id="a", fingerprint="fp")
    with pytest.raises(StoreError, match="--overwrite"):
        PlateStore.create(tmp_path / "p.zarr", _desc(), plate_id="b", fingerprint="fp")
    PlateStore.create(tmp_path / "p.zarr", _desc(), plate_id="b", fingerprint="fp", overwrite=True)
    assert PlateStore(tmp_path / "p.zarr").hts_attrs["plate_id"] == "b"


def test_labels_add_to_existing_ones_validate_and_replace(tmp_path):
    from ome_zarr_models.v05 import ImageLabel, Labels

    desc = _desc()
    store = PlateStore.create(tmp_path / "p.zarr", desc, plate_id="pid", fingerprint="fp", tile=256)
    fp = "B/03/1"
    lab = np.zeros((600, 520), np.int32)
    lab[10:60, 20:90], lab[300:420, 200:260] = 1, 2
    assert store.create_labels(fp, ["nuclei_a"], n_t=1) == 3
    store.write_labels(fp, {"nuclei_a": lab}, 0, properties={"nuclei_a": [{"label-value": 1, "kind": "x"}]})
    # a second run's labels join the first's without touching them
    store.create_labels(fp, ["cells_b"], n_t=1)
    store.write_labels(fp, {"cells_b": lab * 3}, 0)
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = Labels.from_zarr(root[f"{fp}/labels"])
        image_label = ImageLabel.from_zarr(root[f"{fp}/labels/nuclei_a"])
    assert labels.attributes.ome.labels == ["nuclei_a", "cells_b"]
    assert [d.path for d in image_label.attributes.ome.multiscales[0].datasets] == ["0", "1", "2"]
    assert root[f"{fp}/labels/nuclei_a"].attrs["ome"]["image-label"]["properties"] == [{"label-value": 1, "kind": "x"}]
    np.testing.assert_array_equal(store.read_labels(fp, "nuclei_a")[0, 0, 0], lab)
    np.testing.assert_array_equal(store.read_labels(fp, "nuclei_a", level=1)[0, 0, 0], lab[::2, ::2])
    np.testing.assert_array_equal(store.read_labels(fp, "cells_b", level=2)[0, 0, 0], (lab * 3)[::4, ::4])
    # the image itself is untouched; labels of the same name are kept unless replaced
    assert root[fp].attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    store.create_labels(fp, ["nuclei_a"], n_t=1)
    assert store.read_labels(fp, "nuclei_a")[0, 0, 0].max() == 2
    store.create_labels(fp, ["nuclei_a"], n_t=1, overwrite=True)
    assert store.read_labels(fp, "nuclei_a")[0, 0, 0].max() == 0
    assert (
        "properties"
        not in zarr.open_group(tmp_path / "p.zarr", mode="r")[f"{fp}/labels/nuclei_a"].attrs["ome"]["image-label"]
    )
    assert Labels.from_zarr(zarr.open_group(tmp_path / "p.zarr", mode="r")[f"{fp}/labels"]).attributes.ome.labels == [
        "nuclei_a",
        "cells_b",
    ]
    with pytest.raises(StoreError, match="expects shape"):
        store.write_labels(fp, {"cells_b": lab[:100]}, 0)


def test_channel_windows_change_only_the_windows(tmp_path):
    store = PlateStore.create(tmp_path / "p.zarr", _desc(), plate_id="pid", fingerprint="fp", tile=256)
    store.set_channel_windows([(100, 2000), (5, 60.5)], ["A/01/0", "B/03/1"])
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    for fp in ("A/01/0", "B/03/1"):
        chans = root[fp].attrs["ome"]["omero"]["channels"]
        assert [(c["window"]["start"], c["window"]["end"]) for c in chans] == [(100.0, 2000.0), (5.0, 60.5)]
        assert [c["window"]["max"] for c in chans] == [65535.0, 65535.0] and [c["label"] for c in chans] == [
            "DAPI",
            "GFP",
        ]
    untouched = root["A/01/1"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert untouched["start"] == 0.0 and untouched["end"] == 65535.0
    Image.from_zarr(root["B/03/1"])


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_local_writes_are_byte_for_byte_what_zarr_writes(tmp_path, monkeypatch):
    # in a local store, fields and label images are written on the calling thread (the fast path);
    # the same writes through zarr itself (the path of object stores) must leave identical files:
    # chunk keys, Blosc payloads, edge chunks padded with the fill value, and metadata documents
    from hts.store import ngff

    desc = _desc(shape=(2, 2, 1, 600, 520))  # 600 x 520 in 256² tiles: partial chunks at two edges
    rng = np.random.default_rng(3)
    data = rng.integers(0, 65535, size=desc.shape, dtype=np.uint16)
    lab = np.zeros((600, 520), np.int32)
    lab[10:60, 20:90], lab[300:599, 200:519] = 7, 123456

    def write(root):
        store = PlateStore.create(root, desc, plate_id="pid", fingerprint="fp", tile=256)
        store.write_field(parse_well("A01"), 1, data)
        levels = store.create_labels("A/01/1", ["nuclei", "cells"], n_t=2, overwrite=True)
        store.write_labels("A/01/1", {"nuclei": lab, "cells": lab * 2}, 1, levels=levels)
        store.create_labels("A/01/1", ["nuclei"], n_t=2, overwrite=True)  # replaced: emptied
        store.write_labels("A/01/1", {"nuclei": lab[::-1].copy()}, 0, levels=levels)
        return store

    fast = write(tmp_path / "fast.zarr")
    meta = fast._local_array_meta("A/01/1/labels/cells/0")
    assert meta is not None and ngff._blosc_encoder(meta) is not None  # the fast path was taken
    with monkeypatch.context() as m:
        m.setattr(ngff, "_blosc_encoder", lambda meta: None)
        m.setattr(PlateStore, "_local_nodes", lambda self, nodes, overwrite: None)
        write(tmp_path / "zarr.zarr")
    a, b = _tree(tmp_path / "fast.zarr"), _tree(tmp_path / "zarr.zarr")
    assert a.keys() == b.keys()
    assert any("labels/cells/0/c/1/0/0/2/" in k for k in a)  # the last row of chunks of time point 1
    for key in a:
        if key.endswith("zarr.json"):
            assert json.loads(a[key]) == json.loads(b[key]), key
        else:
            assert a[key] == b[key], key
    root = zarr.open_group(tmp_path / "fast.zarr", mode="r")
    np.testing.assert_array_equal(root["A/01/1/0"][:], data)
    np.testing.assert_array_equal(root["A/01/1/labels/cells/0"][1, 0, 0], lab * 2)
    np.testing.assert_array_equal(root["A/01/1/labels/nuclei/0"][0, 0, 0], lab[::-1])
    assert not root["A/01/1/labels/nuclei/0"][1].any()  # the replaced image lost time point 1
    assert root["A/01/1/labels"].attrs["ome"]["labels"] == ["nuclei", "cells"]


def test_read_block_reads_what_zarr_reads(tmp_path, monkeypatch):
    # a local store reads blocks on the calling thread: the same values as zarr, edge chunks cut to
    # the array, chunks never written as the fill value, a damaged chunk named in one line
    from hts.store import ngff

    desc = _desc(shape=(3, 2, 2, 600, 520))
    store = PlateStore.create(tmp_path / "p.zarr", desc, plate_id="pid", fingerprint="fp", tile=256)
    data = np.random.default_rng(4).integers(0, 65535, size=desc.shape, dtype=np.uint16)
    store.write_field(parse_well("B03"), 0, data)
    store.create_labels("B/03/0", ["nuclei"], n_t=3)
    lab = np.arange(600 * 520, dtype=np.int32).reshape(600, 520)
    store.write_labels("B/03/0", {"nuclei": lab}, 2)
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    fresh = PlateStore(tmp_path / "p.zarr")  # reads the documents from disk
    assert fresh.shape_of("B/03/0/0") == (3, 2, 2, 600, 520)
    for t in range(3):
        np.testing.assert_array_equal(fresh.read_block("B/03/0/0", (t,)), data[t])
        np.testing.assert_array_equal(fresh.read_block("B/03/0/1", (t,)), root["B/03/0/1"][t])
    np.testing.assert_array_equal(fresh.read_block("B/03/0/labels/nuclei/0", (2, 0, 0)), lab)
    never = fresh.read_block("B/03/0/labels/nuclei/0", (1, 0, 0))  # no chunk written at t = 1
    assert never.dtype == np.int32 and never.shape == (600, 520) and not never.any()
    np.testing.assert_array_equal(fresh.read_block("A/01/0/0", (0, 1)), np.zeros((2, 600, 520), np.uint16))
    np.testing.assert_array_equal(fresh.read_block("B/03/0/0"), data)
    with monkeypatch.context() as m:  # zarr's path reads the same
        m.setattr(ngff, "_blosc_encoder", lambda meta: None)
        np.testing.assert_array_equal(PlateStore(tmp_path / "p.zarr").read_block("B/03/0/0", (1,)), data[1])
    with pytest.raises(StoreError, match="outside the array"):
        fresh.read_block("B/03/0/0", (3,))
    with pytest.raises(StoreError, match="no array here"):
        fresh.read_block("B/03/0/labels/cells/0", (0, 0, 0))
    chunk = tmp_path / "p.zarr" / "B" / "03" / "0" / "0" / "c" / "1" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(StoreError, match=r"chunk c/1/0/0/0/0 cannot be read"):
        PlateStore(tmp_path / "p.zarr").read_block("B/03/0/0", (1,))


def test_local_writes_check_everything_first_and_leave_other_chunkings_to_zarr(tmp_path):
    from zarr.codecs import BloscCodec

    root = tmp_path / "s"
    kw = dict(dtype="int32", compressors=BloscCodec(cname="zstd", clevel=2, shuffle="shuffle"), fill_value=5)
    zarr.create_array(root / "deep", shape=(4, 8, 8), chunks=(2, 4, 4), **kw)  # two time points per chunk
    zarr.create_array(root / "m1", shape=(2, 4, 4), chunks=(1, 4, 4), **kw)
    zarr.create_array(root / "m2", shape=(2, 3, 3), chunks=(1, 3, 3), **kw)
    store = PlateStore(root)
    # a chunk shared by two time points is merged by zarr, not overwritten whole
    store._write_arrays([("deep", (1,), np.full((8, 8), 9, np.int32))])
    deep = zarr.open_array(root / "deep", mode="r")[:]
    assert (deep[1] == 9).all() and (deep[0] == 5).all() and (deep[2:] == 5).all()
    # one bad shape or index in a batch: nothing of the batch is written
    with pytest.raises(StoreError, match="m2: expects shape"):
        store._write_arrays([("m1", (0,), np.ones((4, 4), np.int32)), ("m2", (0,), np.ones((4, 4), np.int32))])
    with pytest.raises(StoreError, match="outside the array"):
        store._write_arrays([("m1", (0,), np.ones((4, 4), np.int32)), ("m1", (2,), np.ones((4, 4), np.int32))])
    assert not list((root / "m1").rglob("c/*/*/*")) and (zarr.open_array(root / "m1", mode="r")[:] == 5).all()
