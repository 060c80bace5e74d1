"""Benchmark (not a test): one small synthetic plate, ingest + segment (classic, with features)
on an external Dask cluster of 1 or 2 single-threaded worker processes, plate on local disk vs
a local moto S3 server. Run: ``.venv/bin/python -m benchmarks.object_store [--fields N]``.
Prints a JSON line per configuration and a Markdown table."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(port)


def run(store: str, n_workers: int, source: Path, work: Path) -> dict:
    from distributed import Client

    from hts.api import segment
    from hts.config import Workspace
    from hts.tasks.ingest import ingest

    port = _port()
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        _wait(port)
        for i in range(n_workers):
            d = work / f"w{i}-{uuid.uuid4().hex[:6]}"
            d.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        f"tcp://127.0.0.1:{port}",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--no-dashboard",
                        "--local-directory",
                        str(d),
                    ],
                    cwd=d,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        addr = f"tcp://127.0.0.1:{port}"
        with Client(addr) as c:
            c.wait_for_workers(n_workers, timeout=60)
        db = work / f"{uuid.uuid4().hex[:6]}.duckdb"
        t0 = time.perf_counter()
        ws = Workspace(db=db, plates_dir=work, scheduler=addr)
        rep = ingest(source, out=store, workspace=ws)
        t1 = time.perf_counter()
        (seg,) = segment(engine="classic", workspace=ws)
        t2 = time.perf_counter()
        return {
            "store": "s3 (moto)" if store.startswith("s3://") else "local disk",
            "workers": n_workers,
            "fields": rep.fields_total,
            "ingest_s": round(t1 - t0, 2),
            "segment_s": round(t2 - t1, 2),
            "cells": seg.cells,
            "fields_per_s": round(rep.fields_total / (t2 - t1), 2),
        }
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wells", default="A01:B06")
    ap.add_argument("--fields", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    from hts.store.location import filesystem
    from hts.synth import make_plate

    port = _port()
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    rows = []
    try:
        _wait(port)
        fs, _ = filesystem("s3://bench")
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            source = make_plate(
                work / "raw", format="nd2", wells=a.wells, fields=a.fields, shape=(a.size, a.size)
            ).source
            for store in ("local", "s3"):
                for n in (1, 2):
                    loc = str(work / f"plate-{n}.zarr") if store == "local" else f"s3://bench/plates/plate-{n}.zarr"
                    r = run(loc, n, source, work)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
    finally:
        moto.terminate()
        moto.wait(timeout=30)
    print("\n| store | workers | fields | ingest (s) | segment + features (s) | fields/s (segment) | cells |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['store']} | {r['workers']} | {r['fields']} | {r['ingest_s']} | {r['segment_s']} | {r['fields_per_s']} | {r['cells']} |"
        )


if __name__ == "__main__":
    main()
