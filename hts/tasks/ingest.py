"""Ingest: an acquisition (ND2 file, TIFF folder) into an OME-Zarr HCS plate plus catalog rows.

Plan once on the client, then one task per field:

1. ``describe()`` the source (metadata only): every naming, channel, shape and
   dtype problem is raised here, before anything is written.
2. Decide what the target holds: a new plate; the same source half-ingested
   (resume: only fields not marked complete are written); the same source
   complete (nothing to do); or a different plate (error unless ``overwrite``).
3. Register the plate with every field ``pending``, then write the plate skeleton
   (its plate id last, so an interrupted skeleton is recognised and written again).
4. Fan out one task per pending field over Dask: the worker reads the field from
   the source, writes it and its pyramid into the store, and returns a checksum
   and per-channel statistics. The client marks fields ``complete`` in batches,
   only after their data is written, so an interrupted run loses at most the
   fields in flight, and re-running writes exactly those again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hts import __version__
from hts.catalog import Catalog
from hts.catalog.locks import HEARTBEAT_EVERY_S, heartbeat, plate_locks
from hts.compute.measure.imagestats import channel_stats
from hts.config import Workspace
from hts.errors import SourceError, StoreError
from hts.formats import PlateDescription, PlateReader, SourceField, open_plate
from hts.formats.base import checksum, fingerprint
from hts.orchestrate.dask import Batcher, check_workers, dask_client, is_external, map_fields
from hts.store import PlateStore, pyramid_levels
from hts.store.location import join, location
from hts.store.ngff import field_shape

__all__ = ["IngestReport", "ingest", "ingest_field", "finish_growing"]

ProgressFn = Callable[[int, int, str], None]


@dataclass
class IngestReport:
    """What an ingest did."""

    plate_id: str
    name: str
    store: str
    catalog: str
    status: str  # "ingested", "resumed", "unchanged"
    wells: int
    fields_total: int
    fields_written: int
    channels: list[str]
    seconds: float
    megabytes_written: float  # uncompressed level-0 pixel data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep or "plate"


def ingest(
    source: str | Path,
    *,
    workspace: Workspace,
    out: str | Path | None = None,
    overwrite: bool = False,
    max_project: bool = False,
    tile: int = 1024,
    reader: str | None = None,
    pattern: str | None = None,
    name: str | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    grow: bool = False,
    **reader_options: Any,
) -> IngestReport:
    """Ingest ``source`` into an OME-Zarr HCS plate registered in the workspace's catalog.

    Parameters
    ----------
    source : path
        An ``.nd2`` file or a folder of TIFFs (ImageXpress, Opera/Operetta,
        Cellomics, or any naming given by ``pattern``).
    workspace : Workspace
        The catalog, the plates folder and the Dask scheduler.
    out : path or URL, optional
        The plate store (a local path or an fsspec URL such as ``s3://bucket/plates/X.zarr``);
        default ``<plates_dir>/<plate name>.zarr`` of the workspace.
    overwrite : bool
        Replace a store that holds a different plate, or re-ingest a complete one.
    max_project : bool
        Store the maximum-intensity projection over Z instead of the stack.
    tile : int
        Chunk size in y and x (pixels).
    reader, pattern, name
        Force a reader (a format of :data:`hts.formats.FORMATS`), give a TIFF file-name pattern,
        name the plate (default: from the source).
    workers : int, optional
        Local Dask workers (see :mod:`hts.orchestrate.dask`).
    progress : callable, optional
        ``progress(done, total, message)`` after each field.
    grow : bool
        The source is still being acquired (``hts watch``): when the store holds this plate
        from fewer files, add the new wells and fields to it (the ones it holds must be
        unchanged) instead of refusing a different source.
    reader_options
        Passed to the reader (e.g. ``plate_wells=384``).

    Returns
    -------
    IngestReport
    """
    t0 = time.perf_counter()
    _check_options(workspace, tile=tile, workers=workers, plate_wells=reader_options.get("plate_wells"))
    catalog = workspace.catalog
    if name:
        reader_options["name"] = name
    plate_reader = open_plate(source, format=reader, pattern=pattern, **reader_options)
    desc = plate_reader.describe()
    plate_reader.options.pop("only", None)  # workers read fields by their files; the selection stays here
    store_path = _store_path(workspace, desc, out)
    files = sorted(desc.files)
    root = Path(source).expanduser().resolve()
    fp = fingerprint([f.resolve() for f in files], root=root)

    # One ingest per plate store at a time, across processes and machines (the DuckLake catalog has no
    # unique keys to refuse a second registration of the same store; the lock does it on both backends).
    with plate_locks(catalog, [(f"store:{store_path}", desc.name)], command="ingest") as lock:
        return _ingest_locked(
            catalog, plate_reader, desc, store_path, files, root, fp, workspace=workspace, overwrite=overwrite,
            max_project=max_project, tile=tile, workers=workers, progress=_beating(catalog, lock, progress),
            grow=grow, t0=t0,
        )  # fmt: skip


def _beating(catalog: Catalog, lock: str, progress: ProgressFn | None) -> ProgressFn:
    """``progress`` that also refreshes the lock's heartbeat (other hosts take over a silent lock)."""
    last = [time.monotonic()]

    def beat(done: int, total: int, message: str = "") -> None:
        if time.monotonic() - last[0] > HEARTBEAT_EVERY_S:
            last[0] = time.monotonic()
            heartbeat(catalog, lock)
        if progress is not None:
            progress(done, total, message)

    return beat


def _ingest_locked(
    catalog: Catalog, plate_reader: PlateReader, desc: PlateDescription, store_path: Any, files: list, root: Path,
    fp: str, *, workspace: Workspace, overwrite: bool, max_project: bool, tile: int, workers: int | None,
    progress: ProgressFn, grow: bool, t0: float,
) -> IngestReport:  # fmt: skip
    if grow and not overwrite:
        _grow(catalog, desc, store_path, fp, tile=tile, max_project=max_project)
    target = _open_target(catalog, store_path, fp, max_project=max_project, tile=tile, overwrite=overwrite)
    if target == "unchanged":
        record = catalog.plate_by_store(str(store_path))
        return _report(record.plate_id, desc, store_path, catalog, "unchanged", 0, t0, max_project)
    if target is None:
        # Registered before the skeleton is written, on a path now empty: a run interrupted while
        # writing it finds its plate in the catalog and a store without the plate id (written
        # last), which only hts can have written, and starts afresh.
        plate_id, status = str(uuid.uuid4()), "ingested"
        catalog.insert_plate(_plate_tables(plate_id, desc, store_path, root, fp, tile, max_project))
        try:
            PlateStore.create(store_path, desc, plate_id=plate_id, fingerprint=fp, tile=tile, max_project=max_project)
        except Exception:
            catalog.delete_plate(plate_id)
            raise
    else:
        plate_id, status = target, "resumed"
    written, acq_checksum = _write_fields(
        catalog, plate_reader, desc, plate_id, store_path, [] if grow else files, workspace.scheduler, workers,
        max_project, progress,
    )  # fmt: skip
    if not grow:  # while growing, done once at the end (finish_growing): they read the whole plate
        _set_display_windows(catalog, plate_id, PlateStore(store_path), desc)
    catalog.finish_plate(plate_id, checksum=acq_checksum if not grow else None)
    return _report(plate_id, desc, store_path, catalog, status, written, t0, max_project)


def finish_growing(source: str | Path, *, workspace: Workspace, **reader_options: Any) -> None:
    """End of ``hts watch``: the acquisition's checksum and the channels' display windows, over the
    whole plate as a batch ingest computes them (skipped while it was growing)."""
    fmt, pattern = reader_options.pop("format", None), reader_options.pop("pattern", None)
    desc = open_plate(source, format=fmt, pattern=pattern, **reader_options).describe()
    catalog = workspace.catalog
    record = catalog.plate_by_store(str(_store_path(workspace, desc)))
    if record is None:
        return
    _set_display_windows(catalog, record.plate_id, PlateStore(record.store_uri), desc)
    catalog.finish_plate(record.plate_id, checksum=checksum(sorted(desc.files)))


def _store_path(workspace: Workspace, desc: PlateDescription, out: str | Path | None = None) -> Any:
    """Where the plate goes: ``out``, else ``<plates dir>/<plate name>.zarr``."""
    return location(out) if out else join(workspace.plates_dir, f"{_safe_name(desc.name)}.zarr")


def _check_options(workspace: Workspace, *, tile: int, workers: int | None, plate_wells: int | None) -> None:
    if tile < 64 or tile > 16384:
        raise StoreError(f"tile size {tile} is out of range (64..16384)")
    if not is_external(workspace.scheduler):
        check_workers(workers)
    if plate_wells is not None and plate_wells not in (96, 384, 1536):
        raise SourceError(f"--plate-type {plate_wells}: not a plate hts fits wells on (96, 384 or 1536)")


def _grow(catalog: Catalog, desc: PlateDescription, store_path: Any, fp: str, *, tile: int, max_project: bool) -> None:
    """Add the wells and fields that ``desc`` has and the stored plate lacks (``hts watch``).

    The stored ones must be unchanged (same files, channels, shape); the plate's geometry and
    fingerprint become ``desc``'s, so that when the acquisition is complete the plate is what a
    batch ingest of the finished folder makes. The store is extended first, then the catalog;
    each step compares its own fingerprint, so a grow cut off between or inside them is finished
    by the next one. Nothing to do for a new plate or the same files.
    """
    record = catalog.plate_by_store(str(store_path))
    store = PlateStore(store_path)
    if record is None or not store.exists() or "shape" not in store.hts_attrs:
        return  # new, or a skeleton that never finished: ingest makes it afresh
    if record.source_fingerprint == fp and store.hts_attrs.get("fingerprint") == fp:
        return
    if record.max_projected != max_project or record.tile_size != tile:
        raise StoreError(f"{store_path}: plate {record.name!r} was ingested with other --tile / --max-project options")
    shape = field_shape(desc, max_project=max_project)
    if tuple(record.shape) != tuple(shape) or record.dtype != desc.dtype:
        raise SourceError(
            f"{desc.name}: the new files make fields of {'x'.join(map(str, shape))} {desc.dtype}, the plate's are "
            f"{'x'.join(map(str, record.shape))} {record.dtype} (a channel, plane or timepoint appeared or went: "
            "watch Z-stacks and time-lapse plates with --planes / --timepoints; ingest the finished folder with "
            "--overwrite)"
        )
    if [c.name for c in desc.channels] != catalog.channel_names(record.plate_id):
        raise SourceError(
            f"{desc.name}: channels changed to {', '.join(c.name for c in desc.channels)} while acquiring"
        )
    known = {
        (r["well"], r["field_index"]): r["source_key"]
        for r in catalog.query("SELECT well, field_index, source_key FROM fields WHERE plate_id = ?", [record.plate_id])
    }
    tables = _layout_tables(record.plate_id, desc)
    fields = tables["fields"]
    pairs = list(zip(fields.column("well").to_pylist(), fields.column("field_index").to_pylist()))
    keys = dict(zip(pairs, fields.column("source_key").to_pylist()))
    for k, key in known.items():
        if keys.get(k) != key:
            raise SourceError(
                f"{desc.name}: field {k[0]}/{k[1]} is not made of the same files as when it was ingested "
                "(files renamed, or a field's sites arrived out of order); ingest the finished folder with --overwrite"
            )
    if store.hts_attrs.get("fingerprint") != fp:
        store.extend(desc, fingerprint=fp, max_project=max_project)
    if record.source_fingerprint != fp:
        catalog.grow_plate(
            record.plate_id,
            plate={
                "plate_type": desc.plate_type.wells,
                "n_rows": desc.plate_type.rows,
                "n_columns": desc.plate_type.columns,
                "source_fingerprint": fp,
            },  # fmt: skip
            acquisition={"n_files": len(desc.files), "size_bytes": sum(f.stat().st_size for f in desc.files)},
            wells=tables["wells"],
            fields=fields.filter(pa.array([k not in known for k in pairs])),
        )


def _open_target(
    catalog: Catalog, store_path: Any, fp: str, *, max_project: bool, tile: int, overwrite: bool
) -> str | None:
    """What the store holds for this source: ``"unchanged"`` (complete), a plate id to resume, or None (start afresh).

    A different plate there (in this catalog, or one hts does not know) is an error unless
    ``overwrite``; replacing it moves the old store aside first, so a file system that refuses
    changes nothing.
    """
    record = catalog.plate_by_store(str(store_path))
    store = PlateStore(store_path)
    if record is not None:
        same = record.source_fingerprint == fp and record.max_projected == max_project and record.tile_size == tile
        if not same and not overwrite:
            raise StoreError(
                f"{store_path} already holds plate {record.name!r} from {record.source_uri}; "
                "pass --overwrite to replace it or --out to choose another store"
            )
        if same and record.status == "complete" and not overwrite:
            return "unchanged"
        if same and not overwrite and store.exists() and store.hts_attrs.get("plate_id") == record.plate_id:
            return record.plate_id
        aside = store.set_aside()
        if aside is None:
            store.remove()
        catalog.delete_plate(record.plate_id)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return None
    if store.occupied():  # a plate of another catalog, or other files: not ours to replace unasked
        if not overwrite:
            name = store.hts_attrs.get("name")
            what = f"plate {name!r} not in catalog {catalog.name}" if name else "data that is not an hts plate"
            raise StoreError(
                f"{store_path} already exists and holds {what}; "
                "pass --overwrite to replace it or --out to choose another store"
            )
        aside = store.set_aside()
        if aside is None:
            store.remove()
        else:
            shutil.rmtree(aside, ignore_errors=True)
    return None


def _write_fields(
    catalog: Catalog,
    reader: PlateReader,
    desc: PlateDescription,
    plate_id: str,
    store_path: Any,
    files: list[Path],
    scheduler: str | None,
    workers: int | None,
    max_project: bool,
    progress: ProgressFn | None,
) -> tuple[int, str]:
    """Write the plate's pending fields on Dask, marking them complete in batches.

    Returns the number written and the acquisition's checksum (computed on a worker meanwhile).
    """
    pending = catalog.pending_fields(plate_id)
    todo = [f for f in desc.fields if (f.well.name, f.index) in pending]
    total = len(desc.fields)
    done = total - len(todo)
    if progress:
        progress(done, total, "resuming" if done else "starting")
    light = dataclasses.replace(desc, fields=[], files=[])
    levels = int(PlateStore(store_path).hts_attrs["levels"])

    def record(items: list[tuple[dict, list[dict]]]) -> None:
        fields = [f for f, _ in items]
        stats = [st for _, rows in items for st in rows]
        catalog.complete_fields(plate_id, pa.Table.from_pylist(fields), pa.Table.from_pylist(stats))

    per_field_s = _SECONDS_PER_PIXEL * math.prod(field_shape(desc, max_project=max_project))
    # a small plate is ingested in threads of this process (worker processes cost more to start)
    with dask_client(scheduler, workers=workers, work_s=per_field_s * len(todo)) as client:
        acq_future = client.submit(checksum, files, pure=False) if client is not None else None
        # whatever completed is recorded, also when interrupted (the batcher flushes on exit)
        with Batcher(record) as batch:
            for field, res in map_fields(
                ingest_field,
                todo,
                client=client,
                args=(reader, light, str(store_path), max_project, levels),
                seconds_per_item=per_field_s,
            ):
                well = field.well.name
                batch.add(
                    (
                        {
                            "well": well,
                            "field_index": field.index,
                            "checksum": res["checksum"],
                            "write_seconds": res["seconds"],
                        },
                        [
                            {"well": well, "field_index": field.index, "channel_index": c, **st}
                            for c, st in enumerate(res["stats"])
                        ],
                    )
                )
                done += 1
                if progress:
                    progress(done, total, well)
        acq_checksum = acq_future.result() if acq_future is not None else checksum(files)
    return len(todo), acq_checksum


# CPU seconds of ingest_field per stored pixel (read, pyramid, compress, write, statistics):
# about 30 ns on a 1024² 3-channel 16-bit field on the 2-core benchmark machine (fourth round;
# ~25 ns since the fifth round's cheaper chunk writes). Only a first estimate, to group small
# fields several to a Dask task until map_fields has measured the finished tasks.
_SECONDS_PER_PIXEL = 30e-9


def ingest_field(
    field: SourceField,
    reader: PlateReader,
    description: PlateDescription,
    store_path: str,
    max_project: bool,
    levels: int | None = None,
) -> dict[str, Any]:
    """Worker task: read one field from the source and write it (with its pyramid) into the store."""
    t0 = time.perf_counter()
    data = reader.read_field(field, description)
    if max_project and data.shape[2] > 1:
        data = data.max(axis=2, keepdims=True)
    data = np.ascontiguousarray(data)
    PlateStore(store_path).write_field(field.well, field.index, data, levels=levels)
    return {
        "checksum": hashlib.sha256(data).hexdigest(),  # hashes the contiguous buffer, no copy
        "stats": channel_stats(data),
        "seconds": time.perf_counter() - t0,
    }


def _set_display_windows(catalog: Catalog, plate_id: str, store: PlateStore, desc: PlateDescription) -> None:
    """Set every field's omero window to the plate's median 1st..99.9th percentile per channel."""
    rows = catalog.query(
        "SELECT channel_index, median(p01) AS lo, median(p999) AS hi FROM field_channel_stats "
        "WHERE plate_id = ? GROUP BY channel_index ORDER BY channel_index",
        [plate_id],
    )
    if len(rows) != len(desc.channels):
        return
    windows = [(r["lo"], max(r["hi"], r["lo"] + 1)) for r in rows]
    store.set_channel_windows(windows, list(catalog.field_paths(plate_id).values()))


def _plate_tables(
    plate_id: str, desc: PlateDescription, store_path: Path, source: Path, fp: str, tile: int, max_project: bool
) -> dict[str, pa.Table]:
    """The catalog rows of a new plate (every field pending): plates, acquisitions, channels, wells, fields."""
    return {
        "plates": _plate_row(plate_id, desc, store_path, source, fp, tile, max_project),
        **_source_tables(plate_id, desc, source),
        **_layout_tables(plate_id, desc),
    }


def _plate_row(
    plate_id: str, desc: PlateDescription, store_path: Path, source: Path, fp: str, tile: int, max_project: bool
) -> pa.Table:
    t, c, z, y, x = field_shape(desc, max_project=max_project)
    px, py, pz = desc.pixel_size_um
    return pa.Table.from_pylist(
        [
            {
                "plate_id": plate_id,
                "name": desc.name,
                "store_uri": str(store_path),
                "plate_type": desc.plate_type.wells,
                "n_rows": desc.plate_type.rows,
                "n_columns": desc.plate_type.columns,
                "source_format": desc.format,
                "source_uri": str(source),
                "source_fingerprint": fp,
                "size_t": t,
                "size_c": c,
                "size_z": z,
                "size_y": y,
                "size_x": x,
                "source_size_z": desc.shape[2],
                "dtype": desc.dtype,
                "pixel_size_x_um": px,
                "pixel_size_y_um": py,
                "pixel_size_z_um": pz,
                "time_interval_s": desc.time_interval_s,
                "max_projected": max_project,
                "tile_size": tile,
                "pyramid_levels": pyramid_levels((y, x)),
                "status": "ingesting",
                "hts_version": __version__,
            }
        ]
    )


def _source_tables(plate_id: str, desc: PlateDescription, source: Path) -> dict[str, pa.Table]:
    inst = desc.instrument
    acquisitions = pa.Table.from_pylist(
        [
            {
                "plate_id": plate_id,
                "acquisition_id": 0,
                "source_uri": str(source),
                "source_format": desc.format,
                "n_files": len(desc.files),
                "size_bytes": sum(f.stat().st_size for f in desc.files),
                "objective": inst.get("objective"),
                "magnification": inst.get("magnification"),
                "numerical_aperture": inst.get("numerical_aperture"),
                "instrument": json.dumps(inst, default=str),
            }
        ]
    )
    channels = pa.Table.from_pylist(
        [
            {
                "plate_id": plate_id,
                "channel_index": i,
                "name": ch.name,
                "emission_nm": ch.emission_nm,
                "excitation_nm": ch.excitation_nm,
                "color": ch.color,
            }
            for i, ch in enumerate(desc.channels)
        ]
    )
    return {"acquisitions": acquisitions, "channels": channels}


def _layout_tables(plate_id: str, desc: PlateDescription) -> dict[str, pa.Table]:
    per_well = desc.fields_per_well
    wells = pa.Table.from_pylist(
        [
            {
                "plate_id": plate_id,
                "well": w.name,
                "row_index": w.row,
                "column_index": w.column,
                "row_name": w.row_name,
                "column_name": w.column_name,
                "n_fields": per_well[w],
            }
            for w in desc.wells
        ]
    )
    fields = pa.Table.from_pylist(
        [
            {
                "plate_id": plate_id,
                "well": f.well.name,
                "field_index": f.index,
                "path": f"{f.well.path}/{f.index}",
                "source_key": json.dumps(f.key) if not isinstance(f.key, int) else str(f.key),
                "source_name": f.name,
                "stage_x_um": f.stage_xy_um[0] if f.stage_xy_um else None,
                "stage_y_um": f.stage_xy_um[1] if f.stage_xy_um else None,
                "status": "pending",
            }
            for f in desc.fields
        ],
        schema=pa.schema(
            [
                ("plate_id", pa.string()),
                ("well", pa.string()),
                ("field_index", pa.int32()),
                ("path", pa.string()),
                ("source_key", pa.string()),
                ("source_name", pa.string()),
                ("stage_x_um", pa.float64()),
                ("stage_y_um", pa.float64()),
                ("status", pa.string()),
            ]
        ),
    )
    return {"wells": wells, "fields": fields}


def _report(plate_id, desc, store_path, catalog, status, written, t0, max_project) -> IngestReport:
    t, c, z, y, x = field_shape(desc, max_project=max_project)
    itemsize = np.dtype(desc.dtype).itemsize
    return IngestReport(
        plate_id=plate_id,
        name=desc.name,
        store=str(store_path),
        catalog=catalog.name,
        status=status,
        wells=len(desc.wells),
        fields_total=len(desc.fields),
        fields_written=written,
        channels=[ch.name for ch in desc.channels],
        seconds=round(time.perf_counter() - t0, 3),
        megabytes_written=round(written * t * c * z * y * x * itemsize / 1e6, 3),
    )
