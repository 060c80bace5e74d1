"""Per-field CPU cost of each step, hts against the scikit-image baseline, in one process.

CPU seconds (``time.process_time``, this process only; BLAS/OpenMP threads are
pinned to 1 by the caller's environment if wanted) are much less sensitive than
wall time to other processes sharing the machine. For ``--n`` fields of a
synthetic plate (ImageXpress TIFFs, same pixels as the ND2 plate of ``pipeline``):

- ``hts segment_field`` (classic engine) and ``hts measure_field`` (nuclei, cells,
  cytoplasm; shape + intensity on every channel: what ``segment`` stores);
- the baseline's ``segment_skimage`` and ``measure_skimage`` (regionprops_table).
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
    from hts.compute.engines import engine_class, segment_field
    from hts.compute.measure import measure_field
    from hts.synth import make_plate

    root = Path(tempfile.mkdtemp(prefix="hts-bench-field-"))
    names = ["DAPI", "GFP", "Brightfield"]
    try:
        plate = make_plate(root / "tif", format="imagexpress", wells="A01:A12", fields=2, shape=(args.size, args.size), channels=names, seed=0)
        eng = engine_class("classic")()
        steps = {k: [0.0, 0.0] for k in ("hts segment_field", "hts measure_field", "skimage segment", "skimage regionprops_table")}
        cells = {"hts": 0, "skimage": 0}
        fields = imagexpress_fields(plate.source, 3)[: args.n]
        for _, _, paths in fields:
            ims = {ch: tifffile.imread(p) for ch, p in zip(names, paths)}
            c, w, seg = _cpu(lambda: segment_field(eng, {"nucleus": ims["DAPI"], "cytoplasm": ims["GFP"]}, pixel_size_um=0.65))
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
        rows = [{"step": k, "cpu_s_per_field": round(c / n, 4), "wall_s_per_field": round(w / n, 4)} for k, (c, w) in steps.items()]
        for r in rows:
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"benchmark": "field", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(), "fields": n, "size": args.size, "cells": cells, "rows": rows}


def add_parser(sub) -> None:
    p = sub.add_parser("field", help="per-field CPU seconds of hts segment/measure vs the scikit-image baseline")
    p.add_argument("--n", type=int, default=8, help="fields")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--json", default=None)
    p.set_defaults(func=run)
