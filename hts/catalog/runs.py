"""Segmentation runs in the catalog: creation, resume bookkeeping, label ownership."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from hts.catalog.db import Catalog

__all__ = ["find_run", "create_run", "pending_run_fields", "complete_run_fields", "finish_run", "label_owners"]


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


def complete_run_fields(catalog: Catalog, run_id: str, done: list[dict[str, Any]]) -> None:
    """Mark fields complete with timing, worker and per-output object counts (bulk, one transaction)."""
    if not done:
        return
    fields = pa.Table.from_pylist([{k: d[k] for k in ("well", "field_index", "seconds", "worker")} for d in done])
    counts = pa.Table.from_pylist(
        [
            {"run_id": run_id, "well": d["well"], "field_index": d["field_index"], "output": out, "n_objects": n}
            for d in done
            for out, n in d["counts"].items()
        ],
        schema=pa.schema([("run_id", pa.string()), ("well", pa.string()), ("field_index", pa.int32()), ("output", pa.string()), ("n_objects", pa.int32())]),
    )
    with catalog.connect() as con:
        con.execute("BEGIN")
        con.register("_done", fields)
        con.execute(
            "UPDATE run_fields SET status = 'complete', seconds = d.seconds, worker = d.worker, finished_at = current_timestamp "
            "FROM _done d WHERE run_fields.run_id = ? AND run_fields.well = d.well AND run_fields.field_index = d.field_index",
            [run_id],
        )
        con.register("_counts", counts)
        con.execute("INSERT OR REPLACE INTO run_object_counts SELECT * FROM _counts")
        con.execute("COMMIT")


def finish_run(catalog: Catalog, run_id: str) -> None:
    with catalog.connect() as con:
        con.execute("UPDATE runs SET status = 'complete', completed_at = current_timestamp WHERE run_id = ?", [run_id])
