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
from typing import Any

from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.catalog.locks import plate_locks
from hts.compute.measure import MeasureOptions
from hts.config import Workspace
from hts.errors import CatalogError
from hts.orchestrate.dask import check_workers, is_external
from hts.tasks.plan import FieldTask, ProgressFn, RunPlan, execute_plans, measure_spec
from hts.tasks.segment import measure_options, select_plates

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
    workspace: Workspace,
    run: str | None = None,
    features: MeasureOptions | dict[str, Any] | bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[MeasureReport]:
    """Measure the current runs of ``plates`` (default: every plate), or only run ``run`` (id or prefix).

    Only fields whose labels are complete are measured; one report per run.
    """
    catalog = workspace.catalog
    if not is_external(workspace.scheduler):
        check_workers(workers)
    options = measure_options(features) or MeasureOptions()
    records = select_plates(catalog, plates)
    with plate_locks(catalog, [(r.plate_id, r.name) for r in records], command="measure") as lock:
        plans = _plan(catalog, records, run, options)
        seconds = execute_plans(
            catalog, plans, scheduler=workspace.scheduler, workers=workers, progress=progress, lock=lock
        )
        return [_report(catalog, plan, s, options) for plan, s in zip(plans, seconds)]


def _plan(catalog: Catalog, records: list[PlateRecord], run: str | None, options: MeasureOptions) -> list[RunPlan]:
    """One plan per current run of the plates: its complete fields not measured with these options."""
    key = options.key()
    plans = []
    for rec in records:
        runs = runs_db.current_runs(catalog, rec.plate_id, run)
        if not runs:
            continue
        channels = catalog.channel_names(rec.plate_id)
        paths = catalog.field_paths(rec.plate_id)
        for r in runs:
            todo = [
                FieldTask(w, i, paths[(w, i)], "measure")
                for w, i in sorted(runs_db.unmeasured_run_fields(catalog, r.run_id, key))
            ]
            plans.append(
                RunPlan(
                    record=rec,
                    run=r,
                    status="measured" if todo else "unchanged",
                    spec=measure_spec(rec, r, channels, options),
                    todo=todo,
                    fields=[(w, i, paths[(w, i)]) for w, i in sorted(paths)],
                )
            )
    if not plans:
        where = f"run {run!r}" if run else "the selected plates"
        raise CatalogError(
            f"{catalog.name}: no segmentation runs for {where} (run `hts segment` first; `hts info PLATE` lists runs)"
        )
    return plans


def _report(catalog: Catalog, plan: RunPlan, seconds: float, options: MeasureOptions) -> MeasureReport:
    run_id = plan.run.run_id
    n = catalog.query("SELECT coalesce(sum(n_cells), 0) AS n FROM run_fields WHERE run_id = ?", [run_id])[0]["n"]
    return MeasureReport(
        plate=plan.record.name,
        run_id=run_id,
        engine=plan.run.engine,
        status=plan.status,
        fields_measured=len(plan.todo),
        cells=int(n),
        features=json.loads(json.dumps(options.model_dump(mode="json"))),
        seconds=round(seconds, 3),
    )
