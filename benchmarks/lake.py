"""The two catalog backends at scale: the DuckDB file against DuckLake (PostgreSQL + Parquet).

A throw-away PostgreSQL server is started (:func:`benchmarks._util.postgres_server`); the
DuckLake data path is a local folder. Per backend, with the synthetic per-cell Parquet
parts of :mod:`benchmarks.cells` (key columns + ``--columns`` features, 384 wells):

- ``load``: the rows of one plate bulk-loaded into ``cells`` in one transaction, or in
  transactions of ``--load-parts`` parts (:func:`hts.catalog.cells.load_parts`, as
  ``hts segment`` records a batch of fields);
- ``well_stats``: ``SELECT * FROM well_stats`` (mean, median, std of every feature per well);
- ``writers``: W processes (1, 2, 4), each loading its own plate's parts in batches
  of ``--batch-parts`` parts per transaction (as W ``hts segment`` runs on W machines
  would), all started together: total rows per second. On the DuckDB file the writers
  take turns (one writing process at a time); on DuckLake they write at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import time
import uuid
from pathlib import Path

from benchmarks._util import PeakRSS, create_database, machine_info, mb, postgres_server, scratch_dir, timer
from benchmarks.cells import setup_catalog, write_parts


def _catalog(backend: str, root: Path, port: int, tag: str):
    from hts.catalog import Catalog
    from hts.catalog.lake import LakeCatalog

    if backend == "file":
        return Catalog(root / f"{tag}.duckdb")
    url = create_database(port, f"bench_{tag}_{uuid.uuid4().hex[:6]}")
    return LakeCatalog(url, data_path=root / f"lake_{tag}")


MEMORY_LIMIT = None  # DuckDB's memory_limit in every connection (--memory-limit)
QUERIES = {
    "well_stats": "SELECT * FROM well_stats",  # mean, median and std of every feature per well
    # per-well means only (no median: see docs/deploy.md for well_stats at 100 M cells)
    "well_means": "SELECT plate_id, well, count(*) AS n, avg(COLUMNS(c -> c LIKE '%\\_%' ESCAPE '\\' "
    "AND c NOT IN ('plate_id', 'run_id', 'field_index', 'object_id', 'nucleus_id'))) FROM cells GROUP BY ALL",
}
QUERY = "well_stats"


def _limit(con) -> None:
    if MEMORY_LIMIT:
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")


def _load(catalog, parts: list[Path], batch: int) -> int:
    from hts.catalog.cells import load_parts

    n = 0
    for i in range(0, len(parts), batch):
        with catalog.connect() as con:
            _limit(con)
            con.execute("BEGIN")
            n += load_parts(con, parts[i : i + batch])
            con.execute("COMMIT")
    return n


def _writer(catalog, parts: list[Path], batch: int, start, out) -> None:
    start.wait()
    t0 = time.perf_counter()
    try:
        n = _load(catalog, parts, batch)
    except Exception as e:  # noqa: BLE001 - reported in the results: e.g. a file writer that waited too long
        out.put((0, time.perf_counter() - t0, str(e)))
        return
    out.put((n, time.perf_counter() - t0, None))


def _size_mb(catalog, root: Path, tag: str) -> float:
    if hasattr(catalog, "data_path"):
        return sum(p.stat().st_size for p in (root / f"lake_{tag}").rglob("*") if p.is_file()) / 1e6
    return catalog.path.stat().st_size / 1e6


def run_backend(backend: str, root: Path, port: int, rows: int, columns: int, part_rows: int,
                load_parts: int | None = None) -> dict:  # fmt: skip
    tag = f"{backend}_{rows}"
    plate_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    parts = write_parts(root / f"parts_{rows}", rows, columns, part_rows, plate_id, run_id)
    catalog = _catalog(backend, root, port, tag)
    setup_catalog(catalog, plate_id, run_id)
    batch = load_parts or len(parts)
    out = {"backend": backend, "rows": rows, "feature_columns": columns, "parts": len(parts),
           "transactions": -(-len(parts) // batch), "steps": []}  # fmt: skip
    with PeakRSS() as rss, timer() as t:
        n = _load(catalog, parts, batch)
    out["steps"].append({"step": "load", "seconds": round(t["s"], 2), "cells_per_s": round(n / t["s"]),
                         "peak_rss_MB": mb(rss.peak)})  # fmt: skip
    print(json.dumps({"backend": backend, "rows": rows, **out["steps"][-1]}), flush=True)
    out["stored_MB"] = round(_size_mb(catalog, root, tag), 1)
    with catalog.connect(read_only=True) as con:
        _limit(con)
        sql = QUERIES[QUERY]
        with PeakRSS() as rss, timer() as t:
            tab = con.sql(sql).to_arrow_table()
        out["steps"].append({"step": QUERY, "seconds": round(t["s"], 2), "cells_per_s": round(n / t["s"]),
                             "result": f"{tab.num_rows} rows x {tab.num_columns} columns", "peak_rss_MB": mb(rss.peak)})  # fmt: skip
    print(json.dumps({"backend": backend, "rows": rows, **out["steps"][-1]}), flush=True)
    if hasattr(catalog, "close"):
        catalog.close()
    shutil.rmtree(root / f"parts_{rows}", ignore_errors=True)
    return out


def run_writers(backend: str, root: Path, port: int, writers: int, rows: int, columns: int, part_rows: int,
                batch: int) -> dict:  # fmt: skip
    tag = f"{backend}_w{writers}"
    catalog = _catalog(backend, root, port, tag)
    plates = []
    for w in range(writers):
        plate_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
        setup_catalog(catalog, plate_id, run_id, name=f"W{w}")
        plates.append(write_parts(root / f"wparts_{w}", rows, columns, part_rows, plate_id, run_id, seed=w))
    if hasattr(catalog, "close"):
        catalog.close()
    ctx = mp.get_context("spawn")
    start, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(catalog, p, batch, start, q)) for p in plates]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every process imported hts
    t0 = time.perf_counter()
    start.set()
    results = [q.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    total = sum(n for n, _, _ in results)
    failed = [e for _, _, e in results if e]
    with catalog.connect(read_only=True) as con:
        stored = con.execute("SELECT count(*) FROM cells").fetchall()[0][0]
    if not failed:
        assert stored == total == rows * writers, (stored, total)
    row = {"backend": backend, "writers": writers, "rows_per_writer": rows, "transactions_per_writer": -(-len(plates[0]) // batch),
           "seconds": round(wall, 2), "cells_per_s": round(stored / wall), "writers_failed": len(failed),
           "errors": [e.split(": ", 1)[-1][:200] for e in failed]}  # fmt: skip
    print(json.dumps(row), flush=True)
    for w in range(writers):
        shutil.rmtree(root / f"wparts_{w}", ignore_errors=True)
    return row


def run(args: argparse.Namespace) -> dict:
    import duckdb

    global MEMORY_LIMIT, QUERY
    MEMORY_LIMIT, QUERY = args.memory_limit, args.query
    result = {"benchmark": "lake", "date": time.strftime("%Y-%m-%d %H:%M"), "duckdb": duckdb.__version__,
              "machine_before": machine_info(), "params": {k: v for k, v in vars(args).items() if k != "func"},
              "scale": [], "writers": []}  # fmt: skip
    with scratch_dir(args.workdir, "lake") as root:
        with postgres_server() as port:
            for rows in [r for r in args.rows if r > 0]:  # --rows 0: the writers only
                for backend in args.backends:
                    result["scale"].append(
                        run_backend(backend, root, port, rows, args.columns, args.part_rows, args.load_parts)
                    )
            for w in [w for w in args.writers if w > 0]:  # --writers 0: the scale runs only
                for backend in args.backends:
                    result["writers"].append(
                        run_writers(
                            backend, root, port, w, args.writer_rows, args.columns, args.part_rows, args.batch_parts
                        )  # fmt: skip
                    )
    result["machine_after"] = machine_info()
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("lake", help="the DuckDB file vs DuckLake (PostgreSQL + Parquet): load, well_stats, writers")
    ints = lambda s: [int(float(x)) for x in s.split(",")]  # noqa: E731
    p.add_argument("--rows", type=ints, default=[10_000_000], help="cells per load, comma-separated (e.g. 1e7,1e8)")
    p.add_argument("--columns", type=int, default=40, help="feature columns (at most 196)")
    p.add_argument("--part-rows", type=int, default=250_000, help="rows per Parquet part")
    p.add_argument("--load-parts", type=int, default=None, help="parts per load transaction (default: all in one)")
    p.add_argument(
        "--memory-limit",
        default=None,
        help="DuckDB memory_limit per connection, e.g. 8GB (default: DuckDB's 80%% of RAM)",
    )
    p.add_argument("--query", choices=sorted(QUERIES), default="well_stats", help="the query timed after the load")
    p.add_argument("--backends", type=lambda s: s.split(","), default=["file", "lake"])
    p.add_argument("--writers", type=ints, default=[1, 2, 4], help="concurrent writer processes to measure")
    p.add_argument("--writer-rows", type=int, default=2_000_000, help="cells each writer loads")
    p.add_argument("--batch-parts", type=int, default=1, help="parts per writer transaction")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.set_defaults(func=run)
