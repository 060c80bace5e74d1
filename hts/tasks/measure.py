"""Measure: per-cell features of existing segmentation runs, into the ``cells`` table.

``hts segment`` measures as it segments; this task (``hts measure``) measures runs
that were segmented without features, or again with other feature options
(texture, granularity, rod). Fields already measured with the same options are
skipped, so an interrupted measurement resumes; the workers read labels and
channels from the store and write Parquet parts, the client loads them in bulk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hts.catalog import Catalog
from hts.catalog import runs as runs_db
from hts.catalog.locks import plate_locks
from hts.compute.measure import MeasureOptions
from hts.config import load_workspace
from hts.orchestrate.dask import check_workers, is_external
from hts.errors import CatalogError
from hts.tasks.segment import ProgressFn, execute_plans, measure_options, measure_spec, select_plates

__all__ = ["MeasureReport", "measure"]


@dataclass
class MeasureReport:
    plate: str
    run_id: str
    engine: str
    status: str  # "measured", "unchanged"
    fields_measured: int
    cells: int
    features: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(
    plates: list[str] | None = None,
    *,
    db: str | Path | None = None,
    run: str | None = None,
    features: MeasureOptions | dict[str, Any] | bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[MeasureReport]:
    """Measure the current runs of ``plates`` (default: every plate), or only run ``run`` (id or prefix).

    Only fields whose labels are complete are measured; one report per run.
    """
    ws = load_workspace(db=db, scheduler=scheduler)
    catalog = Catalog(db) if db else ws.catalog
    if not is_external(scheduler or ws.scheduler):
        check_workers(workers)
    options = measure_options(features) or MeasureOptions()
    key = options.key()
    plans = []
    records = select_plates(catalog, plates)
    with plate_locks(catalog, [(r.plate_id, r.name) for r in records], command="measure") as lock:
        return _measure(catalog, ws, records, run, options, key, scheduler, workers, progress, lock)


def _measure(catalog, ws, records, run, options, key, scheduler, workers, progress, lock) -> list[MeasureReport]:
    plans = []
    for rec in records:
        runs = runs_db.current_runs(catalog, rec.plate_id, run)
        if not runs:
            continue
        channels = catalog.channel_names(rec.plate_id)
        paths = catalog.field_paths(rec.plate_id)
        for r in runs:
            todo = [(w, i, paths[(w, i)], "measure") for w, i in sorted(runs_db.unmeasured_run_fields(catalog, r["run_id"], key))]
            plans.append({"record": rec, "run": r, "spec": measure_spec(rec, r, channels, options), "todo": todo, "finish": False})
    if not plans:
        where = f"run {run!r}" if run else "the selected plates"
        raise CatalogError(f"{catalog.path}: no segmentation runs for {where} (run `hts segment` first; `hts info PLATE` lists runs)")
    seconds = execute_plans(catalog, plans, scheduler=scheduler or ws.scheduler, workers=workers, progress=progress, lock=lock)
    reports = []
    for plan, s in zip(plans, seconds):
        run_id = plan["run"]["run_id"]
        n = catalog.query("SELECT coalesce(sum(n_cells), 0) AS n FROM run_fields WHERE run_id = ?", [run_id])[0]["n"]
        reports.append(
            MeasureReport(
                plate=plan["record"].name,
                run_id=run_id,
                engine=plan["run"]["engine"],
                status="measured" if plan["todo"] else "unchanged",
                fields_measured=len(plan["todo"]),
                cells=int(n),
                features=json.loads(json.dumps(options.model_dump(mode="json"))),
                seconds=round(s, 3),
            )
        )
    return reports
