"""DuckDB at scale: bulk-load millions of synthetic per-cell rows, then query ``well_stats``.

A realistic ``cells`` table: the key columns of ``schemas/catalog/003_cells.sql``
plus up to ~200 DOUBLE feature columns named as the real ones
(``{Nuclei,Cells,Cytoplasm}_AreaShape_*`` and ``..._Intensity_*_{DAPI,GFP,Brightfield}``),
384 wells with a per-well shift, written as Parquet parts the way workers write
them. A fresh catalog gets one plate, one complete run and its run_fields, then:

- ``load``: :func:`hts.catalog.cells.load_parts` of all parts in one transaction;
- ``well_stats``: ``SELECT * FROM well_stats`` (mean, median and std of every feature per well);
- ``median``: a per-well median of four features.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks._util import PeakRSS, machine_info, mb, scratch_dir, timer

SHAPE = (
    "Area", "Perimeter", "FormFactor", "Compactness", "Center_X", "Center_Y", "BoundingBoxMinimum_X",
    "BoundingBoxMinimum_Y", "BoundingBoxMaximum_X", "BoundingBoxMaximum_Y", "BoundingBoxArea", "Extent",
    "MajorAxisLength", "MinorAxisLength", "Eccentricity", "Orientation", "EquivalentDiameter", "ConvexArea",
    "Solidity", "EulerNumber",
)  # fmt: skip
INTENSITY = (
    "IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity", "MedianIntensity",
    "LowerQuartileIntensity", "UpperQuartileIntensity", "MADIntensity", "MassDisplacement",
    "IntegratedIntensityEdge", "MeanIntensityEdge", "StdIntensityEdge", "MinIntensityEdge", "MaxIntensityEdge",
)  # fmt: skip
CHANNELS = ("DAPI", "GFP", "Brightfield")
N_WELLS, FIELDS = 384, 4


def feature_names(n: int) -> list[str]:
    names = ["Cells_Children_Nuclei_Count"]
    for comp in ("Nuclei", "Cells", "Cytoplasm"):
        names += [f"{comp}_AreaShape_{s}" for s in SHAPE]
        names += [f"{comp}_Intensity_{f}_{ch}" for ch in CHANNELS for f in INTENSITY]
    return names[:n]


def well_names() -> list[str]:
    return [f"{chr(65 + k // 24)}{k % 24 + 1:02d}" for k in range(N_WELLS)]


def write_parts(
    folder: Path, rows: int, columns: int, part_rows: int, plate_id: str, run_id: str, seed: int = 0
) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names, wells = feature_names(columns), well_names()
    base = rng.uniform(10, 1000, len(names))
    shift = rng.normal(0, 0.05, (N_WELLS, len(names)))
    parts, start = [], 0
    folder.mkdir(parents=True, exist_ok=True)
    while start < rows:
        n = min(part_rows, rows - start)
        w = (np.arange(start, start + n) * N_WELLS) // rows  # rows sorted by well, as fields arrive
        cols = {
            "plate_id": pa.array([plate_id] * n).dictionary_encode(),
            "run_id": pa.array([run_id] * n).dictionary_encode(),
            "well": pa.DictionaryArray.from_arrays(pa.array(w.astype(np.int32)), pa.array(wells)),
            "field_index": pa.array((np.arange(n) // 64 % FIELDS).astype(np.int32)),
            "t": pa.array(np.zeros(n, np.int32)),
            "object_id": pa.array(np.arange(start, start + n, dtype=np.int64) % 5000 + 1),
            "nucleus_id": pa.array(np.arange(start, start + n, dtype=np.int64) % 5000 + 1),
            "Location_Center_X": pa.array(rng.uniform(0, 2048, n)),
            "Location_Center_Y": pa.array(rng.uniform(0, 2048, n)),
        }
        for j, name in enumerate(names):
            v = (base[j] * (1 + shift[w, j] + 0.2 * rng.standard_normal(n, np.float32))).astype(np.float32)
            cols[name] = pa.array(
                v.astype(np.float64)
            )  # float32-precision values stored as DOUBLE, like measured pixels
        p = folder / f"part-{len(parts):04d}.parquet"
        pq.write_table(pa.table(cols), p, compression="zstd")
        parts.append(p)
        start += n
    return parts


def setup_catalog(path, plate_id: str, run_id: str, *, name: str = "BENCH"):
    """One plate with a complete run in the catalog ``path`` (a file path, or any Catalog)."""
    from hts.catalog import Catalog

    catalog = path if isinstance(path, Catalog) else Catalog(path)
    with catalog.connect() as con:
        con.execute(
            "INSERT INTO plates (plate_id, name, store_uri, plate_type, n_rows, n_columns, source_format, source_uri, "
            "source_fingerprint, size_t, size_c, size_z, size_y, size_x, source_size_z, dtype, tile_size, pyramid_levels, "
            "status, hts_version) VALUES (?, ?, ?, 384, 16, 24, 'nd2', '-', '-', 1, 3, 1, 2048, 2048, 1, 'uint16', "
            "1024, 3, 'complete', 'bench')",
            [plate_id, name, f"/bench/{plate_id}.zarr"],
        )
        con.executemany(
            "INSERT INTO wells VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[plate_id, w, k // 24, k % 24, w[0], w[1:], FIELDS] for k, w in enumerate(well_names())],
        )
        con.execute(
            "INSERT INTO runs (run_id, plate_id, run_key, engine, engine_version, backend, device, params, channels, labels, "
            "tile_size, halo, pixel_size_um, status, hts_version) VALUES (?, ?, 'k', 'classic', '1', 'numpy', 'cpu', '{}', "
            "'{}', '{}', 1024, 64, 0.65, 'complete', 'bench')",
            [run_id, plate_id],
        )
        con.executemany(
            "INSERT INTO run_fields (run_id, well, field_index, status) VALUES (?, ?, ?, 'complete')",
            [[run_id, w, f] for w in well_names() for f in range(FIELDS)],
        )
    return catalog


def _timed(name: str, fn) -> tuple[dict, object]:
    with PeakRSS() as rss, timer() as t:
        out = fn()
    row = {"step": name, "seconds": round(t["s"], 2), "peak_rss_MB": mb(rss.peak)}
    print(json.dumps(row), flush=True)
    return row, out


def run_one(root: Path, rows: int, columns: int, part_rows: int) -> dict:
    from hts.catalog.cells import load_parts

    plate_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    tag = f"{rows}x{columns}"
    with timer() as t_gen:
        parts = write_parts(root / f"parts_{tag}", rows, columns, part_rows, plate_id, run_id)
    parquet_mb = sum(p.stat().st_size for p in parts) / 1e6
    db = root / f"{tag}.duckdb"
    catalog = setup_catalog(db, plate_id, run_id)
    res = {
        "rows": rows,
        "feature_columns": columns,
        "parts": len(parts),
        "parquet_MB": round(parquet_mb, 1),
        "generate_s": round(t_gen["s"], 1),
        "steps": [],
    }

    def load():
        with catalog.connect() as con:
            con.execute("BEGIN")
            n = load_parts(con, parts)
            con.execute("COMMIT")
            return n

    row, n = _timed("load_parts", load)
    row["cells_per_s"] = round(n / row["seconds"])
    row["MB_per_s"] = round(parquet_mb / row["seconds"], 1)
    res["steps"].append(row)
    res["db_MB"] = round(db.stat().st_size / 1e6, 1)
    feats = [
        c
        for c in (
            "Nuclei_AreaShape_Area",
            "Cells_Intensity_MeanIntensity_GFP",
            "Cytoplasm_Intensity_MedianIntensity_DAPI",
            "Cells_AreaShape_Solidity",
        )
        if c in feature_names(columns)
    ]
    queries = {
        "well_stats": "SELECT * FROM well_stats",
        "per-well median of 4 features": f"SELECT well, count(*) AS n, {', '.join(f'median({c})' for c in feats)} FROM cells GROUP BY well ORDER BY well",
    }
    with catalog.connect(read_only=True) as con:
        for name, sql in queries.items():
            row, tab = _timed(name, lambda: con.sql(sql).fetch_arrow_table())
            row["result"] = f"{tab.num_rows} rows x {tab.num_columns} columns"
            row["cells_per_s"] = round(n / row["seconds"])
            res["steps"].append(row)
    shutil.rmtree(root / f"parts_{tag}", ignore_errors=True)
    db.unlink()
    return res


def run(args: argparse.Namespace) -> dict:
    import duckdb

    result = {"benchmark": "cells", "date": time.strftime("%Y-%m-%d %H:%M"), "duckdb": duckdb.__version__, "machine_before": machine_info(),
              "params": {k: v for k, v in vars(args).items() if k != "func"}, "runs": []}  # fmt: skip
    with scratch_dir(args.workdir, "cells") as root:
        for rows in args.rows:
            result["runs"].append(run_one(root, rows, args.columns, args.part_rows))
            print(json.dumps({k: v for k, v in result["runs"][-1].items() if k != "steps"}), flush=True)
    result["machine_after"] = machine_info()
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("cells", help="DuckDB bulk load of per-cell Parquet parts and well_stats at scale")
    p.add_argument(
        "--rows",
        type=lambda s: [int(float(x)) for x in s.split(",")],
        default=[10_000_000],
        help="comma-separated row counts, e.g. 1e6,3e6",
    )
    p.add_argument("--columns", type=int, default=196, help="feature columns (at most 196)")
    p.add_argument("--part-rows", type=int, default=250_000, help="rows per Parquet part")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.set_defaults(func=run)
