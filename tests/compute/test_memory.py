"""Memory of one field's segmentation and measurement: bounded by the field and one tile, not by copies.

tracemalloc counts numpy's allocations exactly, so these bounds are deterministic (not timings).
The field is the real DSB2018 nucleus image of tests/data tiled 4x4 (2048², ~2,000 nuclei).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hts.compute.measure import MeasureOptions, measure_field
from hts.compute.measure.features import _Objects, intensity_features, object_features
from hts.compute.segment.engines import engine_class, segment_field

DATA = Path(__file__).parents[1] / "data" / "nuclei_gt"
PX = 0.5


@pytest.fixture(scope="module")
def field():
    img = tifffile.imread(DATA / "dsb2018_img2d.tif")
    img = np.tile(img, (4, 4)).astype(np.uint16)
    cls = engine_class("classic")
    labels = segment_field(cls(cls.Params()), {"nucleus": img}, pixel_size_um=PX).labels
    return img, labels


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_measure_working_set_per_pixel(field):
    img, labels = field
    nuclei = labels["nuclei"]
    assert len(np.unique(nuclei)) > 1500
    peak = _peak(lambda: measure_field({"nuclei": nuclei}, {"DAPI": img}, pixel_size_um=PX, options=MeasureOptions()))
    # was 21.5 bytes per field pixel (int64 pixel lists, padded label copies, every temporary alive at once,
    # the whole field's object pixels at once); measured in bands of ~1 M pixels it is 6.2
    assert peak / img.size < 8, f"{peak / img.size:.1f} B/px"


def test_pixel_lists_are_int32(field):
    o = _Objects(field[1]["nuclei"])
    assert {a.dtype for a in (o.idx, o.rank, o.r, o.c)} == {np.dtype(np.int32)}


def test_tiled_segmentation_is_bounded_by_a_tile(field):
    img, labels = field
    cls = engine_class("classic")
    eng = cls(cls.Params())
    tiled = {}
    peak = _peak(lambda: tiled.update(segment_field(eng, {"nucleus": img}, pixel_size_um=PX, tile=512).labels))
    out = sum(v.nbytes for v in tiled.values())
    # the returned labels, one field of prepare's statistics and a 512-px tile's working set; the whole-field
    # smoothed image and a second copy of the labels while renumbering them are no longer alive (was 2.8x)
    assert peak < 2.1 * out, f"peak {peak / 1e6:.0f} MB for {out / 1e6:.0f} MB of labels"
    assert tiled["nuclei"].max() == len(np.unique(tiled["nuclei"])) - 1  # renumbered 1..N in place


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "bool"])
def test_integer_images_equal_their_float_values(dtype):
    """The integer path (packed-key sorts of the raw values) gives the float path's quantiles and MAD."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 9, (60, 70)).astype(np.int32)
    if dtype == "bool":
        img = rng.random((60, 70)) > 0.6
    else:
        info = np.iinfo(dtype)
        img = rng.integers(max(info.min, -3000), min(info.max, 3000), (60, 70)).astype(dtype)
    got = intensity_features(labels, img, channel="c", scale=7.0)
    ref = intensity_features(labels, img.astype(np.float64), channel="c", scale=7.0)
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_object_features_with_a_float_channel_holding_nan(field):
    img, labels = field
    f = img.astype(np.float32)
    f[100:110, 100:300] = np.nan
    nuclei = labels["nuclei"][:512, :512]
    a = object_features(nuclei, {"F": f[:512, :512]})
    finite = np.where(np.isfinite(f[:512, :512]), f[:512, :512], 0)
    b = object_features(np.where(np.isfinite(f[:512, :512]), nuclei, 0), {"F": finite})
    # objects untouched by the NaN band measure the same either way
    keep = np.isin(a["ObjectNumber"], b["ObjectNumber"])
    touched = np.unique(nuclei[100:110, 100:300])
    same = keep & ~np.isin(a["ObjectNumber"], touched)
    sel = np.isin(b["ObjectNumber"], a["ObjectNumber"][same])
    np.testing.assert_allclose(a["Intensity_MedianIntensity_F"][same], b["Intensity_MedianIntensity_F"][sel])


def test_measuring_in_bands_equals_the_whole_field(field, monkeypatch):
    """Objects grouped by the band of their top row, measured on their rows: the whole field's values."""
    from hts.compute.measure import features as F
    from hts.compute.segment.postprocess import expand_labels

    img, labels = field
    nuclei = labels["nuclei"][:768, :640]
    cells = expand_labels(nuclei, 8)  # cells that reach across band borders
    f = img[:768, :640].astype(np.float32)
    f[300:310, :] = np.nan
    images = {"DAPI": img[:768, :640], "F": f}
    monkeypatch.setattr(F, "BAND_PIXELS", 1 << 40)
    whole = F.compartment_features(nuclei, cells, images, pixel_size_um=PX)
    monkeypatch.setattr(F, "BAND_PIXELS", 64 * 640)  # bands of 64 rows: 12 bands
    banded = F.compartment_features(nuclei, cells, images, pixel_size_um=PX)
    assert len(F.object_ids(nuclei)) > 150
    for comp in whole:
        assert list(banded[comp]) == list(whole[comp])
        for k, v in whole[comp].items():
            # row coordinates are rounded once more (offset added after the mean): ~1e-16; mass displacement
            # is a difference of two such centroids
            np.testing.assert_allclose(banded[comp][k], v, rtol=1e-9, atol=1e-12, err_msg=f"{comp} {k}")
    exact = [k for k in whole["nuclei"] if "Center_Y" not in k and "MassDisplacement" not in k]
    for k in exact:
        np.testing.assert_array_equal(banded["nuclei"][k], whole["nuclei"][k], err_msg=k)


def test_granularity_with_thousands_of_objects_on_int32_pixel_lists():
    """Keys of (object, subsampled pixel) exceed int32 with thousands of objects: computed in int64."""
    from hts.compute.measure.texture import granularity_features

    lab = np.zeros((1024, 1024), np.int32)
    ids = np.arange(1, 64 * 64 + 1, dtype=np.int32).reshape(64, 64)
    lab[:] = np.kron(ids, np.ones((16, 16), np.int32))
    lab[::16, :] = 0  # one-pixel gaps: 4096 objects of 15 x 16
    img = (np.random.default_rng(0).random((1024, 1024)) * 4000).astype(np.uint16)
    g = granularity_features(lab, img, channel="c", spectrum_length=2, subsample_size=1.0, image_sample_size=0.25)
    assert all(v.shape == (4096,) and np.isfinite(v).all() for v in g.values())


def test_banded_measurement_of_an_empty_field_and_of_sparse_huge_ids():
    from hts.compute.measure.features import object_features

    empty = object_features(np.zeros((2048, 1024), np.int32), {"c": np.ones((2048, 1024), np.uint16)})
    assert all(len(v) == 0 for v in empty.values())
    lab = np.zeros((2048, 1024), np.int64)
    lab[10:20, 10:20], lab[1500:1510, 500:510] = 2**40, 7  # ids far above 4x the pixel count
    tracemalloc.start()
    f = object_features(lab, {"c": np.ones((2048, 1024), np.uint16)})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f["ObjectNumber"].tolist() == [7, 2**40] and f["AreaShape_Area"].tolist() == [100, 100]
    assert peak < 200e6  # no per-id table


def test_images_must_have_the_labels_shape():
    from hts.compute.measure.features import object_features

    with pytest.raises(ValueError, match="image c: shape"):
        object_features(np.ones((100, 100), np.int32), {"c": np.ones((200, 100), np.uint16)})
