"""Plate QC: Z'-factor and SSMD from the platemap's control wells, and flagged fields and wells.

Reads the catalog views (``well_stats``, ``field_qc``); computes nothing from
pixels. The per-well metric is any ``well_stats`` column: ``cell_count``
(default) or a feature aggregate such as ``Cells_Intensity_NucCytoRatio_GFP_median``
(a bare feature name means its per-well median).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hts.catalog import Catalog
from hts.catalog import runs as runs_db
from hts.catalog.db import sql_ident
from hts.compute.analysis.qc import assay_quality, robust_z, ssmd, z_prime
from hts.config import Workspace
from hts.errors import CatalogError
from hts.tasks.segment import select_plates

__all__ = ["QCReport", "plate_qc", "run_qc", "well_metric"]

# a control well is an outlier when this far (robust z) from its own control group
CONTROL_OUTLIER_Z = 3.5


@dataclass
class QCReport:
    plate: str
    run_id: str
    engine: str
    metric: str
    z_prime: float
    ssmd: float
    quality: str
    positive: dict[str, float]
    negative: dict[str, float]
    fields: int
    flagged_fields: list[dict[str, Any]] = field(default_factory=list)
    flagged_wells: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("z_prime", "ssmd"):
            d[k] = None if not np.isfinite(d[k]) else round(d[k], 4)
        return d


def well_metric(catalog: Catalog, run_id: str, metric: str) -> list[dict[str, Any]]:
    """Rows (well, role, compound, concentration, value) of one well_stats column for a run."""
    cols = {r["column_name"] for r in catalog.query("SELECT column_name FROM (DESCRIBE well_stats)")}
    name = metric if metric in cols else f"{metric}_median"
    if name not in cols:
        near = sorted(c for c in cols if metric.lower() in c.lower())[:5]
        hint = f"; similar: {', '.join(near)}" if near else "; e.g. cell_count, Cells_AreaShape_Area_median"
        raise CatalogError(f"no per-well metric {metric!r} in well_stats{hint}")
    return catalog.query(
        f"SELECT well, row_index, column_index, role, compound, concentration, {sql_ident(name)} AS value FROM well_stats "
        "WHERE run_id = ? ORDER BY row_index, column_index",
        [run_id],
    )


def plate_qc(
    plates: list[str] | None = None,
    *,
    workspace: Workspace,
    run: str | None = None,
    metric: str = "cell_count",
) -> list[QCReport]:
    """QC of each current run of ``plates`` (default: all), or only run ``run`` (id prefix)."""
    catalog = workspace.catalog
    reports = []
    notes = []
    for rec in select_plates(catalog, plates):
        for r in runs_db.current_runs(catalog, rec.plate_id, run, complete=run is None):
            reports.append(run_qc(catalog, rec.name, r.run_id, r.engine, metric))
        notes.append(runs_db.unfinished_note(catalog, rec.plate_id))
    if not reports:
        note = next((n for n in notes if n), "")
        raise CatalogError(f"{catalog.name}: no finished segmentation runs to check (run `hts segment` first){note}")
    return reports


def run_qc(catalog: Catalog, plate: str, run_id: str, engine: str, metric: str) -> QCReport:
    rows = well_metric(catalog, run_id, metric)
    groups = {"positive_control": [], "negative_control": []}
    for row in rows:
        if row["role"] in groups and row["value"] is not None:
            groups[row["role"]].append(row)
    pos = np.array([r["value"] for r in groups["positive_control"]], float)
    neg = np.array([r["value"] for r in groups["negative_control"]], float)
    zp, sm = z_prime(pos, neg), ssmd(pos, neg)

    def summary(a: np.ndarray) -> dict[str, float]:
        return {
            "wells": int(len(a)),
            "mean": float(a.mean()) if len(a) else float("nan"),
            "sd": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
        }

    flagged_wells = []
    for role, members in groups.items():
        z = robust_z([m["value"] for m in members])
        for m, zz in zip(members, z):
            if np.isfinite(zz) and abs(zz) > CONTROL_OUTLIER_Z:
                flagged_wells.append(
                    {"well": m["well"], "reason": f"{role} outlier (robust z {zz:+.1f})", "value": m["value"]}
                )
    qc = catalog.query(
        "SELECT well, field_index, cell_count, focus_z, saturated_fraction_max, flags FROM field_qc WHERE run_id = ? ORDER BY well, field_index",
        [run_id],
    )
    flagged_fields = [r for r in qc if r["flags"]]
    per_well: dict[str, list[int]] = {}
    for r in qc:
        per_well.setdefault(r["well"], [0, 0])
        per_well[r["well"]][0] += 1
        per_well[r["well"]][1] += bool(r["flags"])
    for well, (n, bad) in per_well.items():
        if bad * 2 > n:
            flagged_wells.append({"well": well, "reason": f"{bad} of {n} fields flagged", "value": None})
    return QCReport(
        plate=plate,
        run_id=run_id,
        engine=engine,
        metric=metric,
        z_prime=zp,
        ssmd=sm,
        quality=assay_quality(zp),
        positive=summary(pos),
        negative=summary(neg),
        fields=len(qc),
        flagged_fields=flagged_fields,
        flagged_wells=sorted(flagged_wells, key=lambda w: w["well"]),
    )
