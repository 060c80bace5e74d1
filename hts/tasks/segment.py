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
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from hts import __version__
from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.catalog.locks import plate_locks
from hts.catalog.runs import Run
from hts.compute.measure import MeasureOptions
from hts.compute.segment.engines import Engine, EngineError, EngineRef
from hts.config import Workspace
from hts.errors import CatalogError
from hts.orchestrate.dask import check_workers, is_external
from hts.store import PlateStore
from hts.store.tables import remove_run_parts
from hts.tasks.plan import EngineSpec, FieldTask, ProgressFn, RunPlan, execute_plans, measure_spec
from hts.wells import PLATE_TYPES, parse_well_range

__all__ = [
    "SegmentReport",
    "SegmentOptions",
    "segment",
    "resolve_channels",
    "plate_pixel_size",
    "resolve_pixel_size",
    "select_fields",
    "select_plates",
    "measure_options",
    "summarize_checks",
    "check_run_options",
]


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
    checks: list[dict[str, Any]] = dataclasses.field(
        default_factory=list
    )  # failed sanity checks, one per kind and channel

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_channels(
    engine: type[Engine],
    plate_channels: list[str],
    given: dict[str, str] | None,
    *,
    plate: str,
    notes: list[str] | None = None,
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
            (
                c
                for g in spec.guess
                for c in plate_channels
                if c not in taken and (c.lower() == g or c.lower().startswith(g))
            ),
            None,
        )
        required = [r for r, sp in engine.roles.items() if sp.required]
        if guess is None and spec.required and len(plate_channels) == 1 and required == [role] and not given:
            # one channel, one role to fill: no doubt which (said once, so a wrong assumption is seen)
            guess = plate_channels[0]
            if notes is not None:
                notes.append(
                    f"plate {plate} has one channel, {guess}: used as the {role} channel of {engine.name} "
                    f"(pass --channels {role}=NAME to say so)"
                )
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
        raise CatalogError(f"{catalog.name}: no ingested plates to segment (run `hts ingest SOURCE` first)")
    return found


@dataclass(frozen=True)
class SegmentOptions:
    """How a plate is segmented (everything that decides the labels, and where they go).

    ``channels``: role -> channel name (default: guessed from channel names);
    ``params``: the engine's parameters (``hts engines NAME`` lists them);
    ``wells``: a selection such as ``"B02:C11"`` (default all); ``pixel_size_um``:
    overrides the plate's metadata (without either it is estimated from the fields);
    ``label_suffix``: label images named ``<output>_<suffix>`` (to keep several runs);
    ``overwrite``: replace labels another run wrote.
    """

    channels: dict[str, str] | None = None
    params: dict[str, Any] | None = None
    backend: str = "auto"
    device: str = "auto"
    tile: int = 1024
    halo: int = 64
    wells: str | None = None
    overwrite: bool = False
    label_suffix: str | None = None
    pixel_size_um: float | None = None


def segment(
    plates: list[str] | None = None,
    *,
    engine: str | Path | EngineRef,
    workspace: Workspace,
    options: SegmentOptions = SegmentOptions(),
    features: MeasureOptions | dict[str, Any] | bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[SegmentReport]:
    """Segment ``plates`` (names, ids or store paths; default: every ingested plate) with ``engine``.

    ``engine``: a registered engine's name or an engine folder (what ``hts train``
    writes). Returns one report per plate. Runs already complete with the same engine,
    parameters, channels and model are skipped; interrupted ones resume.
    ``features``: measure per-cell features right after segmenting each field
    (True: shape and intensity; a :class:`MeasureOptions` or dict adds texture,
    granularity, rod features; False: labels only, ``hts measure`` later).
    """
    catalog = workspace.catalog
    ref = EngineRef.parse(engine)
    cls = ref.resolve()
    o = options
    try:
        eng_params = cls.Params(**(o.params or {}))
    except ValidationError as e:
        err = e.errors()[0]
        raise EngineError(f"engine {ref}: parameter {'.'.join(map(str, err['loc'])) or '?'}: {err['msg']}") from None
    check_run_options(pixel_size_um=o.pixel_size_um, label_suffix=o.label_suffix, halo=o.halo, tile=o.tile)
    if not is_external(workspace.scheduler):
        check_workers(workers)
    # Validate backend/device and load the model once here, so bad weights or a
    # missing backend fail before any worker starts.
    probe = cls(eng_params, backend=o.backend, device=o.device)
    measure = measure_options(features)
    with catalog.session():
        records = select_plates(catalog, plates)
    # one writing command per plate: a second segment (or measure) of a plate being segmented is refused
    with plate_locks(catalog, [(r.plate_id, r.name) for r in records], command=f"segment --engine {cls.name}") as lock:
        with catalog.session():
            plans, skipped = _plan_plates(catalog, records, probe, ref, o, measure)
        seconds = execute_plans(
            catalog,
            plans,
            scheduler=workspace.scheduler,
            workers=workers,
            gpu=probe.device.startswith("cuda"),
            progress=progress,
            lock=lock,
        )
        with catalog.session():
            return [_report(catalog, plan, s) for plan, s in zip(plans, seconds)] + skipped


def _plan_plates(
    catalog: Catalog,
    records: list[PlateRecord],
    probe: Engine,
    ref: EngineRef,
    o: SegmentOptions,
    measure: MeasureOptions | None,
) -> tuple[list[RunPlan], list[SegmentReport]]:
    """A plan per plate; a plate that cannot be planned (no pixel size to be had, a missing channel) is
    skipped with its reason when several are segmented, and is the error when alone."""
    plans, skipped = [], []
    for rec in records:
        try:
            plans.append(_plan(catalog, rec, probe, ref, o, measure))
        except EngineError as e:
            if len(records) == 1:
                raise
            skipped.append(
                SegmentReport(
                    plate=rec.name,
                    plate_id=rec.plate_id,
                    run_id="",
                    engine=probe.name,
                    backend=probe.backend,
                    device=probe.device,
                    status="skipped",
                    fields_total=0,
                    fields_segmented=0,
                    objects={},
                    labels={},
                    seconds=0.0,
                    notes=[str(e)],
                )
            )
    if not plans:
        raise EngineError("; ".join(f"{r.plate}: {r.notes[0]}" for r in skipped))
    return plans, skipped


_SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_run_options(*, pixel_size_um: float | None, label_suffix: str | None, halo: int, tile: int) -> None:
    """Options checked before any work starts (a bad value must not fail on a worker halfway through a plate)."""
    if tile < 64:
        raise EngineError(f"tile size {tile} is too small (at least 64)")
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


def plate_pixel_size(rec: PlateRecord, given: float | None) -> float:
    """µm per pixel: ``given`` (--pixel-size), else the plate's metadata; an error naming the option if neither."""
    px = given or rec.pixel_size_um[0]
    if not px:
        raise EngineError(f"plate {rec.name} has no pixel size in its metadata; pass --pixel-size (µm per pixel)")
    return px


def resolve_pixel_size(
    catalog: Catalog,
    rec: PlateRecord,
    probe: Engine,
    mapping: dict[str, str],
    plate_channels: list[str],
    fields: list[tuple[str, int, str]],
    given: float | None,
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


def _plan(
    catalog: Catalog, rec: PlateRecord, probe: Engine, ref: EngineRef, o: SegmentOptions, measure: MeasureOptions | None
) -> RunPlan:
    cls = type(probe)
    plate_channels = catalog.channel_names(rec.plate_id)
    notes: list[str] = []
    mapping = resolve_channels(cls, plate_channels, o.channels, plate=rec.name, notes=notes)
    selected, fields = select_fields(catalog, rec, o.wells)
    if not fields:
        raise EngineError(f"plate {rec.name}: no fields in wells {o.wells}")
    px, px_source, note = resolve_pixel_size(catalog, rec, probe, mapping, plate_channels, fields, o.pixel_size_um)
    draft = _draft_run(rec, probe, mapping, selected, o, px, px_source)
    existing = runs_db.find_run(catalog, rec.plate_id, draft.run_key)
    if o.overwrite or existing is None or existing.status != "complete":
        # labels will be written: a store that cannot take them is one line now (before the run is
        # recorded), not an error in every worker task
        PlateStore(rec.store_uri).check_writable(fields[0][2])
    run, status = runs_db.open_run(
        catalog,
        draft,
        [(w, i) for w, i, _ in fields],
        overwrite=o.overwrite,
        plate_name=rec.name,
        on_replaced=lambda old: remove_run_parts(rec.store_uri, old),
    )
    pending = runs_db.pending_run_fields(catalog, run.run_id)
    channel_index = {name: i for i, name in enumerate(plate_channels)}
    spec = dataclasses.replace(
        measure_spec(rec, run, plate_channels, measure),
        engine=EngineSpec(
            name=str(ref),
            params=probe.params.model_dump(mode="json"),
            backend=probe.backend,
            device=probe.device,
            channels={role: channel_index[n] for role, n in mapping.items()},
            tile=o.tile,
            halo=o.halo,
            model=probe.model_sha256,
        ),
        pixel_size_um=px,
        store_tile=rec.tile_size,
    )
    todo = [FieldTask(w, i, p, "segment") for w, i, p in fields if (w, i) in pending]
    if measure is not None:
        unmeasured = runs_db.unmeasured_run_fields(catalog, run.run_id, measure.key())
        todo += [FieldTask(w, i, p, "measure") for w, i, p in fields if (w, i) in unmeasured and (w, i) not in pending]
    return RunPlan(
        record=rec,
        run=run,
        status=status,
        spec=spec,
        todo=todo,
        fields=fields,
        finish=bool(pending) or status != "unchanged",
        pixel_size_source=px_source,
        notes=notes + ([note] if note else []),
    )


def _draft_run(
    rec: PlateRecord,
    probe: Engine,
    mapping: dict[str, str],
    selected: set[str] | None,
    o: SegmentOptions,
    px: float,
    px_source: str,
) -> Run:
    """The run these options ask for; its key hashes everything that decides the labels."""
    cls = type(probe)
    suffix = f"_{o.label_suffix}" if o.label_suffix else ""
    labels = {out: f"{out}{suffix}" for out in cls.outputs}
    params = probe.params.model_dump(mode="json")
    key_doc = {
        "engine": cls.name,
        "version": cls.version,
        "params": params,
        "channels": mapping,
        "model": probe.model_sha256,
        "tile": o.tile,
        "halo": o.halo,
        "wells": sorted(selected) if selected else None,
        "labels": labels,
        "pixel_size_um": px,
    }
    return Run(
        run_id=str(uuid.uuid4()),
        plate_id=rec.plate_id,
        run_key=hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest(),
        engine=cls.name,
        engine_version=cls.version,
        backend=probe.backend,
        device=probe.device,
        params=params,
        channels=mapping,
        model_sha256=probe.model_sha256,
        labels=labels,
        wells=o.wells,
        tile_size=o.tile,
        halo=o.halo,
        pixel_size_um=px,
        pixel_size_source=px_source,
        status="running",
        hts_version=__version__,
    )


def _report(catalog: Catalog, plan: RunPlan, seconds: float) -> SegmentReport:
    run = plan.run
    rows = catalog.query(
        "SELECT output, sum(n_objects) AS n FROM run_object_counts WHERE run_id = ? GROUP BY output", [run.run_id]
    )
    cells = catalog.query("SELECT sum(n_cells) AS n FROM run_fields WHERE run_id = ?", [run.run_id])
    return SegmentReport(
        plate=plan.record.name,
        plate_id=plan.record.plate_id,
        run_id=run.run_id,
        engine=run.engine,
        backend=run.backend,
        device=run.device,
        status=plan.status,
        fields_total=len(plan.fields),
        fields_segmented=sum(1 for t in plan.todo if t.mode == "segment"),
        objects={r["output"]: int(r["n"]) for r in rows},
        labels=dict(run.labels),
        seconds=round(seconds, 3),
        fields_measured=len(plan.todo) if plan.spec.measure is not None else 0,
        cells=int(cells[0]["n"] or 0) if cells else 0,
        pixel_size_um=float(run.pixel_size_um),
        pixel_size_source=run.pixel_size_source or plan.pixel_size_source,
        notes=list(plan.notes),
        checks=summarize_checks(runs_db.field_checks(catalog, run.run_id), len(plan.fields)),
    )


def summarize_checks(failed: list[dict[str, Any]], n_fields: int) -> list[dict[str, Any]]:
    """One entry per (check, channel or output): how many fields failed it, an example field and its message."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for c in failed:
        key = (c["check"], c.get("channel") or c.get("output") or "")
        g = groups.setdefault(
            key,
            {
                "check": c["check"],
                "channel": c.get("channel"),
                "output": c.get("output"),
                "fields": 0,
                "of": n_fields,
                "example": f"{c['well']}/{c['field_index']}",
                "message": c["message"],
            },
        )
        g["fields"] += 1
    return list(groups.values())
