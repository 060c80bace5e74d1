"""Segment: an engine over plates, one Dask task per field, labels into the plate store.

Plan on the client (per plate): resolve the engine, its parameters and the
channel each role reads; derive the run identity from everything that decides
the labels; skip a complete identical run, resume an interrupted one, refuse to
overwrite labels another run wrote (unless ``overwrite``). Then one task per
pending field: the worker loads the engine once per process, reads the field's
channels from the store itself, segments it (tiled and stitched), creates the
field's label images and writes the labels and their pyramid, measures the
per-cell features (:mod:`hts.compute.measure`) into a Parquet part stored with
the plate (the durable copy), and returns counts, timings, the part's path and
its rows. The client bulk-loads the rows of a batch of fields and marks them
complete in the same transaction. Fields segmented earlier but not measured with the requested
feature options are measured (not segmented again) in the same pass.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
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
import pyarrow as pa
from pydantic import ValidationError

from hts import __version__
from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.catalog.locks import HEARTBEAT_EVERY_S, heartbeat, plate_locks
from hts.compute.segment.engines import Engine, EngineError, SegmentResult, engine_class, segment_field
from hts.compute.measure import MeasureOptions, measure_field
from hts.compute.segment.sanity import field_checks
from hts.compute.segment.scale import engine_nucleus_diameter_um
from hts.config import load_workspace
from hts.errors import CatalogError, HtsError
from hts.orchestrate.dask import Batcher, check_workers, dask_client, gpu_resources, is_external, map_fields
from hts.store import PlateStore
from hts.store.tables import cells_part_path, from_ipc, remove_run_parts, to_ipc, write_part
from hts.wells import PLATE_TYPES, parse_well_range

__all__ = [
    "SegmentReport", "segment", "resolve_channels", "plate_pixel_size", "resolve_pixel_size", "select_fields", "process_field",
    "execute_plans", "measure_spec", "summarize_checks",
]

ProgressFn = Callable[[int, int, str], None]


@dataclass
class SegmentReport:
    plate: str
    plate_id: str
    run_id: str
    engine: str
    backend: str
    device: str
    status: str  # "segmented", "resumed", "unchanged", "skipped" (the plate could not be planned: see notes)
    fields_total: int
    fields_segmented: int
    objects: dict[str, int]
    labels: dict[str, str]
    seconds: float
    fields_measured: int = 0
    cells: int = 0
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None  # option, metadata, estimated
    notes: list[str] = dataclasses.field(default_factory=list)  # one-line remarks for the user (estimated scale)
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # failed sanity checks, one per kind and channel

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_channels(
    engine: type[Engine], plate_channels: list[str], given: dict[str, str] | None, *, plate: str, notes: list[str] | None = None,
) -> dict[str, str]:
    """Map each role of ``engine`` to a channel of the plate: given explicitly, else guessed from channel names.

    A plate with a single channel fills an engine's single required role with it
    (a line saying so is appended to ``notes``).
    """
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
        required = [r for r, sp in engine.roles.items() if sp.required]
        if guess is None and spec.required and len(plate_channels) == 1 and required == [role] and not given:
            # one channel, one role to fill: no doubt which (said once, so a wrong assumption is seen)
            guess = plate_channels[0]
            if notes is not None:
                notes.append(f"plate {plate} has one channel, {guess}: used as the {role} channel of {engine.name} "
                             f"(pass --channels {role}=NAME to say so)")
        if guess is not None:
            out[role] = guess
        elif spec.required:
            raise EngineError(
                f"engine {engine.name} needs a {role} channel ({spec.description}); plate {plate} has channels: {have}; "
                f"pass --channels {role}=NAME"
            )
    return out


def select_plates(catalog: Catalog, plates: list[str] | None) -> list[PlateRecord]:
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
    features: MeasureOptions | dict[str, Any] | bool = True,
    progress: ProgressFn | None = None,
) -> list[SegmentReport]:
    """Segment ``plates`` (names, ids or store paths; default: every ingested plate) with ``engine``.

    Returns one report per plate. Runs already complete with the same engine,
    parameters, channels and model are skipped; interrupted ones resume.
    ``features``: measure per-cell features right after segmenting each field
    (True: shape and intensity; a :class:`MeasureOptions` or dict adds texture,
    granularity, rod features; False: labels only, ``hts measure`` later).
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
    check_run_options(pixel_size_um=pixel_size_um, label_suffix=label_suffix, halo=halo, tile=tile)
    if not is_external(scheduler or ws.scheduler):
        check_workers(workers)
    # Validate backend/device and load the model once here, so bad weights or a
    # missing backend fail before any worker starts.
    probe = cls(eng_params, backend=backend, device=device)
    options = measure_options(features)
    with catalog.session():
        records = select_plates(catalog, plates)
    # one writing command per plate: a second segment (or measure) of a plate being segmented is refused
    with plate_locks(catalog, [(r.plate_id, r.name) for r in records], command=f"segment --engine {cls.name}") as lock:
        plans, skipped = [], []
        with catalog.session():
            for rec in records:
                try:
                    plans.append(_plan(catalog, rec, probe, cls, channels, wells, tile, halo, overwrite, label_suffix,
                                       pixel_size_um, options))
                except EngineError as e:
                    # one plate that cannot be planned (no pixel size to be had, a missing channel) does not
                    # hold up the others when several are segmented; alone, it is the error
                    if len(records) == 1:
                        raise
                    skipped.append(SegmentReport(
                        plate=rec.name, plate_id=rec.plate_id, run_id="", engine=cls.name, backend=probe.backend,
                        device=probe.device, status="skipped", fields_total=0, fields_segmented=0, objects={}, labels={},
                        seconds=0.0, notes=[str(e)]))
        if not plans:
            raise EngineError("; ".join(f"{r.plate}: {r.notes[0]}" for r in skipped))
        gpu = probe.device.startswith("cuda")
        seconds = execute_plans(catalog, plans, scheduler=scheduler or ws.scheduler, workers=workers, gpu=gpu,
                                progress=progress, lock=lock)
        with catalog.session():
            return [_report(catalog, plan, s) for plan, s in zip(plans, seconds)] + skipped


_SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_run_options(*, pixel_size_um: float | None, label_suffix: str | None, halo: int, tile: int) -> None:
    """Options checked before any work starts (a bad value must not fail on a worker halfway through a plate)."""
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and 0 < pixel_size_um <= 1000):
        raise EngineError(f"--pixel-size {pixel_size_um}: must be a positive number of µm per pixel (e.g. 0.325)")
    if label_suffix is not None and not _SUFFIX.fullmatch(label_suffix):
        raise EngineError(
            f"--label-suffix {label_suffix!r}: use 1-64 letters, digits, '_' or '-' (it names label images in the store)"
        )
    if halo < 0 or tile > 65536:
        raise EngineError(f"--halo {halo} / --tile {tile}: the halo must be >= 0 and the tile at most 65536 px")


def measure_options(features: MeasureOptions | dict[str, Any] | bool) -> MeasureOptions | None:
    if features is False or features is None:
        return None
    if features is True:
        return MeasureOptions()
    if isinstance(features, MeasureOptions):
        return features
    try:
        return MeasureOptions(**features)
    except ValidationError as e:
        err = e.errors()[0]
        raise EngineError(f"features: {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}") from None


def execute_plans(
    catalog: Catalog,
    plans: list[dict[str, Any]],
    *,
    scheduler: str | None,
    workers: int | None,
    gpu: bool = False,
    progress: ProgressFn | None = None,
    lock: str | None = None,
) -> list[float]:
    """Run every plan's field tasks on Dask, recording them in the catalog in batches; seconds per plan.

    A plan has ``record``, ``run``, ``spec``, ``todo`` (well, field index, path, mode)
    items and ``finish`` (mark the run complete at the end). ``lock``: the token of
    the plate locks held (:func:`hts.catalog.locks.plate_locks`), refreshed while the work runs.
    """
    try:
        return _execute_plans(catalog, plans, scheduler=scheduler, workers=workers, gpu=gpu, progress=progress, lock=lock)
    except Exception as e:
        # a run that stopped on an error says why (Ctrl-C is not a failure: the run is simply unfinished)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = first if isinstance(e, HtsError) else f"{type(e).__name__}: {first}".rstrip(": ")
        for plan in plans:
            if plan["todo"] or plan.get("finish"):
                runs_db.fail_run(catalog, plan["run"]["run_id"], reason)
        raise


def _execute_plans(catalog, plans, *, scheduler, workers, gpu, progress, lock) -> list[float]:
    todo_total = sum(len(p["todo"]) for p in plans)
    done_total = 0
    beat = time.monotonic()
    out = []
    with dask_client(scheduler, workers=workers, gpu=gpu) if todo_total else nullcontext() as client:
        # CUDA engine on an external cluster: only workers started with --resources GPU=1 take the tasks
        resources = gpu_resources(client, scheduler, gpu=gpu)
        for plan in plans:
            t0 = time.perf_counter()
            run_id = plan["run"]["run_id"]
            options = plan["spec"].get("measure")
            key = MeasureOptions(**options).key() if options is not None else None
            with Batcher(functools.partial(runs_db.complete_run_fields, catalog, run_id, measured_key=key)) as batch:
                for (well, idx, _, _), res in map_fields(
                    process_field, plan["todo"], client=client, args=(plan["spec"],), resources=resources
                ):
                    if res.get("cells") is not None:
                        res["cells"] = from_ipc(res["cells"])
                    batch.add({"well": well, "field_index": idx, **res})
                    done_total += 1
                    if lock is not None and time.monotonic() - beat > HEARTBEAT_EVERY_S:
                        heartbeat(catalog, lock)
                        beat = time.monotonic()
                    if progress:
                        progress(done_total, todo_total, f"{plan['record'].name} {well}")
            if plan.get("finish"):
                runs_db.finish_run(catalog, run_id)
            if options is not None and plan["todo"] and not runs_db.unmeasured_run_fields(catalog, run_id, key):
                runs_db.set_run_features(catalog, run_id, options)
            out.append(time.perf_counter() - t0)
    return out


def plate_pixel_size(rec: PlateRecord, given: float | None) -> float:
    """µm per pixel: ``given`` (--pixel-size), else the plate's metadata; an error naming the option if neither."""
    px = given or rec.pixel_size_um[0]
    if not px:
        raise EngineError(f"plate {rec.name} has no pixel size in its metadata; pass --pixel-size (µm per pixel)")
    return px


def resolve_pixel_size(
    catalog: Catalog, rec: PlateRecord, probe: Engine, mapping: dict[str, str], plate_channels: list[str],
    fields: list[tuple[str, int, str]], given: float | None,
) -> tuple[float, str, str | None]:
    """(µm per pixel, where it came from, a note for the user): ``given``, the plate's metadata, or estimated.

    Without either, the pixel size is estimated from up to three fields of the
    selection (first, middle, last) by :func:`hts.compute.segment.scale.estimate_pixel_size`;
    an estimate an earlier run of the same engine, model and channels made for
    this plate is reused, so a re-run resumes the same run.
    """
    if given:
        return float(given), "option", None
    if rec.pixel_size_um[0]:
        return float(rec.pixel_size_um[0]), "metadata", None
    from hts.compute.segment.scale import ScaleEstimate, engine_nucleus_diameter_um, estimate_pixel_size

    px = runs_db.estimated_pixel_size(catalog, rec.plate_id, probe.name, probe.model_sha256, mapping)
    if px is None:
        store = PlateStore(rec.store_uri)
        index = {name: i for i, name in enumerate(plate_channels)}
        picks = sorted({0, len(fields) // 2, len(fields) - 1})
        sample = []
        for k in picks:
            _, idx, path = fields[k]
            planes = np.asarray(store.read_field(path.rsplit("/", 1)[0], idx)[0]).max(axis=1)
            sample.append({role: planes[index[name]] for role, name in mapping.items()})
        est = estimate_pixel_size(probe, sample)
        if est is None:
            raise EngineError(
                f"plate {rec.name} has no pixel size in its metadata and none could be estimated from its fields "
                f"({probe.name} found too few nuclei at any scale); pass --pixel-size (µm per pixel)"
            )
        px = est.pixel_size_um
    else:
        est = ScaleEstimate(px, engine_nucleus_diameter_um(probe) / px, engine_nucleus_diameter_um(probe), 0)
    return px, "estimated", est.message()


def select_fields(
    catalog: Catalog, rec: PlateRecord, wells: str | None, *, complete_only: bool = False
) -> tuple[set[str] | None, list[tuple[str, int, str]]]:
    """The wells named by ``wells`` (None: all) and the plate's (well, field index, path) in them, in order."""
    selected = None
    if wells:
        try:
            selected = {w.name for w in parse_well_range(wells, PLATE_TYPES[rec.plate_type])}
        except ValueError as e:
            raise EngineError(f"--wells {wells!r}: {e}") from None
    paths = catalog.field_paths(rec.plate_id, complete_only=complete_only)
    return selected, [(w, i, p) for (w, i), p in paths.items() if selected is None or w in selected]


def _plan(catalog, rec: PlateRecord, probe: Engine, cls, channels, wells, tile, halo, overwrite, label_suffix, pixel_size_um, options) -> dict:
    plate_channels = catalog.channel_names(rec.plate_id)
    notes: list[str] = []
    mapping = resolve_channels(cls, plate_channels, channels, plate=rec.name, notes=notes)
    selected, fields = select_fields(catalog, rec, wells)
    if not fields:
        raise EngineError(f"plate {rec.name}: no fields in wells {wells}")
    px, px_source, note = resolve_pixel_size(catalog, rec, probe, mapping, plate_channels, fields, pixel_size_um)
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
    existing = runs_db.find_run(catalog, rec.plate_id, run_key)
    if overwrite or not existing or existing["status"] != "complete":
        # labels will be written: a store that cannot take them is one line now (before the run is
        # recorded), not an error in every worker task
        PlateStore(rec.store_uri).check_writable(fields[0][2])
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
            "pixel_size_source": px_source,
            "status": "running",
            "hts_version": __version__,
        }
        replaces = sorted({o["run_id"] for o in conflicts.values()} | ({existing["run_id"]} if existing else set()))
        runs_db.create_run(catalog, run, [(w, i) for w, i, _ in fields], replaces=replaces)
        for old in replaces:
            remove_run_parts(rec.store_uri, old)
    pending = runs_db.pending_run_fields(catalog, run["run_id"])
    channel_index = {name: i for i, name in enumerate(plate_channels)}
    spec = {
        **measure_spec(rec, run, plate_channels, options),
        "engine": cls.name,
        "params": probe.params.model_dump(mode="json"),
        "backend": probe.backend,
        "device": probe.device,
        "channels": {role: channel_index[name] for role, name in mapping.items()},
        "pixel_size_um": px,
        "tile": tile,
        "halo": halo,
        "store_tile": rec.tile_size,
    }
    todo = [(w, i, p, "segment") for w, i, p in fields if (w, i) in pending]
    if options is not None:
        unmeasured = runs_db.unmeasured_run_fields(catalog, run["run_id"], options.key())
        todo += [(w, i, p, "measure") for w, i, p in fields if (w, i) in unmeasured and (w, i) not in pending]
    finish = bool(pending) or status != "unchanged"
    return {"record": rec, "run": run, "status": status, "spec": spec, "todo": todo, "fields": fields, "finish": finish,
            "pixel_size_source": px_source, "notes": notes + ([note] if note else [])}


def measure_spec(rec: PlateRecord, run: dict[str, Any], plate_channels: list[str], options: MeasureOptions | None) -> dict[str, Any]:
    """What a worker needs to measure a run's fields (the segment spec adds the engine)."""
    return {
        "store": rec.store_uri,
        "plate_id": rec.plate_id,
        "run_id": run["run_id"],
        "labels": runs_db.run_labels(run),
        "channel_names": list(plate_channels),
        "pixel_size_um": run["pixel_size_um"],
        "measure": options.model_dump(mode="json") if options is not None else None,
    }


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


def process_field(item: tuple[str, int, str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """Worker task on one field: segment it (mode ``"segment"``) and/or measure its cells.

    Reads the field's channels (and, to measure only, its labels) from the store,
    writes labels and the cells' Parquet part back to the store, and returns
    object counts, the part's path and rows (Arrow IPC bytes, a few hundred KB),
    timing and the worker's name.
    """
    t0 = time.perf_counter()
    well, idx, path, mode = item
    store = PlateStore(spec["store"])
    arr = store.read_field(path.rsplit("/", 1)[0], idx)
    eng = _worker_engine(spec) if mode == "segment" else None
    options = MeasureOptions(**spec["measure"]) if spec.get("measure") is not None else None
    counts: dict[str, int] = {}
    checks: list[dict[str, Any]] = []
    tables = []
    if eng is not None:
        # The field's label images, created here (in parallel) rather than by the client up front,
        # and created afresh: this task writes every time point of them.
        levels = store.create_labels(path, list(spec["labels"].values()), n_t=arr.shape[0], tile=spec.get("store_tile"), overwrite=True)
    for t in range(arr.shape[0]):
        planes = np.asarray(arr[t]).max(axis=1)  # (c, y, x): maximum over z
        if eng is not None:
            images = {role: planes[c] for role, c in spec["channels"].items()}
            try:
                res = segment_field(eng, images, pixel_size_um=spec["pixel_size_um"], tile=spec["tile"], halo=spec["halo"])
            except Exception as e:  # noqa: BLE001 - one field the engine cannot handle must not fail the plate
                res = SegmentResult({out: np.zeros(planes.shape[-2:], np.int32) for out in eng.outputs})
                failed = {"check": "engine_failed", "output": eng.outputs[0],
                          "message": f"{eng.name} failed on this field ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                     "stored with no objects"}
                if all(c["check"] != "engine_failed" for c in checks):
                    checks.append(failed)
            names = spec["labels"]
            store.write_labels(
                path,
                {names[out]: lab for out, lab in res.labels.items()},
                t,
                levels=levels,
                properties={names[out]: p for out, p in res.properties.items() if out in res.labels} or None,
            )
            for out, n in res.counts().items():
                counts[out] = counts.get(out, 0) + n
            names_by_role = {role: spec["channel_names"][c] for role, c in spec["channels"].items()}
            for c in field_checks(images, res.labels, pixel_size_um=spec["pixel_size_um"],
                                  nucleus_diameter_um=engine_nucleus_diameter_um(eng), channels=names_by_role):
                if all(c["check"] != k["check"] for k in checks):  # once per field, whatever the time points
                    checks.append(c)
            labels = res.labels
        else:
            labels = {out: np.asarray(store.read_labels(path, name)[t, 0, 0]) for out, name in spec["labels"].items()}
        if options is not None:
            channels = dict(zip(spec["channel_names"], planes))
            tab = measure_field(labels, channels, pixel_size_um=spec["pixel_size_um"], options=options)
            keys = {"plate_id": spec["plate_id"], "run_id": spec["run_id"], "well": well}
            for i, (k, v) in enumerate(keys.items()):
                tab = tab.add_column(i, k, pa.array([v] * tab.num_rows, pa.string()))
            tab = tab.add_column(3, "field_index", pa.array([idx] * tab.num_rows, pa.int32()))
            tab = tab.add_column(4, "t", pa.array([t] * tab.num_rows, pa.int32()))
            tables.append(tab)
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    if eng is not None:
        out["counts"] = counts
        out["checks"] = checks
    if options is not None:
        cells = pa.concat_tables(tables, promote_options="permissive") if tables else None
        n = cells.num_rows if cells is not None else 0
        out["n_cells"] = n
        out["part"] = str(write_part(cells_part_path(spec["store"], spec["run_id"], well, idx), cells)) if n else None
        # the client loads these rows from memory (the part is the durable copy)
        out["cells"] = to_ipc(cells) if n else None
    return out


def _report(catalog: Catalog, plan: dict, seconds: float) -> SegmentReport:
    run = plan["run"]
    rows = catalog.query(
        "SELECT output, sum(n_objects) AS n FROM run_object_counts WHERE run_id = ? GROUP BY output", [run["run_id"]]
    )
    cells = catalog.query("SELECT sum(n_cells) AS n FROM run_fields WHERE run_id = ?", [run["run_id"]])
    return SegmentReport(
        plate=plan["record"].name,
        plate_id=plan["record"].plate_id,
        run_id=run["run_id"],
        engine=run["engine"],
        backend=run["backend"],
        device=run["device"],
        status=plan["status"],
        fields_total=len(plan["fields"]),
        fields_segmented=sum(1 for item in plan["todo"] if item[3] == "segment"),
        objects={r["output"]: int(r["n"]) for r in rows},
        labels=runs_db.run_labels(run),
        seconds=round(seconds, 3),
        fields_measured=len(plan["todo"]) if plan["spec"].get("measure") is not None else 0,
        cells=int(cells[0]["n"] or 0) if cells else 0,
        pixel_size_um=float(run["pixel_size_um"]),
        pixel_size_source=run.get("pixel_size_source") or plan.get("pixel_size_source"),
        notes=list(plan.get("notes", [])),
        checks=summarize_checks(runs_db.field_checks(catalog, run["run_id"]), len(plan["fields"])),
    )


def summarize_checks(failed: list[dict[str, Any]], n_fields: int) -> list[dict[str, Any]]:
    """One entry per (check, channel or output): how many fields failed it, an example field and its message."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for c in failed:
        key = (c["check"], c.get("channel") or c.get("output") or "")
        g = groups.setdefault(key, {"check": c["check"], "channel": c.get("channel"), "output": c.get("output"),
                                    "fields": 0, "of": n_fields, "example": f"{c['well']}/{c['field_index']}",
                                    "message": c["message"]})
        g["fields"] += 1
    return list(groups.values())
