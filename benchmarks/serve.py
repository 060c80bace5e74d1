"""The plate browser's latency over real HTTP (uvicorn on a local port, httpx as the client).

Two workspaces:

- **catalog**: a 384-well plate with ``--cells`` cells (default 10 million) of ``--columns`` features,
  bulk-loaded as :mod:`benchmarks.cells` makes them, one complete run, fields registered. Times
  the plate page (``/api/plates/P`` with the heatmap of ``cell_count`` and of a feature median, its
  metric list and progress) and the cells table of one well (first 500 rows and the match count,
  without and with a ``WHERE`` filter).
- **fields**: ``--fields`` real-derived 2048² fields (a DSB2018 nucleus image tiled 4x4, ~1,560 nuclei
  each, :func:`benchmarks.sweep.make_field`), ingested and segmented (classic). Times every 512²
  tile of a field at full resolution (image: two channels composited, JPEG; nucleus outlines, PNG),
  each requested once as a browser does (cold: nothing cached but the field's metadata), then again.

Each request is timed from send to last byte; the table gives median, p95 and max in ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks._util import machine_info, scratch_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, ws):
        import uvicorn

        from hts.web import create_app

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(ws), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(a)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def _time(client, url: str, params=None, repeat: int = 1) -> tuple[list[float], object]:
    out, r = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(url, params=params)
        r.read()
        out.append((time.perf_counter() - t) * 1e3)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return out, r


def build_catalog(root: Path, rows: int, columns: int) -> tuple[object, str]:
    """A 10-million-cell catalog: benchmarks.cells' parts bulk-loaded, plus the plate's fields."""
    from benchmarks.cells import FIELDS, setup_catalog, well_names, write_parts
    from hts.catalog.cells import load_parts
    from hts.config import Workspace

    plate_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    parts = write_parts(root / "parts", rows, columns, 1_000_000, plate_id, run_id)
    ws = Workspace.at(root / "catalog")
    catalog = setup_catalog(ws.db, plate_id, run_id)
    with catalog.connect() as con:
        con.executemany(
            "INSERT INTO fields (plate_id, well, field_index, path, source_key, status) VALUES (?, ?, ?, ?, ?, 'complete')",
            [[plate_id, w, f, f"{w[0]}/{w[1:]}/{f}", str(f)] for w in well_names() for f in range(FIELDS)],
        )
        con.execute("BEGIN")
        load_parts(con, parts)
        con.execute(
            "UPDATE run_fields SET n_cells = ? WHERE run_id = ?", [rows // (len(well_names()) * FIELDS), run_id]
        )
        con.execute("COMMIT")
    shutil.rmtree(root / "parts", ignore_errors=True)
    return ws, "BENCH"


def catalog_pages(ws, plate: str, repeat: int) -> dict:
    import httpx

    server = _Server(ws)
    out: dict = {}
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            metric = "Nuclei_AreaShape_Area_median"
            first, _ = _time(c, f"/api/plates/{plate}", {"metric": "cell_count"})
            out["plate_page_first_ms"] = round(first[0], 1)
            for name, params in (("cell_count", {"metric": "cell_count"}), (metric, {"metric": metric})):
                ms, r = _time(c, f"/api/plates/{plate}", params, repeat)
                out[f"plate_page[{name}]"] = _stats(ms) | {"wells": len(r.json()["wells"])}
            for name, url in (
                ("metrics", f"/api/plates/{plate}/metrics"),
                ("progress", f"/api/plates/{plate}/progress"),
            ):
                out[name] = _stats(_time(c, url, None, repeat)[0])
            page = [a + b + d for a, b, d in zip(*(
                _time(c, u, p, repeat)[0] for u, p in (
                    (f"/api/plates/{plate}", {"metric": "cell_count"}),
                    (f"/api/plates/{plate}/metrics", None),
                    (f"/api/plates/{plate}/progress", None),
                )
            ))]  # fmt: skip
            out["plate_page_all_requests_sequential"] = _stats(page)
            for name, params in (
                ("cells_table[B05]", {}),
                ("cells_table[B05, WHERE Nuclei_AreaShape_Area > 500]", {"where": "Nuclei_AreaShape_Area > 500"}),
            ):
                ms, r = _time(c, f"/api/plates/{plate}/wells/B05/cells", params, repeat)
                d = r.json()
                out[name] = _stats(ms) | {"matching_cells": d["total"], "rows_sent": len(d["rows"])}
    finally:
        server.stop()
    return out


def build_fields(root: Path, n_fields: int, size: int, workers: int) -> tuple[object, float, int]:
    import tifffile

    from benchmarks.sweep import make_field
    from hts.api import segment
    from hts.config import Workspace
    from hts.tasks.ingest import ingest

    img, px, n_true = make_field(size)
    src = root / "tiffs"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n_fields):
        for ch, scale in ((1, 1.0), (2, 0.6)):
            plane = np.roll(img, (97 * i, 131 * i), axis=(0, 1)).astype(np.float32) * scale
            plane += rng.normal(0, 20, plane.shape).astype(np.float32)
            tifffile.imwrite(src / f"SERVE_B{2 + i:02d}_s1_w{ch}.tif", np.clip(plane, 0, 65535).astype(np.uint16),
                             resolution=(1 / px, 1 / px), resolutionunit="MICROMETER")  # fmt: skip
    ws = Workspace.at(root / "fields", scheduler="local")
    rep = ingest(src, workspace=ws, workers=workers, name="SERVE", channel_names=["DAPI", "GFP"])
    segment([rep.plate_id], engine="classic", workspace=ws, workers=workers, pixel_size_um=px)
    return ws, px, n_true


def field_tiles(ws, size: int) -> dict:
    import httpx

    server = _Server(ws)
    n = -(-size // 512)
    base = "/api/plates/SERVE/wells/B02/fields/0"
    out: dict = {}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            out["field_meta_first_ms"] = round(_time(c, base)[0][0], 1)
            out["field_meta"] = _stats(_time(c, base, None, 20)[0])
            for what, url in (
                ("image tile 512² (2 channels, JPEG)", base + "/tiles/0/{r}/{k}.jpg?c=0,1"),
                ("outline tile 512² (nuclei, PNG)", base + "/labels/nuclei/0/{r}/{k}.png"),
            ):
                cold, sizes = [], []
                for r in range(n):
                    for k in range(n):
                        ms, resp = _time(c, url.format(r=r, k=k))
                        cold += ms
                        sizes.append(len(resp.content))
                warm = []
                for r in range(n):
                    for k in range(n):
                        warm += _time(c, url.format(r=r, k=k))[0]
                out[what] = {
                    "cold": _stats(cold),
                    "again": _stats(warm),
                    "mean_KB": round(statistics.mean(sizes) / 1e3, 1),
                }
            out["image tile, level 2 (whole field in one 512² tile)"] = _stats(
                _time(c, base + "/tiles/2/0/0.jpg", None, 20)[0]
            )
            out["thumbnail"] = _stats(_time(c, base + "/thumb.jpg", None, 20)[0])
    finally:
        server.stop()
    return out


def run(args: argparse.Namespace) -> dict:
    import duckdb

    result = {"benchmark": "serve", "date": time.strftime("%Y-%m-%d %H:%M"), "duckdb": duckdb.__version__,
              "machine_before": machine_info(), "params": {k: v for k, v in vars(args).items() if k != "func"}}  # fmt: skip
    with scratch_dir(args.workdir, "serve") as root:
        if not args.skip_catalog:
            t = time.perf_counter()
            ws, plate = build_catalog(root, int(args.cells), args.columns)
            result["catalog"] = {"cells": int(args.cells), "feature_columns": args.columns, "wells": 384,
                                 "build_s": round(time.perf_counter() - t, 1),
                                 "db_MB": round(Path(ws.db).stat().st_size / 1e6, 1)}  # fmt: skip
            result["catalog"] |= catalog_pages(ws, plate, args.repeat)
            print(json.dumps(result["catalog"], indent=1), flush=True)
        if not args.skip_fields:
            t = time.perf_counter()
            ws, px, n_true = build_fields(root, args.fields, args.size, args.workers)
            result["fields"] = {"size": args.size, "fields": args.fields, "nuclei_per_field_in_image": n_true,
                                "pixel_size_um": px, "build_s": round(time.perf_counter() - t, 1)}  # fmt: skip
            result["fields"] |= field_tiles(ws, args.size)
            print(json.dumps(result["fields"], indent=1), flush=True)
    result["machine_after"] = machine_info()
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="plate browser latency: plate page, cells table (10M cells), field tiles (2048²)")
    p.add_argument("--cells", type=float, default=1e7, help="cells in the catalog workspace (default 1e7)")
    p.add_argument("--columns", type=int, default=20, help="feature columns of the cells table")
    p.add_argument("--fields", type=int, default=2, help="2048² fields in the tile workspace")
    p.add_argument("--size", type=int, default=2048, help="field side in pixels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10, help="requests per timed page")
    p.add_argument("--skip-catalog", action="store_true")
    p.add_argument("--skip-fields", action="store_true")
    p.add_argument("--workdir", help="keep the workspaces here (default: a temporary folder, removed)")
    p.set_defaults(func=run)
