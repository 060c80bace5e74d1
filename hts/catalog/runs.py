"""Segmentation runs in the catalog: the run state machine, resume bookkeeping, label ownership.

A run is one engine with one set of parameters, channels, model and pixel size over
a plate's fields (its identity, ``run_key``, is a hash of all that). Its life:

- :func:`open_run` decides, for the run a command asks for: **new** (no run with
  that key: created with every field ``pending``, taking over its label names from
  the runs that wrote them, which become ``replaced``), **resumed** (a run with the
  key exists and is unfinished: its pending fields are what is left), **unchanged**
  (the run is complete: nothing to segment), or **replaced** anew with ``overwrite``.
  Labels another run owns are refused unless ``overwrite``.
- :func:`complete_run_fields` records finished fields in batches (labels, object
  counts and cells land together or not at all); :func:`fail_run` records why a run
  stopped (it stays resumable); :func:`finish_run` marks it complete.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from hts.catalog import cells as cells_db
from hts.catalog.db import Catalog
from hts.errors import EngineError

__all__ = [
    "Run",
    "FieldResult",
    "open_run",
    "find_run",
    "create_run",
    "pending_run_fields",
    "unmeasured_run_fields",
    "complete_run_fields",
    "finish_run",
    "label_owners",
    "current_runs",
    "unfinished_note",
    "fail_run",
    "run_labels",
    "set_run_features",
]

_JSON = ("params", "channels", "labels", "features")


@dataclass(frozen=True)
class Run:
    """One row of the ``runs`` table."""

    run_id: str
    plate_id: str
    run_key: str
    engine: str
    engine_version: str
    backend: str
    device: str
    params: dict[str, Any]
    channels: dict[str, str]  # role -> channel name
    model_sha256: str | None
    labels: dict[str, str]  # output -> label image name
    wells: str | None
    tile_size: int
    halo: int
    pixel_size_um: float
    pixel_size_source: str | None
    status: str  # running, complete, replaced
    hts_version: str
    error: str | None = None
    features: dict[str, Any] | None = None
    created_at: Any = None
    completed_at: Any = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        for k in _JSON:
            if isinstance(values.get(k), str):
                values[k] = json.loads(values[k])
        return cls(**values)

    def _insert_row(self) -> dict[str, Any]:
        row = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("error", "features", "created_at", "completed_at")
        }
        for k in ("params", "channels", "labels"):
            row[k] = json.dumps(row[k], sort_keys=True)
        return row


@dataclass
class FieldResult:
    """What a finished field task reports, as the catalog records it.

    ``counts`` (objects per output) and ``checks`` (the sanity checks the field
    failed, :mod:`hts.compute.segment.sanity`) when it segmented; ``n_cells``, ``part``
    (its cells' Parquet part, None when it has none) and ``cells`` (those rows, loaded
    instead of reading the part back) when it measured.
    """

    well: str
    field_index: int
    seconds: float
    worker: str
    counts: dict[str, int] | None = None
    checks: list[dict[str, Any]] | None = None
    n_cells: int | None = None
    part: str | None = None
    cells: pa.Table | None = None


def open_run(
    catalog: Catalog,
    draft: Run,
    fields: list[tuple[str, int]],
    *,
    overwrite: bool = False,
    plate_name: str = "",
    on_replaced: Callable[[str], None] | None = None,
) -> tuple[Run, str]:
    """The run that does ``draft``'s work and its state: ``"segmented"`` (new), ``"resumed"`` or ``"unchanged"``.

    ``draft`` is the run as it would be created (its ``run_key`` decides identity).
    A new run takes over its label names: runs that own one of them (and, with
    ``overwrite``, an existing run of the same key) become replaced, their cells
    deleted, and ``on_replaced(run_id)`` is called for each (to remove its files).
    Labels owned by another run are an :class:`~hts.errors.EngineError` unless ``overwrite``.
    """
    existing = find_run(catalog, draft.plate_id, draft.run_key)
    if existing is not None and not overwrite:
        if add_run_fields(catalog, existing.run_id, fields):  # the plate grew (`hts watch`): the run goes on
            existing = dataclasses.replace(existing, status="running")
        return existing, "unchanged" if existing.status == "complete" else "resumed"
    owners = label_owners(catalog, draft.plate_id)
    conflicts = {
        name: o for name, o in owners.items() if name in draft.labels.values() and o["run_key"] != draft.run_key
    }
    if conflicts and not overwrite:
        name = next(n for n in draft.labels.values() if n in conflicts)
        o = conflicts[name]
        raise EngineError(
            f"plate {plate_name or draft.plate_id} already has labels {name!r} from run {o['run_id'][:8]} (engine {o['engine']}); "
            "pass --overwrite to replace them or --label-suffix NAME to keep both"
        )
    replaces = sorted({o["run_id"] for o in conflicts.values()} | ({existing.run_id} if existing else set()))
    create_run(catalog, draft, fields, replaces=replaces)
    for old in replaces:
        if on_replaced is not None:
            on_replaced(old)
    return draft, "segmented"


def add_run_fields(catalog: Catalog, run_id: str, fields: list[tuple[str, int]]) -> int:
    """Add the fields a run does not cover yet as pending (a plate still being acquired, ``hts watch``);
    a complete run with new fields is running again. Only fields whose pixels are written (status
    complete) are added; the catalog is opened for writing only when there are some. How many were added."""
    incoming = pa.table({"well": [w for w, _ in fields], "field_index": pa.array([i for _, i in fields], pa.int32())})
    missing = (
        "SELECT ? AS run_id, f.well, f.field_index, 'pending' AS status FROM _f f "
        "JOIN runs r ON r.run_id = ? "
        "JOIN fields x ON x.plate_id = r.plate_id AND x.well = f.well AND x.field_index = f.field_index "
        "AND x.status = 'complete' "
        "ANTI JOIN (SELECT well, field_index FROM run_fields WHERE run_id = ?) rf "
        "ON rf.well = f.well AND rf.field_index = f.field_index"
    )
    with catalog.connect(read_only=True) as con:
        con.register("_f", incoming)
        try:
            n = con.execute(f"SELECT count(*) FROM ({missing})", [run_id, run_id, run_id]).fetchall()[0][0]
        finally:
            con.unregister("_f")
    if not n:
        return 0
    with catalog.connect() as con:
        con.register("_f", incoming)
        try:
            con.execute("BEGIN")
            n = con.execute(
                f"INSERT INTO run_fields (run_id, well, field_index, status) SELECT * FROM ({missing})",
                [run_id, run_id, run_id],
            ).fetchall()[0][0]
            con.execute(
                "UPDATE runs SET status = 'running', completed_at = NULL WHERE run_id = ? AND status = 'complete'",
                [run_id],
            )
            con.execute("COMMIT")
        finally:
            con.unregister("_f")
    return int(n)


def find_run(catalog: Catalog, plate_id: str, run_key: str) -> Run | None:
    """The current (not replaced) run of a plate with this identity."""
    rows = catalog.query(
        "SELECT * FROM runs WHERE plate_id = ? AND run_key = ? AND status != 'replaced' ORDER BY created_at DESC",
        [plate_id, run_key],
    )
    return Run.from_row(rows[0]) if rows else None


def label_owners(catalog: Catalog, plate_id: str) -> dict[str, dict[str, Any]]:
    """label name -> the run that wrote it (engine, run id, status)."""
    rows = catalog.query(
        "SELECT l.label_name, r.run_id, r.engine, r.status, r.run_key FROM plate_labels l "
        "JOIN runs r USING (run_id) WHERE l.plate_id = ?",
        [plate_id],
    )
    return {r["label_name"]: r for r in rows}


def create_run(catalog: Catalog, run: Run, fields: list[tuple[str, int]], *, replaces: list[str]) -> None:
    """Insert a run with its fields pending; take over its label names (marking ``replaces`` runs replaced)."""
    row = run._insert_row()
    with catalog.connect() as con:
        con.execute("BEGIN")
        for old in replaces:
            con.execute("UPDATE runs SET status = 'replaced' WHERE run_id = ?", [old])
        cells_db.delete_runs(con, replaces)
        con.register("_run", pa.Table.from_pylist([row]))
        cols = ", ".join(row)
        con.execute(f"INSERT INTO runs ({cols}) SELECT {cols} FROM _run")
        con.register(
            "_rf",
            pa.table(
                {
                    "run_id": [run.run_id] * len(fields),
                    "well": [w for w, _ in fields],
                    "field_index": pa.array([i for _, i in fields], pa.int32()),
                    "status": ["pending"] * len(fields),
                }
            ),
        )
        con.execute("INSERT INTO run_fields (run_id, well, field_index, status) SELECT * FROM _rf")
        for name in run.labels.values():  # (DuckLake has no keys to INSERT OR REPLACE on)
            con.execute("DELETE FROM plate_labels WHERE plate_id = ? AND label_name = ?", [run.plate_id, name])
            con.execute(
                "INSERT INTO plate_labels (plate_id, label_name, run_id) VALUES (?, ?, ?)",
                [run.plate_id, name, run.run_id],
            )
        con.execute("COMMIT")


def pending_run_fields(catalog: Catalog, run_id: str) -> set[tuple[str, int]]:
    rows = catalog.query("SELECT well, field_index FROM run_fields WHERE run_id = ? AND status = 'pending'", [run_id])
    return {(r["well"], r["field_index"]) for r in rows}


def unmeasured_run_fields(catalog: Catalog, run_id: str, measured_key: str) -> set[tuple[str, int]]:
    """Fields whose labels are written but whose cells were not measured with ``measured_key``."""
    rows = catalog.query(
        "SELECT well, field_index FROM run_fields WHERE run_id = ? AND status = 'complete' "
        "AND measured_key IS DISTINCT FROM ?",
        [run_id, measured_key],
    )
    return {(r["well"], r["field_index"]) for r in rows}


def current_runs(catalog: Catalog, plate_id: str, prefix: str | None = None, *, complete: bool = False) -> list[Run]:
    """The runs of a plate whose labels are current (not replaced), oldest first; only ids starting with ``prefix``.

    ``complete``: only finished runs (what report, export and qc use unless a run is named).
    """
    rows = catalog.query(
        "SELECT * FROM runs WHERE plate_id = ? AND status != 'replaced' ORDER BY created_at", [plate_id]
    )
    runs = [Run.from_row(r) for r in rows]
    return [r for r in runs if (not prefix or r.run_id.startswith(prefix)) and (not complete or r.status == "complete")]


def unfinished_note(catalog: Catalog, plate_id: str) -> str:
    """Why a plate has no complete run: its unfinished runs, failed ones with their error ('' when it has none)."""
    rows = [r for r in current_runs(catalog, plate_id) if r.status != "complete"]
    if not rows:
        return ""
    r = rows[-1]
    what = f"failed: {r.error}" if r.error else "unfinished"
    return f"; run {r.run_id[:8]} ({r.engine}) is {what}; run the same `hts segment` again to finish it, or name it with --run"


def fail_run(catalog: Catalog, run_id: str, reason: str) -> None:
    """Record why a run stopped (it stays resumable: the same command finishes it)."""
    with catalog.connect() as con:
        con.execute(
            "UPDATE runs SET error = ?, failed_at = current_timestamp WHERE run_id = ? AND status = 'running'",
            [reason[:2000], run_id],
        )


def run_labels(run: Run | dict[str, Any]) -> dict[str, str]:
    """Output -> label image name of a run (a raw catalog row stores them as JSON)."""
    labels = run.labels if isinstance(run, Run) else run["labels"]
    return labels if isinstance(labels, dict) else json.loads(labels)


def complete_run_fields(
    catalog: Catalog, run_id: str, done: list[FieldResult], *, measured_key: str | None = None
) -> None:
    """Record finished field tasks of a run, in one transaction (bulk).

    Labels complete, object counts and the field's cells land together or not at all.
    """
    if not done:
        return
    segmented = [d for d in done if d.counts is not None]
    measured = [d for d in done if d.n_cells is not None]
    fields = (
        pa.Table.from_pylist(
            [
                {
                    "well": d.well,
                    "field_index": d.field_index,
                    "seconds": d.seconds,
                    "worker": d.worker,
                    "checks": json.dumps(d.checks, sort_keys=True) if d.checks else None,
                }
                for d in segmented
            ],
            schema=pa.schema(
                [
                    ("well", pa.string()),
                    ("field_index", pa.int32()),
                    ("seconds", pa.float64()),
                    ("worker", pa.string()),
                    ("checks", pa.string()),
                ]
            ),
        )
        if segmented
        else None
    )
    counts = pa.Table.from_pylist(
        [
            {"run_id": run_id, "well": d.well, "field_index": d.field_index, "output": out, "n_objects": n}
            for d in segmented
            for out, n in d.counts.items()
        ],
        schema=pa.schema(
            [
                ("run_id", pa.string()),
                ("well", pa.string()),
                ("field_index", pa.int32()),
                ("output", pa.string()),
                ("n_objects", pa.int32()),
            ]
        ),
    )
    with catalog.connect() as con:
        con.execute("BEGIN")
        if fields is not None:
            con.register("_done", fields)
            con.execute(
                "UPDATE run_fields SET status = 'complete', seconds = d.seconds, worker = d.worker, checks = d.checks, "
                "finished_at = current_timestamp "
                "FROM _done d WHERE run_fields.run_id = ? AND run_fields.well = d.well AND run_fields.field_index = d.field_index",
                [run_id],
            )
            con.register("_counts", counts)
            con.execute(
                "DELETE FROM run_object_counts USING _counts c WHERE run_object_counts.run_id = c.run_id "
                "AND run_object_counts.well = c.well AND run_object_counts.field_index = c.field_index "
                "AND run_object_counts.output = c.output"
            )
            con.execute("INSERT INTO run_object_counts SELECT * FROM _counts")
        if measured:
            con.register(
                "_measured",
                pa.table(
                    {
                        "well": [d.well for d in measured],
                        "field_index": pa.array([d.field_index for d in measured], pa.int32()),
                        "n_cells": pa.array([d.n_cells for d in measured], pa.int32()),
                    }
                ),
            )
            # fields measured before (a re-measure) lose their old cells first
            had = con.execute(
                "SELECT f.well, f.field_index FROM run_fields f JOIN _measured m USING (well, field_index) "
                "WHERE f.run_id = ? AND f.n_cells IS NOT NULL",
                [run_id],
            ).fetchall()
            cells_db.delete_fields(con, run_id, had)
            # the cells the workers returned go in from memory; items that only name their part are read back
            cells_db.load_tables(con, [d.cells for d in measured if d.cells is not None])
            cells_db.load_parts(con, [d.part for d in measured if d.part and d.cells is None])
            con.execute(
                "UPDATE run_fields SET measured_key = ?, n_cells = m.n_cells FROM _measured m "
                "WHERE run_fields.run_id = ? AND run_fields.well = m.well AND run_fields.field_index = m.field_index",
                [measured_key, run_id],
            )
        con.execute("COMMIT")


def set_run_features(catalog: Catalog, run_id: str, features: dict[str, Any]) -> None:
    with catalog.connect() as con:
        con.execute("UPDATE runs SET features = ? WHERE run_id = ?", [json.dumps(features, sort_keys=True), run_id])


def finish_run(catalog: Catalog, run_id: str) -> None:
    with catalog.connect() as con:
        con.execute(
            "UPDATE runs SET status = 'complete', completed_at = current_timestamp, error = NULL, failed_at = NULL "
            "WHERE run_id = ?",
            [run_id],
        )


def field_checks(catalog: Catalog, run_id: str) -> list[dict[str, Any]]:
    """The failed sanity checks of a run's fields: ``{"well", "field_index", "check", ...}`` one per check and field."""
    rows = catalog.query(
        "SELECT well, field_index, checks FROM run_fields WHERE run_id = ? AND checks IS NOT NULL ORDER BY well, field_index",
        [run_id],
    )
    return [{"well": r["well"], "field_index": r["field_index"], **c} for r in rows for c in json.loads(r["checks"])]


def estimated_pixel_size(
    catalog: Catalog, plate_id: str, engine: str, model_sha256: str | None, channels: dict[str, str]
) -> float | None:
    """The pixel size an earlier run of the same engine, model and channels estimated for this plate (None: none did)."""
    rows = catalog.query(
        "SELECT pixel_size_um, model_sha256, channels FROM runs WHERE plate_id = ? AND engine = ? AND pixel_size_source = 'estimated' "
        "ORDER BY created_at DESC",
        [plate_id, engine],
    )
    for r in rows:
        if r["model_sha256"] == model_sha256 and json.loads(r["channels"]) == channels:
            return float(r["pixel_size_um"])
    return None
