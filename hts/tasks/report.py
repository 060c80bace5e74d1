"""Plate reports: heatmaps of per-well values, segmentation overlays, dose-response, one HTML page.

Everything comes from the catalog views and the plate store; pictures are drawn
by :mod:`hts.reports`. Files written under ``out`` (default ``reports/<plate>/``)::

    heatmap_<value>.png       one per value (cell count, feature medians, a query column)
    dose_<value>.png          dose-response with 4PL fits (when the platemap has concentrations)
    overlay_<well>_<field>.png   the chosen fields with their label outlines
    activity.png, activity_hits.png   phenotypic activity (when `hts profile` + `hts activity` covered the run)
    report.html               all of the above with the layout, QC and fit tables, self-contained
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hts.catalog import Catalog, PlateRecord
from hts.catalog import runs as runs_db
from hts.catalog.runs import Run
from hts.config import Workspace
from hts.errors import CatalogError
from hts.store import PlateStore
from hts.tasks.outputs import check_output_path
from hts.tasks.qc import run_qc, well_metric

__all__ = ["ReportResult", "report"]


@dataclass
class ReportResult:
    plate: str
    run_id: str
    out: str
    html: str
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _slug(s: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_")[:80] or "value"


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def _sql_values(workspace: Workspace, sql: str) -> tuple[str, list[dict[str, Any]]]:
    """A query returning a ``well`` column and one numeric column -> (column name, rows)."""
    from hts.tasks.query import run_query

    table = run_query(sql, workspace=workspace)
    cols = table.column_names
    if "well" not in cols:
        raise CatalogError(f"--sql must return a 'well' column; it returned {', '.join(cols)}")
    numeric = [c for c in cols if c != "well" and _is_number(table.schema.field(c).type)]
    if not numeric:
        raise CatalogError("--sql must return a numeric column besides 'well'")
    name = numeric[0]
    return name, [{"well": r["well"], "value": r[name]} for r in table.to_pylist()]


def _is_number(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _pick_fields(catalog: Catalog, run_id: str, values: dict[str, float], n: int) -> list[tuple[str, int]]:
    """Default overlay fields: a negative and a positive control, then the wells with the lowest and highest value."""
    rows = catalog.query(
        "SELECT well, role FROM well_stats WHERE run_id = ? ORDER BY row_index, column_index", [run_id]
    )
    picked: list[str] = []
    for role in ("negative_control", "positive_control"):
        w = next((r["well"] for r in rows if r["role"] == role), None)
        if w and w not in picked:
            picked.append(w)
    ranked = sorted((w for w, v in values.items() if v == v), key=lambda w: values[w])
    for w in [*ranked[:1], *ranked[-1:], *ranked[1:]]:
        if len(picked) >= n:
            break
        if w not in picked:
            picked.append(w)
    return [(w, 0) for w in picked[:n]]


class _Page:
    """The report being written: the HTML page and the PNG files beside it."""

    def __init__(self, out_dir: Path, title: str):
        from hts.reports import HtmlReport

        self.out_dir = out_dir
        self.html = HtmlReport(title)
        self.images: list[str] = []

    def save(self, name: str, png: bytes) -> bytes:
        path = self.out_dir / name
        path.write_bytes(png)
        self.images.append(str(path))
        return png


def report(
    plate: str,
    *,
    workspace: Workspace,
    run: str | None = None,
    values: list[str] | None = None,
    sql: str | None = None,
    fields: list[str] | None = None,
    n_overlays: int = 4,
    out: str | Path | None = None,
    metric: str | None = None,
) -> ReportResult:
    """Write the report of one plate's segmentation run (default: its latest complete run).

    ``values``: per-well values to map (``cell_count`` and/or well_stats columns or
    features, a feature meaning its per-well median); ``sql``: a query returning
    ``well`` and a numeric column, mapped as well; ``fields``: overlay fields as
    ``B03`` or ``B03/1`` (default: controls and extreme wells); ``metric``: the
    assay metric the QC table leads with (default the first value).
    """
    catalog = workspace.catalog
    rec = catalog.find_plate(plate)
    r = _report_run(catalog, rec, run)
    out_dir = Path(out) if out else Path("reports") / _slug(rec.name)
    check_output_path(out_dir, catalog, plates_dir=workspace.plates_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    maps: list[tuple[str, list[dict[str, Any]]]] = [
        (v, well_metric(catalog, r.run_id, v)) for v in values or ["cell_count"]
    ]
    n_metrics = len(maps)  # well_stats values; the --sql column (not a catalog metric) comes after them
    if sql:
        maps.append(_sql_values(workspace, sql))
    page = _Page(out_dir, f"{rec.name} — {r.engine} run {r.run_id[:8]}")
    _summary_section(page, catalog, rec, r)
    # QC of the assay metric first (--metric, else the first value), then of the other mapped values
    chosen = metric or maps[0][0]
    qc_names = [chosen] + [name for name, _ in maps[:n_metrics] if name != chosen]
    qcs = [run_qc(catalog, rec.name, r.run_id, r.engine, name) for name in qc_names]
    _qc_section(page, qcs)
    _maps_section(page, catalog, rec, maps, flags={w["well"]: w["reason"] for w in qcs[0].flagged_wells})
    _dose_section(page, catalog, rec, r, maps)
    if fields:
        picked = [(w.upper(), int(i or 0)) for w, _, i in (f.partition("/") for f in fields)]
    else:
        picked = _pick_fields(catalog, r.run_id, {row["well"]: _finite(row["value"]) for row in maps[0][1]}, n_overlays)
    _overlay_section(page, catalog, rec, r, picked)
    _activity_section(page, workspace, r)
    html_path = page.html.write(out_dir / "report.html")
    return ReportResult(plate=rec.name, run_id=r.run_id, out=str(out_dir), html=str(html_path), images=page.images)


def _report_run(catalog: Catalog, rec: PlateRecord, run: str | None) -> Run:
    """The run a report shows: ``run`` (id prefix), else the plate's latest complete run."""
    runs = runs_db.current_runs(catalog, rec.plate_id, run, complete=run is None)
    if not runs:
        note = runs_db.unfinished_note(catalog, rec.plate_id)
        if run is None and note:
            raise CatalogError(f"plate {rec.name} has no finished segmentation run{note}")
        raise CatalogError(
            f"plate {rec.name} has no segmentation run{f' {run!r}' if run else ''} (run `hts segment` first)"
        )
    return runs[-1]


def _summary_section(page: _Page, catalog: Catalog, rec: PlateRecord, r: Run) -> None:
    summary = catalog.query(
        "SELECT n_wells, n_fields, cell_count, round(cells_per_well_mean, 1) AS cells_per_well, "
        "round(cells_per_well_cv, 3) AS cv FROM plate_stats WHERE run_id = ?",
        [r.run_id],
    )
    s = summary[0] if summary else {"n_wells": 0, "n_fields": 0, "cell_count": 0, "cells_per_well": None, "cv": None}
    page.html.heading("Plate", 2)
    page.html.table(
        ["plate", "wells", "fields", "cells", "cells / well", "CV", "channels", "pixel (µm)", "engine", "run"],
        [
            [
                rec.name,
                s["n_wells"],
                s["n_fields"],
                s["cell_count"],
                s["cells_per_well"],
                s["cv"],
                ", ".join(catalog.channel_names(rec.plate_id)),
                rec.pixel_size_um[0],
                r.engine,
                r.run_id[:8],
            ]
        ],
    )


def _qc_section(page: _Page, qcs: list) -> None:
    html, qc = page.html, qcs[0]
    html.heading("Quality control", 2)
    html.table(
        ["metric", "Z'", "assay", "SSMD", "positive mean ± sd (wells)", "negative mean ± sd (wells)", "fields flagged"],
        [[q.metric + (" (assay metric)" if i == 0 and len(qcs) > 1 else ""), q.z_prime, q.quality, q.ssmd,
          f"{q.positive['mean']:.4g} ± {q.positive['sd']:.3g} ({q.positive['wells']})",
          f"{q.negative['mean']:.4g} ± {q.negative['sd']:.3g} ({q.negative['wells']})",
          f"{len(q.flagged_fields)} of {q.fields}"] for i, q in enumerate(qcs)],
    )  # fmt: skip
    if qc.flagged_fields:
        html.table(
            ["well", "field", "cells", "focus z", "saturated", "flags"],
            [
                [
                    f["well"],
                    f["field_index"],
                    f["cell_count"],
                    f["focus_z"],
                    f["saturated_fraction_max"],
                    ", ".join(f["flags"]),
                ]
                for f in qc.flagged_fields
            ],
            caption="Flagged fields (field_qc)",
        )
    if qc.flagged_wells:
        html.table(["well", "reason"], [[w["well"], w["reason"]] for w in qc.flagged_wells], caption="Flagged wells")


def _maps_section(page: _Page, catalog: Catalog, rec: PlateRecord, maps: list, flags: dict[str, str]) -> None:
    from hts.reports import plate_heatmap

    page.html.heading("Plate maps", 2)
    for name, rows in maps:
        vals = {row["well"]: _finite(row["value"]) for row in rows}
        png = page.save(
            f"heatmap_{_slug(name)}.png",
            plate_heatmap(vals, plate_type=rec.plate_type, title=f"{rec.name}: {name}", label=name, flags=flags),
        )
        page.html.image(png, caption=f"{name} per well (red outline: flagged wells)")
    layout = catalog.query("SELECT well, concentration, unit, role FROM platemap WHERE plate_id = ?", [rec.plate_id])
    if layout:
        conc = {r["well"]: (math.log10(r["concentration"]) if r["concentration"] else float("nan")) for r in layout}
        marks = {
            r["well"]: {"positive_control": "+", "negative_control": "−", "empty": "∅"}[r["role"]]
            for r in layout
            if r["role"] in ("positive_control", "negative_control", "empty")
        }
        unit = next((r["unit"] for r in layout if r["unit"]), None)
        label = f"log10 concentration ({unit})" if unit else "log10 concentration"
        png = page.save(
            "heatmap_layout_log10_concentration.png",
            plate_heatmap(conc, plate_type=rec.plate_type, title=f"layout: {label}", label=label, marks=marks),
        )
        page.html.image(
            png,
            caption="Platemap: log10 concentration; + positive control, − negative control, ∅ empty "
            "(hatched: no concentration)",
        )


def _dose_section(page: _Page, catalog: Catalog, rec: PlateRecord, r: Run, maps: list) -> None:
    from hts.reports import dose_response_plot, fit_4pl

    dose_rows = catalog.query(
        "SELECT well, compound, concentration, unit, role FROM well_stats WHERE run_id = ? AND concentration IS NOT NULL",
        [r.run_id],
    )
    if not (dose_rows and any(d["role"] == "sample" for d in dose_rows)):
        return
    page.html.heading("Dose response", 2)
    unit = next((d["unit"] for d in dose_rows if d["unit"]), "µM")
    vehicle = [d for d in dose_rows if d["role"] == "negative_control"]
    for name, rows in maps:
        by_well = {row["well"]: _finite(row["value"]) for row in rows}
        data = [
            {
                "compound": d["compound"],
                "concentration": d["concentration"],
                "value": by_well.get(d["well"], float("nan")),
            }
            for d in dose_rows
            if d["role"] == "sample"
        ]
        compounds = sorted({d["compound"] for d in data})
        for c in compounds:  # the vehicle wells are every compound's zero dose
            data += [
                {"compound": c, "concentration": 0.0, "value": by_well.get(v["well"], float("nan"))} for v in vehicle
            ]
        png = page.save(
            f"dose_{_slug(name)}.png", dose_response_plot(data, unit=unit, ylabel=name, title=f"{rec.name}: {name}")
        )
        page.html.image(png, caption=f"{name}: wells and 4-parameter logistic fits")
        fits = []
        for c in compounds:
            pts = [(d["concentration"], d["value"]) for d in data if d["compound"] == c]
            fit = fit_4pl(np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float))
            fits.append(
                [
                    c,
                    fit["ec50"],
                    fit["hill"],
                    fit["bottom"],
                    fit["top"],
                    fit["r2"],
                    "yes" if fit["ok"] else f"no ({fit.get('reason') or ''})",
                ]
            )
        page.html.table(
            ["compound", f"EC50 ({unit})", "Hill", "bottom", "top", "R²", "fit usable"],
            fits,
            caption=f"4PL fits of {name}",
        )


def _overlay_section(page: _Page, catalog: Catalog, rec: PlateRecord, r: Run, picked: list[tuple[str, int]]) -> None:
    from hts.reports import contact_sheet, segmentation_overlay
    from hts.reports.overlay import shown_channels

    channels = catalog.channel_names(rec.plate_id)
    paths = catalog.field_paths(rec.plate_id)
    store = PlateStore(rec.store_uri)
    roles = {
        x["well"]: x["role"]
        for x in catalog.query("SELECT well, role FROM platemap WHERE plate_id = ?", [rec.plate_id])
    }
    shown = shown_channels(channels, r.channels or {})
    tiles = []
    for well, idx in picked:
        path = paths.get((well, idx))
        if path is None:
            raise CatalogError(f"plate {rec.name} has no field {well}/{idx}")
        pix = np.asarray(store.read_field(path.rsplit("/", 1)[0], idx)[0]).max(axis=1)
        labs = {out: np.asarray(store.read_labels(path, name)[0, 0, 0]) for out, name in r.labels.items()}
        title = f"{well} field {idx}" + (f" ({roles[well]})" if roles.get(well) else "")
        png = page.save(
            f"overlay_{well}_{idx}.png",
            segmentation_overlay(
                {channels[i]: pix[i] for i in shown}, labs, pixel_size_um=rec.pixel_size_um[0], title=title
            ),
        )
        tiles.append(png)
    if tiles:
        page.html.heading("Segmentation", 2)
        # each overlay carries its own title; the sheet adds no second caption under it
        sheet = contact_sheet([("", png) for png in tiles], columns=min(len(tiles), 2))
        page.html.image(
            sheet, caption=f"Label outlines ({', '.join(r.labels.values())}) on {', '.join(channels[i] for i in shown)}"
        )


def _activity_section(page: _Page, workspace: Workspace, r: Run) -> None:
    """Hits of the latest profile set made from this run, with the mAP plot and the hits' feature heatmap."""
    from hts.tasks.profile import activity_of_run, activity_pictures

    sid = activity_of_run(workspace, r.run_id)
    if sid is None:
        return
    plot, heat, rows = activity_pictures(workspace, sid)
    html = page.html
    html.heading("Phenotypic activity", 2)
    n_hits = sum(x["hit"] for x in rows)
    html.text(
        f"Profile set {sid[:12]} (`hts profile`, `hts activity`): {n_hits} of {len(rows)} treatments differ from the "
        f"negative controls at q < {rows[0]['q_threshold']:g} (mean average precision of replicate wells against the "
        f"controls, {rows[0]['null_size']} permutations)."
    )
    html.table(
        ["compound", "concentration", "unit", "wells", "mAP", "p", "q", "hit"],
        [
            [
                x["compound"],
                x["concentration"],
                x["unit"],
                x["n_wells"],
                x["mean_average_precision"],
                x["p_value"],
                x["q_value"],
                "hit" if x["hit"] else "",
            ]
            for x in rows
        ],  # fmt: skip
        caption="Activity per treatment, hits first",
    )
    html.image(page.save("activity.png", plot), caption="mAP against -log10 p; red: hits")
    if heat is not None:
        html.image(
            page.save("activity_hits.png", heat), caption="Hits' consensus profiles against the negative controls"
        )
