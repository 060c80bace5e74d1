"""What the catalog knows about plates: listings and one plate in detail."""

from __future__ import annotations

import json
from typing import Any

from hts.config import Workspace
from hts.errors import CatalogError

__all__ = ["list_plates", "plate_info", "run_history"]


def list_plates(*, workspace: Workspace) -> list[dict[str, Any]]:
    """One row per plate: name, id, wells, fields (complete/total), channels, status, store."""
    catalog = workspace.catalog
    if not catalog.exists():
        return []
    return catalog.query(
        """
        SELECT p.name, p.plate_id, p.plate_type, p.status, p.store_uri,
               (SELECT count(*) FROM wells w WHERE w.plate_id = p.plate_id) AS wells,
               (SELECT count(*) FROM fields f WHERE f.plate_id = p.plate_id) AS fields,
               (SELECT count(*) FROM fields f WHERE f.plate_id = p.plate_id AND f.status = 'complete') AS fields_complete,
               (SELECT string_agg(name, ', ' ORDER BY channel_index) FROM channels c WHERE c.plate_id = p.plate_id) AS channels
        FROM plates p ORDER BY p.name
        """
    )


def plate_info(plate: str | None = None, *, workspace: Workspace) -> dict[str, Any]:
    """Everything about one plate (by name, id or store path; the only plate when None)."""
    catalog = workspace.catalog
    if plate is None:
        plates = catalog.plates() if catalog.exists() else []
        if len(plates) != 1:
            names = ", ".join(p.name for p in plates) or "none"
            raise CatalogError(f"name a plate: {catalog.name} holds {len(plates)} plates ({names})")
        record = plates[0]
    else:
        record = catalog.find_plate(plate)
    pid = [record.plate_id]
    plate_row = catalog.query("SELECT * FROM plates WHERE plate_id = ?", pid)[0]
    acq = catalog.query("SELECT * FROM acquisitions WHERE plate_id = ? ORDER BY acquisition_id", pid)
    for a in acq:
        a["instrument"] = json.loads(a["instrument"]) if a.get("instrument") else {}
    wells = catalog.query(
        """
        SELECT w.well, w.row_index, w.column_index, w.n_fields,
               count(*) FILTER (WHERE f.status = 'complete') AS fields_complete,
               pm.compound, pm.concentration, pm.unit, pm.role
        FROM wells w
        JOIN fields f USING (plate_id, well)
        LEFT JOIN platemap pm USING (plate_id, well)
        WHERE w.plate_id = ?
        GROUP BY ALL ORDER BY w.row_index, w.column_index
        """,
        pid,
    )
    channels = catalog.query(
        "SELECT channel_index, name, emission_nm, excitation_nm, color FROM channels WHERE plate_id = ? ORDER BY channel_index",
        pid,
    )
    runs = catalog.query(
        """
        SELECT r.run_id, r.engine, r.status, r.error, r.pixel_size_um, r.pixel_size_source, r.created_at, r.completed_at,
               (SELECT count(*) FROM run_fields f WHERE f.run_id = r.run_id AND f.status = 'complete') AS fields_complete,
               (SELECT count(*) FROM run_fields f WHERE f.run_id = r.run_id) AS fields,
               (SELECT coalesce(sum(n_cells), 0) FROM run_fields f WHERE f.run_id = r.run_id) AS cells,
               (SELECT count(*) FROM run_fields f WHERE f.run_id = r.run_id AND f.checks IS NOT NULL) AS fields_flagged,
               r.labels
        FROM runs r WHERE r.plate_id = ? AND r.status != 'replaced' ORDER BY r.created_at
        """,
        pid,
    )
    for r in runs:
        r["labels"] = json.loads(r["labels"]) if r.get("labels") else {}
        r["state"] = "failed" if r["error"] else r["status"]
    return {
        "plate": plate_row,
        "runs": runs,
        "acquisitions": acq,
        "channels": channels,
        "wells": wells,
        "fields_total": sum(w["n_fields"] for w in wells),
        "fields_complete": sum(w["fields_complete"] for w in wells),
        "annotated_wells": sum(1 for w in wells if w["role"] is not None),
    }


def run_history(plate: str | None = None, *, workspace: Workspace) -> list[dict[str, Any]]:
    """Every segmentation run, oldest first, replaced and failed ones included: plate, run id, engine,
    state, when it was created and completed, fields, cells. On a DuckLake catalog each completed run
    also names the snapshot at which it completed (``hts query --as-of RUN`` reads that state)."""
    catalog = workspace.catalog
    if not catalog.exists():
        return []
    where, params = "", []
    if plate is not None:
        where, params = "WHERE r.plate_id = ?", [catalog.find_plate(plate).plate_id]
    rows = catalog.query(
        f"""
        SELECT p.name AS plate, r.run_id, r.engine, r.status, r.error, r.created_at, r.completed_at,
               (SELECT count(*) FROM run_fields f WHERE f.run_id = r.run_id) AS fields,
               (SELECT coalesce(sum(n_cells), 0) FROM run_fields f WHERE f.run_id = r.run_id) AS cells
        FROM runs r JOIN plates p ON p.plate_id = r.plate_id {where}
        ORDER BY r.created_at
        """,
        params,
    )
    done = (
        catalog.snapshots_of_runs([r["run_id"] for r in rows if r["status"] != "running"])
        if catalog.keeps_snapshots
        else {}
    )
    for r in rows:
        r["state"] = "failed" if r["error"] else r["status"]
        if catalog.keeps_snapshots:
            r["snapshot"] = done.get(r["run_id"])
    return rows
