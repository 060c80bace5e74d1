"""Cost against field size and density, on real-derived nuclei: ``python -m benchmarks sweep``.

Fields are built from the real DSB2018 nucleus image shipped in tests/data (512², 125
nuclei with their instance mask): tiled k×k for 512² … 4096² at the image's own density
(~480 nuclei per megapixel), and at 2048² thinned (nuclei replaced by the background
around them) to 50 … 2,000 objects, or made denser (the image halved, tiled 8×8, read at
twice the pixel size so nuclei keep their size in µm) to ~5,000. Pixel size 0.5 µm.

Per field, in one process (CPU seconds, ``time.process_time``), each stage of what a
worker does: read from the plate store, segment (each kernel, from a profile with a CPU
clock), features (each family), label writes to the store, and the catalog load of the
cells. Reported per megapixel and per object. ``--e2e`` also runs the whole pipeline
(ingest + segment + default features into the catalog, local Dask) against a
single-process scikit-image pipeline on the same fields. Results: benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "nuclei_gt"
PIXEL_UM = 0.5

# profile entries reported as segmentation kernels: (label, function name, file suffix)
SEGMENT_KERNELS = (
    ("prepare (smooth, threshold)", "prepare", "engines/classic.py"),
    ("foreground mask", "threshold_mask", "postprocess.py"),
    ("distance transform", "distance_transform", "postprocess.py"),
    ("h-maxima seeds", "h_maxima_in", "postprocess.py"),
    ("nucleus watershed", "split_touching", "postprocess.py"),
    ("cells", "cells", "engines/classic.py"),
    ("stitching", "tiled_instances", "tiling.py"),
)
FEATURE_FAMILIES = (
    ("objects (sort, ids)", "__init__", "measure/features.py"),
    ("shape", "_shape", "measure/features.py"),
    ("intensity", "_intensity", "measure/features.py"),
    ("compartments (nucleus, cell, cytoplasm)", "compartment_features", "measure/features.py"),
    ("parents", "parent_of", "measure/field.py"),
)


def source() -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    return tifffile.imread(DATA / "dsb2018_img2d.tif"), tifffile.imread(DATA / "dsb2018_mask2d.tif").astype(np.int32)


def _thin(img: np.ndarray, mask: np.ndarray, keep: int, seed: int = 0) -> np.ndarray:
    """``img`` with all but ``keep`` of the nuclei of ``mask`` painted over with background.

    A removed nucleus and an 8-pixel rim (the blur and halo the mask does not cover) get
    values drawn from the image's background far from every nucleus, so a sparse field
    looks like one (dark, noisy) and nothing of the removed nuclei is left to segment.
    """
    from scipy import ndimage as ndi

    ids = np.unique(mask[mask > 0])
    rng = np.random.default_rng(seed)
    drop = np.setdiff1d(ids, rng.choice(ids, size=min(keep, len(ids)), replace=False))
    kept = ndi.binary_dilation(np.isin(mask, np.setdiff1d(ids, drop)), iterations=2)
    gone = ndi.binary_dilation(np.isin(mask, drop), iterations=8) & ~kept
    far = ndi.distance_transform_edt(mask == 0) > 8
    out = img.copy()
    out[gone] = rng.choice(img[far], size=int(gone.sum()))
    return out


def make_field(size: int, objects: int | None = None) -> tuple[np.ndarray, float, int]:
    """(image, pixel size µm, nuclei in it) of a ``size``² field; ``objects``: thin (or densify) to about that many."""
    img, mask = source()
    px = PIXEL_UM
    if objects is not None and objects > 125 * (size // 512) ** 2:
        # denser: the image at half size tiled twice as often, read at twice the pixel size
        from skimage.transform import resize

        img = resize(img, (256, 256), order=1, preserve_range=True, anti_aliasing=True).astype(img.dtype)
        mask = resize(mask, (256, 256), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        px = 2 * PIXEL_UM
    k = size // img.shape[0]
    big = np.tile(img, (k, k))
    # each tile's nuclei get their own ids, so thinning picks nuclei, not copies
    offsets = (np.arange(k * k, dtype=np.int32) * (int(mask.max()) + 1)).reshape(k, k)
    big_mask = np.where(
        np.tile(mask, (k, k)) > 0, np.tile(mask, (k, k)) + np.kron(offsets, np.ones(mask.shape, np.int32)), 0
    )
    n = len(np.unique(big_mask)) - 1
    if objects is not None and objects < n:
        big = _thin(big, big_mask, objects)
        n = objects
    return np.ascontiguousarray(big.astype(np.uint16)), px, n


def _profile_cpu(fn):
    """(result, CPU seconds, profile stats with a CPU clock)."""
    prof = cProfile.Profile(time.process_time)
    t0 = time.process_time()
    prof.enable()
    try:
        res = fn()
    finally:
        prof.disable()
    return res, time.process_time() - t0, pstats.Stats(prof)


def _cumulative(stats: pstats.Stats, entries) -> dict[str, float]:
    out = {}
    for label, func, suffix in entries:
        total = 0.0
        for (file, _, name), (_, _, _, ct, _) in stats.stats.items():
            if name == func and file.endswith(suffix):
                total += ct
        out[label] = round(total, 4)
    return out


def field_stages(
    size: int,
    objects: int | None,
    engine: str = "classic",
    *,
    tile: int = 1024,
    measure_all: bool = False,
    baseline: bool = True,
) -> dict:
    """Per-stage CPU seconds of one field, as a worker runs it (store read, segment, features, writes, catalog load);
    with ``baseline``, also the scikit-image pipeline's CPU seconds on the same field."""
    import pyarrow as pa

    from hts.catalog import Catalog
    from hts.catalog import cells as cells_db
    from hts.compute.measure import MeasureOptions, measure_field
    from hts.compute.segment.engines import engine_class, segment_field
    from hts.store import PlateStore

    img, px, n_true = make_field(size, objects)
    row: dict = {
        "size": size,
        "megapixels": round(size * size / 1e6, 3),
        "objects_in_image": n_true,
        "pixel_size_um": px,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        desc = _description(img, px)
        store = PlateStore.create(tmp / "p.zarr", desc, plate_id="bench", fingerprint="x", tile=1024, max_project=False)
        data = img[None, None, None]
        t0 = time.process_time()
        store.write_field(desc.fields[0].well, 0, data)
        row["store_write_image_s"] = round(time.process_time() - t0, 4)
        t0 = time.process_time()
        field = np.asarray(store.read_field(desc.fields[0].well, 0)[0]).max(axis=1)
        row["read_s"] = round(time.process_time() - t0, 4)

        cls = engine_class(engine)
        eng = cls(cls.Params())
        res, row["segment_s"], stats = _profile_cpu(
            lambda: segment_field(eng, {"nucleus": field[0]}, pixel_size_um=px, tile=tile, halo=64)
        )
        row["segment_s"] = round(row["segment_s"], 4)
        row["segment_kernels_s"] = _cumulative(stats, SEGMENT_KERNELS)
        row["objects"] = int(res.counts().get("nuclei", 0))

        path = f"{desc.fields[0].well.path}/0"
        t0 = time.process_time()
        levels = store.create_labels(path, list(res.labels), n_t=1, tile=1024, overwrite=True)
        store.write_labels(path, res.labels, 0, levels=levels)
        row["store_write_labels_s"] = round(time.process_time() - t0, 4)

        # what a worker measures: the engine's measured outputs for a DAPI-only plate (all of them with measure_all)
        measured = (
            res.labels
            if measure_all
            else {k: v for k, v in res.labels.items() if k in cls.measured_outputs({"nucleus": "DAPI"})}
        )
        tab, row["features_s"], stats = _profile_cpu(
            lambda: measure_field(measured, {"DAPI": field[0]}, pixel_size_um=px, options=MeasureOptions())
        )
        row["measured_outputs"] = sorted(measured)
        row["features_s"] = round(row["features_s"], 4)
        row["feature_families_s"] = _cumulative(stats, FEATURE_FAMILIES)
        row["feature_columns"] = tab.num_columns

        keys = {"plate_id": "bench", "run_id": "r", "well": "B02"}
        for i, (k, v) in enumerate(keys.items()):
            tab = tab.add_column(i, k, pa.array([v] * tab.num_rows, pa.string()))
        tab = tab.add_column(3, "field_index", pa.array([0] * tab.num_rows, pa.int32()))
        tab = tab.add_column(4, "t", pa.array([0] * tab.num_rows, pa.int32()))
        catalog = Catalog(tmp / "c.duckdb")
        with catalog.connect() as con:
            t0 = time.process_time()
            cells_db.load_tables(con, [tab])
            row["catalog_load_s"] = round(time.process_time() - t0, 4)
    stages = ("read_s", "segment_s", "features_s", "store_write_labels_s", "catalog_load_s")
    row["worker_total_s"] = round(sum(row[s] for s in stages), 4)
    mp, n = row["megapixels"], max(row["objects"], 1)
    row["per_megapixel_s"] = {s.removesuffix("_s"): round(row[s] / mp, 4) for s in (*stages, "worker_total_s")}
    row["per_object_ms"] = {s.removesuffix("_s"): round(1000 * row[s] / n, 4) for s in (*stages, "worker_total_s")}
    if baseline:
        # the same field through the single-process scikit-image pipeline (already in memory: no read)
        t0 = time.process_time()
        row["skimage_objects"] = skimage_nuclei_field(img).num_rows
        row["skimage_s"] = round(time.process_time() - t0, 4)
        row["per_megapixel_s"]["skimage"] = round(row["skimage_s"] / mp, 4)
        row["per_object_ms"]["skimage"] = round(1000 * row["skimage_s"] / max(row["skimage_objects"], 1), 4)
    return row


def _description(img: np.ndarray, px: float):
    from hts.formats.base import Channel, PlateDescription, SourceField
    from hts.wells import PLATE_TYPES, parse_well

    w = parse_well("B02")
    return PlateDescription(
        name="SWEEP", format="pattern", plate_type=PLATE_TYPES[96], channels=[Channel("DAPI")],
        fields=[SourceField(well=w, index=0, key=0)], shape=(1, 1, 1, *img.shape), dtype="uint16",
        pixel_size_um=(px, px, 1.0), files=[],
    )  # fmt: skip


SKIMAGE_PROPS = ("label", "area", "perimeter", "eccentricity", "solidity", "axis_major_length", "axis_minor_length",
                 "orientation", "centroid", "intensity_mean", "intensity_max", "intensity_min")  # fmt: skip


def skimage_nuclei_field(img: np.ndarray):
    """The issue's baseline on one image: Gaussian, Otsu, distance watershed, ``regionprops_table`` (an Arrow table)."""
    import pyarrow as pa
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, segmentation

    sm = filters.gaussian(img, 2, preserve_range=True)
    mask = sm > filters.threshold_otsu(sm)
    dist = ndi.distance_transform_edt(mask)
    comps, _ = ndi.label(mask)
    peaks = feature.peak_local_max(dist, min_distance=6, labels=comps, exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-dist, markers, mask=mask)
    return pa.table(measure.regionprops_table(labels, img, properties=SKIMAGE_PROPS))


def skimage_nuclei_pipeline(files: list[Path], out: Path) -> dict:
    """The issue's single-process baseline: read, Gaussian, Otsu, distance watershed, ``regionprops_table``
    (area, perimeter, eccentricity, solidity, axes, orientation, centroid, mean/max/min intensity); one Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tifffile

    tables, n = [], 0
    for i, path in enumerate(files):
        t = skimage_nuclei_field(tifffile.imread(path))
        tables.append(t.append_column("field", pa.array([i] * t.num_rows, pa.int32())))
        n += t.num_rows
    pq.write_table(pa.concat_tables(tables), out)
    return {"fields": len(files), "objects": n}


def end_to_end(size: int, n_fields: int, objects: int | None, workers: int, workdir: Path) -> dict:
    """Ingest + segment (classic, default features, into the catalog) on local Dask, against the scikit-image baseline.

    Twice: as two calls that each start their own local cluster (what two ``hts`` commands do),
    and inside one ``hts.cluster`` block (one cluster for both calls, the Python API).
    """
    import tifffile

    from benchmarks._util import PeakRSS, timer
    from hts.api import cluster, segment
    from hts.config import Workspace
    from hts.tasks.ingest import ingest

    img, px, n_true = make_field(size, objects)
    src = workdir / f"tiffs_{size}_{objects}"
    src.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n_fields):
        well = f"B{2 + i // 4:02d}"
        path = src / f"SWEEP_{well}_s{i % 4 + 1}_w1.tif"
        # each field a little different (rolled), the same density
        tifffile.imwrite(path, np.roll(img, (97 * i, 131 * i), axis=(0, 1)), resolution=(1 / px, 1 / px),
                         resolutionunit="MICROMETER")  # fmt: skip
        files.append(path)
    ws = Workspace(db=workdir / f"e2e_{size}_{objects}.duckdb", plates_dir=workdir / "plates", scheduler="local")
    row: dict = {"size": size, "fields": n_fields, "objects_per_field_in_image": n_true, "workers": workers}
    with PeakRSS() as rss, timer() as t:
        rep = ingest(src, workspace=ws, workers=workers, overwrite=True, name=f"E2E{size}")
    row["ingest"] = {"seconds": round(t["s"], 2), "cpu_s": round(rss.cpu, 2)}
    with PeakRSS() as rss, timer() as t:
        (seg,) = segment([rep.plate_id], engine="classic", workspace=ws, workers=workers, pixel_size_um=px)
    row["segment_features"] = {"seconds": round(t["s"], 2), "cpu_s": round(rss.cpu, 2), "cells": seg.cells,
                               "peak_rss_MB": round(rss.peak / 1e6), "peak_anon_rss_MB": round(rss.peak_anon / 1e6)}  # fmt: skip
    ws1 = Workspace(db=workdir / f"e2e1_{size}_{objects}.duckdb", plates_dir=workdir / "plates1", scheduler="local")
    with PeakRSS() as rss, timer() as t, cluster(ws1, workers=workers):
        rep1 = ingest(src, workspace=ws1, workers=workers, overwrite=True, name=f"E2E{size}")
        (seg1,) = segment([rep1.plate_id], engine="classic", workspace=ws1, workers=workers, pixel_size_um=px)
    row["one_cluster"] = {"seconds": round(t["s"], 2), "cpu_s": round(rss.cpu, 2), "cells": seg1.cells}
    with PeakRSS() as rss, timer() as t:
        base = skimage_nuclei_pipeline(files, workdir / f"baseline_{size}.parquet")
    row["skimage"] = {"seconds": round(t["s"], 2), "cpu_s": round(rss.cpu, 2), "objects": base["objects"]}
    hts_s = row["ingest"]["seconds"] + row["segment_features"]["seconds"]
    row["hts_seconds"] = round(hts_s, 2)
    row["speedup_vs_skimage"] = round(row["skimage"]["seconds"] / hts_s, 2)
    row["speedup_one_cluster_vs_skimage"] = round(row["skimage"]["seconds"] / row["one_cluster"]["seconds"], 2)
    row["cpu_ratio_hts_over_skimage"] = round(
        (row["ingest"]["cpu_s"] + row["segment_features"]["cpu_s"]) / row["skimage"]["cpu_s"], 2
    )
    return row


def peak_memory(size: int, engine: str = "classic", tile: int = 1024) -> dict:
    """Peak numpy/Python memory (tracemalloc) of segmenting and measuring one ``size``² field, as a worker does.

    ``segment_peak_MB``: segment_field, its output labels included; ``measure_peak_MB``: measure_field
    on top of what it is given; ``worker_peak_MB``: the larger of the two steps with what is alive
    around them (the field, and the labels while measuring). A small field is segmented and measured
    first, so imports and caches do not count.
    """
    import tracemalloc

    from hts.compute.measure import MeasureOptions, measure_field
    from hts.compute.segment.engines import engine_class, segment_field

    img, px, _ = make_field(size)
    cls = engine_class(engine)
    eng = cls(cls.Params())
    channels = cls.measured_outputs({"nucleus": "DAPI"})
    warm = segment_field(eng, {"nucleus": img[:256, :256]}, pixel_size_um=px, tile=tile, halo=64)
    measure_field({k: v for k, v in warm.labels.items() if k in channels}, {"DAPI": img[:256, :256]},
                  pixel_size_um=px, options=MeasureOptions())  # fmt: skip
    tracemalloc.start()
    res = segment_field(eng, {"nucleus": img}, pixel_size_um=px, tile=tile, halo=64)
    _, seg_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(v.nbytes for v in res.labels.values())
    measured = {k: v for k, v in res.labels.items() if k in channels}
    tracemalloc.start()
    measure_field(measured, {"DAPI": img}, pixel_size_um=px, options=MeasureOptions())
    _, meas_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    worker = img.nbytes + max(seg_peak, held + meas_peak)
    return {"size": size, "field_MB": round(img.nbytes / 1e6, 1), "labels_MB": round(held / 1e6, 1),
            "segment_peak_MB": round(seg_peak / 1e6, 1), "measure_peak_MB": round(meas_peak / 1e6, 1),
            "worker_peak_MB": round(worker / 1e6, 1), "worker_peak_in_fields": round(worker / img.nbytes, 1)}  # fmt: skip


def features_vs_cp_measure(size: int = 2048) -> dict:
    """hts's shape + intensity features against cp-measure (and regionprops) on one dense real-derived field."""
    from benchmarks.baselines import feature_comparison
    from hts.compute.segment.engines import engine_class, segment_field

    img, px, _ = make_field(size)
    cls = engine_class("classic")
    labels = segment_field(cls(cls.Params()), {"nucleus": img}, pixel_size_um=px).labels["nuclei"]
    return {"size": size, **feature_comparison([({"nuclei": labels}, {"DAPI": img})], repeat=2)}


def run(args: argparse.Namespace) -> dict:
    if args.memory:
        rows = [peak_memory(size, args.engine, args.tile) for size in args.sizes]
        for r in rows:
            print(r, flush=True)
        return {"benchmark": "sweep-memory", "runs": rows}
    if args.features:
        out = features_vs_cp_measure(args.density_size)
        print({k: v for k, v in out.items() if k != "max_rel_diff"}, flush=True)
        return {"benchmark": "sweep-features", **out}
    if args.e2e:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for size, n in args.e2e_fields:
                rows.append(end_to_end(size, n, None, args.workers, Path(tmp)))
                print(rows[-1], flush=True)
        return {"benchmark": "sweep-e2e", "runs": rows}
    rows = []
    field_stages(512, None, args.engine, tile=args.tile, measure_all=args.measure_all)  # warm-up: first-call imports
    for size in args.sizes:
        rows.append(field_stages(size, None, args.engine, tile=args.tile, measure_all=args.measure_all))
        print(_line(rows[-1]), flush=True)
    for objects in args.densities:
        rows.append(
            {
                "sweep": "density",
                **field_stages(args.density_size, objects, args.engine, tile=args.tile, measure_all=args.measure_all),
            }
        )
        print(_line(rows[-1]), flush=True)
    out = {
        "benchmark": "sweep",
        "engine": args.engine,
        "tile": args.tile,
        "measure_all": args.measure_all,
        "fields": rows,
    }
    out["flatness"] = _flatness(rows, args)
    if args.plot:
        before = Path(args.plot_before) if args.plot_before else None
        print(f"drew {plot(out, before, Path(args.plot), args.plot_before_label)}", flush=True)
    return out


def _line(r: dict) -> str:
    return (f"{r['size']}² {r['objects']:>5} objects: worker {r['worker_total_s']:.2f} CPU-s "
            f"({r['per_megapixel_s']['worker_total']:.3f}/MP, {r['per_object_ms']['worker_total']:.2f} ms/object); "
            f"segment {r['segment_s']:.2f}, features {r['features_s']:.2f}, read {r['read_s']:.2f}, "
            f"labels {r['store_write_labels_s']:.2f}, catalog {r['catalog_load_s']:.3f}"
            + (f"; scikit-image {r['skimage_s']:.2f} CPU-s ({r['skimage_objects']} objects, "
               f"{r['per_object_ms']['skimage']:.2f} ms/object)" if "skimage_s" in r else ""))  # fmt: skip


FLAT = 1.25 / 0.75  # "within ±25 %": the largest value at most 1.25 / 0.75 times the smallest


def _flatness(rows: list[dict], args) -> dict:
    """Max/min of cost per megapixel over the size sweep and per object over the density sweep, per stage;
    and, over the density sweep, the fit ``CPU = floor + per_object × objects`` of the worker total and of the
    scikit-image baseline (the floor is what a field's pixels cost whatever its nuclei)."""
    size_rows = [r for r in rows if "sweep" not in r]
    dens_rows = [r for r in rows if r.get("sweep") == "density"]
    out = {}
    for what, group, key in (("per_megapixel_over_sizes", size_rows, "per_megapixel_s"),
                             ("per_object_over_densities", dens_rows, "per_object_ms")):  # fmt: skip
        if len(group) > 1:
            out[what] = {s: round(max(r[key][s] for r in group) / max(min(r[key][s] for r in group), 1e-12), 2)
                         for s in group[0][key]}  # fmt: skip
            out[what + "_within_25pct"] = {s: v <= FLAT for s, v in out[what].items()}
    if len(dens_rows) > 2:
        fits = {"worker_total": ("objects", "worker_total_s")}
        if "skimage_s" in dens_rows[0]:
            fits["skimage"] = ("skimage_objects", "skimage_s")
        out["linear_fit_over_densities"] = {
            name: _linear_fit([r[n_key] for r in dens_rows], [r[s_key] for r in dens_rows])
            for name, (n_key, s_key) in fits.items()
        }
    return out


def _linear_fit(n: list[int], cpu: list[float]) -> dict:
    """Least squares ``cpu = floor + per_object × n``; the largest residual relative to the fitted value."""
    slope, floor = np.polyfit(np.asarray(n, float), np.asarray(cpu, float), 1)
    fitted = floor + slope * np.asarray(n, float)
    worst = float(np.max(np.abs(np.asarray(cpu) - fitted) / fitted))
    return {"floor_s": round(float(floor), 4), "per_object_ms": round(1000 * float(slope), 4),
            "max_residual": round(worst, 3)}  # fmt: skip


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="CPU per megapixel and per object, per stage, vs field size and density")
    p.add_argument("--sizes", type=_ints, default=[512, 1024, 2048, 4096])
    p.add_argument("--densities", type=_ints, default=[50, 200, 1000, 2000, 5000])
    p.add_argument("--density-size", type=int, default=2048)
    p.add_argument("--engine", default="classic")
    p.add_argument("--tile", type=int, default=1024, help="segmentation tile size (hts segment --tile)")
    p.add_argument("--measure-all", action="store_true", help="measure every output (the first rounds' behaviour)")
    p.add_argument(
        "--e2e",
        action="store_true",
        help="instead: the whole pipeline on 8 x 2048² and 64 x 512² fields vs scikit-image",
    )
    p.add_argument("--workers", type=int, default=2, help="local Dask workers for --e2e")
    p.add_argument(
        "--e2e-fields",
        type=lambda v: [tuple(int(x) for x in pair.split("x")) for pair in v.split(",")],
        default=[(2048, 8), (512, 64)],
        help="--e2e: SIZExFIELDS pairs (default 2048x8,512x64)",
    )
    p.add_argument("--plot", default=None, help="also draw the sweep into this PNG (docs/sweep.png)")
    p.add_argument("--plot-before", default=None, help="an earlier sweep JSON drawn dashed beside it")
    p.add_argument("--plot-before-label", default="before", help="its legend label")
    p.add_argument("--memory", action="store_true", help="instead: peak memory of one field per size (tracemalloc)")
    p.add_argument(
        "--features", action="store_true", help="instead: features vs cp-measure on a dense --density-size field"
    )
    p.add_argument("--json", default=None, help="also write the result here")
    p.set_defaults(func=run)


def plot(after: Path | dict, before: Path | None, out: Path, before_label: str = "before") -> Path:
    """The sweep as a picture: CPU per megapixel vs field size, per object vs density (stacked by stage).

    ``after``: a sweep result (dict) or its JSON file; ``before``: an earlier one's JSON file.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("this round", after if isinstance(after, dict) else json.loads(after.read_text()))]
    if before is not None and before.exists():
        runs.insert(0, (before_label, json.loads(before.read_text())))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (label, data), style in zip(runs, ("--", "-")):
        sizes = [r for r in data["fields"] if "sweep" not in r]
        dens = [r for r in data["fields"] if r.get("sweep") == "density"]
        a.plot([r["size"] for r in sizes], [r["per_megapixel_s"]["worker_total"] for r in sizes], "o" + style,
               label=f"{label}: worker total")  # fmt: skip
        a.plot([r["size"] for r in sizes], [r["per_megapixel_s"]["segment"] for r in sizes], "s" + style,
               label=f"{label}: segment", alpha=0.7)  # fmt: skip
        b.plot([r["objects"] for r in dens], [r["per_object_ms"]["worker_total"] for r in dens], "o" + style,
               label=f"{label}: worker total")  # fmt: skip
        b.plot([r["objects"] for r in dens], [r["per_object_ms"]["features"] for r in dens], "^" + style,
               label=f"{label}: features", alpha=0.7)  # fmt: skip
    data = runs[-1][1]
    sizes = [r for r in data["fields"] if "sweep" not in r and "skimage_s" in r]
    dens = [r for r in data["fields"] if r.get("sweep") == "density" and "skimage_s" in r]
    if sizes:
        a.plot([r["size"] for r in sizes], [r["per_megapixel_s"]["skimage"] for r in sizes], "x:", color="0.4",
               label="single-process scikit-image pipeline, same fields")  # fmt: skip
    if dens:
        b.plot([r["skimage_objects"] for r in dens], [r["per_object_ms"]["skimage"] for r in dens], "x:",
               color="0.4", label="single-process scikit-image pipeline, same fields")  # fmt: skip
    a.set(xscale="log", xlabel="field side (pixels; tiled DSB2018 nuclei, ~480 per MP)",
          ylabel="CPU seconds per megapixel", title="cost per megapixel vs field size", ylim=(0, None))  # fmt: skip
    a.set_xscale("log", base=2)
    a.set_xticks([512, 1024, 2048, 4096], ["512²", "1024²", "2048²", "4096²"])
    a.minorticks_off()
    b.set(xscale="log", yscale="log", xlabel="nuclei found in a 2048² field", ylabel="CPU ms per object",
          title="cost per object vs density (2048²)")  # fmt: skip
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out
