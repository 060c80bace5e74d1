"""Segment: an engine over plates, one Dask task per field, labels into the plate store.

Plan on the client (per plate): resolve the engine, its parameters and the
channel each role reads; derive the run identity from everything that decides
the labels; skip a complete identical run, resume an interrupted one, refuse to
overwrite labels another run wrote (unless ``overwrite``); create the empty
label images. Then one task per pending field: the worker loads the engine
once per process, reads the field's channels from the store itself, segments
it (tiled and stitched), writes the labels and their pyramid, and returns only
counts and timings. The client marks fields complete in batches, after their
labels are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from hts import __version__
from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.compute.engines import Engine, EngineError, engine_class, segment_field
from hts.config import load_workspace
from hts.errors import CatalogError
from hts.orchestrate.dask import dask_client, map_fields
from hts.store import PlateStore
from hts.wells import PLATE_TYPES, parse_well_range

__all__ = ["SegmentReport", "segment", "resolve_channels", "segment_one_field"]

ProgressFn = Callable[[int, int, str], None]


@dataclass
class SegmentReport:
    plate: str
    plate_id: str
    run_id: str
    engine: str
    backend: str
    device: str
    status: str  # "segmented", "resumed", "unchanged"
    fields_total: int
    fields_segmented: int
    objects: dict[str, int]
    labels: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_channels(engine: type[Engine], plate_channels: list[str], given: dict[str, str] | None, *, plate: str) -> dict[str, str]:
    """Map each role of ``engine`` to a channel of the plate: given explicitly, else guessed from channel names."""
    given = dict(given or {})
    have = ", ".join(plate_channels)
    lower = {c.lower(): c for c in plate_channels}
    out: dict[str, str] = {}
    for role, name in given.items():
        if role not in engine.roles:
            raise EngineError(f"engine {engine.name} has no channel role {role!r}; roles: {', '.join(engine.roles)}")
        if name.lower() not in lower:
            raise EngineError(f"plate {plate} has no channel {name!r}; its channels are: {have}")
        out[role] = lower[name.lower()]
    for role, spec in engine.roles.items():
        if role in out:
            continue
        taken = set(out.values())
        guess = next(
            (c for g in spec.guess for c in plate_channels if c not in taken and (c.lower() == g or c.lower().startswith(g))),
            None,
        )
        if guess is not None:
            out[role] = guess
        elif spec.required:
            raise EngineError(
                f"engine {engine.name} needs a {role} channel ({spec.description}); plate {plate} has channels: {have}; "
                f"pass --channels {role}=NAME"
            )
    return out


def _plates(catalog: Catalog, plates: list[str] | None) -> list[PlateRecord]:
    if plates:
        return [catalog.find_plate(p) for p in plates]
    found = [p for p in catalog.plates() if p.status == "complete"]
    if not found:
        raise CatalogError(f"{catalog.path}: no ingested plates to segment (run `hts ingest SOURCE` first)")
    return found


def segment(
    plates: list[str] | None = None,
    *,
    engine: str,
    db: str | Path | None = None,
    channels: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    backend: str = "auto",
    device: str = "auto",
    tile: int = 1024,
    halo: int = 64,
    wells: str | None = None,
    overwrite: bool = False,
    label_suffix: str | None = None,
    pixel_size_um: float | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[SegmentReport]:
    """Segment ``plates`` (names, ids or store paths; default: every ingested plate) with ``engine``.

    Returns one report per plate. Runs already complete with the same engine,
    parameters, channels and model are skipped; interrupted ones resume.
    """
    ws = load_workspace(db=db, scheduler=scheduler)
    catalog = Catalog(db) if db else ws.catalog
    cls = engine_class(engine)
    try:
        eng_params = cls.Params(**(params or {}))
    except ValidationError as e:
        err = e.errors()[0]
        raise EngineError(f"engine {engine}: parameter {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}") from None
    if tile < 64:
        raise EngineError(f"tile size {tile} is too small (at least 64)")
    # Validate backend/device and load the model once here, so bad weights or a
    # missing backend fail before any worker starts.
    probe = cls(eng_params, backend=backend, device=device)
    plans = [_plan(catalog, rec, probe, cls, channels, wells, tile, halo, overwrite, label_suffix, pixel_size_um) for rec in _plates(catalog, plates)]
    reports = []
    todo_total = sum(len(p["todo"]) for p in plans)
    done_total = 0
    gpu = probe.device.startswith("cuda")
    with dask_client(scheduler or ws.scheduler, workers=workers, gpu=gpu) if todo_total else nullcontext() as client:
        for plan in plans:
            t0 = time.perf_counter()
            run = plan["run"]
            batch: list[dict[str, Any]] = []
            last = time.monotonic()
            try:
                for (well, idx, _), res in map_fields(segment_one_field, plan["todo"], client=client, args=(plan["spec"],)):
                    batch.append({"well": well, "field_index": idx, **res})
                    done_total += 1
                    if progress:
                        progress(done_total, todo_total, f"{plan['record'].name} {well}")
                    if len(batch) >= 64 or time.monotonic() - last > 2.0:
                        runs_db.complete_run_fields(catalog, run["run_id"], batch)
                        batch, last = [], time.monotonic()
            finally:
                runs_db.complete_run_fields(catalog, run["run_id"], batch)
            if plan["todo"] or plan["status"] != "unchanged":
                runs_db.finish_run(catalog, run["run_id"])
            reports.append(_report(catalog, plan, time.perf_counter() - t0))
    return reports


def _plan(catalog, rec: PlateRecord, probe: Engine, cls, channels, wells, tile, halo, overwrite, label_suffix, pixel_size_um) -> dict:
    plate_channels = [r["name"] for r in catalog.query("SELECT name FROM channels WHERE plate_id = ? ORDER BY channel_index", [rec.plate_id])]
    mapping = resolve_channels(cls, plate_channels, channels, plate=rec.name)
    px = pixel_size_um or rec.pixel_size_um[0]
    if not px:
        raise EngineError(f"plate {rec.name} has no pixel size in its metadata; pass --pixel-size (µm per pixel)")
    selected = None
    if wells:
        try:
            selected = {w.name for w in parse_well_range(wells, PLATE_TYPES[rec.plate_type])}
        except ValueError as e:
            raise EngineError(f"--wells {wells!r}: {e}") from None
    fields = [
        (r["well"], r["field_index"], r["path"])
        for r in catalog.query("SELECT well, field_index, path FROM fields WHERE plate_id = ? ORDER BY well, field_index", [rec.plate_id])
        if selected is None or r["well"] in selected
    ]
    if not fields:
        raise EngineError(f"plate {rec.name}: no fields in wells {wells}")
    suffix = f"_{label_suffix}" if label_suffix else ""
    labels = {out: f"{out}{suffix}" for out in cls.outputs}
    key_doc = {
        "engine": cls.name,
        "version": cls.version,
        "params": probe.params.model_dump(mode="json"),
        "channels": mapping,
        "model": probe.model_sha256,
        "tile": tile,
        "halo": halo,
        "wells": sorted(selected) if selected else None,
        "labels": labels,
        "pixel_size_um": px,
    }
    run_key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()
    store = PlateStore(rec.store_uri)
    existing = runs_db.find_run(catalog, rec.plate_id, run_key)
    owners = runs_db.label_owners(catalog, rec.plate_id)
    conflicts = {name: o for name, o in owners.items() if name in labels.values() and o["run_key"] != run_key}
    status = "segmented"
    if existing and not overwrite:
        run = existing
        status = "unchanged" if existing["status"] == "complete" else "resumed"
    else:
        if conflicts and not overwrite:
            name = next(n for n in labels.values() if n in conflicts)
            o = conflicts[name]
            raise EngineError(
                f"plate {rec.name} already has labels {name!r} from run {o['run_id'][:8]} (engine {o['engine']}); "
                "pass --overwrite to replace them or --label-suffix NAME to keep both"
            )
        run = {
            "run_id": str(uuid.uuid4()),
            "plate_id": rec.plate_id,
            "run_key": run_key,
            "engine": cls.name,
            "engine_version": cls.version,
            "backend": probe.backend,
            "device": probe.device,
            "params": key_doc["params"],
            "channels": mapping,
            "model_sha256": probe.model_sha256,
            "labels": labels,
            "wells": wells,
            "tile_size": tile,
            "halo": halo,
            "pixel_size_um": px,
            "status": "running",
            "hts_version": __version__,
        }
        replaces = sorted({o["run_id"] for o in conflicts.values()} | ({existing["run_id"]} if existing else set()))
        for _, _, path in fields:
            store.create_labels(path, list(labels.values()), n_t=rec.shape[0], overwrite=True)
        runs_db.create_run(catalog, run, [(w, i) for w, i, _ in fields], replaces=replaces)
    pending = runs_db.pending_run_fields(catalog, run["run_id"])
    channel_index = {name: i for i, name in enumerate(plate_channels)}
    spec = {
        "store": rec.store_uri,
        "engine": cls.name,
        "params": probe.params.model_dump(mode="json"),
        "backend": probe.backend,
        "device": probe.device,
        "channels": {role: channel_index[name] for role, name in mapping.items()},
        "pixel_size_um": px,
        "tile": tile,
        "halo": halo,
        "labels": labels,
    }
    todo = [(w, i, p) for w, i, p in fields if (w, i) in pending]
    return {"record": rec, "run": run, "status": status, "spec": spec, "todo": todo, "fields": fields}


# One engine per worker process (and per engine/params/backend/device): deep engines
# load their model here once, not per task.
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _worker_engine(spec: dict[str, Any]) -> Engine:
    key = json.dumps([spec["engine"], spec["params"], spec["backend"], spec["device"]], sort_keys=True)
    with _engines_lock:
        eng = _engines.get(key)
        if eng is None:
            cls = engine_class(spec["engine"])
            eng = _engines[key] = cls(cls.Params(**spec["params"]), backend=spec["backend"], device=spec["device"])
        return eng


def segment_one_field(item: tuple[str, int, str], spec: dict[str, Any]) -> dict[str, Any]:
    """Worker task: read one field's channels from the store, segment every time point, write the labels."""
    t0 = time.perf_counter()
    well, idx, path = item
    store = PlateStore(spec["store"])
    eng = _worker_engine(spec)
    arr = store.read_field(path.rsplit("/", 1)[0], idx)
    counts: dict[str, int] = {}
    for t in range(arr.shape[0]):
        images = {role: np.asarray(arr[t, c]).max(axis=0) for role, c in spec["channels"].items()}
        res = segment_field(eng, images, pixel_size_um=spec["pixel_size_um"], tile=spec["tile"], halo=spec["halo"])
        for out, lab in res.labels.items():
            store.write_labels(path, spec["labels"][out], t, lab, properties=res.properties.get(out))
        for out, n in res.counts().items():
            counts[out] = counts.get(out, 0) + n
    return {"counts": counts, "seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def _report(catalog: Catalog, plan: dict, seconds: float) -> SegmentReport:
    run = plan["run"]
    rows = catalog.query(
        "SELECT output, sum(n_objects) AS n FROM run_object_counts WHERE run_id = ? GROUP BY output", [run["run_id"]]
    )
    labels = run["labels"] if isinstance(run["labels"], dict) else json.loads(run["labels"])
    return SegmentReport(
        plate=plan["record"].name,
        plate_id=plan["record"].plate_id,
        run_id=run["run_id"],
        engine=run["engine"],
        backend=run["backend"],
        device=run["device"],
        status=plan["status"],
        fields_total=len(plan["fields"]),
        fields_segmented=len(plan["todo"]),
        objects={r["output"]: int(r["n"]) for r in rows},
        labels=labels,
        seconds=round(seconds, 3),
    )
