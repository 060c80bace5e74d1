"""Per-field CPU cost of each step, hts against the scikit-image baseline, in one process.

CPU seconds (``time.process_time``, this process only; BLAS/OpenMP threads are
pinned to 1 by the caller's environment if wanted) are much less sensitive than
wall time to other processes sharing the machine. For ``--n`` fields of a
synthetic plate (ImageXpress TIFFs, same pixels as the ND2 plate of ``pipeline``):

- ``hts segment_field`` (classic engine) and ``hts measure_field`` (nuclei, cells,
  cytoplasm; shape + intensity on every channel: what ``segment`` stores);
- the baseline's ``segment_skimage`` and ``measure_skimage`` (regionprops_table).

With ``--workers`` the hts kernels run on the same fields three ways: in this
process, in a Dask worker process started with Dask's default environment, and in
one started with hts's (:data:`hts.orchestrate.dask.WORKER_ENV`, the allocator
settings): thread CPU seconds per field of each (``docs/benchmarks.md``, *Worker
processes*).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def _cpu(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def run(args: argparse.Namespace) -> dict:
    import tifffile

    from benchmarks._util import machine_info
    from benchmarks.baselines import imagexpress_fields, measure_skimage, segment_skimage
    from hts.compute.measure import measure_field
    from hts.compute.segment.engines import engine_class, segment_field
    from hts.synth import make_plate

    root = Path(tempfile.mkdtemp(prefix="hts-bench-field-"))
    names = ["DAPI", "GFP", "Brightfield"]
    try:
        plate = make_plate(
            root / "tif",
            format="imagexpress",
            wells="A01:A12",
            fields=2,
            shape=(args.size, args.size),
            channels=names,
            seed=0,
        )
        eng = engine_class("classic")()
        steps = {
            k: [0.0, 0.0]
            for k in ("hts segment_field", "hts measure_field", "skimage segment", "skimage regionprops_table")
        }
        cells = {"hts": 0, "skimage": 0}
        fields = imagexpress_fields(plate.source, 3)[: args.n]
        for _, _, paths in fields:
            ims = {ch: tifffile.imread(p) for ch, p in zip(names, paths)}
            c, w, seg = _cpu(
                lambda: segment_field(eng, {"nucleus": ims["DAPI"], "cytoplasm": ims["GFP"]}, pixel_size_um=0.65)
            )
            steps["hts segment_field"][0] += c
            steps["hts segment_field"][1] += w
            c, w, tab = _cpu(lambda: measure_field(seg.labels, ims, pixel_size_um=0.65))
            steps["hts measure_field"][0] += c
            steps["hts measure_field"][1] += w
            cells["hts"] += tab.num_rows
            c, w, (nuc, cel) = _cpu(lambda: segment_skimage(ims["DAPI"], ims["GFP"]))
            steps["skimage segment"][0] += c
            steps["skimage segment"][1] += w
            cyto = nuc * 0 + cel * (nuc == 0)
            c, w, t = _cpu(lambda: measure_skimage({"Nuclei": nuc, "Cells": cel, "Cytoplasm": cyto}, ims, {}))
            steps["skimage regionprops_table"][0] += c
            steps["skimage regionprops_table"][1] += w
            cells["skimage"] += t["Cells"].num_rows
        n = len(fields)
        rows = [
            {"step": k, "cpu_s_per_field": round(c / n, 4), "wall_s_per_field": round(w / n, 4)}
            for k, (c, w) in steps.items()
        ]
        for r in rows:
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "field",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "fields": n,
        "size": args.size,
        "cells": cells,
        "rows": rows,
    }


def hts_kernels(n: int, size: int, repeat: int = 3) -> dict:
    """CPU seconds (this thread; the whole process) and wall seconds per field of segment_field +
    measure_field on ``n`` synthetic fields, best of ``repeat``."""
    from hts.compute.measure import measure_field
    from hts.compute.segment.engines import engine_class, segment_field
    from hts.synth import synth_field

    eng = engine_class("classic")()
    fields = [synth_field(shape=(size, size), seed=i, density=0.7) for i in range(n)]
    best = (float("inf"),) * 3
    for _ in range(repeat + 1):  # the first pass warms up imports and caches
        t0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
        for f in fields:
            seg = segment_field(eng, {"nucleus": f.image[0], "cytoplasm": f.image[1]}, pixel_size_um=0.65)
            measure_field(
                seg.labels, {"DAPI": f.image[0], "GFP": f.image[1], "Brightfield": f.image[2]}, pixel_size_um=0.65
            )
        best = min(best, (time.thread_time() - t0, time.process_time() - p0, time.perf_counter() - w0))
    return {
        "thread_cpu_s_per_field": round(best[0] / n, 4),
        "process_cpu_s_per_field": round(best[1] / n, 4),
        "wall_s_per_field": round(best[2] / n, 4),
    }


def run_workers(args: argparse.Namespace) -> dict:
    import dask
    from distributed import Client, LocalCluster

    from benchmarks._util import machine_info
    from hts.orchestrate.dask import worker_environ

    rows = [{"where": "this process", **hts_kernels(args.n, args.size)}]
    print(json.dumps(rows[-1]), flush=True)
    for where, env in (
        ("worker, Dask's environment", dask.config.get("distributed.nanny.pre-spawn-environ")),
        ("worker, hts's environment", worker_environ()),
    ):
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as lc, Client(lc) as client:
                rows.append(
                    {
                        "where": where,
                        "environ": {k: str(v) for k, v in env.items()},
                        **client.submit(hts_kernels, args.n, args.size, pure=False).result(),
                    }
                )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "benchmark": "field-workers",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "fields": args.n,
        "size": args.size,
        "rows": rows,
    }


def add_parser(sub) -> None:
    p = sub.add_parser("field", help="per-field CPU seconds of hts segment/measure vs the scikit-image baseline")
    p.add_argument("--n", type=int, default=8, help="fields")
    p.add_argument("--size", type=int, default=512)
    p.add_argument(
        "--workers", action="store_true", help="instead: hts kernels in this process vs Dask worker processes"
    )
    p.add_argument("--json", default=None)
    p.set_defaults(func=lambda a: run_workers(a) if a.workers else run(a))
