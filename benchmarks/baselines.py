"""Baselines hts is compared against, on the same images.

- :func:`skimage_pipeline`: a straightforward CellProfiler-style pipeline in one
  process with scikit-image: read each field's TIFFs, Otsu + distance-transform
  watershed for nuclei, seeded watershed ("propagation") of cells on the cytoplasm
  channel, ``regionprops_table`` shape + per-channel intensity for nuclei, cells and
  cytoplasm, one pandas table at the end written as Parquet.
- :func:`feature_comparison`: hts's vectorized shape + intensity features against
  cp-measure and ``regionprops_table`` on the same label images: objects/s and a
  value check of the features they share.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

SHAPE_PROPS = (
    "label", "area", "perimeter", "centroid", "bbox", "area_bbox", "extent", "axis_major_length",
    "axis_minor_length", "eccentricity", "orientation", "equivalent_diameter_area", "area_convex",
    "solidity", "euler_number",
)  # fmt: skip
INTENSITY_PROPS = ("label", "intensity_mean", "intensity_min", "intensity_max", "intensity_std")


def imagexpress_fields(folder: Path, channels: int) -> list[tuple[str, int, list[Path]]]:
    """``(well, field, [tif per channel])`` of an ImageXpress folder written by ``make_plate``."""
    groups: dict[tuple[str, int], dict[int, Path]] = defaultdict(dict)
    for p in folder.glob("*.tif"):
        _, well, site, wave = p.stem.rsplit("_", 3)
        groups[(well, int(site[1:]) - 1)][int(wave[1:]) - 1] = p
    return [(w, f, [chs[c] for c in range(channels)]) for (w, f), chs in sorted(groups.items())]


def segment_skimage(nuc: np.ndarray, cyt: np.ndarray, *, nucleus_px: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei (Otsu, fill holes, distance-transform watershed) and cells (watershed on the cytoplasm channel)."""
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology, segmentation
    from skimage.feature import peak_local_max

    sm = filters.gaussian(nuc.astype(np.float32), sigma=1.5, preserve_range=True)
    fg = ndi.binary_fill_holes(sm > filters.threshold_otsu(sm))
    fg = morphology.remove_small_objects(fg, int(0.1 * np.pi * (nucleus_px / 2) ** 2))
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(
        dist, min_distance=max(3, int(nucleus_px / 3)), labels=measure.label(fg), exclude_border=False
    )
    markers = np.zeros(nuc.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = segmentation.watershed(-dist, markers, mask=fg)
    csm = filters.gaussian(cyt.astype(np.float32), sigma=1.5, preserve_range=True)
    cell_fg = (csm > filters.threshold_otsu(csm)) | (nuclei > 0)
    cells = segmentation.watershed(filters.sobel(csm), nuclei, mask=cell_fg)
    return nuclei, cells


def measure_skimage(labels: dict[str, np.ndarray], images: dict[str, np.ndarray], keys: dict[str, object]) -> dict:
    """regionprops_table shape + per-channel intensity of each compartment: ``{compartment: pyarrow.Table}``."""
    import pyarrow as pa
    from skimage.measure import regionprops_table

    out = {}
    for comp, lab in labels.items():
        t = regionprops_table(lab, properties=SHAPE_PROPS)
        for ch, im in images.items():
            ti = regionprops_table(lab, intensity_image=im, properties=INTENSITY_PROPS)
            t.update({f"{k}_{ch}": v for k, v in ti.items() if k != "label"})
        n = len(t["label"])
        out[comp] = pa.table({**{k: [v] * n for k, v in keys.items()}, **{f"{comp}_{k}": v for k, v in t.items()}})
    return out


def skimage_pipeline(
    folder: Path, channel_names: list[str], out: Path, *, nucleus: int = 0, cytoplasm: int = 1
) -> dict:
    """Run the single-process baseline over every field of an ImageXpress folder; return counts and seconds.

    Per compartment, the field tables are concatenated with pyarrow and written as one Parquet file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile

    t0 = time.perf_counter()
    tables: dict[str, list] = defaultdict(list)
    n_fields = n_cells = 0
    t_read = t_seg = t_meas = 0.0
    for well, field, paths in imagexpress_fields(folder, len(channel_names)):
        a = time.perf_counter()
        ims = {ch: tifffile.imread(p) for ch, p in zip(channel_names, paths)}
        b = time.perf_counter()
        nuclei, cells = segment_skimage(ims[channel_names[nucleus]], ims[channel_names[cytoplasm]])
        c = time.perf_counter()
        cyto = np.where(nuclei > 0, 0, cells)
        for comp, t in measure_skimage(
            {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cyto}, ims, {"well": well, "field": field}
        ).items():
            tables[comp].append(t)
        n_fields += 1
        n_cells += tables["Cells"][-1].num_rows
        t_read, t_seg, t_meas = t_read + b - a, t_seg + c - b, t_meas + time.perf_counter() - c
    columns = 0
    for comp, ts in tables.items():
        table = pa.concat_tables(ts)
        pq.write_table(table, out.with_name(f"{out.stem}_{comp}.parquet"))
        columns += table.num_columns
    seconds = time.perf_counter() - t0
    return {
        "fields": n_fields,
        "cells": n_cells,
        "columns": columns,
        "seconds": round(seconds, 2),
        "read_s": round(t_read, 2),
        "segment_s": round(t_seg, 2),
        "measure_s": round(t_meas, 2),
    }


# ----------------------------------------------------------------------------- features
# hts name -> (cp-measure key, regionprops_table key); None where the library has no such feature
SHARED_SHAPE = {
    "AreaShape_Area": ("Area", "area"),
    "AreaShape_Perimeter": ("Perimeter", "perimeter"),
    "AreaShape_Center_X": ("Center_X", "centroid-1"),
    "AreaShape_Center_Y": ("Center_Y", "centroid-0"),
    "AreaShape_MajorAxisLength": ("MajorAxisLength", "axis_major_length"),
    "AreaShape_MinorAxisLength": ("MinorAxisLength", "axis_minor_length"),
    "AreaShape_Eccentricity": ("Eccentricity", "eccentricity"),
    "AreaShape_ConvexArea": ("ConvexArea", "area_convex"),
    "AreaShape_Solidity": ("Solidity", "solidity"),
    "AreaShape_EulerNumber": ("EulerNumber", "euler_number"),
}
SHARED_INTENSITY = {
    "MeanIntensity": "intensity_mean",
    "MinIntensity": "intensity_min",
    "MaxIntensity": "intensity_max",
    "StdIntensity": "intensity_std",
    "IntegratedIntensity": None,
    "MedianIntensity": None,
    "LowerQuartileIntensity": None,
    "MADIntensity": None,
    "MassDisplacement": None,
    "MeanIntensityEdge": None,
}


def _best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def hts_features(labels: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from hts.compute.measure import features as F

    return F.object_features(labels, images)


def cp_measure_features(labels: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import cp_measure.bulk as bulk

    m = bulk.get_core_measurements()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first = next(iter(images.values()))
        out = dict(m["sizeshape"](labels, first / 65535.0))
        for ch, im in images.items():
            out.update({f"{k}_{ch}": v for k, v in m["intensity"](labels, im / 65535.0).items()})
    return out


def regionprops_features(labels: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from skimage.measure import regionprops_table

    out = dict(regionprops_table(labels, properties=SHAPE_PROPS))
    for ch, im in images.items():
        t = regionprops_table(labels, intensity_image=im / 65535.0, properties=INTENSITY_PROPS)
        out.update({f"{k}_{ch}": v for k, v in t.items() if k != "label"})
    return out


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-12)))


def feature_comparison(
    fields: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], *, repeat: int = 2, cp_measure: bool = True
) -> dict:
    """Time hts / cp-measure / regionprops shape + intensity on ``fields`` ([(labels by compartment, images by channel)]).

    Reports objects/s of each (best of ``repeat``, summed over fields and
    compartments) and the largest relative difference of each shared feature.
    """
    secs = {"hts": 0.0, "cp_measure": 0.0, "regionprops": 0.0}
    objects = 0
    err: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, images in fields:
        for lab in labels.values():
            objects += len(np.unique(lab)) - 1
            t, ours = _best_time(lambda: hts_features(lab, images), repeat)
            secs["hts"] += t
            t, rp = _best_time(lambda: regionprops_features(lab, images), 1)
            secs["regionprops"] += t
            if cp_measure:
                t, cp = _best_time(lambda: cp_measure_features(lab, images), 1)
                secs["cp_measure"] += t
            for name, (cpk, rpk) in SHARED_SHAPE.items():
                if cp_measure:
                    err["cp_measure"][name] = max(err["cp_measure"].get(name, 0.0), _rel_err(ours[name], cp[cpk]))
                err["regionprops"][name] = max(err["regionprops"].get(name, 0.0), _rel_err(ours[name], rp[rpk]))
            for ch in images:
                for feat, rpk in SHARED_INTENSITY.items():
                    name = f"Intensity_{feat}_{ch}"
                    if cp_measure:
                        err["cp_measure"][name] = max(
                            err["cp_measure"].get(name, 0.0), _rel_err(ours[name], cp[f"Intensity_{feat}_{ch}"])
                        )
                    if rpk is not None:
                        err["regionprops"][name] = max(
                            err["regionprops"].get(name, 0.0), _rel_err(ours[name], rp[f"{rpk}_{ch}"])
                        )
    rates = {k: round(objects / v, 1) if v else None for k, v in secs.items()}
    return {
        "objects": objects,
        "seconds": {k: round(v, 3) for k, v in secs.items()},
        "objects_per_s": rates,
        "hts_vs_cp_measure": round(rates["hts"] / rates["cp_measure"], 1) if rates["cp_measure"] else None,
        "hts_vs_regionprops": round(rates["hts"] / rates["regionprops"], 1) if rates["regionprops"] else None,
        "max_rel_diff": {k: {n: float(f"{e:.3g}") for n, e in v.items()} for k, v in err.items()},
    }
