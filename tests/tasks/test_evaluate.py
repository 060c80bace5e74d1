"""`hts.compute.analysis.metrics` and `hts.tasks.evaluate`: hand-built label images with known answers, files, plates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hts.compute.analysis.metrics import AP_THRESHOLDS, match_instances, pool, score_image, splits_and_merges
from hts.config import load_workspace
from hts.errors import HtsError
from hts.tasks.evaluate import (
    EvaluationError,
    LabelFileError,
    NoPairsError,
    ShapeMismatchError,
    evaluate,
    evaluate_arrays,
    parse_field_stem,
    read_label_image,
)

DATA = Path(__file__).parents[1] / "data"


def boxes(shape, *rects) -> np.ndarray:
    """Label image with object i+1 filling rectangle (y0, y1, x0, x1) number i (later ones overwrite)."""
    a = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(rects):
        a[y0:y1, x0:x1] = i + 1
    return a


# ---------------------------------------------------------------------------- metrics on hand-built images


def test_known_tp_fp_fn_and_ap_over_thresholds():
    # truth: A (10x10 = 100 px), B (10x10), C (10x10); prediction: A exactly, B shifted (IoU 60/140),
    # C missed, plus one false object D far away.
    gt = boxes((40, 60), (0, 10, 0, 10), (0, 10, 20, 30), (20, 30, 0, 10))
    pred = boxes((40, 60), (0, 10, 0, 10), (0, 10, 24, 34), (30, 40, 50, 60))
    iou_b = 60 / 140  # 0.4286: below 0.5
    m = score_image(gt, pred)
    assert (m["n_true"], m["n_pred"]) == (3, 3)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 2)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3) and m["ap50"] == pytest.approx(1 / 5)
    assert m["mean_matched_iou"] == pytest.approx(1.0)
    assert m["ap"] == pytest.approx(1 / 5)  # A matches at every threshold, nothing else at any
    assert iou_b < 0.5

    # B shifted less: IoU 80/120 = 0.667 -> matched at 0.5 .. 0.65, not from 0.7 on
    pred2 = boxes((40, 60), (0, 10, 0, 10), (0, 10, 22, 32), (30, 40, 50, 60))
    m2 = score_image(gt, pred2)
    assert (m2["tp"], m2["fp"], m2["fn"]) == (2, 1, 1)
    assert m2["mean_matched_iou"] == pytest.approx((1.0 + 80 / 120) / 2)
    per_th = {t: (2 / 4 if t <= 0.65 else 1 / 5) for t in AP_THRESHOLDS}
    assert [m2["thresholds"][f"{t:g}"]["ap"] for t in AP_THRESHOLDS] == pytest.approx(list(per_th.values()))
    assert m2["ap"] == pytest.approx(np.mean(list(per_th.values())))  # (4 * 0.5 + 6 * 0.2) / 10 = 0.32
    assert m2["ap"] == pytest.approx(0.32)
    assert m2["ap50"] == pytest.approx(0.5) and m2["ap75"] == pytest.approx(0.2)
    # the training library's match_instances is the same function
    from hts.compute.train import training

    assert training.match_instances is match_instances
    assert match_instances(gt, pred2, (0.5,))["0.5"]["tp"] == 2


def test_identical_labels_score_one_and_empty_images():
    gt = boxes((50, 50), (0, 10, 0, 10), (20, 35, 5, 15), (40, 50, 40, 50))
    relabelled = np.where(gt > 0, gt * 7 + 3, 0)  # ids differ, objects identical
    m = score_image(gt, relabelled)
    assert m["ap"] == m["ap50"] == m["ap75"] == m["f1"] == 1.0 and m["mean_matched_iou"] == 1.0
    assert m["splits"] == m["merges"] == 0
    e = score_image(np.zeros((8, 8), int), np.zeros((8, 8), int))
    assert e["ap"] == 1.0 and e["f1"] == 1.0 and e["n_true"] == 0
    miss = score_image(gt, np.zeros_like(gt))
    assert miss["ap"] == 0.0 and miss["recall"] == 0.0 and miss["precision"] == 0.0 and miss["fn"] == 3


def test_splits_and_merges():
    # truth: one big object (20x20) and two small neighbours (10x10 each)
    gt = boxes((30, 60), (0, 20, 0, 20), (0, 10, 30, 40), (0, 10, 40, 50))
    # prediction: the big one cut into halves; the two neighbours as one object; a sliver mostly
    # outside the big object (so not one of its pieces)
    pred = np.zeros_like(gt)
    pred[0:20, 0:10] = 1
    pred[0:20, 10:20] = 2
    pred[0:10, 30:50] = 3
    pred[20:30, 15:30] = 4  # touches nothing of the truth
    s = splits_and_merges(gt, pred)
    assert s == {"splits": 1, "split_pieces": 2, "merges": 1, "merged_true": 2}
    m = score_image(gt, pred)
    assert m["splits"] == 1 and m["merges"] == 1
    # a half of the big object and the merged pair each reach IoU 0.5 exactly with one true object (>= 0.5 matches)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1) and m["thresholds"]["0.55"]["tp"] == 0
    # a piece with less than half its area inside the true object is not a piece of it
    pred2 = pred.copy()
    pred2[0:20, 10:20] = 0
    pred2[0:20, 12:32] = 2  # 8 of 20 columns inside the big object
    assert splits_and_merges(gt, pred2)["splits"] == 0
    # a prediction holding only 40 % of a true object does not merge it
    pred3 = np.zeros_like(gt)
    pred3[0:10, 34:50] = 1  # 6/10 of object 2's columns and all of object 3
    assert splits_and_merges(gt, pred3)["merges"] == 1
    pred3[0:10, 34:50] = 0
    pred3[0:10, 36:50] = 1  # 4/10 of object 2
    assert splits_and_merges(gt, pred3)["merges"] == 0
    # the overlap share is a parameter
    assert splits_and_merges(gt, pred3, overlap=0.4)["merges"] == 1


def test_pooled_counts_are_sums_not_means():
    gt1 = boxes((20, 20), (0, 5, 0, 5))
    gt2 = boxes((20, 20), (0, 5, 0, 5), (10, 15, 0, 5), (0, 5, 10, 15))
    r = evaluate_arrays([("one", gt1, gt1), ("two", np.zeros_like(gt2), gt2)])
    o = r.overall
    assert o["images"] == 2 and (o["tp"], o["fp"], o["fn"]) == (1, 0, 3)
    assert o["ap"] == pytest.approx(1 / 4) and o["recall"] == pytest.approx(1 / 4)  # pooled
    assert o["ap_mean_per_image"] == pytest.approx((1.0 + 0.0) / 2)  # the per-image mean differs
    assert [p["name"] for p in r.per_image] == ["one", "two"]
    assert pool(r.per_image) == o


def test_dsb2018_sample_against_itself_and_a_degraded_copy():
    gt = tifffile.imread(DATA / "nuclei_gt" / "dsb2018_mask2d.tif")
    assert score_image(gt, gt)["ap"] == 1.0
    eroded = gt.copy()
    from scipy import ndimage as ndi

    eroded[~ndi.binary_erosion(gt > 0, iterations=2)] = 0
    m = score_image(gt, eroded)
    assert m["tp"] <= 125 and 0 < m["ap"] < m["ap50"] <= 1.0


# ---------------------------------------------------------------------------- files and folders


def test_evaluate_files_and_folders(tmp_path):
    gt = boxes((32, 32), (0, 8, 0, 8), (16, 24, 16, 24))
    half = boxes((32, 32), (0, 8, 0, 8))
    t, p = tmp_path / "truth", tmp_path / "pred"
    t.mkdir()
    p.mkdir()
    tifffile.imwrite(t / "a.tif", gt.astype(np.uint16))
    np.save(t / "b_mask.npy", gt)
    from skimage import io

    io.imsave(t / "c.png", gt.astype(np.uint8), check_contrast=False)
    tifffile.imwrite(t / "lonely.tif", gt.astype(np.uint16))
    tifffile.imwrite(p / "a.tif", gt[None].astype(np.int32))  # singleton axis dropped
    tifffile.imwrite(p / "b.tif", half.astype(np.uint16))  # pairs with b_mask.npy
    np.save(p / "c.npy", gt.astype(np.float32))  # whole-number floats are fine
    np.save(p / "extra.npy", gt)
    r = evaluate(p, t)
    assert [x["name"] for x in r.per_image] == ["a", "b", "c"]
    assert [x["ap"] for x in r.per_image] == [1.0, 0.5, 1.0]
    assert r.per_image[1]["truth_file"].endswith("b_mask.npy")
    assert r.unmatched_pred == ["extra.npy"] and r.unmatched_truth == ["lonely.tif"]
    assert (r.overall["tp"], r.overall["fn"]) == (5, 1)
    one = evaluate(p / "b.tif", t / "b_mask.npy")
    assert one.overall["ap"] == 0.5 and one.per_image[0]["name"] == "b"
    assert evaluate(p / "a.tif", t).overall["ap"] == 1.0  # a file against a folder: same stem
    d = r.to_dict(per_image=False)
    assert "per_image" not in d and "pooled" in d["pooling"] and d["ap_thresholds"][-1] == 0.95


def test_evaluate_errors_are_one_line(tmp_path):
    gt = boxes((32, 32), (0, 8, 0, 8))
    tifffile.imwrite(tmp_path / "t.tif", gt.astype(np.uint16))
    tifffile.imwrite(tmp_path / "p.tif", gt[:16].astype(np.uint16))
    with pytest.raises(LabelFileError, match=r"nope\.tif: no such file"):
        evaluate(tmp_path / "nope.tif", tmp_path / "t.tif")
    with pytest.raises(ShapeMismatchError, match=r"p\.tif has shape \(16, 32\) but .*t\.tif has \(32, 32\)"):
        evaluate(tmp_path / "p.tif", tmp_path / "t.tif")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "a" / "x.tif", gt.astype(np.uint16))
    tifffile.imwrite(tmp_path / "b" / "y.tif", gt.astype(np.uint16))
    with pytest.raises(NoPairsError, match="share a file stem"):
        evaluate(tmp_path / "a", tmp_path / "b")
    with pytest.raises(EvaluationError, match="--pred is needed"):
        evaluate(None, tmp_path / "t.tif")
    np.save(tmp_path / "frac.npy", gt * 0.5)
    with pytest.raises(LabelFileError, match="whole numbers"):
        read_label_image(tmp_path / "frac.npy")
    from skimage import io

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 5
    io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    with pytest.raises(LabelFileError, match="colour image"):
        read_label_image(tmp_path / "rgb.png")
    for e in (LabelFileError, ShapeMismatchError, NoPairsError):
        assert issubclass(e, HtsError)


def test_field_stem_naming():
    assert parse_field_stem("B03_0") == ("B03", 0, 0, None)
    assert parse_field_stem("B3_f2") == ("B03", 2, 0, None)
    assert parse_field_stem("B03_f1_t2_nuclei") == ("B03", 1, 2, "nuclei")
    assert parse_field_stem("A01_f0_cells") == ("A01", 0, 0, "cells")
    assert parse_field_stem("img01") is None and parse_field_stem("B03") is None


# ---------------------------------------------------------------------------- a segmented plate


@pytest.fixture
def segmented_plate(tmp_path):
    from hts.api import segment
    from hts.synth import make_plate
    from hts.tasks.ingest import ingest

    p = make_plate(tmp_path / "raw", format="nd2", wells="A01:A02", fields=2, shape=(128, 128), masks=True)
    ws = load_workspace()
    ingest(p.source, workspace=ws)
    segment(engine="classic", workspace=ws)
    return p


def test_evaluate_plate_labels_against_truth_named_by_well_and_field(segmented_plate, tmp_path):
    truth = segmented_plate.truth_dir  # hts demo --masks naming: A01_f0_nuclei.tif, A01_f0_cells.tif
    ws = load_workspace()
    r = evaluate(plate="DEMO-PLATE", truth=truth, labels="nuclei", workspace=ws)
    assert [x["name"] for x in r.per_image] == ["A01_0", "A01_1", "A02_0", "A02_1"]
    assert r.overall["ap50"] > 0.8 and r.overall["n_true"] > 10
    cells = evaluate(plate="DEMO-PLATE", truth=truth, labels="cells", workspace=ws)
    assert cells.overall["n_true"] == r.overall["n_true"] and cells.per_image[0]["truth_file"].endswith("_cells.tif")
    # plain <well>_<field> names; fields without truth are left out
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(truth / "A02_f1_nuclei.tif", plain / "A2_1.tif")
    shutil.copy(truth / "A01_f0_nuclei.tif", plain / "notes.tif")
    r2 = evaluate(plate="DEMO-PLATE", truth=plain, workspace=ws)
    assert [x["name"] for x in r2.per_image] == ["A02_1"] and r2.unmatched_truth == ["notes.tif"]
    assert r2.per_image[0]["ap"] == r.per_image[3]["ap"]
    with pytest.raises(EvaluationError, match=r"plate DEMO-PLATE has no labels 'nuclei_x' \(labels: cells, nuclei\)"):
        evaluate(plate="DEMO-PLATE", truth=truth, labels="nuclei_x", workspace=ws)
    with pytest.raises(NoPairsError, match="name them by well and field"):
        evaluate(plate="DEMO-PLATE", truth=tmp_path / "raw", workspace=ws)
    with pytest.raises(EvaluationError, match="not both"):
        evaluate(truth / "A01_f0_nuclei.tif", truth, plate="DEMO-PLATE", workspace=ws)
    small = tmp_path / "small"
    small.mkdir()
    tifffile.imwrite(small / "A01_0.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(
        ShapeMismatchError, match=r"A/01/0/labels/nuclei has shape \(128, 128\) but .*A01_0\.tif has \(64, 64\)"
    ):
        evaluate(plate="DEMO-PLATE", truth=small, workspace=ws)
    with pytest.raises(EvaluationError, match="evaluating plate DEMO-PLATE needs the workspace"):
        evaluate(plate="DEMO-PLATE", truth=truth)  # library code does not read ./hts.toml or the environment
