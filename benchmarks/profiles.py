"""Profiling at campaign scale: ``hts profile`` / ``activity`` / ``similar`` against pycytominer + copairs.

A catalog of ``--plates`` 384-well plates (default 100) with ``--cells`` cells in all (default
20 million) of ``--columns`` features (default 20, named as :mod:`benchmarks.cells` names
them), generated inside DuckDB. Layout: DMSO in columns 1 and 24 (32 negative controls per
plate); the other 352 wells hold compounds, each compound on 4 plates (25 plate layouts, 8,800
compounds); every 10th compound shifts a third of the features by 0.3 of their value
(actives), the rest do nothing. Cells: feature = base * (1 + plate shift + effect + 0.2 noise).

Timed (wall seconds, peak RSS):

- hts: ``build_profiles`` (aggregation in DuckDB, normalisation per plate, selection, consensus,
  storing), ``compute_activity`` (10,000 permutations), ``similar`` over the consensus profiles
  and over every well profile (median of 20 queries);
- the same with pycytominer and copairs on the same data: ``aggregate`` of the cells read into
  pandas, ``normalize`` per plate (mad_robustize, negcon), ``feature_select``, ``consensus``,
  copairs ``average_precision`` + ``mean_average_precision``; and a cosine nearest-neighbour
  query in numpy for scale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks._util import PeakRSS, machine_info, mb, timer

N_WELLS = 384


def _wells() -> list[tuple[str, int, int]]:
    return [(f"{chr(65 + k // 24)}{k % 24 + 1:02d}", k // 24, k % 24) for k in range(N_WELLS)]


def layouts(plates: int) -> int:
    """Plate layouts: each compound is on 4 plates (p, p + L, p + 2L, p + 3L)."""
    return max(plates // 4, 1)


def build(root: Path, plates: int, cells: int, columns: int):
    """The campaign catalog; returns (workspace, seconds)."""
    import duckdb

    from benchmarks.cells import feature_names
    from hts.config import Workspace

    ws = Workspace.at(root / "ws", scheduler="sync")
    t0 = time.perf_counter()
    with ws.catalog.connect():  # creates and migrates the catalog
        pass
    con = duckdb.connect(str(ws.db))
    names = feature_names(columns)
    plate_ids = [str(uuid.uuid4()) for _ in range(plates)]
    run_ids = [str(uuid.uuid4()) for _ in range(plates)]
    wells = _wells()
    for p, (pid, rid) in enumerate(zip(plate_ids, run_ids)):
        con.execute(
            "INSERT INTO plates (plate_id, name, store_uri, plate_type, n_rows, n_columns, source_format, source_uri, "
            "source_fingerprint, size_t, size_c, size_z, size_y, size_x, source_size_z, dtype, tile_size, "
            "pyramid_levels, status, hts_version) VALUES (?, ?, ?, 384, 16, 24, 'nd2', '-', '-', 1, 3, 1, 2048, 2048, "
            "1, 'uint16', 1024, 3, 'complete', 'bench')",
            [pid, f"P{p:03d}", f"/bench/{pid}.zarr"],
        )
        con.execute(
            "INSERT INTO runs (run_id, plate_id, run_key, engine, engine_version, backend, device, params, channels, "
            "labels, tile_size, halo, pixel_size_um, status, hts_version) VALUES (?, ?, 'k', 'classic', '1', 'numpy', "
            "'cpu', '{}', '{}', '{}', 1024, 64, 0.65, 'complete', 'bench')",
            [rid, pid],
        )
        rows = []
        for w, r, c in wells:
            if c in (0, 23):
                rows.append([pid, w, "DMSO", 0.0, "uM", "negative_control", "-"])
            else:
                idx = r * 22 + (c - 1)
                comp = (p % layouts(plates)) * 352 + idx
                rows.append([pid, w, f"CMPD-{comp:05d}", 10.0, "uM", "sample", "-"])
        con.executemany(
            "INSERT INTO platemap (plate_id, well, compound, concentration, unit, role, source_file) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    con.execute("CREATE TEMP TABLE pl AS SELECT * FROM (SELECT unnest(?) AS plate_id, unnest(?) AS run_id, "
                "unnest(range(?)) AS p)", [plate_ids, run_ids, plates])  # fmt: skip
    for n in names:
        con.execute(f'ALTER TABLE cells ADD COLUMN "{n}" DOUBLE')
    per_plate = cells // plates
    per_well = per_plate // N_WELLS
    feats = []
    for j, n in enumerate(names):
        base = 10 + (j * 37 % 990)
        effect = f"CASE WHEN active AND (hash(comp * 131 + {j}) % 3) = 0 THEN 0.3 ELSE 0.0 END"
        noise = "sqrt(-2 * ln(random() + 1e-12)) * cos(6.283185307179586 * random())"
        feats.append(f'{base} * (1 + 0.03 * sin(p + {j}) + {effect} + 0.2 * {noise}) AS "{n}"')
    con.execute(
        f"""
        INSERT INTO cells (plate_id, run_id, well, field_index, t, object_id, nucleus_id, Location_Center_X,
                           Location_Center_Y, {", ".join(f'"{n}"' for n in names)})
        WITH c AS (
            SELECT pl.plate_id, pl.run_id, pl.p, i // {per_well} AS k, i
            FROM pl, range({per_well * N_WELLS}) r(i)
        ), w AS (
            SELECT c.*, m.well, TRY_CAST(regexp_extract(m.compound, '(\\d+)$', 1) AS INTEGER) AS comp0, m.role
            FROM c JOIN (SELECT plate_id, well, compound, role, row_number() OVER (PARTITION BY plate_id ORDER BY
                         substr(well, 1, 1), CAST(substr(well, 2) AS INTEGER)) - 1 AS k FROM platemap) m
              ON m.plate_id = c.plate_id AND m.k = c.k
        )
        SELECT plate_id, run_id, well, (i % 4)::INTEGER, 0, i + 1, i + 1, random() * 2048, random() * 2048,
               {", ".join(feats)}
        FROM (SELECT *, coalesce(comp0, -1) AS comp, role = 'sample' AND coalesce(comp0, 1) % 10 = 0 AS active FROM w)
        """
    )
    n = con.execute("SELECT count(*) FROM cells").fetchall()[0][0]
    con.close()
    return ws, time.perf_counter() - t0, int(n)


def _timed(fn):
    with PeakRSS() as rss, timer() as t:
        out = fn()
    return {"seconds": round(t["s"], 2), "peak_rss_MB": mb(rss.peak)}, out


def run_hts(ws, null_size: int) -> dict:
    from hts.catalog import profiles as store
    from hts.tasks.profile import build_profiles, compute_activity, similar

    res = {}
    feats = store.profile_feature_columns(ws.catalog)
    runs = [r["run_id"] for r in ws.catalog.query("SELECT run_id FROM runs")]
    res["aggregate_sql"], table = _timed(lambda: store.aggregate_wells(ws.catalog, runs, feats))
    res["profile"], rep = _timed(lambda: build_profiles(workspace=ws))
    res["profile"] |= {"wells": rep.n_wells, "features": rep.n_features, "selected": rep.n_selected,
                       "treatments": rep.n_treatments}  # fmt: skip
    print(json.dumps({"profile": res["profile"]}), flush=True)
    res["activity"], act = _timed(lambda: compute_activity(workspace=ws, null_size=null_size))
    n_plates = len(ws.catalog.query("SELECT plate_id FROM plates"))
    truth = {f"CMPD-{c:05d}" for c in range(0, layouts(n_plates) * 352, 10)}
    hits = {t["compound"] for t in act.treatments if t["hit"]}
    res["activity"] |= {"treatments": len(act.treatments), "hits": len(hits), "true_actives": len(truth),
                        "recovered": len(hits & truth), "false_hits": len(hits - truth)}  # fmt: skip
    print(json.dumps({"activity": res["activity"]}), flush=True)
    for level in ("consensus", "well"):
        ms = []
        for q in range(20):
            t0 = time.perf_counter()
            similar(f"CMPD-{q * 10:05d}", workspace=ws, top=10, level=level)
            ms.append((time.perf_counter() - t0) * 1000)
        res[f"similar_{level}_ms"] = {"median": round(statistics.median(ms), 1), "max": round(max(ms), 1)}
    print(json.dumps({k: v for k, v in res.items() if k.startswith("similar")}), flush=True)
    return res


def run_reference(ws, null_size: int, tmp: Path) -> dict:
    """pycytominer + copairs on the same cells, as a user would run them on an export."""
    import duckdb
    import pycytominer
    from copairs import map as cmap
    from copairs.matching import assign_reference_index

    from hts.catalog import profiles as store

    res = {}
    feats = store.profile_feature_columns(ws.catalog)
    con = duckdb.connect(str(ws.db), read_only=True)
    res["read_cells_to_pandas"], cells = _timed(
        lambda: con.sql(
            "SELECT Metadata_Plate, Metadata_Well, " + ", ".join(f'"{f}"' for f in feats) + " FROM cell_profiles"
        ).df()  # fmt: skip
    )
    platemap = con.sql(
        "SELECT p.name AS Metadata_Plate, m.well AS Metadata_Well, m.role AS Metadata_Role, m.compound AS "
        "Metadata_Compound FROM platemap m JOIN plates p USING (plate_id)"
    ).df()
    con.close()
    res["read_cells_to_pandas"]["rows"] = len(cells)
    res["aggregate"], agg = _timed(lambda: pycytominer.aggregate(cells, features=feats, operation="median"))
    cells = None  # free the cells before the rest
    agg = agg.merge(platemap, on=["Metadata_Plate", "Metadata_Well"])
    meta = ["Metadata_Plate", "Metadata_Well", "Metadata_Role", "Metadata_Compound"]

    def norm():
        import pandas as pd

        return pd.concat(
            [pycytominer.normalize(g.reset_index(drop=True), features=feats, meta_features=meta,
                                   method="mad_robustize", samples="Metadata_Role == 'negative_control'")
             for _, g in agg.groupby("Metadata_Plate")], ignore_index=True)  # fmt: skip

    res["normalize"], normed = _timed(norm)
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers"]
    res["feature_select"], sel = _timed(lambda: pycytominer.feature_select(normed, features=feats, operation=ops))
    kept = [c for c in sel.columns if c in feats]
    res["consensus"], _ = _timed(
        lambda: pycytominer.consensus(sel, replicate_columns=["Metadata_Compound"], features=kept)
    )
    x = sel[kept].to_numpy()
    df = assign_reference_index(sel[meta].reset_index(drop=True), "Metadata_Role == 'negative_control'")

    def activity():
        ap = cmap.average_precision(
            df, x, pos_sameby=["Metadata_Compound", "Metadata_Reference_Index"], pos_diffby=[], neg_sameby=[],
            neg_diffby=["Metadata_Compound", "Metadata_Reference_Index"], progress_bar=False,
        )  # fmt: skip
        return cmap.mean_average_precision(
            ap, sameby=["Metadata_Compound"], null_size=null_size, threshold=0.05, seed=0, progress_bar=False,
            cache_dir=tmp / "copairs",
        )  # fmt: skip

    res["copairs_activity"], m = _timed(activity)
    res["copairs_activity"]["hits"] = int(m["below_corrected_p"].sum())
    xs = np.nan_to_num(x)
    xn = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    ms = []
    for q in range(20):
        t0 = time.perf_counter()
        s = xn @ xn[q]
        np.argpartition(-s, 11)[:11]
        ms.append((time.perf_counter() - t0) * 1000)
    res["numpy_cosine_query_over_wells_ms"] = round(statistics.median(ms), 2)
    return res


def run(args: argparse.Namespace) -> dict:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hts-bench-profiles-"))
    try:
        ws, secs, n = build(root, args.plates, int(args.cells), args.columns)
        out = {"benchmark": "profiles", "date": time.strftime("%Y-%m-%d %H:%M"), "machine_before": machine_info(),
               "params": vars(args) | {"func": None},
               "catalog": {"plates": args.plates, "cells": n, "features": args.columns, "build_s": round(secs, 1),
                           "db_MB": round(ws.db.stat().st_size / 1e6, 1)}}  # fmt: skip
        print(json.dumps(out["catalog"]), flush=True)
        out["hts"] = run_hts(ws, args.null_size)
        if not args.no_reference:
            out["pycytominer_copairs"] = run_reference(ws, args.null_size, root)
            print(json.dumps(out["pycytominer_copairs"]), flush=True)
        out["machine_after"] = machine_info()
        return out
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("profiles", help="hts profile/activity/similar at campaign scale, against pycytominer + copairs")
    p.add_argument("--plates", type=int, default=100)
    p.add_argument("--cells", type=float, default=20e6)
    p.add_argument("--columns", type=int, default=20)
    p.add_argument("--null-size", type=int, default=10000)
    p.add_argument("--no-reference", action="store_true", help="skip pycytominer + copairs")
    p.add_argument("--workdir", default=None)
    p.set_defaults(func=run, name="profiles")
