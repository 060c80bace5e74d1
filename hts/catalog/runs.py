"""Segmentation runs in the catalog: creation, resume bookkeeping, label ownership."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from hts.catalog import cells as cells_db
from hts.catalog.db import Catalog

__all__ = [
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


def find_run(catalog: Catalog, plate_id: str, run_key: str) -> dict[str, Any] | None:
    rows = catalog.query(
        "SELECT * FROM runs WHERE plate_id = ? AND run_key = ? AND status != 'replaced' ORDER BY created_at DESC",
        [plate_id, run_key],
    )
    return rows[0] if rows else None


def label_owners(catalog: Catalog, plate_id: str) -> dict[str, dict[str, Any]]:
    """label name -> the run that wrote it (engine, run id, status)."""
    rows = catalog.query(
        "SELECT l.label_name, r.run_id, r.engine, r.status, r.run_key FROM plate_labels l "
        "JOIN runs r USING (run_id) WHERE l.plate_id = ?",
        [plate_id],
    )
    return {r["label_name"]: r for r in rows}


def create_run(catalog: Catalog, run: dict[str, Any], fields: list[tuple[str, int]], *, replaces: list[str]) -> None:
    """Insert a run with its fields pending; take over its label names (marking ``replaces`` runs replaced)."""
    row = dict(run)
    for k in ("params", "channels", "labels"):
        row[k] = json.dumps(row[k], sort_keys=True)
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
                    "run_id": [run["run_id"]] * len(fields),
                    "well": [w for w, _ in fields],
                    "field_index": pa.array([i for _, i in fields], pa.int32()),
                    "status": ["pending"] * len(fields),
                }
            ),
        )
        con.execute("INSERT INTO run_fields (run_id, well, field_index, status) SELECT * FROM _rf")
        for name in run["labels"].values():
            con.execute(
                "INSERT OR REPLACE INTO plate_labels (plate_id, label_name, run_id) VALUES (?, ?, ?)",
                [run["plate_id"], name, run["run_id"]],
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


def current_runs(catalog: Catalog, plate_id: str, prefix: str | None = None, *, complete: bool = False) -> list[dict[str, Any]]:
    """The runs of a plate whose labels are current (not replaced), oldest first; only ids starting with ``prefix``.

    ``complete``: only finished runs (what report, export and qc use unless a run is named).
    """
    rows = catalog.query(
        "SELECT * FROM runs WHERE plate_id = ? AND status != 'replaced' ORDER BY created_at", [plate_id]
    )
    return [r for r in rows if (not prefix or r["run_id"].startswith(prefix)) and (not complete or r["status"] == "complete")]


def unfinished_note(catalog: Catalog, plate_id: str) -> str:
    """Why a plate has no complete run: its unfinished runs, failed ones with their error ('' when it has none)."""
    rows = [r for r in current_runs(catalog, plate_id) if r["status"] != "complete"]
    if not rows:
        return ""
    r = rows[-1]
    what = f"failed: {r['error']}" if r.get("error") else "unfinished"
    return f"; run {r['run_id'][:8]} ({r['engine']}) is {what}; run the same `hts segment` again to finish it, or name it with --run"


def fail_run(catalog: Catalog, run_id: str, reason: str) -> None:
    """Record why a run stopped (it stays resumable: the same command finishes it)."""
    with catalog.connect() as con:
        con.execute("UPDATE runs SET error = ?, failed_at = current_timestamp WHERE run_id = ? AND status = 'running'",
                    [reason[:2000], run_id])


def run_labels(run: dict[str, Any]) -> dict[str, str]:
    """Output -> label image name of a run (a catalog row stores them as JSON)."""
    labels = run["labels"]
    return labels if isinstance(labels, dict) else json.loads(labels)


def complete_run_fields(catalog: Catalog, run_id: str, done: list[dict[str, Any]], *, measured_key: str | None = None) -> None:
    """Record finished field tasks of a run, in one transaction (bulk).

    Each item has ``well``, ``field_index``, ``seconds``, ``worker``; items that
    segmented also ``counts`` (objects per output) and optionally ``checks`` (the
    sanity checks the field failed, :mod:`hts.compute.segment.sanity`), items that measured also
    ``part`` (the Parquet part of its cells, or None when it has none), ``n_cells``
    and optionally ``cells`` (the part's rows as an Arrow table, loaded instead of
    reading the part back).
    Labels complete, object counts and the field's cells land together or not at all.
    """
    if not done:
        return
    segmented = [d for d in done if "counts" in d]
    measured = [d for d in done if "n_cells" in d]
    fields = pa.Table.from_pylist(
        [{**{k: d[k] for k in ("well", "field_index", "seconds", "worker")},
          "checks": json.dumps(d["checks"], sort_keys=True) if d.get("checks") else None} for d in segmented],
        schema=pa.schema([("well", pa.string()), ("field_index", pa.int32()), ("seconds", pa.float64()),
                          ("worker", pa.string()), ("checks", pa.string())]),
    ) if segmented else None
    counts = pa.Table.from_pylist(
        [
            {"run_id": run_id, "well": d["well"], "field_index": d["field_index"], "output": out, "n_objects": n}
            for d in segmented
            for out, n in d["counts"].items()
        ],
        schema=pa.schema([("run_id", pa.string()), ("well", pa.string()), ("field_index", pa.int32()), ("output", pa.string()), ("n_objects", pa.int32())]),
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
            con.execute("INSERT OR REPLACE INTO run_object_counts SELECT * FROM _counts")
        if measured:
            con.register(
                "_measured",
                pa.table(
                    {
                        "well": [d["well"] for d in measured],
                        "field_index": pa.array([d["field_index"] for d in measured], pa.int32()),
                        "n_cells": pa.array([d["n_cells"] for d in measured], pa.int32()),
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
            cells_db.load_tables(con, [d["cells"] for d in measured if d.get("cells") is not None])
            cells_db.load_parts(con, [d["part"] for d in measured if d.get("part") and d.get("cells") is None])
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
        con.execute("UPDATE runs SET status = 'complete', completed_at = current_timestamp, error = NULL, failed_at = NULL "
                    "WHERE run_id = ?", [run_id])


def field_checks(catalog: Catalog, run_id: str) -> list[dict[str, Any]]:
    """The failed sanity checks of a run's fields: ``{"well", "field_index", "check", ...}`` one per check and field."""
    rows = catalog.query(
        "SELECT well, field_index, checks FROM run_fields WHERE run_id = ? AND checks IS NOT NULL ORDER BY well, field_index",
        [run_id],
    )
    return [{"well": r["well"], "field_index": r["field_index"], **c} for r in rows for c in json.loads(r["checks"])]


def estimated_pixel_size(catalog: Catalog, plate_id: str, engine: str, model_sha256: str | None, channels: dict[str, str]) -> float | None:
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
