"""``hts watch`` keeping up with an imager: latency from a field's last file to its cells in the catalog.

A synthetic ImageXpress plate (``--fields`` fields of ``--size``² px, 4 channels: DAPI, GFP,
TRITC, Brightfield, 16-bit) is written into a folder by :func:`hts.synth.acquire` at
``--rate`` fields per second, each file in pieces, while :func:`hts.tasks.watch.watch` follows
it (classic engine, features, ``--workers`` local Dask workers, ``--poll`` seconds). For every
field: the time its last file was finished by the simulator, and the time the round that
segmented it reported its cells in the catalog. Reported: latency median / p95 / max, the
time from the last field written to the end of the watch, and whether the watch kept up
(its rounds finish faster than fields arrive), next to the batch path (``ingest`` + ``segment``
of the finished folder with the same workers): the rate this machine sustains at all.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._util import machine_info


def run(args: argparse.Namespace) -> dict:
    from hts.config import Workspace
    from hts.synth import make_plate
    from hts.synth.acquire import acquire
    from hts.tasks.watch import WatchOptions, watch

    root = Path(args.workdir or tempfile.mkdtemp(prefix="hts-bench-watch-"))
    try:
        wells_needed = -(-args.fields // args.fields_per_well)
        last = f"{chr(65 + (wells_needed - 1) // 12)}{(wells_needed - 1) % 12 + 1:02d}"
        t = time.perf_counter()
        src = make_plate(root / "src", format="imagexpress", wells=f"A01:{last}", fields=args.fields_per_well,
                         shape=(args.size, args.size), channels=("DAPI", "GFP", "TRITC", "Brightfield"))  # fmt: skip
        make_s = time.perf_counter() - t
        live = root / "live"
        live.mkdir()
        written: dict[str, float] = {}

        def on_field(_k, group):
            key = group[0].name.rsplit("_w", 1)[0]  # PLATE_A01_s1
            written[key] = time.perf_counter()

        writer = threading.Thread(
            target=acquire, args=(src.source, live), kwargs={"fields_per_second": args.rate, "on_field": on_field}
        )
        events: list[tuple[float, dict]] = []
        ws = Workspace.at(root / "ws", scheduler=None)
        t0 = time.perf_counter()
        writer.start()
        rep = watch(
            live, workspace=ws, workers=args.workers,
            options=WatchOptions(platemap=src.platemap, poll_s=args.poll, idle_minutes=2, stable_polls=2),
            on_event=lambda e: events.append((time.perf_counter(), e)),
        )  # fmt: skip
        writer.join()
        end = time.perf_counter()
        done: dict[str, float] = {}
        pending: list[str] = []
        rounds = []
        for at, e in events:
            if e["kind"] == "ingested":
                pending = [f"DEMO-PLATE_{f.replace('/', '_s')}" for f in e["data"]["fields"]]
                rounds.append({"at": at, "fields": len(pending)})
            elif e["kind"] == "segmented":
                for f in pending:
                    done.setdefault(f, at)
                pending = []
        lat = [done[k] - written[k] for k in written if k in done]
        # the batch path on the finished folder, same machine and workers: what the hardware sustains
        import hts

        wb = Workspace.at(root / "batch", scheduler=None)
        tb = time.perf_counter()
        plate = hts.ingest(live, wb, workers=args.workers)
        hts.segment(plate, engine="classic", workers=args.workers)
        batch_s = time.perf_counter() - tb
        return {
            "benchmark": "watch", "date": time.strftime("%Y-%m-%d %H:%M"), "machine_before": machine_info(),
            "params": {k: v for k, v in vars(args).items() if k != "func"},
            "plate": {"fields": len(written), "size": args.size, "channels": 4, "make_s": round(make_s, 1)},
            "acquisition_s": round(max(written.values()) - t0, 1),
            "watch_s": round(end - t0, 1),
            "after_last_field_s": round(end - max(written.values()), 1),
            "latency_s": {"median": round(statistics.median(lat), 2),
                          "p95": round(sorted(lat)[int(0.95 * (len(lat) - 1))], 2), "max": round(max(lat), 2),
                          "n": len(lat)},  # fmt: skip
            "batch_ingest_segment_s": round(batch_s, 1),
            "batch_fields_per_s": round(len(written) / batch_s, 3),
            "rounds": len(rounds), "fields_per_round_max": max((r["fields"] for r in rounds), default=0),
            "report": rep.to_dict(),
            "machine_after": machine_info(),
        }  # fmt: skip
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("watch", help="hts watch latency at an imager's rate (field's last file -> cells in catalog)")
    p.add_argument("--fields", type=int, default=40, help="fields in the plate")
    p.add_argument("--fields-per-well", type=int, default=4)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rate", type=float, default=1.0, help="fields per second the imager writes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also save the result here")
    p.set_defaults(func=run, name="watch")
