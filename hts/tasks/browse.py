"""What the plate browser shows, as library calls: plates, a plate's heatmap, a well, a field's tiles, cells.

:class:`Browser` answers every question the web app (:mod:`hts.web`) asks, and can be used
from Python the same way (``Browser(ws).plate("P1", metric="cell_count")``). It only reads:

- The catalog is read through one short read-only connection per call
  (:meth:`~hts.catalog.Catalog.session` with ``read_only=True``), never held between calls,
  so a ``segment`` / ``measure`` run in another process can take the writer's lock between
  requests; when a writer holds it (one batch at a time), a read waits for it (up to 30 s).
- SQL from a user (the cells filter, the query box) runs on
  :meth:`~hts.catalog.Catalog.user_connection` (catalog attached read-only, external access
  off, configuration locked; one query statement only) and is cancelled after ``timeout_s``.
- Every plate, well, field, label image and channel named in a call is checked against the
  catalog and the store's metadata before anything is read; a store path is never built from
  what a caller typed.
- Pixels are read one tile at a time from the OME-Zarr pyramid level that is shown
  (:meth:`Browser.tile`), never a whole full-resolution field.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from hts.catalog import runs as runs_db
from hts.catalog.db import PlateRecord, _one_line
from hts.config import Workspace
from hts.errors import CatalogError, StoreError
from hts.store.ngff import PlateStore
from hts.tasks.query import cancel_after, run_query
from hts.wells import PLATE_TYPES, parse_well

__all__ = ["Browser", "FieldMeta", "NotFound", "TILE"]

#: Side of a viewer tile in pixels of its pyramid level.
TILE = 512
#: Smallest side of the pyramid level a thumbnail is drawn from.
THUMB = 160
#: Rows of the cells table sent to the page at once (the download has them all).
CELLS_PAGE = 500
#: Well-level metrics that are not feature aggregates, in the order the selector lists them.
COUNT_METRICS = ("cell_count", "cells_per_field")
_NOT_METRICS = {"row_index", "column_index", "concentration", "n_fields"}


class NotFound(CatalogError):
    """What a caller named is not in the catalog or the store (the web app answers 404)."""


@dataclass(frozen=True)
class FieldMeta:
    """One field as the viewer needs it: its pyramid, channels and label images."""

    plate: str
    well: str
    field_index: int
    store_uri: str
    path: str  # group path in the plate store (from the catalog)
    shape: tuple[int, int, int, int, int]  # (t, c, z, y, x) of level 0
    levels: int
    channels: list[dict[str, Any]]  # label, color, window (start, end), active
    labels: list[str]  # label images of the field
    label_colors: dict[str, str]
    label_runs: dict[str, str]  # label image -> run id that wrote it
    pixel_size_um: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plate": self.plate,
            "well": self.well,
            "field_index": self.field_index,
            "shape": list(self.shape),
            "levels": self.levels,
            "tile": TILE,
            "channels": self.channels,
            "labels": self.labels,
            "label_colors": self.label_colors,
            "label_runs": self.label_runs,
            "pixel_size_um": self.pixel_size_um,
        }


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class Browser:
    """Read-only views of a workspace for the plate browser (see the module doc)."""

    def __init__(self, workspace: Workspace, *, timeout_s: float = 30.0, cache_fields: int = 64):
        self.workspace = workspace
        self.catalog = workspace.catalog
        self.timeout_s = timeout_s
        self._meta: OrderedDict[tuple[str, str, int], tuple[Any, FieldMeta]] = OrderedDict()
        self._cache_fields = cache_fields
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------
    @contextmanager
    def _reading(self):
        if not self.catalog.exists():
            raise NotFound(f"{self.catalog.name}: no catalog here (run `hts ingest` first, or pass --db)")
        with self.catalog.session(read_only=True):
            yield

    def _plate(self, ref: str) -> PlateRecord:
        try:
            return self.catalog.find_plate(ref)
        except CatalogError as e:
            raise NotFound(str(e)) from None

    def _run(self, rec: PlateRecord, run: str | None) -> runs_db.Run | None:
        """The named run (id prefix), else the newest complete run, else the newest running one."""
        runs = runs_db.current_runs(self.catalog, rec.plate_id, run)
        if run and not runs:
            raise NotFound(f"plate {rec.name} has no run {run!r}")
        complete = [r for r in runs if r.status == "complete"]
        return (complete or runs or [None])[-1]

    # -- plates -----------------------------------------------------------------
    def plates(self) -> list[dict[str, Any]]:
        """Every plate: wells, fields, cells, runs and the QC verdict (Z' of cell count) of its newest run."""
        from hts.tasks.info import list_plates
        from hts.tasks.qc import run_qc

        if not self.catalog.exists():
            return []
        with self._reading():
            rows = list_plates(workspace=self.workspace)
            for row in rows:
                runs = runs_db.current_runs(self.catalog, row["plate_id"])
                done = [r for r in runs if r.status == "complete"]
                row["runs"] = len(runs)
                row["running"] = sum(r.status == "running" and not r.error for r in runs)
                row["cells"] = self.catalog.query(
                    "SELECT coalesce(sum(n_cells), 0) AS n FROM run_fields WHERE run_id = ?",
                    [done[-1].run_id if done else ""],
                )[0]["n"]
                row["qc"] = None
                if done:
                    q = run_qc(self.catalog, row["name"], done[-1].run_id, done[-1].engine, "cell_count")
                    row["qc"] = {
                        "engine": q.engine,
                        "z_prime": _finite(q.z_prime),
                        "quality": q.quality,
                        "flagged_fields": len(q.flagged_fields),
                        "flagged_wells": len(q.flagged_wells),
                    }
        return rows

    def metrics(self, plate: str, run: str | None = None) -> list[str]:
        """The per-well metrics a heatmap can show: counts first, then every numeric ``well_stats`` column."""
        with self._reading():
            cols = self.catalog.query("SELECT column_name, column_type FROM (DESCRIBE well_stats)")
        numeric = [
            c["column_name"]
            for c in cols
            if c["column_type"] in ("DOUBLE", "BIGINT", "INTEGER", "HUGEINT", "FLOAT")
            and c["column_name"] not in _NOT_METRICS
            and c["column_name"] not in COUNT_METRICS
        ]
        return [*COUNT_METRICS, *sorted(numeric)]

    def plate(self, plate: str, *, metric: str = "cell_count", run: str | None = None) -> dict[str, Any]:
        """A plate's heatmap: geometry, every imaged well with its platemap row, metric value, QC flags;
        the controls' Z' and SSMD of ``metric``; the plate's runs."""
        from hts.tasks.qc import run_qc, well_metric

        with self._reading():
            rec = self._plate(plate)
            ptype = PLATE_TYPES[rec.plate_type]
            r = self._run(rec, run)
            wells = self.catalog.query(
                """
                SELECT w.well, w.row_index, w.column_index, w.n_fields,
                       count(*) FILTER (WHERE f.status = 'complete') AS fields_complete,
                       pm.compound, pm.concentration, pm.unit, pm.role
                FROM wells w JOIN fields f USING (plate_id, well)
                LEFT JOIN platemap pm USING (plate_id, well)
                WHERE w.plate_id = ? GROUP BY ALL ORDER BY w.row_index, w.column_index
                """,
                [rec.plate_id],
            )
            qc = None
            if r is not None:
                values = {row["well"]: _finite(row["value"]) for row in well_metric(self.catalog, r.run_id, metric)}
                q = run_qc(self.catalog, rec.name, r.run_id, r.engine, metric)
                field_flags: dict[str, set[str]] = {}
                for f in q.flagged_fields:
                    field_flags.setdefault(f["well"], set()).update(f["flags"])
                well_flags = {w["well"]: w["reason"] for w in q.flagged_wells}
                for w in wells:
                    w["value"] = values.get(w["well"])
                    w["flags"] = sorted(field_flags.get(w["well"], ()))
                    w["flag"] = well_flags.get(w["well"])
                qc = {
                    "z_prime": _finite(q.z_prime),
                    "ssmd": _finite(q.ssmd),
                    "quality": q.quality,
                    "positive": q.positive,
                    "negative": q.negative,
                    "flagged_wells": q.flagged_wells,
                    "flagged_fields": len(q.flagged_fields),
                }
            runs = [self._run_row(x) for x in runs_db.current_runs(self.catalog, rec.plate_id)]
            activity = self._activity(r, wells) if r is not None else None
        return {
            "plate": rec.name,
            "plate_id": rec.plate_id,
            "plate_type": rec.plate_type,
            "rows": ptype.row_names,
            "columns": ptype.column_names,
            "metric": metric,
            "run": self._run_row(r) if r else None,
            "runs": runs,
            "wells": wells,
            "qc": qc,
            "activity": activity,
        }

    def _activity(self, r: runs_db.Run, wells: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Hits of the latest profile set made from run ``r`` (``hts profile`` + ``hts activity``), with
        the plate's wells of each treatment; None when there is none."""
        from hts.catalog.profiles import load_activity
        from hts.tasks.profile import activity_of_run

        sid = activity_of_run(self.workspace, r.run_id)
        if sid is None:
            return None
        rows = load_activity(self.catalog, sid)
        where: dict[tuple, list[str]] = {}
        for w in wells:
            if w["compound"] is not None:
                where.setdefault((w["compound"], float(w["concentration"] or 0.0)), []).append(w["well"])
        return {
            "profile_set_id": sid,
            "n_treatments": len(rows),
            "n_hits": sum(bool(x["hit"]) for x in rows),
            "q_threshold": rows[0]["q_threshold"] if rows else None,
            "treatments": [
                {"compound": x["compound"], "concentration": x["concentration"], "unit": x["unit"],
                 "map": _finite(x["mean_average_precision"]), "q": _finite(x["q_value"]), "hit": bool(x["hit"]),
                 "wells": where.get((x["compound"], float(x["concentration"])), [])}
                for x in rows  # hits first (load_activity's order)
            ],
        }  # fmt: skip

    def _run_row(self, r: runs_db.Run) -> dict[str, Any]:
        done = self.catalog.query(
            "SELECT count(*) FILTER (WHERE status = 'complete') AS done, count(*) AS total, "
            "coalesce(sum(n_cells), 0) AS cells FROM run_fields WHERE run_id = ?",
            [r.run_id],
        )[0]
        state = "failed" if r.error else r.status
        return {
            "run_id": r.run_id,
            "engine": r.engine,
            "state": state,
            "error": r.error,
            "labels": r.labels,
            "fields_done": done["done"],
            "fields": done["total"],
            "cells": done["cells"],
            "created_at": str(r.created_at) if r.created_at else None,
        }

    def progress(self, plate: str) -> dict[str, Any]:
        """How far ingest and every run of a plate are, and a ``version`` that changes whenever a field completes."""
        with self._reading():
            rec = self._plate(plate)
            fields = self.catalog.query(
                "SELECT count(*) FILTER (WHERE status = 'complete') AS done, count(*) AS total FROM fields "
                "WHERE plate_id = ?",
                [rec.plate_id],
            )[0]
            runs = [self._run_row(x) for x in runs_db.current_runs(self.catalog, rec.plate_id)]
        version = f"{fields['done']}:" + ",".join(f"{r['run_id'][:8]}.{r['fields_done']}.{r['state']}" for r in runs)
        return {
            "plate": rec.name,
            "ingest": {"done": fields["done"], "total": fields["total"], "status": rec.status},
            "runs": runs,
            "active": rec.status != "complete" or any(r["state"] == "running" for r in runs),
            "version": version,
        }

    # -- a well -------------------------------------------------------------------
    def well(self, plate: str, well: str, *, metric: str = "cell_count", run: str | None = None) -> dict[str, Any]:
        """A well: its fields (QC per field), its numbers for the run, and the dose-response of its compound."""
        from hts.tasks.qc import well_metric

        with self._reading():
            rec = self._plate(plate)
            name = self._well(rec, well)
            r = self._run(rec, run)
            fields = self.catalog.query(
                "SELECT field_index, status FROM fields WHERE plate_id = ? AND well = ? ORDER BY field_index",
                [rec.plate_id, name],
            )
            pm = self.catalog.query(
                "SELECT compound, concentration, unit, role FROM platemap WHERE plate_id = ? AND well = ?",
                [rec.plate_id, name],
            )
            out: dict[str, Any] = {
                "plate": rec.name,
                "well": name,
                "platemap": pm[0] if pm else None,
                "metric": metric,
                "run": self._run_row(r) if r else None,
                "fields": fields,
                "stats": {},
                "dose": None,
            }
            if r is None:
                return out
            qc = {
                q["field_index"]: q
                for q in self.catalog.query(
                    "SELECT field_index, cell_count, focus_z, saturated_fraction_max, flags FROM field_qc "
                    "WHERE run_id = ? AND well = ?",
                    [r.run_id, name],
                )
            }
            for f in fields:
                q = qc.get(f["field_index"], {})
                f.update(cell_count=q.get("cell_count"), flags=q.get("flags") or [], focus_z=_finite(q.get("focus_z")))
            stats = self.catalog.query("SELECT * FROM well_stats WHERE run_id = ? AND well = ?", [r.run_id, name])
            if stats:
                out["stats"] = {
                    k: _finite(v) for k, v in stats[0].items() if isinstance(v, (int, float)) and k not in _NOT_METRICS
                }
            out["dose"] = self._dose(
                rec, r.run_id, name, pm[0] if pm else None, well_metric(self.catalog, r.run_id, metric)
            )
        return out

    def _well(self, rec: PlateRecord, well: str) -> str:
        try:
            name = parse_well(well).name
        except (ValueError, CatalogError):
            raise NotFound(f"{well!r} is not a well name (e.g. B03)") from None
        if not self.catalog.query("SELECT 1 FROM wells WHERE plate_id = ? AND well = ?", [rec.plate_id, name]):
            raise NotFound(f"plate {rec.name} has no imaged well {name}")
        return name

    def _dose(
        self, rec: PlateRecord, run_id: str, well: str, pm: dict | None, rows: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The dose-response of the well's compound: its wells' values (vehicle wells at dose 0) and a 4PL fit."""
        from hts.compute.analysis.doseresponse import fit_4pl, logistic4

        if not pm or not pm.get("compound") or pm.get("role") != "sample":
            return None
        compound = pm["compound"]
        pts = [
            {"well": x["well"], "concentration": float(x["concentration"]), "value": _finite(x["value"])}
            for x in rows
            if x["compound"] == compound and x["role"] == "sample" and x["concentration"] is not None
        ]
        pts += [
            {"well": x["well"], "concentration": 0.0, "value": _finite(x["value"]), "vehicle": True}
            for x in rows
            if x["role"] == "negative_control"
        ]
        conc = np.array([p["concentration"] for p in pts], float)
        vals = np.array([np.nan if p["value"] is None else p["value"] for p in pts], float)
        fit = fit_4pl(conc, vals)
        curve = []
        positive = conc[conc > 0]
        if fit.get("ok") and positive.size:
            xs = np.logspace(np.log10(positive.min()) - 0.5, np.log10(positive.max()) + 0.5, 60)
            ys = logistic4(xs, fit["bottom"], fit["top"], fit["ec50"], fit["hill"])
            curve = [[float(a), float(b)] for a, b in zip(xs, ys)]
        keep = ("ok", "ec50", "hill", "bottom", "top", "r2", "reason")
        return {
            "compound": compound,
            "unit": pm.get("unit") or "µM",
            "well": well,
            "points": pts,
            "fit": {k: (_finite(fit.get(k)) if k not in ("ok", "reason") else fit.get(k)) for k in keep},
            "curve": curve,
        }

    # -- a field ---------------------------------------------------------------
    def field(self, plate: str, well: str, field_index: int) -> FieldMeta:
        """A field's pyramid, channels (colours and windows from the store's ``omero``) and label images."""
        from hts.reports.overlay import output_colors, shown_channels

        # A viewer asks for dozens of tiles of one field: while the catalog files are as they were
        # when the field was looked up, its metadata is reused without opening the catalog.
        state = self._catalog_state()
        with self._lock:
            hit = self._meta.get((plate, well, int(field_index)))
        if hit is not None and hit[0] == state:
            return hit[1]
        with self._reading():
            rec = self._plate(plate)
            name = self._well(rec, well)
            rows = self.catalog.query(
                "SELECT path, status FROM fields WHERE plate_id = ? AND well = ? AND field_index = ?",
                [rec.plate_id, name, int(field_index)],
            )
            if not rows:
                raise NotFound(f"plate {rec.name} well {name} has no field {field_index}")
            if rows[0]["status"] != "complete":
                raise NotFound(f"plate {rec.name} {name} field {field_index} is not written yet (ingest is running)")
            label_runs = {
                x["label_name"]: x["run_id"]
                for x in self.catalog.query(
                    "SELECT label_name, run_id FROM plate_labels WHERE plate_id = ?", [rec.plate_id]
                )
            }
            r = self._run(rec, None)
        store = PlateStore(rec.store_uri)
        if not store.exists():
            raise StoreError(f"plate {rec.name}: its store {rec.store_uri} is missing (moved or deleted?)")
        path = rows[0]["path"]
        try:
            group = store._open_group(path, mode="r")
            ome = dict(group.attrs["ome"])
            shape = tuple(int(n) for n in group["0"].shape)
            labels_group = group.get("labels")
            present = list(labels_group.attrs.get("ome", {}).get("labels", [])) if labels_group is not None else []
        except Exception as e:  # a store changed under us: one line naming it
            raise StoreError(
                f"plate {rec.name}: cannot read {rec.store_uri}/{path} ({type(e).__name__}: {e})"
            ) from None
        labels = [x for x in present if x in label_runs]
        omero = ome.get("omero", {}).get("channels", [])
        shown = set(shown_channels([c.get("label", "") for c in omero], (r.channels if r else None) or {}))
        channels = [
            {
                "index": i,
                "label": c.get("label", f"channel {i}"),
                "color": c.get("color", "FFFFFF"),
                "window": [float(c["window"]["start"]), float(c["window"]["end"])],
                "range": [float(c["window"]["min"]), float(c["window"]["max"])],
                "active": i in shown,
            }
            for i, c in enumerate(omero)
        ]
        meta = FieldMeta(
            plate=rec.name,
            well=name,
            field_index=int(field_index),
            store_uri=rec.store_uri,
            path=path,
            shape=shape,  # type: ignore[arg-type]
            levels=len(ome["multiscales"][0]["datasets"]),
            channels=channels,
            labels=labels,
            label_colors=output_colors(labels),
            label_runs={k: v for k, v in label_runs.items() if k in labels},
            pixel_size_um=rec.pixel_size_um[0],
        )
        with self._lock:
            self._meta[(plate, well, int(field_index))] = (state, meta)
            while len(self._meta) > self._cache_fields:
                self._meta.popitem(last=False)
        return meta

    def _catalog_state(self) -> tuple:
        """A token that changes with every commit to the catalog (:meth:`Catalog.state`)."""
        return self.catalog.state()

    def _tile_box(self, meta: FieldMeta, level: int, row: int, col: int) -> tuple[int, int, int, int]:
        if not 0 <= level < meta.levels:
            raise NotFound(f"{meta.well} field {meta.field_index} has pyramid levels 0..{meta.levels - 1}, not {level}")
        h = -(-meta.shape[3] // 2**level)
        w = -(-meta.shape[4] // 2**level)
        if not (0 <= row < -(-h // TILE) and 0 <= col < -(-w // TILE)):
            raise NotFound(f"no tile ({row}, {col}) at level {level} of {meta.well} field {meta.field_index}")
        return row * TILE, min(h, (row + 1) * TILE), col * TILE, min(w, (col + 1) * TILE)

    def tile(
        self,
        plate: str,
        well: str,
        field_index: int,
        level: int,
        row: int,
        col: int,
        *,
        channels: list[int] | None = None,
        windows: dict[int, tuple[float, float]] | None = None,
        t: int = 0,
    ) -> bytes:
        """JPEG of one ``TILE``-square tile of a pyramid level: the channels composited (z stacks max-projected)."""
        from hts.reports.tiles import composite, jpeg

        meta = self.field(plate, well, field_index)
        y0, y1, x0, x1 = self._tile_box(meta, level, row, col)
        chans = self._channels(meta, channels)
        t = self._t(meta, t)
        arr = PlateStore(meta.store_uri).read_image(meta.path, level)
        planes = [np.asarray(arr[t, c, :, y0:y1, x0:x1]).max(axis=0) for c in chans]
        info = {c["index"]: c for c in meta.channels}
        wins = [tuple((windows or {}).get(c) or info[c]["window"]) for c in chans]
        return jpeg(composite(planes, [info[c]["color"] for c in chans], wins))

    def _channels(self, meta: FieldMeta, channels: list[int] | None) -> list[int]:
        if channels is None:
            return [c["index"] for c in meta.channels if c["active"]]
        bad = [c for c in channels if not 0 <= c < meta.shape[1]]
        if bad:
            raise NotFound(f"plate {meta.plate} has channels 0..{meta.shape[1] - 1}, not {bad[0]}")
        return list(dict.fromkeys(channels))

    def _t(self, meta: FieldMeta, t: int) -> int:
        if not 0 <= t < meta.shape[0]:
            raise NotFound(f"plate {meta.plate} has time points 0..{meta.shape[0] - 1}, not {t}")
        return t

    def _label_array(self, meta: FieldMeta, plate: str, label: str, level: int):
        if label not in meta.labels:
            raise NotFound(
                f"{meta.well} field {meta.field_index} has no label image {label!r} ({', '.join(meta.labels) or 'none'})"
            )
        return PlateStore(meta.store_uri).read_labels(meta.path, label, level)

    def outline_tile(
        self, plate: str, well: str, field_index: int, label: str, level: int, row: int, col: int, *, t: int = 0
    ) -> bytes:
        """Transparent PNG of one tile of a label image's outlines, in the label's colour."""
        from hts.reports.tiles import outline_mask, outline_rgba, png

        meta = self.field(plate, well, field_index)
        y0, y1, x0, x1 = self._tile_box(meta, level, row, col)
        arr = self._label_array(meta, plate, label, level)
        t = self._t(meta, t)
        h, w = arr.shape[-2:]
        ya, yb, xa, xb = max(0, y0 - 1), min(h, y1 + 1), max(0, x0 - 1), min(w, x1 + 1)
        lab = np.asarray(arr[t, 0, 0, ya:yb, xa:xb])
        mask = outline_mask(lab, (y0 - ya, yb - y1, x0 - xa, xb - x1))
        return png(outline_rgba(mask, meta.label_colors[label]))

    def thumbnail(self, plate: str, well: str, field_index: int, *, channels: list[int] | None = None) -> bytes:
        """JPEG of a whole field from the smallest pyramid level at least ``THUMB`` pixels across."""
        from hts.reports.tiles import composite, jpeg

        meta = self.field(plate, well, field_index)
        level = 0
        while level + 1 < meta.levels and min(meta.shape[3:]) / 2 ** (level + 1) >= THUMB:
            level += 1
        arr = PlateStore(meta.store_uri).read_image(meta.path, level)
        chans = self._channels(meta, channels)
        info = {c["index"]: c for c in meta.channels}
        planes = [np.asarray(arr[0, c]).max(axis=0) for c in chans]
        return jpeg(composite(planes, [info[c]["color"] for c in chans], [info[c]["window"] for c in chans]))

    # -- cells --------------------------------------------------------------------
    def cell_at(
        self, plate: str, well: str, field_index: int, x: float, y: float, *, label: str | None = None, t: int = 0
    ) -> dict[str, Any] | None:
        """The cell under full-resolution pixel (x, y) of a label image (the field's first by default):
        its label and its row of ``cells`` (None when the pixel is background)."""
        meta = self.field(plate, well, field_index)
        label = label or (meta.labels[0] if meta.labels else None)
        if label is None:
            raise NotFound(f"{meta.well} field {meta.field_index} has no label images (run `hts segment`)")
        xi, yi = int(math.floor(x)), int(math.floor(y))
        if not (0 <= yi < meta.shape[3] and 0 <= xi < meta.shape[4]):
            return None
        arr = self._label_array(meta, plate, label, 0)
        value = int(arr[self._t(meta, t), 0, 0, yi, xi])
        if value == 0:
            return None
        run_id = meta.label_runs[label]
        with self._reading():
            rec = self._plate(plate)
            run = runs_db.current_runs(self.catalog, rec.plate_id, run_id)
            outputs = list(run[0].labels.values()) if run else []
            # the primary object is the run's first label image; other outputs map through nucleus_id
            col = "object_id" if outputs and outputs[0] == label else "nucleus_id"
            rows = self.catalog.query(
                f"SELECT * FROM cells WHERE run_id = ? AND well = ? AND field_index = ? AND t = ? AND {col} = ?",
                [run_id, meta.well, meta.field_index, t, value],
            )
        return {
            "label": label,
            "value": value,
            "x": xi,
            "y": yi,
            "cell": {k: (_finite(v) if isinstance(v, float) else v) for k, v in rows[0].items()} if rows else None,
        }

    def cells(
        self,
        plate: str,
        well: str,
        *,
        where: str = "",
        run: str | None = None,
        limit: int | None = CELLS_PAGE,
    ) -> tuple[pa.Table, int]:
        """The well's cells of the run matching ``where`` (a SQL condition over ``cells`` columns, e.g.
        ``Nuclei_AreaShape_Area > 300``), and how many match in all; first ``limit`` rows (None: all)."""
        with self._reading():
            rec = self._plate(plate)
            name = self._well(rec, well)
            r = self._run(rec, run)
        if r is None:
            raise NotFound(f"plate {rec.name} has no segmentation run yet (run `hts segment`)")
        cond = where.strip() or "true"
        base = f"SELECT * FROM cells WHERE run_id = $run AND well = $well AND ({cond}\n)"
        sql = f"SELECT * FROM ({base}) ORDER BY field_index, t, object_id"
        count_sql = f"SELECT count(*) FROM ({base})"
        params = {"run": r.run_id, "well": name}
        with self.catalog.user_connection() as con:
            self.catalog.check_user_sql(con, sql, params)
            with cancel_after(con, self.timeout_s):
                try:
                    n = con.execute(count_sql, params).fetchall()[0][0]
                    rel = con.sql(sql + (f" LIMIT {int(limit)}" if limit is not None else ""), params=params)
                    table = (getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table)()
                except duckdb.Error as e:
                    raise CatalogError(f"filter {where.strip()!r}: {_one_line(e)}") from None
        return table, int(n)

    def query(self, sql: str, *, limit: int | None = None) -> pa.Table:
        """A user's read-only SQL over the catalog (:func:`hts.tasks.query.run_query`), cancelled after ``timeout_s``."""
        return run_query(sql, workspace=self.workspace, limit=limit, timeout_s=self.timeout_s)

    def cell_columns(self) -> list[str]:
        """The columns of ``cells`` (what a filter can name)."""
        with self._reading():
            return [c["column_name"] for c in self.catalog.query("SELECT column_name FROM (DESCRIBE cells)")]
