"""End-to-end plate benchmark: ingest -> segment (+ features) -> query, with baselines and scaling.

For each plate scale (wells x k) and worker count, on a synthetic ND2 plate from
:func:`hts.synth.make_plate`, measures per stage the wall time, fields/s, cells/s,
MB/s (of source pixels) and the peak RSS of this process plus all Dask workers:

- ``ingest``: ``hts.tasks.ingest.ingest``;
- ``segment``: ``hts.tasks.segment.segment`` with features (shape + intensity);
- ``query``: ``SELECT * FROM well_stats`` and a dose-response aggregate through
  ``hts.tasks.query.run_query``;
- with ``--split``: ``segment(features=False, overwrite=True)`` and then
  ``hts.tasks.measure.measure``, to show what segmentation and measurement cost apart.

Baselines (at the first scale, on the same images):

- raw ``nd2`` read + Blosc-zstd compression of the source (the limit for ingest);
- a single-process scikit-image pipeline (:func:`benchmarks.baselines.skimage_pipeline`)
  on the same plate written as ImageXpress TIFFs (same seed, so the same pixels);
- features: hts vs cp-measure vs ``regionprops_table`` on the label images of a few
  fields (:func:`benchmarks.baselines.feature_comparison`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._util import PeakRSS, machine_info, mb, timer

DOSE_SQL = """
SELECT m.compound, m.concentration, m.role, count(DISTINCT c.well) AS wells, count(*) AS cells,
       median(c.Nuclei_AreaShape_Area) AS nuclear_area_median,
       avg(c.Nuclei_Intensity_MeanIntensity_{ch}) AS nuclear_intensity_mean
FROM cells c LEFT JOIN platemap m USING (plate_id, well)
GROUP BY ALL ORDER BY ALL
"""


def scaled_wells(spec: str, scale: int) -> tuple[str, int]:
    """The first ``scale * len(spec)`` wells of the plate, and a plate type that holds them."""
    from hts.wells import PLATE_TYPES, WellRef, parse_well_range

    base = parse_well_range(spec)
    if scale == 1:
        return spec, 96 if all(w.row < 8 and w.column < 12 for w in base) else 384
    n = len(base) * scale
    plate_type = next(k for k in (96, 384, 1536) if k >= n)
    pt = PLATE_TYPES[plate_type]
    return ",".join(WellRef(k // pt.columns, k % pt.columns).name for k in range(n)), plate_type


def _stage(
    name: str, fn, *, fields: int, cells: int | None = None, source_mb: float | None = None
) -> tuple[dict, object]:
    with PeakRSS() as rss, timer() as t:
        out = fn()
    row = {"stage": name, "seconds": round(t["s"], 2), "fields": fields, "fields_per_s": round(fields / t["s"], 2)}
    if callable(cells):
        cells = cells(out)
    if cells is not None:
        row["cells"] = int(cells)
        row["cells_per_s"] = round(cells / t["s"], 1)
    if source_mb is not None:
        row["MB_per_s"] = round(source_mb / t["s"], 1)
    row["s_per_field"] = round(t["s"] / fields, 4)
    row["cpu_s"] = round(rss.cpu, 2)
    row["cpu_s_per_field"] = round(rss.cpu / fields, 4)
    row["peak_rss_MB"] = mb(rss.peak)
    row["peak_anon_rss_MB"] = mb(rss.peak_anon)
    print(json.dumps(row), flush=True)
    return row, out


def run_plate(args, root: Path, scale: int, workers: int | None, *, baselines: bool) -> dict:
    from benchmarks.ingest import raw_read
    from hts.api import segment
    from hts.catalog import annotate
    from hts.config import Workspace
    from hts.synth import make_plate
    from hts.tasks.ingest import ingest
    from hts.tasks.measure import measure
    from hts.tasks.query import run_query

    wells, plate_type = scaled_wells(args.wells, scale)
    names = ["DAPI", "GFP", "Brightfield", "TRITC"][: args.channels]
    kw = dict(
        plate_type=plate_type,
        wells=wells,
        fields=args.fields,
        shape=(args.size, args.size),
        channels=names,
        seed=args.seed,
    )
    tag = f"x{scale}_w{workers or 'auto'}"
    with timer() as t_make:
        plate = make_plate(root / f"nd2_{tag}", format="nd2", **kw)
    n_fields = len(plate.wells) * plate.fields
    src_mb = plate.source.stat().st_size / 1e6
    pixels_mb = n_fields * args.channels * args.size * args.size * 2 / 1e6
    res: dict = {"scale": scale, "workers": workers, "wells": len(plate.wells), "fields": n_fields, "source_MB": round(src_mb, 1),
                 "make_plate_s": round(t_make["s"], 1), "stages": []}  # fmt: skip
    db, store = root / f"{tag}.duckdb", root / f"{tag}.zarr"
    ws = Workspace(db=db, plates_dir=root, scheduler=args.scheduler)
    sched = dict(workspace=ws, workers=workers)
    os.system(f"cat {plate.source} > /dev/null")

    row, rep = _stage(
        "ingest", lambda: ingest(plate.source, out=store, overwrite=True, **sched), fields=n_fields, source_mb=pixels_mb
    )
    res["stages"].append(row)
    catalog = ws.catalog
    annotate(catalog, catalog.find_plate(rep.plate_id), plate.platemap)

    seg_kw = dict(engine=args.engine, backend=args.backend, device=args.device, **sched)
    row, reps = _stage(
        "segment+features",
        lambda: segment(**seg_kw, features=True),
        fields=n_fields,
        cells=lambda r: sum(x.cells for x in r),
        source_mb=pixels_mb,
    )
    res["stages"].append(row)
    cells = row["cells"]
    res["backend"], res["device"] = reps[0].backend, reps[0].device

    row, tab = _stage(
        "query well_stats", lambda: run_query("SELECT * FROM well_stats", workspace=ws), fields=n_fields, cells=cells
    )
    row["result"] = f"{tab.num_rows} rows x {tab.num_columns} columns"
    res["stages"].append(row)
    ch = names[1] if len(names) > 1 else names[0]
    row, tab = _stage(
        "query dose-response", lambda: run_query(DOSE_SQL.format(ch=ch), workspace=ws), fields=n_fields, cells=cells
    )
    row["result"] = f"{tab.num_rows} rows x {tab.num_columns} columns"
    res["stages"].append(row)
    e2e = sum(r["seconds"] for r in res["stages"])
    res["end_to_end_s"] = round(e2e, 2)
    res["end_to_end_s_per_field"] = round(e2e / n_fields, 4)
    res["end_to_end_peak_rss_MB"] = max(r["peak_rss_MB"] for r in res["stages"])

    if args.split:
        row, _ = _stage(
            "segment only",
            lambda: segment(**seg_kw, features=False, overwrite=True),
            fields=n_fields,
            source_mb=pixels_mb,
        )
        res["stages"].append(row)
        row, _ = _stage(
            "measure",
            lambda: measure(**sched),
            fields=n_fields,
            cells=lambda r: sum(x.cells for x in r),
            source_mb=pixels_mb,
        )
        res["stages"].append(row)

    if baselines:
        b: dict = {}
        t_rc = raw_read(plate.source, compress=True)
        ingest_s = res["stages"][0]["seconds"]
        b["raw_read_compress"] = {
            "seconds": round(t_rc, 2),
            "MB_per_s": round(pixels_mb / t_rc, 1),
            "ingest_over_raw": round(ingest_s / t_rc, 2),
        }
        print(json.dumps({"baseline": "raw read+compress", **b["raw_read_compress"]}), flush=True)
        if args.engine == "classic":
            from benchmarks.baselines import skimage_pipeline

            tif = make_plate(root / f"tif_{tag}", format="imagexpress", **kw)
            with PeakRSS() as rss:
                sk = skimage_pipeline(tif.source, names, root / f"skimage_{tag}.parquet")
            sk["fields_per_s"] = round(sk["fields"] / sk["seconds"], 2)
            sk["cells_per_s"] = round(sk["cells"] / sk["seconds"], 1)
            sk["peak_rss_MB"] = mb(rss.peak)
            sk["cpu_s"] = round(rss.cpu, 2)
            sk["cpu_s_per_field"] = round(rss.cpu / sk["fields"], 4)
            hts_cpu = sum(r["cpu_s"] for r in res["stages"][:4])
            sk["hts_end_to_end_cpu_s"] = round(hts_cpu, 2)
            sk["hts_end_to_end_cpu_ratio"] = round(hts_cpu / rss.cpu, 2)
            sk["hts_end_to_end_speedup"] = round(sk["seconds"] / e2e, 2)
            seg = next(r for r in res["stages"] if r["stage"] == "segment+features")
            sk["hts_segment_features_speedup"] = round(sk["seconds"] / seg["seconds"], 2)
            b["skimage_single_process"] = sk
            print(json.dumps({"baseline": "skimage", **sk}), flush=True)
            b["features"] = features_baseline(tif.source, names, args.feature_fields, cp_measure=not args.no_cp_measure)
            print(json.dumps({"baseline": "features", **b["features"]}), flush=True)
            shutil.rmtree(tif.source, ignore_errors=True)
        res["baselines"] = b
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(plate.source.parent, ignore_errors=True)
    return res


def features_baseline(folder: Path, names: list[str], n: int, *, cp_measure: bool) -> dict:
    """Label ``n`` fields with the classic engine and compare feature implementations on them."""
    import tifffile

    from benchmarks.baselines import feature_comparison, imagexpress_fields
    from hts.compute.segment.engines import engine_class, segment_field

    eng = engine_class("classic")()
    fields = []
    for _, _, paths in imagexpress_fields(folder, len(names))[:n]:
        ims = {ch: tifffile.imread(p) for ch, p in zip(names, paths)}
        r = segment_field(eng, {"nucleus": ims[names[0]], "cytoplasm": ims[names[1]]}, pixel_size_um=0.65)
        fields.append(({k: r.labels[k] for k in ("nuclei", "cells")}, ims))
    return feature_comparison(fields, cp_measure=cp_measure)


def run(args: argparse.Namespace) -> dict:
    from benchmarks.unet import unet_benchmark

    root = Path(args.workdir or tempfile.mkdtemp(prefix="hts-bench-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "pipeline", "date": time.strftime("%Y-%m-%d %H:%M"), "machine_before": machine_info(),
              "params": {k: v for k, v in vars(args).items() if k != "func"}, "runs": []}  # fmt: skip
    try:
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                msg = f"--device {args.device}: no CUDA GPU is present on this machine (torch.cuda.is_available() is False); nothing measured"
                print(msg, flush=True)
                result["skipped"] = msg
                return result
        if args.engine != "classic":
            result["network"] = unet_benchmark(args.engine, backend=args.backend, device=args.device, size=args.size)
            print(json.dumps({"network": result["network"]}), flush=True)
        first = True
        for scale in args.scale:
            for workers in args.workers:
                result["runs"].append(run_plate(args, root, scale, workers, baselines=first and not args.no_baselines))
                first = False
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    result["machine_after"] = machine_info()
    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    """The issue's targets, checked against this run's numbers."""
    runs = result["runs"]
    if not runs:
        return {}
    out: dict = {}
    b = runs[0].get("baselines", {})
    if "skimage_single_process" in b:
        x = b["skimage_single_process"]["hts_end_to_end_speedup"]
        out["end_to_end_vs_skimage"] = {"speedup": x, "target": ">= 2x", "met": x >= 2}
    if "features" in b and b["features"].get("hts_vs_cp_measure"):
        x = b["features"]["hts_vs_cp_measure"]
        out["features_vs_cp_measure"] = {"speedup": x, "target": ">= 10x", "met": x >= 10}
    if "raw_read_compress" in b:
        x = b["raw_read_compress"]["ingest_over_raw"]
        out["ingest_vs_raw_read_compress"] = {"ratio": x, "target": "<= 2x", "met": x <= 2}
    by_w: dict = {}
    for r in runs:
        by_w.setdefault(r["workers"], {})[r["scale"]] = r
    for w, rs in by_w.items():
        if len(rs) > 1:
            lo, hi = rs[min(rs)], rs[max(rs)]
            growth = hi["end_to_end_peak_rss_MB"] / lo["end_to_end_peak_rss_MB"]
            out[f"memory_growth_workers_{w}"] = {
                "plate_growth": round(hi["fields"] / lo["fields"], 1),
                "peak_rss_growth": round(growth, 2),
                "cost_per_field_ratio": round(hi["end_to_end_s_per_field"] / lo["end_to_end_s_per_field"], 2),
                "target": "flat memory (peak RSS growth <= 1.25x)",
                "met": growth <= 1.25,
            }
    return out


def _ints(s: str) -> list:
    return [None if x in ("auto", "") else int(x) for x in s.split(",")]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pipeline", help="end-to-end ingest -> segment -> query throughput, memory, scaling and baselines"
    )
    p.add_argument("--wells", default="A01:H12", help="wells at scale 1 (a well range)")
    p.add_argument("--fields", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=_ints, default=[2], help="comma-separated worker counts, e.g. 1,2")
    p.add_argument("--scale", type=_ints, default=[1], help="comma-separated plate multiples (wells x k), e.g. 1,4")
    p.add_argument("--scheduler", default="local")
    p.add_argument("--engine", default="classic")
    p.add_argument(
        "--backend", default="auto", help="deep engines: torch, onnxruntime, tensorrt (auto: fastest available)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--split", action="store_true", help="also time segment(features=False) and measure apart")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-cp-measure", action="store_true")
    p.add_argument("--feature-fields", type=int, default=4, help="fields for the feature-implementation comparison")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    p.set_defaults(func=run)
