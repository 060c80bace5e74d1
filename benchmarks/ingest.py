"""Ingest benchmark: peak memory and throughput as the plate grows.

Writes synthetic ND2 plates of growing size (frames drawn from a small pool of
realistic synthetic fields, shifted per position so no two are identical),
then for each plate measures:

- raw read: every frame read with the ``nd2`` library (the I/O limit);
- raw read + compress: the same plus Blosc-zstd compression of each frame
  (what ingest must at least do);
- ``hts ingest`` on the default local Dask cluster: wall time, MB/s, fields/s and
  the peak RSS of the client plus all worker processes.

Peak memory must stay flat while the plate grows: fields stream through.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._util import PeakRSS, mb, timer


def make_nd2_plate(path: Path, *, wells: int, fields: int, size: int, channels: int, seed: int = 0) -> Path:
    from hts.formats.base import Channel
    from hts.synth import synth_field
    from hts.synth.nd2_writer import Position, write_nd2
    from hts.wells import PLATE_TYPES, WellRef

    names = ["DAPI", "GFP", "Brightfield", "TRITC"][:channels]
    pool = [synth_field(shape=(size, size), seed=seed + i, channels=tuple(names)).image for i in range(6)]
    pt = PLATE_TYPES[96 if wells <= 96 else 384 if wells <= 384 else 1536]
    positions = []
    for k in range(wells):
        w = WellRef(k // pt.columns, k % pt.columns)
        for f in range(fields):
            positions.append(
                Position(
                    w.name if f == 0 else f"{w.name}#{f + 1}",
                    14380.0 + w.column * pt.pitch_um + 400 * f,
                    11240.0 + w.row * pt.pitch_um,
                )
            )

    def frame(t: int, p: int, z: int) -> np.ndarray:
        return np.roll(pool[p % len(pool)], shift=(37 * p) % size, axis=-1)

    write_nd2(path, frame, positions=positions, channels=[Channel(n) for n in names], shape_yx=(size, size))
    return path


def raw_read(path: Path, *, compress: bool) -> float:
    import nd2
    from numcodecs import Blosc

    from hts.store.ngff import COMPRESSION

    codec = Blosc(cname=COMPRESSION["cname"], clevel=COMPRESSION["clevel"], shuffle=Blosc.SHUFFLE)
    with timer() as t, nd2.ND2File(path) as f:
        for i in range(f.attributes.sequenceCount):
            a = np.array(f.read_frame(i))  # copy: read_frame returns a lazy memory map
            if compress:
                for c in range(a.shape[0]):
                    codec.encode(np.ascontiguousarray(a[c]))
    return t["s"]


def run(args: argparse.Namespace) -> dict:
    from hts.config import Workspace
    from hts.tasks.ingest import ingest

    root = Path(args.workdir or tempfile.mkdtemp(prefix="hts-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for scale in args.scales:
            wells = args.wells * scale
            src = make_nd2_plate(
                root / f"plate_x{scale}.nd2", wells=wells, fields=args.fields, size=args.size, channels=args.channels
            )
            size_mb = src.stat().st_size / 1e6
            os.system(f"cat {src} > /dev/null")  # same page-cache state for every measurement
            t_read = raw_read(src, compress=False)
            t_rc = raw_read(src, compress=True)
            out = root / f"plate_x{scale}.zarr"
            with PeakRSS() as rss, timer() as t:
                rep = ingest(
                    src,
                    out=out,
                    workspace=Workspace(db=root / f"x{scale}.duckdb", plates_dir=root, scheduler=args.scheduler),
                    workers=args.workers,
                    overwrite=True,
                )
            store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            rows.append(
                {
                    "scale": scale,
                    "wells": wells,
                    "fields": rep.fields_total,
                    "source_MB": round(size_mb, 1),
                    "store_MB": round(store_mb, 1),
                    "raw_read_s": round(t_read, 2),
                    "raw_read_compress_s": round(t_rc, 2),
                    "ingest_s": round(t["s"], 2),
                    "ingest_MB_per_s": round(size_mb / t["s"], 1),
                    "fields_per_s": round(rep.fields_total / t["s"], 1),
                    "ingest_vs_read_compress": round(t["s"] / t_rc, 2),
                    "peak_rss_MB": mb(rss.peak),
                    "peak_anon_rss_MB": mb(rss.peak_anon),
                    "baseline_rss_MB": mb(rss.baseline),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out)
            src.unlink()
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "ingest",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "params": {k: v for k, v in vars(args).items() if k != "func"},
        "rows": rows,
    }
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("ingest", help="ingest memory and throughput as the plate grows")
    p.add_argument("--wells", type=int, default=24, help="wells at scale 1")
    p.add_argument("--fields", type=int, default=4)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--scheduler", default="local")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=run)
