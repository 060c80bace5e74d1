"""hts: a high-throughput-screening plate analyzer.

Ingest ND2 files and TIFF-folder plates into OME-Zarr HCS stores with a DuckDB
catalog; segment and measure cells on Dask; query per-well statistics with SQL.

The public API, all of it here (docs/api.md walks through it)::

    import hts

    ws = hts.Workspace.at("screen1")                 # screen1/hts.duckdb + screen1/plates/
    plate = hts.ingest("plate.nd2", ws)              # -> hts.Plate
    hts.segment(plate, engine="nuclei")              # -> SegmentReport
    plate.cells()                                    # polars DataFrame, one row per cell
    hts.qc(plate); hts.report(plate, out="report/"); hts.export("profiles/", plate)

- context: :class:`Workspace` (catalog, plates folder, Dask scheduler), :class:`Catalog`,
  :class:`Plate` (``Plate.open(name, workspace)``);
- the pipeline: :func:`ingest`, :func:`segment`, :func:`measure`, :func:`qc`,
  :func:`export`, :func:`report`, :func:`query`;
- models: :func:`engines`, :func:`train`, :func:`evaluate`;
- acquisition in progress: :func:`watch`;
- one Dask cluster for several calls: ``with hts.cluster(ws): ...``;
- profiling: :func:`profile`, :func:`activity`, :func:`similar`, :func:`profiles`, :func:`export_profiles`;
- browsing: :class:`Browser` (what ``hts serve`` shows, as calls; the web app is :mod:`hts.web`).

Names are imported on first use, so ``import hts`` stays cheap (no torch, no Dask).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "Workspace": "hts.config",
    "Catalog": "hts.catalog",
    "Plate": "hts.api",
    "cluster": "hts.api",
    "ingest": "hts.api",
    "segment": "hts.api",
    "measure": "hts.api",
    "qc": "hts.api",
    "export": "hts.api",
    "report": "hts.api",
    "query": "hts.api",
    "evaluate": "hts.api",
    "train": "hts.api",
    "engines": "hts.api",
    "profile": "hts.api",
    "activity": "hts.api",
    "similar": "hts.api",
    "profiles": "hts.api",
    "export_profiles": "hts.api",
    "watch": "hts.api",
    "Browser": "hts.tasks.browse",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from hts.api import (
        Plate,
        activity,
        cluster,
        engines,
        evaluate,
        export,
        export_profiles,
        ingest,
        measure,
        profile,
        profiles,
        qc,
        query,
        report,
        segment,
        similar,
        train,
        watch,
    )
    from hts.catalog import Catalog
    from hts.config import Workspace
    from hts.tasks.browse import Browser


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
