"""CPU cost of one deep engine (or several weight folders of it) on a real-sized field, in one process.

    python -m benchmarks engine-cost --engine brightfield-unet --folder engines/brightfield-unet \
        --folder OLD_FOLDER --size 1024 --pixel-size 0.325 --repeat 3 [--backend onnxruntime] [-p model_tile=512]

The field is a real image tiled to ``--size`` (the BriFiSeg HeLa test field of
``tests/data/brightfield`` for brightfield, the DSB2018 sample for nuclei, the
Usiigaci phase crop for cytoplasm), segmented with ``segment_field`` at
``--pixel-size`` exactly as ``hts segment`` does (normalisation, rescaling to the
model's training pixel size, tiled inference, post-processing). Reported per
folder: CPU seconds (``time.process_time``: this process, all its threads) and
wall seconds, the median of ``--repeat`` runs after one warm-up, and the number of
model pixels (the field rescaled to the model's training pixel size), which is
what the network's cost follows, and the process's peak resident memory
(``ru_maxrss``: the peak of the whole run, so give one folder per run to
compare memory).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np

SOURCES = {
    "brightfield-unet": ("brightfield", "tests/data/brightfield/brifiseg_hela_019_bf.tif"),
    "nuclei": ("nucleus", "tests/data/nuclei_gt/dsb2018_img2d.tif"),
    "cytoplasm": ("cytoplasm", "tests/data/phase_cells/usiigaci_set41_phase_crop512.tif"),
}


def run(args: argparse.Namespace) -> dict:
    import tifffile

    from benchmarks._util import machine_info
    from hts.cli.common import pairs, param_values
    from hts.compute.segment.engines import engine_class, segment_field

    role, src = SOURCES[args.engine]
    tile = np.asarray(tifffile.imread(Path(__file__).parents[1] / src))
    reps = -(-args.size // min(tile.shape))
    field = np.tile(tile, (reps, reps))[: args.size, : args.size]
    rows = []
    params = param_values(pairs(",".join(args.param or []), "--param"))  # parsed as `hts segment -p` does
    for folder in args.folder or [None]:
        cls = engine_class(args.engine) if folder is None else engine_class(args.engine).from_folder(folder)
        eng = cls(params, backend=args.backend)
        segment_field(eng, {role: field}, pixel_size_um=args.pixel_size)  # warm-up
        cpu, wall = [], []
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            res = segment_field(eng, {role: field}, pixel_size_um=args.pixel_size)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        scale = args.pixel_size / eng.train_pixel_um
        rows.append(
            {
                "folder": str(folder or f"engines/{args.engine}"),
                "train_pixel_um": eng.train_pixel_um,
                "model_pixels": int(round(args.size * scale)) ** 2,
                "cpu_s": round(statistics.median(cpu), 3),
                "wall_s": round(statistics.median(wall), 3),
                "objects": res.counts(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
        print(rows[-1], flush=True)
    return {
        "benchmark": "engine-cost",
        "engine": args.engine,
        "size": args.size,
        "pixel_size_um": args.pixel_size,
        "repeat": args.repeat,
        "backend": args.backend,
        "params": params,
        "machine": machine_info(),
        "runs": rows,
    }


def add_parser(sub) -> None:
    p = sub.add_parser("engine-cost", help="CPU cost of a deep engine's weight folders on a real-sized field")
    p.add_argument("--engine", default="brightfield-unet", choices=sorted(SOURCES))
    p.add_argument("--folder", action="append", help="an engine folder (repeatable; default: the shipped one)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--pixel-size", type=float, default=0.325)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backend", default="torch", help="torch (default, as in earlier rounds), onnxruntime or auto")
    p.add_argument("-p", "--param", action="append", help="an engine parameter KEY=VALUE (repeatable)")
    p.add_argument("--json", default=None)
    p.set_defaults(func=run)
