"""The typed plan/execute core shared by ``segment`` and ``measure`` (and what builds on them).

A command *plans* on the client, per plate: it opens its run through the catalog's
run state machine (:func:`hts.catalog.runs.open_run`: new, resumed or unchanged) and
lists the :class:`FieldTask` items left to do; a :class:`RunPlan` holds that, with the
:class:`FieldSpec` every worker task gets. :func:`execute_plans` then runs the tasks
on Dask (:func:`hts.orchestrate.dask.map_fields`), records their :class:`FieldResult`
in batches, keeps the plate locks alive, finishes the runs, and records why a run
stopped when it fails (it stays resumable: the same command finishes it).

The worker side is :func:`process_field`: one field, segmented (``mode="segment"``)
and/or measured; the engine is loaded once per worker process, not per task.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.catalog.locks import HEARTBEAT_EVERY_S, heartbeat
from hts.catalog.runs import FieldResult, Run
from hts.compute.measure import MeasureOptions, measure_field
from hts.compute.segment.engines import Engine, SegmentResult, engine_class, segment_field
from hts.compute.segment.sanity import field_checks
from hts.compute.segment.scale import engine_nucleus_diameter_um
from hts.errors import EngineError, HtsError
from hts.orchestrate.dask import SMALL_COMPUTE_S, Batcher, dask_client, gpu_resources, map_fields
from hts.store import PlateStore
from hts.store.tables import cells_part_path, from_ipc, to_ipc, write_part

__all__ = [
    "FieldTask",
    "FieldSpec",
    "EngineSpec",
    "RunPlan",
    "ProgressFn",
    "execute_plans",
    "process_field",
    "measure_spec",
]

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class FieldTask:
    """One field of a run to process: segment it (and measure, with features) or only measure it."""

    well: str
    field_index: int
    path: str  # the field's image path in the store (``<row>/<col>/<index>``)
    mode: Literal["segment", "measure"]


@dataclass(frozen=True)
class EngineSpec:
    """The engine a worker builds (once per process) for ``segment`` tasks."""

    name: str  # a registered name, or an engine folder's absolute path
    params: dict[str, Any]
    backend: str
    device: str
    channels: dict[str, int]  # role -> channel index in the stored field
    tile: int
    halo: int
    model: str | None = None  # the weights' checksum: a worker kept across calls reloads retrained weights


@dataclass(frozen=True)
class FieldSpec:
    """What every task of a run needs besides its field (sent to workers once per task, small)."""

    store: str
    plate_id: str
    run_id: str
    labels: dict[str, str]  # output -> label image name
    channel_names: list[str]
    pixel_size_um: float
    measure: MeasureOptions | None = None
    engine: EngineSpec | None = None
    store_tile: int | None = None
    measured: tuple[str, ...] | None = None  # the outputs whose objects get features (None: all)


@dataclass
class RunPlan:
    """One plate's run as planned: the run, its state, the tasks left, whether to mark it complete."""

    record: PlateRecord
    run: Run
    status: str  # segmented (new), resumed, unchanged; measure: measured / unchanged
    spec: FieldSpec
    todo: list[FieldTask]
    fields: list[tuple[str, int, str]]  # the run's selection: (well, field index, path)
    finish: bool = False  # mark the run complete when its tasks are done
    pixel_size_source: str | None = None
    notes: list[str] = field(default_factory=list)


def measure_spec(rec: PlateRecord, run: Run, plate_channels: list[str], options: MeasureOptions | None) -> FieldSpec:
    """What a worker needs to measure a run's fields (segmenting adds the engine)."""
    return FieldSpec(
        store=rec.store_uri,
        plate_id=rec.plate_id,
        run_id=run.run_id,
        labels=dict(run.labels),
        channel_names=list(plate_channels),
        pixel_size_um=float(run.pixel_size_um),
        measure=options,
        measured=_measured_outputs(run),
    )


def _measured_outputs(run: Run) -> tuple[str, ...]:
    """The run's outputs that get features (:meth:`~hts.compute.segment.engines.Engine.measured_outputs`)."""
    try:  # an engine folder's runs carry the name of the engine it trains; only that engine is loaded
        cls = engine_class(run.engine)
    except EngineError:  # a plug-in no longer installed: measure every output
        return tuple(run.labels)
    return tuple(cls.measured_outputs(run.channels))


def execute_plans(
    catalog: Catalog,
    plans: list[RunPlan],
    *,
    scheduler: str | None,
    workers: int | None,
    gpu: bool = False,
    progress: ProgressFn | None = None,
    lock: str | None = None,
) -> list[float]:
    """Run every plan's field tasks on Dask, recording them in the catalog in batches; seconds per plan.

    ``lock``: the token of the plate locks held (:func:`hts.catalog.locks.plate_locks`),
    refreshed while the work runs. A run that stops on an error records why (Ctrl-C
    is not a failure: the run is simply unfinished).
    """
    try:
        return _execute(catalog, plans, scheduler=scheduler, workers=workers, gpu=gpu, progress=progress, lock=lock)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = first if isinstance(e, HtsError) else f"{type(e).__name__}: {first}".rstrip(": ")
        for plan in plans:
            if plan.todo or plan.finish:
                runs_db.fail_run(catalog, plan.run.run_id, reason)
        raise


def work_estimate(plans: list[RunPlan]) -> float | None:
    """CPU seconds the plans' tasks should take on one core, or None when an engine or task kind gives no
    estimate (:meth:`~hts.compute.segment.engines.Engine.cpu_seconds_per_megapixel`; segment tasks with
    the default features only: texture and granularity cost far more)."""
    total = 0.0
    for plan in plans:
        if not plan.todo:
            continue
        spec = plan.spec
        if spec.engine is None or any(t.mode != "segment" for t in plan.todo):
            return None
        if spec.measure is not None and (spec.measure.texture or spec.measure.granularity):
            return None
        try:
            per_mp = engine_class(spec.engine.name).cpu_seconds_per_megapixel(dict(plan.run.channels))
        except EngineError:
            return None
        if per_mp is None:
            return None
        n_t, _, _, size_y, size_x = plan.record.shape  # z planes are max-projected before segmenting
        total += per_mp * len(plan.todo) * n_t * size_y * size_x / 1e6
    return total


def _execute(catalog: Catalog, plans: list[RunPlan], *, scheduler, workers, gpu, progress, lock) -> list[float]:
    todo_total = sum(len(p.todo) for p in plans)
    done = 0
    beat = time.monotonic()
    out = []
    with (
        dask_client(scheduler, workers=workers, gpu=gpu, work_s=work_estimate(plans), small_s=SMALL_COMPUTE_S)
        if todo_total
        else nullcontext()
    ) as client:
        # CUDA engine on an external cluster: only workers started with --resources GPU=1 take the tasks
        resources = gpu_resources(client, scheduler, gpu=gpu)
        for plan in plans:
            t0 = time.perf_counter()
            run_id = plan.run.run_id
            key = plan.spec.measure.key() if plan.spec.measure is not None else None
            record = functools.partial(runs_db.complete_run_fields, catalog, run_id, measured_key=key)
            with Batcher(record) as batch:
                # looked up at call time, so tests can stand in for the worker task
                task = globals()["process_field"]
                for _, res in map_fields(task, plan.todo, client=client, args=(plan.spec,), resources=resources):
                    if res.cells is not None:
                        res.cells = from_ipc(res.cells)
                    batch.add(res)
                    done += 1
                    if lock is not None and time.monotonic() - beat > HEARTBEAT_EVERY_S:
                        heartbeat(catalog, lock)
                        beat = time.monotonic()
                    if progress:
                        progress(done, todo_total, f"{plan.record.name} {res.well}")
            if plan.finish:
                runs_db.finish_run(catalog, run_id)
            if key is not None and plan.todo and not runs_db.unmeasured_run_fields(catalog, run_id, key):
                runs_db.set_run_features(catalog, run_id, plan.spec.measure.model_dump(mode="json"))
            out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------- worker side

# One engine per worker process (and per engine/params/backend/device): deep engines
# load their model here once, not per task.
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _worker_engine(spec: EngineSpec) -> Engine:
    key = json.dumps([spec.name, spec.params, spec.backend, spec.device, spec.model], sort_keys=True)
    with _engines_lock:
        eng = _engines.get(key)
        if eng is None:
            cls = engine_class(spec.name)
            eng = _engines[key] = cls(cls.Params(**spec.params), backend=spec.backend, device=spec.device)
        return eng


def process_field(task: FieldTask, spec: FieldSpec) -> FieldResult:
    """Worker task on one field: segment it (mode ``"segment"``) and/or measure its cells.

    Reads the field's channels (and, to measure only, its labels) from the store,
    writes labels and the cells' Parquet part back to the store, and returns object
    counts, failed sanity checks, the part's path and rows (Arrow IPC bytes, a few
    hundred KB), timing and the worker's name.
    """
    t0 = time.perf_counter()
    store = PlateStore(spec.store)
    n_t = store.shape_of(f"{task.path}/0")[0]
    eng = _worker_engine(spec.engine) if task.mode == "segment" and spec.engine is not None else None
    counts: dict[str, int] = {}
    checks: list[dict[str, Any]] = []
    tables = []
    if eng is not None:
        # The field's label images, created here (in parallel) rather than by the client up front,
        # and created afresh: this task writes every time point of them.
        levels = store.create_labels(
            task.path, list(spec.labels.values()), n_t=n_t, tile=spec.store_tile, overwrite=True
        )
    for t in range(n_t):
        planes = store.read_block(f"{task.path}/0", (t,)).max(axis=1)  # (c, y, x): maximum over z
        if eng is not None:
            labels = _segment_time_point(eng, spec, store, task, t, planes, levels, counts, checks)
        else:
            labels = {
                out: store.read_block(f"{task.path}/labels/{name}/0", (t, 0, 0), missing=f"no label image {name!r}")
                for out, name in spec.labels.items()
            }
        if spec.measure is not None:
            tables.append(_measure_time_point(spec, task, t, labels, planes))
    res = FieldResult(task.well, task.field_index, seconds=0.0, worker=f"{socket.gethostname()}:{os.getpid()}")
    if eng is not None:
        res.counts, res.checks = counts, checks
    if spec.measure is not None:
        cells = pa.concat_tables(tables, promote_options="permissive") if tables else None
        res.n_cells = cells.num_rows if cells is not None else 0
        if res.n_cells:
            res.part = str(write_part(cells_part_path(spec.store, spec.run_id, task.well, task.field_index), cells))
            res.cells = to_ipc(cells)  # the client loads these rows from memory (the part is the durable copy)
    res.seconds = time.perf_counter() - t0
    return res


def _segment_time_point(
    eng: Engine,
    spec: FieldSpec,
    store: PlateStore,
    task: FieldTask,
    t: int,
    planes: np.ndarray,
    levels: Any,
    counts: dict[str, int],
    checks: list[dict[str, Any]],
) -> dict[str, np.ndarray]:
    """Segment one time point of a field, write its labels; add to ``counts`` and ``checks``."""
    es = spec.engine
    images = {role: planes[c] for role, c in es.channels.items()}
    try:
        res = segment_field(eng, images, pixel_size_um=spec.pixel_size_um, tile=es.tile, halo=es.halo)
    except Exception as e:  # noqa: BLE001 - one field the engine cannot handle must not fail the plate
        res = SegmentResult({out: np.zeros(planes.shape[-2:], np.int32) for out in eng.outputs})
        why = str(e).splitlines()[0] if str(e) else ""
        failed = {
            "check": "engine_failed",
            "output": eng.outputs[0],
            "message": f"{eng.name} failed on this field ({type(e).__name__}: {why}); stored with no objects",
        }
        if all(c["check"] != "engine_failed" for c in checks):
            checks.append(failed)
    names = spec.labels
    store.write_labels(
        task.path,
        {names[out]: lab for out, lab in res.labels.items()},
        t,
        levels=levels,
        properties={names[out]: p for out, p in res.properties.items() if out in res.labels} or None,
    )
    for out, n in res.counts().items():
        counts[out] = counts.get(out, 0) + n
    by_role = {role: spec.channel_names[c] for role, c in es.channels.items()}
    for c in field_checks(
        images,
        res.labels,
        pixel_size_um=spec.pixel_size_um,
        nucleus_diameter_um=engine_nucleus_diameter_um(eng),
        channels=by_role,
    ):
        if all(c["check"] != k["check"] for k in checks):  # once per field, whatever the time points
            checks.append(c)
    return res.labels


def _measure_time_point(
    spec: FieldSpec, task: FieldTask, t: int, labels: dict[str, np.ndarray], planes: np.ndarray
) -> pa.Table:
    """The cells of one time point of a field, with their plate, run, well, field and time keys."""
    channels = dict(zip(spec.channel_names, planes))
    if spec.measured is not None:
        labels = {out: lab for out, lab in labels.items() if out in spec.measured}
    tab = measure_field(labels, channels, pixel_size_um=spec.pixel_size_um, options=spec.measure)
    keys = {"plate_id": spec.plate_id, "run_id": spec.run_id, "well": task.well}
    for i, (k, v) in enumerate(keys.items()):
        tab = tab.add_column(i, k, pa.array([v] * tab.num_rows, pa.string()))
    tab = tab.add_column(3, "field_index", pa.array([task.field_index] * tab.num_rows, pa.int32()))
    return tab.add_column(4, "t", pa.array([t] * tab.num_rows, pa.int32()))
