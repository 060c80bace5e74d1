"""Instance-segmentation accuracy: matching by IoU, AP over thresholds, splits and merges.

Definitions (used by ``hts evaluate``, the training library and the model cards):

- **Matching** (:func:`match_instances`): the IoU of every overlapping
  (true, predicted) object pair; at each IoU threshold the pairs with
  IoU >= threshold are matched one-to-one by maximum total IoU. A matched pair
  is a true positive (TP), an unmatched prediction a false positive (FP), an
  unmatched true object a false negative (FN).
- **AP at one threshold** is the DSB2018 / StarDist score ``TP / (TP + FP + FN)``;
  **AP (0.5:0.95)** is its mean over the thresholds 0.50, 0.55, ..., 0.95.
- **Precision** ``TP / (TP + FP)``, **recall** ``TP / (TP + FN)``,
  **F1** ``2 TP / (2 TP + FP + FN)``. An image with no true and no predicted
  objects scores 1.0 everywhere.
- **Mean matched IoU**: the mean IoU of the matched pairs at IoU 0.5.
- **Split** (:func:`splits_and_merges`): a true object that holds the majority of
  the pixels of at least two predicted objects (each of those predicted objects
  has at least ``overlap`` = 50 % of its area inside it). **Merge**: the mirror
  image, a predicted object that holds at least 50 % of the area of each of at
  least two true objects. With ``overlap`` >= 0.5 every object counts towards
  at most one split or merge, so the counts are unambiguous.
- **Pooled (overall)** numbers over several images (:func:`pool`): TP, FP and FN
  are summed over the images and the scores computed from the sums (not the mean
  of per-image scores); mean matched IoU is weighted by each image's TP; splits
  and merges are summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "AP_THRESHOLDS",
    "match_instances",
    "summarize",
    "overlaps",
    "splits_and_merges",
    "score_image",
    "pool",
    "scores",
]

#: The IoU thresholds of AP (0.5:0.95): 0.50, 0.55, ..., 0.95.
AP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def overlaps(gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The contingency table of two label images, as arrays over the overlapping (true, predicted) pairs.

    Returns ``gt_ids``, ``pred_ids`` (object ids, background 0 excluded),
    ``gt_area``, ``pred_area`` (pixels per object, aligned with the ids) and,
    per overlapping pair, ``gi``, ``pj`` (indices into the id arrays),
    ``inter`` (shared pixels) and ``iou``.
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError("gt and pred differ in shape")
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_area = np.bincount(g_inv, minlength=len(g_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    pair = g_inv.astype(np.int64) * len(p_ids) + p_inv
    pairs, inter = np.unique(pair, return_counts=True)
    gi, pj = pairs // len(p_ids), pairs % len(p_ids)
    keep = (g_ids[gi] != 0) & (p_ids[pj] != 0)
    gi, pj, inter = gi[keep], pj[keep], inter[keep]
    # re-index onto the non-background objects
    g_fg, p_fg = g_ids != 0, p_ids != 0
    g_new = np.cumsum(g_fg) - 1
    p_new = np.cumsum(p_fg) - 1
    gi, pj = g_new[gi], p_new[pj]
    g_area, p_area = g_area[g_fg], p_area[p_fg]
    iou = inter / (g_area[gi] + p_area[pj] - inter)
    return {
        "gt_ids": g_ids[g_fg],
        "pred_ids": p_ids[p_fg],
        "gt_area": g_area,
        "pred_area": p_area,
        "gi": gi,
        "pj": pj,
        "inter": inter,
        "iou": iou,
    }


def _match(ov: dict[str, np.ndarray], thresholds: Sequence[float]) -> dict:
    gi, pj, iou = ov["gi"], ov["pj"], ov["iou"]
    n_true, n_pred = len(ov["gt_ids"]), len(ov["pred_ids"])
    out: dict[str, Any] = {"n_true": n_true, "n_pred": n_pred}
    for th in thresholds:
        sel = iou >= th
        tp, ious = 0, np.zeros(0)
        if sel.any():
            rows, ri = np.unique(gi[sel], return_inverse=True)
            cols, ci = np.unique(pj[sel], return_inverse=True)
            mat = np.zeros((len(rows), len(cols)))
            mat[ri, ci] = iou[sel]
            r, c = linear_sum_assignment(-mat)
            ious = mat[r, c]
            ious = ious[ious >= th]
            tp = len(ious)
        fp, fn = n_pred - tp, n_true - tp
        out[f"{th:g}"] = {**scores(tp, fp, fn), "mean_matched_iou": float(ious.mean()) if tp else 0.0}
    return out


def scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """``tp``, ``fp``, ``fn`` with precision, recall, F1 and AP (``tp / (tp + fp + fn)``); 1.0 when all are 0."""
    n_pred, n_true = tp + fp, tp + fn
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": tp / n_pred if n_pred else (1.0 if not n_true else 0.0),
        "recall": tp / n_true if n_true else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "ap": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
    }


def match_instances(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5,)) -> dict:
    """Match the objects of two instance label images by IoU.

    The IoU of every overlapping (truth, prediction) pair comes from one
    contingency table (``np.unique`` over pixel pairs); at each threshold the
    pairs with IoU >= threshold are matched one-to-one by maximum total IoU
    (Hungarian; for thresholds >= 0.5 matches are unique anyway).

    Returns
    -------
    dict
        ``n_true``, ``n_pred``, and per threshold (key ``"0.5"`` ...) ``tp``,
        ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``ap`` (the
        DSB2018 / StarDist "average precision" at one threshold:
        ``tp / (tp + fp + fn)``) and ``mean_matched_iou``.
    """
    return _match(overlaps(gt, pred), thresholds)


def summarize(results: Sequence[dict], thresholds: Sequence[float]) -> dict:
    """Pooled (sum of tp/fp/fn over images) and per-image-mean metrics of :func:`match_instances` results."""
    out: dict[str, Any] = {
        "images": len(results),
        "n_true": sum(r["n_true"] for r in results),
        "n_pred": sum(r["n_pred"] for r in results),
    }
    for th in thresholds:
        k = f"{th:g}"
        tp = sum(r[k]["tp"] for r in results)
        fp = sum(r[k]["fp"] for r in results)
        fn = sum(r[k]["fn"] for r in results)
        ious = [r[k]["mean_matched_iou"] * r[k]["tp"] for r in results]
        out[k] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
            "ap": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
            "mean_matched_iou": sum(ious) / tp if tp else 0.0,
            "f1_mean_per_image": float(np.mean([r[k]["f1"] for r in results])) if results else None,
        }
    return out


def splits_and_merges(
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    overlap: float = 0.5,
    table: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Over- and under-segmentation counts (definitions in the module docstring).

    Returns ``splits`` (true objects holding >= ``overlap`` of the area of each of
    >= 2 predicted objects), ``split_pieces`` (those predicted objects),
    ``merges`` (predicted objects holding >= ``overlap`` of the area of each of
    >= 2 true objects) and ``merged_true`` (those true objects). ``table``: a
    precomputed :func:`overlaps` result.
    """
    ov = table if table is not None else overlaps(gt, pred)
    gi, pj, inter = ov["gi"], ov["pj"], ov["inter"]
    # predicted objects lying (>= overlap of their area) inside a true object, counted per true object
    piece = inter >= overlap * ov["pred_area"][pj]
    per_true = np.bincount(gi[piece], minlength=len(ov["gt_ids"]))
    # true objects lying (>= overlap of their area) inside a predicted object, counted per predicted object
    absorbed = inter >= overlap * ov["gt_area"][gi]
    per_pred = np.bincount(pj[absorbed], minlength=len(ov["pred_ids"]))
    return {
        "splits": int((per_true >= 2).sum()),
        "split_pieces": int(per_true[per_true >= 2].sum()),
        "merges": int((per_pred >= 2).sum()),
        "merged_true": int(per_pred[per_pred >= 2].sum()),
    }


def score_image(
    gt: np.ndarray, pred: np.ndarray, *, thresholds: Sequence[float] = AP_THRESHOLDS, overlap: float = 0.5
) -> dict[str, Any]:
    """Every metric of one image (truth ``gt``, prediction ``pred``; instance labels, 0 = background).

    Returns a flat summary: ``n_true``, ``n_pred``, ``ap`` (mean AP over
    ``thresholds``), ``ap50``, ``ap75``, and at IoU 0.5 ``tp``, ``fp``, ``fn``,
    ``precision``, ``recall``, ``f1``, ``mean_matched_iou``; ``splits``,
    ``split_pieces``, ``merges``, ``merged_true``; and ``thresholds``: the full
    :func:`scores` per threshold (keys ``"0.5"``, ``"0.55"``, ...).
    """
    ths = sorted({*(float(t) for t in thresholds), 0.5, 0.75})
    ov = overlaps(gt, pred)
    m = _match(ov, ths)
    out = _flat(m["n_true"], m["n_pred"], {f"{t:g}": m[f"{t:g}"] for t in ths}, thresholds)
    out.update(splits_and_merges(table=ov, overlap=overlap))
    return out


def _flat(n_true: int, n_pred: int, per_th: dict[str, dict], ap_thresholds: Sequence[float]) -> dict[str, Any]:
    at50 = per_th["0.5"]
    return {
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "ap": float(np.mean([per_th[f"{t:g}"]["ap"] for t in ap_thresholds])),
        "ap50": at50["ap"],
        "ap75": per_th["0.75"]["ap"],
        **{k: at50[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
        "mean_matched_iou": at50["mean_matched_iou"],
        "thresholds": {k: {kk: vv for kk, vv in v.items() if kk != "mean_matched_iou"} for k, v in per_th.items()},
    }


def pool(per_image: Sequence[dict[str, Any]], *, thresholds: Sequence[float] = AP_THRESHOLDS) -> dict[str, Any]:
    """Overall metrics of several :func:`score_image` results: TP / FP / FN summed over the images.

    Same keys as :func:`score_image`, plus ``images`` and ``ap_mean_per_image``
    (the unpooled mean of the per-image AP 0.5:0.95, for reference).
    """
    keys = list(per_image[0]["thresholds"]) if per_image else [f"{t:g}" for t in sorted({*thresholds, 0.5, 0.75})]
    per_th = {}
    for k in keys:
        tp, fp, fn = (sum(r["thresholds"][k][c] for r in per_image) for c in ("tp", "fp", "fn"))
        per_th[k] = scores(tp, fp, fn)
    tp50 = per_th["0.5"]["tp"]
    per_th["0.5"]["mean_matched_iou"] = (
        (sum(r["mean_matched_iou"] * r["tp"] for r in per_image) / tp50) if tp50 else 0.0
    )
    out = {"images": len(per_image)}
    out.update(_flat(sum(r["n_true"] for r in per_image), sum(r["n_pred"] for r in per_image), per_th, thresholds))
    for k in ("splits", "split_pieces", "merges", "merged_true"):
        out[k] = int(sum(r[k] for r in per_image))
    out["ap_mean_per_image"] = float(np.mean([r["ap"] for r in per_image])) if per_image else None
    return out
