"""The Python front door: what ``import hts`` gives (see docs/api.md).

Everything the command line does is one call here, with the context passed in:
a :class:`~hts.config.Workspace` (catalog file, plates folder, Dask scheduler) or a
:class:`Plate` that carries its workspace. Nothing here reads environment variables
or ``hts.toml`` (the CLI does, once, with :func:`hts.config.load_workspace`).

>>> import hts                                                     # doctest: +SKIP
>>> ws = hts.Workspace.at("screen1", scheduler="local")           # doctest: +SKIP
>>> plate = hts.ingest("plate.nd2", ws)                            # doctest: +SKIP
>>> run = hts.segment(plate, engine="nuclei")                      # doctest: +SKIP
>>> cells = plate.cells()            # a polars DataFrame, one row per cell   # doctest: +SKIP
>>> hts.qc(plate)[0].z_prime                                       # doctest: +SKIP

Functions return typed reports (dataclasses with ``to_dict()``); errors on bad input
are :class:`hts.errors.HtsError` subclasses with one-line messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hts.catalog import Catalog, PlateRecord
from hts.config import Workspace
from hts.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

    from hts.catalog.runs import Run
    from hts.compute.measure import MeasureOptions
    from hts.compute.segment.engines import EngineRef
    from hts.tasks.engines import EngineInfo
    from hts.tasks.evaluate import EvaluationReport
    from hts.tasks.export import ExportReport, ProfileExportReport
    from hts.tasks.ingest import IngestReport
    from hts.tasks.measure import MeasureReport
    from hts.tasks.plan import ProgressFn
    from hts.tasks.profile import ActivityReport, ProfileRecipe, ProfileReport
    from hts.tasks.qc import QCReport
    from hts.tasks.report import ReportResult
    from hts.tasks.segment import SegmentReport
    from hts.tasks.train import TrainData, TrainOptions, TrainReport
    from hts.tasks.watch import WatchOptions, WatchReport

__all__ = [
    "Plate", "cluster", "ingest", "segment", "measure", "qc", "export", "report", "evaluate", "train", "engines", "query",
    "profile", "activity", "similar", "profiles", "export_profiles", "watch",
]  # fmt: skip

WorkspaceLike = Workspace | str | Path


def _workspace(ws: WorkspaceLike | None, plates: Sequence[Plate | str] = ()) -> Workspace:
    """The workspace of a call: given, else the one the :class:`Plate` arguments carry."""
    carried = {p.workspace for p in plates if isinstance(p, Plate)}
    if ws is not None:
        ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
        carried.add(ws)
    if len(carried) > 1:
        raise ConfigError("these plates belong to different workspaces; call once per workspace")
    if not carried:
        raise ConfigError(
            "no workspace: pass workspace=hts.Workspace.at(FOLDER) (or Plate objects, which carry theirs)"
        )
    return carried.pop()


def _names(plates: Plate | str | Sequence[Plate | str] | None) -> tuple[list[Plate | str], list[str] | None]:
    if plates is None:
        return [], None
    items = [plates] if isinstance(plates, (Plate, str)) else list(plates)
    return items, [p.plate_id if isinstance(p, Plate) else p for p in items]


@dataclass(frozen=True)
class Plate:
    """A plate in a workspace's catalog: open one by name, id or store path/URL with :meth:`open`.

    Reading methods (:meth:`image`, :meth:`labels`, :meth:`cells`, :meth:`well_stats`)
    stream from the plate store and the catalog; nothing is held in memory.
    """

    workspace: Workspace
    plate_id: str
    name: str
    store: str  # the OME-Zarr store: a local path or a URL
    ingest_report: IngestReport | None = field(default=None, compare=False, repr=False)

    @classmethod
    def open(cls, ref: str, workspace: WorkspaceLike) -> Plate:
        """The plate named ``ref`` (its name, id, id prefix or store path / URL) in ``workspace``."""
        ws = _workspace(workspace)
        rec = ws.catalog.find_plate(ref)
        return cls(ws, rec.plate_id, rec.name, rec.store_uri)

    @property
    def catalog(self) -> Catalog:
        return self.workspace.catalog

    @property
    def record(self) -> PlateRecord:
        """The catalog's row of this plate (type, pixel size, status, ...)."""
        return self.catalog.find_plate(self.plate_id)

    def info(self) -> dict[str, Any]:
        """Wells, fields, channels, acquisition metadata and runs (what ``hts info`` shows)."""
        from hts.tasks.info import plate_info

        return plate_info(self.plate_id, workspace=self.workspace)

    def annotate(self, platemap: str | Path) -> int:
        """Attach per-well treatments from a platemap CSV (well, role, compound, concentration, unit, ...);
        the number of wells annotated. Checked row by row (errors name the row)."""
        from hts.catalog import annotate

        return annotate(self.catalog, self.record, platemap)

    def runs(self, *, complete: bool = False) -> list[Run]:
        """The plate's current segmentation runs, oldest first (``complete``: finished ones only)."""
        from hts.catalog import runs as runs_db

        return runs_db.current_runs(self.catalog, self.plate_id, complete=complete)

    def _field_path(self, well: str, field_index: int) -> str:
        path = self.catalog.field_paths(self.plate_id).get((well.upper(), field_index))
        if path is None:
            raise ConfigError(f"plate {self.name} has no field {well}/{field_index}")
        return path

    def image(self, well: str, field_index: int = 0, *, t: int = 0) -> np.ndarray:
        """One field's pixels at time point ``t``: (channels, z, y, x), read from the store."""
        from hts.store import PlateStore

        path = self._field_path(well, field_index)
        return np.asarray(PlateStore(self.store).read_field(path.rsplit("/", 1)[0], field_index)[t])

    def labels(self, well: str, field_index: int = 0, name: str = "nuclei", *, t: int = 0) -> np.ndarray:
        """One field's label image ``name`` (e.g. ``nuclei``, ``cells``) at time point ``t``: (y, x)."""
        from hts.store import PlateStore

        path = self._field_path(well, field_index)
        return np.asarray(PlateStore(self.store).read_labels(path, name)[t, 0, 0])

    def cells(self, run: str | None = None) -> pl.DataFrame:
        """One row per cell of the latest complete run (or run ``run``, an id prefix), with Metadata_* columns."""
        return self._view("cell_profiles", "Metadata_PlateID", "Metadata_Run", run)

    def well_stats(self, run: str | None = None) -> pl.DataFrame:
        """One row per well: cell count, per-feature mean/median/std, the platemap's treatment."""
        return self._view("well_stats", "plate_id", "run_id", run)

    def _view(self, view: str, plate_col: str, run_col: str, run: str | None) -> pl.DataFrame:
        import polars as pl

        from hts.catalog import runs as runs_db
        from hts.errors import CatalogError

        runs = runs_db.current_runs(self.catalog, self.plate_id, run, complete=run is None)
        if not runs:
            raise CatalogError(
                f"plate {self.name} has no {'finished ' if run is None else ''}segmentation run"
                f"{f' {run!r}' if run else ''} (run hts.segment first)"
            )
        with self.catalog.connect(read_only=True) as con:
            rel = con.sql(
                f"SELECT * FROM {view} WHERE {plate_col} = ? AND {run_col} = ?", params=[self.plate_id, runs[-1].run_id]
            )
            # DuckDB >= 1.4 names it to_arrow_table(); older releases fetch_arrow_table()
            table = (getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table)()
        return pl.from_arrow(table)


# ------------------------------------------------------------------------------------ the pipeline


@contextmanager
def cluster(workspace: WorkspaceLike, *, workers: int | None = None) -> Iterator[Any]:
    """One Dask cluster (or client of ``workspace.scheduler``) for every call in the ``with`` block.

    Each call otherwise starts and stops its own local cluster (about 3 s on a small
    machine: the cluster, then the workers' imports). Yields the ``distributed.Client``
    (None for the ``"sync"`` scheduler). The workers live for the whole block: a call
    interrupted inside it (Ctrl-C) leaves the tasks already running to finish there;
    leaving the block stops them.

    >>> with hts.cluster(ws):                                      # doctest: +SKIP
    ...     plate = hts.ingest("plate.nd2", ws)
    ...     hts.segment(plate, engine="classic")
    """
    from hts.orchestrate.dask import shared_client

    with shared_client(_workspace(workspace).scheduler, workers=workers) as client:
        yield client


def ingest(
    source: str | Path,
    workspace: WorkspaceLike,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    max_project: bool = False,
    tile: int = 1024,
    reader: str | None = None,
    pattern: str | None = None,
    name: str | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    **reader_options: Any,
) -> Plate:
    """Ingest an ND2 file or a TIFF folder into an OME-Zarr plate of ``workspace``; the :class:`Plate`.

    Resumable: the same call after an interruption writes only what is missing.
    ``plate.ingest_report`` says what was done. Arguments as
    :func:`hts.tasks.ingest.ingest` (``reader`` forces a reader format).
    """
    from hts.tasks.ingest import ingest as run

    ws = _workspace(workspace)
    rep = run(
        source,
        workspace=ws,
        out=out,
        overwrite=overwrite,
        max_project=max_project,
        tile=tile,
        reader=reader,
        pattern=pattern,
        name=name,
        workers=workers,
        progress=progress,
        **reader_options,
    )
    return Plate(ws, rep.plate_id, rep.name, rep.store, ingest_report=rep)


def segment(
    plates: Plate | str | Sequence[Plate | str] | None = None,
    *,
    engine: str | Path | EngineRef,
    workspace: WorkspaceLike | None = None,
    channels: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    wells: str | None = None,
    pixel_size_um: float | None = None,
    label_suffix: str | None = None,
    overwrite: bool = False,
    backend: str = "auto",
    device: str = "auto",
    tile: int = 1024,
    halo: int = 64,
    features: MeasureOptions | dict[str, Any] | bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> SegmentReport | list[SegmentReport]:
    """Segment with ``engine`` (a name from :func:`engines`, or an engine folder) and measure every cell.

    ``plates``: one plate (a :class:`Plate` or a name) gives one report; a list, or
    None for every ingested plate of ``workspace``, gives a list. Resumable; a complete
    identical run is not repeated. Options as :class:`hts.tasks.segment.SegmentOptions`.
    """
    from hts.tasks.segment import SegmentOptions
    from hts.tasks.segment import segment as run

    items, names = _names(plates)
    options = SegmentOptions(
        channels=channels,
        params=params,
        backend=backend,
        device=device,
        tile=tile,
        halo=halo,
        wells=wells,
        overwrite=overwrite,
        label_suffix=label_suffix,
        pixel_size_um=pixel_size_um,
    )
    reports = run(
        names,
        engine=engine,
        workspace=_workspace(workspace, items),
        options=options,
        features=features,
        workers=workers,
        progress=progress,
    )
    return reports[0] if isinstance(plates, (Plate, str)) else reports


def measure(
    plates: Plate | str | Sequence[Plate | str] | None = None,
    *,
    workspace: WorkspaceLike | None = None,
    run: str | None = None,
    features: MeasureOptions | dict[str, Any] | bool = True,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[MeasureReport]:
    """(Re-)measure per-cell features of existing runs, e.g. ``features={"texture": True}``; one report per run."""
    from hts.tasks.measure import measure as task

    items, names = _names(plates)
    return task(
        names, workspace=_workspace(workspace, items), run=run, features=features, workers=workers, progress=progress
    )


def qc(
    plates: Plate | str | Sequence[Plate | str] | None = None,
    *,
    workspace: WorkspaceLike | None = None,
    run: str | None = None,
    metric: str = "cell_count",
) -> list[QCReport]:
    """Z'-factor, SSMD, flagged fields and wells of each complete run, on ``metric`` (a well_stats column)."""
    from hts.tasks.qc import plate_qc

    items, names = _names(plates)
    return plate_qc(names, workspace=_workspace(workspace, items), run=run, metric=metric)


def export(
    out: str | Path,
    plates: Plate | str | Sequence[Plate | str] | None = None,
    *,
    workspace: WorkspaceLike | None = None,
    run: str | None = None,
    format: str = "parquet",
    overwrite: bool = False,
) -> ExportReport:
    """Write cells (partitioned by plate and well), wells and field QC tables under the folder ``out``."""
    from hts.tasks.export import export as task

    items, names = _names(plates)
    return task(out, workspace=_workspace(workspace, items), plates=names, run=run, format=format, overwrite=overwrite)


def report(
    plate: Plate | str,
    *,
    workspace: WorkspaceLike | None = None,
    out: str | Path | None = None,
    run: str | None = None,
    values: list[str] | None = None,
    sql: str | None = None,
    fields: list[str] | None = None,
    n_overlays: int = 4,
    metric: str | None = None,
) -> ReportResult:
    """Heatmaps, QC tables, dose-response fits and segmentation overlays of one plate, as PNGs and one HTML page."""
    from hts.tasks.report import report as task

    items, names = _names(plate)
    return task(
        names[0],
        workspace=_workspace(workspace, items),
        out=out,
        run=run,
        values=values,
        sql=sql,
        fields=fields,
        n_overlays=n_overlays,
        metric=metric,
    )


def evaluate(
    pred: str | Path | None = None,
    truth: str | Path | None = None,
    *,
    plate: Plate | str | None = None,
    labels: str = "nuclei",
    workspace: WorkspaceLike | None = None,
    overlap: float = 0.5,
) -> EvaluationReport:
    """AP, F1, splits and merges of label images (files, folders, or a plate's labels) against ground truth."""
    from hts.tasks.evaluate import evaluate as task

    ws = _workspace(workspace, [plate] if plate is not None else []) if plate is not None else None
    name = plate.plate_id if isinstance(plate, Plate) else plate
    return task(pred, truth, plate=name, labels=labels, workspace=ws, overlap=overlap)


def train(
    engine: str,
    out: str | Path,
    data: TrainData,
    options: TrainOptions | None = None,
    *,
    workspace: WorkspaceLike | None = None,
    progress: Any = None,
) -> TrainReport:
    """Train ``engine``'s network on ``data`` and write an engine folder ``out`` (use it as ``engine=out``)."""
    from hts.tasks.train import TrainOptions, train_engine

    ws = _workspace(workspace) if workspace is not None else None
    return train_engine(engine, out, data, options or TrainOptions(), workspace=ws, progress=progress)


def engines() -> list[EngineInfo]:
    """Every segmentation engine (built-in and plug-in): roles, outputs, backends, parameters, package."""
    from hts.tasks.engines import describe_engines

    return describe_engines()


def query(sql: str, workspace: WorkspaceLike, *, limit: int | None = None) -> pl.DataFrame:
    """One read-only SQL query over the catalog (tables, views such as ``well_stats``), as a polars DataFrame."""
    import polars as pl

    from hts.tasks.query import run_query

    return pl.from_arrow(run_query(sql, workspace=_workspace(workspace), limit=limit))


def profile(
    plates: Plate | str | Sequence[Plate | str] | None = None,
    *,
    workspace: WorkspaceLike | None = None,
    recipe: ProfileRecipe | None = None,
    engine: str | None = None,
    overwrite: bool = False,
) -> ProfileReport:
    """Per-well phenotype profiles of ``plates`` (default: every plate with a finished run), stored in the catalog.

    Cells aggregated per well (median), each plate normalised against its negative controls
    (robust z), features selected over the set, replicate wells merged per treatment
    (consensus); ``recipe`` (:class:`hts.tasks.profile.ProfileRecipe`) changes any step.
    Building the same set again is a no-op (``overwrite`` rebuilds it).
    """
    from hts.tasks.profile import build_profiles

    items, names = _names(plates)
    return build_profiles(
        names, workspace=_workspace(workspace, items), recipe=recipe, engine=engine, overwrite=overwrite
    )


def activity(
    workspace: WorkspaceLike,
    *,
    profile_set: str | None = None,
    null_size: int = 10000,
    seed: int = 0,
    q: float = 0.05,
    metric: str = "cosine",
) -> ActivityReport:
    """Phenotypic activity per treatment (mAP against the negative controls, p- and q-values, hits); stored."""
    from hts.tasks.profile import compute_activity

    return compute_activity(
        workspace=_workspace(workspace), profile_set=profile_set, null_size=null_size, seed=seed, q_threshold=q,
        metric=metric,
    )  # fmt: skip


def similar(
    query: str,
    workspace: WorkspaceLike,
    *,
    profile_set: str | None = None,
    top: int = 10,
    metric: str = "cosine",
    level: str = "consensus",
) -> dict[str, Any]:
    """Treatments (``level="well"``: wells) nearest a well (``PLATE/B05``) or a compound (``NAME`` or ``NAME@10``)."""
    from hts.tasks.profile import similar as task

    return task(query, workspace=_workspace(workspace), profile_set=profile_set, top=top, metric=metric, level=level)


def profiles(
    workspace: WorkspaceLike, *, profile_set: str | None = None, level: str = "normalized", selected: bool = True
) -> pl.DataFrame:
    """A stored profile set as a polars DataFrame in pycytominer's layout (``level``: aggregated, normalized, consensus)."""
    import polars as pl

    from hts.tasks.profile import profile_table

    return pl.from_arrow(profile_table(_workspace(workspace), profile_set, level=level, selected=selected))


def export_profiles(
    out: str | Path,
    workspace: WorkspaceLike,
    *,
    profile_set: str | None = None,
    format: str = "parquet",
    overwrite: bool = False,
) -> ProfileExportReport:
    """Write a profile set as pycytominer writes one: per plate augmented + normalised/feature-selected, consensus, activity."""
    from hts.tasks.export import export_profiles as task

    return task(out, workspace=_workspace(workspace), profile_set=profile_set, format=format, overwrite=overwrite)


def watch(
    folder: str | Path,
    workspace: WorkspaceLike,
    options: WatchOptions | None = None,
    *,
    on_event: Any = None,
    stop: Any = None,
    workers: int | None = None,
) -> WatchReport:
    """Follow a TIFF plate folder while the imager writes it: ingest, segment and QC each finished field.

    ``options`` (:class:`hts.tasks.watch.WatchOptions`): engines, platemap, poll interval,
    idle timeout ...; ``on_event(dict)`` is called with each event as it happens; set the
    ``threading.Event`` ``stop`` to end after the current round. Restartable at any time.
    """
    from hts.tasks.watch import WatchOptions
    from hts.tasks.watch import watch as task

    return task(folder, workspace=_workspace(workspace), options=options or WatchOptions(), on_event=on_event,
                stop=stop, workers=workers)  # fmt: skip
