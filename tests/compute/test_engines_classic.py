"""Classic and foci engines on synthetic fields with ground truth; seam-free tiling."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA
from skimage.metrics import contingency_table

from hts.compute.segment.engines import EngineError, engine_class, engines, segment_field
from hts.compute.segment.tiling import tile_grid
from hts.synth import synth_field


def match(pred: np.ndarray, truth: np.ndarray, thr: float = 0.5) -> tuple[int, np.ndarray]:
    """Greedy one-to-one matching by IoU; returns (true positives, IoU of each true object's best match)."""
    ct = contingency_table(truth, pred).toarray().astype(float)
    at, ap = ct.sum(axis=1), ct.sum(axis=0)
    iou = ct / (at[:, None] + ap[None, :] - ct + 1e-9)
    iou[0, :] = 0
    iou[:, 0] = 0
    ids_t = np.unique(truth)[1:]
    best = iou[ids_t].max(axis=1) if ids_t.size else np.array([])
    return int((best > thr).sum()), best


def test_registry_lists_engines():
    assert {"classic", "foci"} <= set(engines())
    with pytest.raises(EngineError, match="unknown engine 'nope'; engines: "):
        engine_class("nope")


def test_classic_finds_synthetic_nuclei_and_cells():
    eng = engine_class("classic")()
    f1s = {"nuclei": [], "cells": []}
    for seed in (11, 12):
        f = synth_field(shape=(384, 384), seed=seed)
        res = segment_field(eng, {"nucleus": f.image[0], "cytoplasm": f.image[1]}, pixel_size_um=0.65)
        for name, truth in (("nuclei", f.nuclei), ("cells", f.cells)):
            tp, _ = match(res.labels[name], truth)
            n_pred, n_true = len(np.unique(res.labels[name])) - 1, len(np.unique(truth)) - 1
            f1s[name].append(2 * tp / (n_pred + n_true))
        # every cell contains its nucleus (linked ids)
        nuc = res.labels["nuclei"]
        assert np.all(res.labels["cells"][nuc > 0] == nuc[nuc > 0])
    assert min(f1s["nuclei"]) > 0.93, f1s
    assert min(f1s["cells"]) > 0.80, f1s


def test_classic_without_cytoplasm_expands_nuclei():
    eng = engine_class("classic")({"cell_max_distance_um": 5.0})
    f = synth_field(shape=(256, 256), seed=3, channels=("DAPI",))
    res = segment_field(eng, {"nucleus": f.image[0]}, pixel_size_um=0.65)
    nuc, cells = res.labels["nuclei"], res.labels["cells"]
    assert (cells > 0).sum() > (nuc > 0).sum() * 1.5
    assert set(np.unique(cells)) == set(np.unique(nuc))


def test_nucleus_only_cells_are_the_whole_field_expansion_and_tiles_need_only_a_nucleus_halo():
    """Without a cytoplasm channel the cells are expanded once over the stitched field (in blocks),
    so the tiles' halo is sized for nuclei: the same labels as one whole-field pass."""
    from skimage.segmentation import expand_labels

    f = synth_field(shape=(400, 400), seed=21, density=1.0, channels=("DAPI",))
    eng = engine_class("classic")({"cell_max_distance_um": 12.0})
    whole = segment_field(eng, {"nucleus": f.image[0]}, pixel_size_um=0.65, tile=1024)
    seen = []
    tile_fn = eng.segment_tile
    eng.segment_tile = lambda images, maps, ctx: seen.append(images["nucleus"].shape) or tile_fn(images, maps, ctx)
    tiled = segment_field(eng, {"nucleus": f.image[0]}, pixel_size_um=0.65, tile=128, halo=16)
    assert max(seen) <= (128 + 2 * 47,) * 2  # halo 1.25 x 2 x 12 µm = 47 px, not the cells' 1.25 x 36 µm = 70 px
    reach = 12.0 / 0.65
    np.testing.assert_array_equal(whole.labels["cells"], expand_labels(whole.labels["nuclei"], reach))
    # the same objects (ids are numbered in tile order, so compare the partitions), cells linked to nuclei
    for name in ("nuclei", "cells"):
        a, b = whole.labels[name].ravel(), tiled.labels[name].ravel()
        pairs = np.unique(a.astype(np.int64) * (b.max() + 1) + b)
        assert len(pairs) == len(np.unique(a)) == len(np.unique(b)), name
    np.testing.assert_array_equal(tiled.labels["cells"], expand_labels(tiled.labels["nuclei"], reach))


def test_tiles_of_a_small_field_are_cut_from_the_field_smoothed_once(monkeypatch):
    """A field of a few tiles is smoothed once in prepare and its tiles cut from it (not smoothed
    again each); the labels equal those of tiles smoothed on their own (the difference is confined
    to the halo's outer pixels)."""
    import hts.compute.segment.engines.base as base
    from hts.compute.segment import postprocess as pp

    f = synth_field(shape=(400, 400), seed=22, density=1.0, channels=("DAPI", "GFP"))
    images = {"nucleus": f.image[0], "cytoplasm": f.image[1]}
    eng = engine_class("classic")()
    calls = []
    smooth = pp.smooth
    monkeypatch.setattr(pp, "smooth", lambda *a, **k: calls.append(a[0].shape) or smooth(*a, **k))
    n_tiles = len(tile_grid((400, 400), 200, 80))
    assert 1 < n_tiles <= base.KEEP_WHOLE_FIELD_TILES
    kept = segment_field(eng, images, pixel_size_um=0.65, tile=200, halo=80)
    assert calls == [(400, 400)] * 2  # the two channels, once each
    calls.clear()
    monkeypatch.setattr(base, "KEEP_WHOLE_FIELD_TILES", 1)
    own = segment_field(eng, images, pixel_size_um=0.65, tile=200, halo=80)
    assert len(calls) == 2 + 2 * n_tiles
    for name in ("nuclei", "cells"):
        np.testing.assert_array_equal(kept.labels[name], own.labels[name], err_msg=name)


@pytest.mark.parametrize("block", [7, 50, 1000])
def test_blockwise_expand_labels_equals_skimage(block):
    from skimage.segmentation import expand_labels

    from hts.compute.segment.postprocess import expand_labels as blockwise

    rng = np.random.default_rng(block)
    lab = np.zeros((300, 240), np.int32)
    pts = rng.integers(0, [300, 240], (60, 2))
    lab[pts[:, 0], pts[:, 1]] = np.arange(1, 61)
    lab[::40, ::30] = 99  # a grid of equidistant seeds: ties everywhere
    for d in (0.5, 3, 9.5, 40):
        np.testing.assert_array_equal(blockwise(lab, d, block=block), expand_labels(lab, d), err_msg=f"distance {d}")


def test_sparse_expand_labels_equals_skimage_window_by_window():
    """A sparse field is expanded in windows around its groups of objects (``_expand_sparse``), exactly as
    scikit-image expands the whole field: discs and points, groups that touch, equidistant seeds (ties)."""
    from skimage.segmentation import expand_labels

    from hts.compute.segment import postprocess as pp

    rng = np.random.default_rng(7)
    yy, xx = np.ogrid[:600, :500]
    taken = 0
    for trial in range(12):
        lab = np.zeros((600, 500), np.int32)
        for i in range(1, int(rng.integers(2, 14))):
            y, x, r = rng.integers(0, 600), rng.integers(0, 500), rng.integers(0, 7)
            lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = i
        if trial % 3 == 0:
            lab[5:600:170, 7:500:130] = 50  # equidistant points: ties
        for d in (0.5, 4, 9.5, 30):
            out = np.zeros_like(lab)
            ref = expand_labels(lab, d)
            if pp._expand_sparse(lab, d, int(np.ceil(d)) + 2, out):
                taken += 1
                np.testing.assert_array_equal(out, ref, err_msg=f"trial {trial}, distance {d}")
            np.testing.assert_array_equal(pp.expand_labels(lab, d), ref, err_msg=f"trial {trial}, distance {d}")
    assert taken >= 30  # the window-by-window path was exercised, not only the blocks
    dense = np.zeros((300, 300), np.int32)
    dense[::6, ::6] = np.arange(1, 2501).reshape(50, 50)
    assert not pp._expand_sparse(dense, 5, 7, np.zeros_like(dense))  # a dense field goes to the blocks
    sparse = np.zeros((300, 300), np.int32)
    sparse[100, 100] = 1
    assert pp._expand_sparse(sparse, 5, 7, np.zeros_like(sparse))
    assert not pp._expand_sparse(sparse, 5, 7, np.zeros_like(sparse), largest=100)  # a window above a block's: blocks


def test_relabel_equals_relabel_sequential():
    from skimage.segmentation import relabel_sequential

    from hts.compute.segment.postprocess import relabel

    rng = np.random.default_rng(3)
    for dtype in (np.int32, np.int64, np.uint16, np.uint8, bool):
        lab = (rng.integers(0, 40, (120, 90)) * rng.integers(0, 2, (120, 90)) * 3).astype(dtype)
        out = relabel(lab)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, relabel_sequential(lab.astype(np.int32))[0], err_msg=str(dtype))
    huge = np.zeros((4, 4), np.int64)
    huge[1, 1], huge[2, 2] = 2**40, 7  # ids far above the pixel count: scikit-image's path
    np.testing.assert_array_equal(relabel(huge), relabel_sequential(huge)[0])


def test_bad_parameters_are_rejected():
    with pytest.raises(Exception, match="nucleus_diameter_um"):
        engine_class("classic")({"nucleus_diameter_um": -1})
    with pytest.raises(Exception, match="no_such_param"):
        engine_class("classic")({"no_such_param": 1})


@pytest.mark.parametrize("tile", [96, 160])
def test_tiled_equals_whole_image_pass(tile):
    """Cells straddling tile seams: small tiles give the same instances as one pass."""
    f = synth_field(shape=(400, 400), seed=21)
    images = {"nucleus": f.image[0], "cytoplasm": f.image[1]}
    eng = engine_class("classic")()
    whole = segment_field(eng, images, pixel_size_um=0.65, tile=1024)
    tiled = segment_field(eng, images, pixel_size_um=0.65, tile=tile, halo=32)
    grid = tile_grid((400, 400), tile, 0)
    assert len(grid) >= 9
    # cells do straddle the seams
    seams_y = {t.core[0] for t in grid if t.core[0] > 0}
    crossing = set()
    for y in seams_y:
        above, below = whole.labels["cells"][y - 1], whole.labels["cells"][y]
        crossing |= set(np.intersect1d(above[above > 0], below[below > 0]).tolist())
    assert len(crossing) >= 5
    for name in ("nuclei", "cells"):
        a, b = whole.labels[name], tiled.labels[name]
        assert len(np.unique(a)) == len(np.unique(b)), name
        tp, best = match(b, a, thr=0.95)
        assert tp == len(np.unique(a)) - 1, (name, np.sort(best)[:5])


def test_foci_assigned_to_cells_with_axis_position():
    f = synth_field(shape=(320, 320), seed=8, channels=("DAPI", "GFP"))
    cells_truth = f.cells
    yy, xx = np.indices(cells_truth.shape)
    foci_img = np.full(cells_truth.shape, 200.0) + 300.0 * (cells_truth > 0)
    planted = []
    rng = np.random.default_rng(0)
    for cid in np.unique(cells_truth)[1:12]:
        ys, xs = np.nonzero(cells_truth == cid)
        if ys.size < 400:
            continue
        # a spot deep inside the cell: the pixel farthest from the background
        k = rng.integers(ys.size)
        planted.append((ys[k], xs[k]))
        foci_img += 4000 * np.exp(-((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / (2 * 1.3**2))
    foci_img += rng.normal(0, 10, foci_img.shape)
    eng = engine_class("foci")()
    res = segment_field(
        eng,
        {"nucleus": f.image[0], "cytoplasm": f.image[1], "foci": foci_img.clip(0, 65535).astype(np.uint16)},
        pixel_size_um=0.65,
    )
    foci, cells = res.labels["foci"], res.labels["cells"]
    props = res.properties["foci"]
    assert len(props) == len(np.unique(foci)) - 1
    found = {tuple(p) for p in planted if foci[p] > 0}
    assert len(found) >= len(planted) - 1  # a planted spot may fall in a cell the engine missed
    assert len(props) <= len(planted) + 2
    for p in props:
        assert 0.0 <= p["axis_position"] <= 1.0
        assert p["polar"] == (p["axis_position"] < 0.2 or p["axis_position"] > 0.8)
        # the focus lies (mostly) in its assigned cell
        sel = foci == p["label-value"]
        assert np.mean(cells[sel] == p["cell"]) > 0.5


def _h_maxima_by_object(surface, mask, h):
    """The reference: scikit-image's h_maxima on each 8-connected component alone, zero-padded."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    comps, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    out = np.zeros(mask.shape, bool)
    for i, sl in enumerate(ndi.find_objects(comps), start=1):
        own = comps[sl] == i
        out[sl] |= (
            h_maxima(np.pad(np.where(own, surface[sl], 0).astype(np.float32), 1), h)[1:-1, 1:-1].astype(bool) & own
        )
    return out


@pytest.mark.parametrize("h", [0.5, 2.0, 6.0])
def test_packed_h_maxima_equals_per_object_and_whole_field(h):
    # real nuclei (DSB 2018 ground truth): the seeds of the classic engine, smoothed distance transform
    import tifffile
    from scipy import ndimage as ndi
    from skimage.filters import gaussian
    from skimage.morphology import h_maxima

    from hts.compute.segment.postprocess import h_maxima_in

    mask = tifffile.imread(DATA / "nuclei_gt" / "dsb2018_mask2d.tif") > 0
    dist = gaussian(ndi.distance_transform_edt(mask), sigma=1.0, preserve_range=True).astype(np.float32)
    got = h_maxima_in(dist, mask, h)
    assert got.any() and ndi.label(mask)[1] > 20
    np.testing.assert_array_equal(got, _h_maxima_by_object(dist, mask, h))
    np.testing.assert_array_equal(got, h_maxima(np.where(mask, dist, 0), h).astype(bool) & mask)
    # objects whose height is below h have no maxima; an empty mask has none
    assert dist.max() * 0.01 < 0.5 and not h_maxima_in(dist * 0.01, mask, h).any()
    assert not h_maxima_in(dist, np.zeros_like(mask), h).any()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-loop", "public-watershed"])
def test_flood_components_equals_watershed_and_splits_each_object_on_its_own_pixels(compiled, monkeypatch):
    import tifffile
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from hts.compute.segment import postprocess
    from hts.compute.segment.postprocess import flood_components, hmax_seeds, split_touching

    assert postprocess._watershed_loop is not None  # this scikit-image has its compiled loop where expected
    if not compiled:  # the fallback for a scikit-image without it
        monkeypatch.setattr(postprocess, "_watershed_loop", None)

    # real touching nuclei (DSB 2018 truth), the classic engine's seeds, plus a blob left without a seed
    mask = tifffile.imread(DATA / "nuclei_gt" / "dsb2018_mask2d.tif") > 0
    markers, dist = hmax_seeds(mask, h_px=0.5)
    comp, n = ndi.label(mask)
    markers[comp == comp[markers > 0][0]] = 0
    labels, seeds = flood_components(-dist, markers, comp, n)
    assert (seeds[1:] == 0).sum() >= 1 and (seeds == 1).sum() > 20 and (seeds >= 2).sum() > 5
    seeded = seeds[comp] > 0
    # where no two pixels tie, the same as one watershed over every seeded object
    rng = np.random.default_rng(0)
    surface = -dist + rng.random(dist.shape) * 1e-3
    want = watershed(surface, markers, mask=seeded)
    np.testing.assert_array_equal(flood_components(surface, markers, comp, n)[0], want)
    # with ties (a distance transform is full of them), an object's split depends on its own pixels only;
    # on this real field (the classic engine's foreground of a BBBC039 image) one watershed over the whole
    # field splits one touching pair otherwise than the pair alone
    field = tifffile.imread(DATA / "nuclei_gt" / "bbbc039_N11_s4_foreground.tif") > 0
    markers, dist = hmax_seeds(field, h_px=1.0 / 0.65)
    comp, n = ndi.label(field)
    labels, seeds = flood_components(-dist, markers, comp, n)
    whole = watershed(-dist, markers, mask=field)
    differ = 0
    boxes = ndi.find_objects(comp)
    for c in np.flatnonzero(seeds >= 2):
        own = comp == c
        alone, _ = flood_components(-dist, np.where(own, markers, 0), np.where(own, comp, 0), n)
        np.testing.assert_array_equal(alone[own], labels[own])
        assert len(np.unique(labels[own])) == seeds[c]
        differ += not np.array_equal(whole[own], labels[own])
        # ... and is scikit-image's public watershed of the object's box alone
        sl = boxes[c - 1]
        box = comp[sl] == c
        want = watershed(-dist[sl], np.where(box, markers[sl], 0), mask=box)
        np.testing.assert_array_equal(labels[sl][box], want[box])
    assert differ >= 1 and (seeds >= 2).sum() > 5  # (scikit-image 0.26: one pair)
    # split_touching: a component without a seed (lower than h) is an object of its own, numbered last
    blobs = np.zeros((40, 62), bool)
    blobs[5:25, 5:25] = blobs[5:25, 30:50] = blobs[13:17, 25:30] = True  # two squares joined by a neck: two seeds
    blobs[33:36, 55:58] = True  # 3 x 3: distance 2 at most, below h
    out = split_touching(blobs, seeds="hmin", diameter_px=10, h_px=3)
    assert out.max() == 3 and out[34, 56] == 3 and (out == 3).sum() == 9 and out[10, 8] != out[10, 45] > 0


def test_distance_transform_on_packed_objects_equals_whole_field():
    import tifffile
    from scipy import ndimage as ndi

    from hts.compute.segment.postprocess import PackedObjects

    field = synth_field(shape=(256, 256), seed=5, channels=("DAPI", "GFP")).image[1]
    rng = np.random.default_rng(1)
    masks = [
        tifffile.imread(DATA / "nuclei_gt" / "dsb2018_mask2d.tif") > 0,  # real nuclei
        field > np.percentile(field, 40),  # large, touching, irregular objects
        rng.random((64, 80)) > 0.5,  # many small components, some 8-connected only
        np.ones((20, 30), bool),  # one object filling the field
    ]
    for mask in masks:
        objects = PackedObjects(mask)
        assert objects.pack(mask).sum() == mask.sum()
        np.testing.assert_array_equal(objects.distance_transform(), ndi.distance_transform_edt(mask))


def test_fill_holes_equals_scipy():
    import tifffile
    from scipy import ndimage as ndi

    from hts.compute.segment.postprocess import fill_holes

    # real nuclei outlines (holes inside every nucleus), a thresholded synthetic field, 3-D noise
    lab = tifffile.imread(DATA / "nuclei_gt" / "dsb2018_mask2d.tif")
    outlines = (lab > 0) & ~ndi.binary_erosion(lab > 0)
    field = synth_field(shape=(256, 256), seed=4, channels=("DAPI", "GFP")).image[1]
    noise = np.random.default_rng(0).random((12, 30, 40)) > 0.55
    for mask in (outlines, field > np.median(field), noise, np.zeros((5, 7), bool), np.ones((5, 7), bool)):
        want = ndi.binary_fill_holes(mask)
        np.testing.assert_array_equal(fill_holes(mask), want)
    assert fill_holes(outlines).sum() > outlines.sum() * 1.5  # the holes were filled
