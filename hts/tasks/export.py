"""Export per-cell profiles and per-well aggregates for downstream profiling (pycytominer, polars).

Layout under ``out``::

    cells/Metadata_Plate=<plate>/Metadata_Well=<well>/data_0.parquet   (hive partitions)
    wells/wells.parquet                                                (well_stats)
    fields_qc/fields_qc.parquet                                        (field_qc)

Each table has a folder of its own, so a glob or dataset over one folder never
mixes tables. Object numbers and centroids are ``Metadata_`` columns (pycytominer
infers features from the compartment prefixes).

Cell files keep the partition columns inside them too, so a single file read on
its own still has its ``Metadata_Plate`` / ``Metadata_Well``. DuckDB writes the
files straight from the catalog (no rows pass through Python); the export goes
to a temporary folder first and is renamed into place, so a failed export never
leaves half a dataset where a complete one is expected. The export carries
hts's marker file (``.hts-output.json``, every file it wrote): ``overwrite``
replaces only such a folder, never the catalog's or a plate store's folder, nor
one holding files of the user's (:mod:`hts.tasks.outputs`).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from hts.catalog.db import sql_literal
from hts.config import Workspace
from hts.errors import CatalogError
from hts.tasks.outputs import (
    check_output_path,
    check_replaceable,
    spreadsheet_safe_sql,
    spreadsheet_safe_table,
    write_marker,
)

__all__ = ["ExportReport", "ProfileExportReport", "export", "export_profiles", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("parquet", "csv")


@dataclass
class ExportReport:
    out: str
    format: str
    cells: int
    wells: int
    files: int
    plates: list[str]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def export(
    out: str | Path,
    *,
    workspace: Workspace,
    plates: list[str] | None = None,
    run: str | None = None,
    format: str = "parquet",
    overwrite: bool = False,
) -> ExportReport:
    """Write the cells of the current complete runs (of ``plates``, or run ``run``, finished or not) and the well/field tables under ``out``."""
    catalog = workspace.catalog
    out = _checked_out(out, format, workspace, overwrite)
    plate_ids = [catalog.find_plate(p).plate_id for p in plates] if plates else None

    def where(plate_col: str, run_col: str) -> str:
        conds = ["true"]
        if plate_ids:
            conds.append(f"{plate_col} IN ({', '.join(sql_literal(p) for p in plate_ids)})")
        if run:
            conds.append(f"starts_with({run_col}, {sql_literal(run)})")
        else:  # finished runs only: a failed or interrupted run's partial cells are not a dataset
            conds.append(f"{run_col} IN (SELECT run_id FROM runs WHERE status = 'complete')")
        return " AND ".join(conds)

    cond, wcond = where("Metadata_PlateID", "Metadata_Run"), where("plate_id", "run_id")
    ext = format  # the file extension
    opts = "FORMAT parquet, COMPRESSION zstd" if format == "parquet" else "FORMAT csv, HEADER true"
    tmp = _staging(out)
    try:
        with catalog.connect(read_only=True) as con:
            try:
                n = con.execute(f"SELECT count(*) FROM cell_profiles WHERE {cond}").fetchall()[0][0]
                if n == 0:
                    raise CatalogError(
                        f"{catalog.name}: no measured cells to export (run `hts segment` or `hts measure` first)"
                    )
                names = [
                    r[0]
                    for r in con.execute(
                        f"SELECT DISTINCT Metadata_Plate FROM cell_profiles WHERE {cond} ORDER BY 1"
                    ).fetchall()
                ]
                # CSV opens in spreadsheets: text that would start a formula is prefixed with '
                safe = (lambda q: spreadsheet_safe_sql(con, q)) if format == "csv" else (lambda q: q)
                cells_q = f"SELECT * FROM cell_profiles WHERE {cond} ORDER BY Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_ObjectNumber"
                con.execute(
                    f"COPY ({safe(cells_q)}) "
                    f"TO {sql_literal(str(tmp / 'cells'))} ({opts}, PARTITION_BY (Metadata_Plate, Metadata_Well), WRITE_PARTITION_COLUMNS true)"
                )
                wells = con.execute(f"SELECT count(*) FROM well_stats WHERE {wcond}").fetchall()[0][0]
                wells_q = (
                    f"SELECT plate AS Metadata_Plate, well AS Metadata_Well, compound AS Metadata_Compound, "
                    f"concentration AS Metadata_Concentration, unit AS Metadata_Unit, role AS Metadata_Role, engine AS Metadata_Engine, "
                    f"* EXCLUDE (plate, well, compound, concentration, unit, role, engine) FROM well_stats WHERE {wcond} "
                    f"ORDER BY plate, engine, row_index, column_index"
                )
                (tmp / "wells").mkdir()
                (tmp / "fields_qc").mkdir()
                con.execute(f"COPY ({safe(wells_q)}) TO {sql_literal(str(tmp / 'wells' / ('wells.' + ext)))} ({opts})")
                qc_q = (
                    f"SELECT * REPLACE (array_to_string(flags, ';') AS flags) FROM field_qc WHERE {wcond} "
                    f"ORDER BY plate, engine, well, field_index"
                )
                con.execute(
                    f"COPY ({safe(qc_q)}) TO {sql_literal(str(tmp / 'fields_qc' / ('fields_qc.' + ext)))} ({opts})"
                )
            except duckdb.Error as e:
                raise CatalogError(f"export failed: {str(e).strip().splitlines()[0]}") from None
        files = _publish(tmp, out, ext)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(out=str(out), format=format, cells=int(n), wells=int(wells), files=files, plates=names)


def _checked_out(out: str | Path, format: str, workspace: Workspace, overwrite: bool) -> Path:
    """The export folder, once the format is known and the folder is one hts may write or replace."""
    if format not in EXPORT_FORMATS:
        raise CatalogError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out = check_output_path(out, workspace.catalog, plates_dir=workspace.plates_dir)
    check_replaceable(out, "export", overwrite=overwrite)
    return out


def _staging(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` to write the export into (:func:`_publish` puts it in place)."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path, ext: str) -> int:
    """Mark the finished folder ``tmp`` as hts's and put it at ``out``; the number of data files."""
    files = sum(1 for p in tmp.rglob(f"*.{ext}"))
    write_marker(tmp, "export")
    if out.exists():
        # checked before writing: empty, or an earlier export of hts's own (its marker lists every file in it)
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return files


@dataclass
class ProfileExportReport:
    out: str
    format: str
    profile_set_id: str
    wells: int
    treatments: int
    features: int
    files: int
    plates: list[str]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def export_profiles(
    out: str | Path,
    *,
    workspace: Workspace,
    profile_set: str | None = None,
    format: str = "parquet",
    overwrite: bool = False,
) -> ProfileExportReport:
    """Write a profile set (default: the latest) in the layout pycytominer writes, one pair of files per plate::

    <plate>_augmented.parquet                        per-well aggregated profiles (all features) + Metadata_*
    <plate>_normalized_feature_select_negcon.parquet normalised, feature-selected profiles
    consensus.parquet                                per treatment, median of its wells (selected features)
    activity.parquet                                 mAP, p, q, hit per treatment (after `hts activity`)
    features.parquet                                 every feature: selected, or why it was dropped
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from hts.catalog import profiles as pstore
    from hts.tasks.profile import profile_table

    catalog = workspace.catalog
    out = _checked_out(out, format, workspace, overwrite)
    sid = pstore.find_profile_set(catalog, profile_set)["profile_set_id"]

    def write(table: pa.Table, path: Path) -> None:
        if format == "parquet":
            pq.write_table(table, path, compression="zstd")
        else:
            pacsv.write_csv(spreadsheet_safe_table(table), path)

    aggregated = profile_table(workspace, sid, level="aggregated", selected=False)
    normalized = profile_table(workspace, sid, level="normalized", selected=True)
    consensus = profile_table(workspace, sid, level="consensus", selected=True)
    with catalog.connect(read_only=True) as con:
        activity = con.sql(
            "SELECT compound AS Metadata_Compound, concentration AS Metadata_Concentration, unit AS Metadata_Unit, "
            "* EXCLUDE (profile_set_id, compound, concentration, unit) FROM activity WHERE profile_set_id = ? "
            "ORDER BY q_value, compound",
            params=[sid],
        ).to_arrow_table()
    features = pstore.load_features(catalog, sid)
    plates = sorted(set(aggregated.column("Metadata_Plate").to_pylist()))
    tmp = _staging(out)
    try:
        for plate in plates:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in plate)
            write(
                aggregated.filter(pc.equal(aggregated.column("Metadata_Plate"), plate)),
                tmp / f"{safe}_augmented.{format}",
            )
            write(
                normalized.filter(pc.equal(normalized.column("Metadata_Plate"), plate)),
                tmp / f"{safe}_normalized_feature_select_negcon.{format}",
            )
        write(consensus, tmp / f"consensus.{format}")
        write(features, tmp / f"features.{format}")
        if activity.num_rows:
            write(activity, tmp / f"activity.{format}")
        files = _publish(tmp, out, format)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_sel = sum(features.column("selected").to_pylist())
    return ProfileExportReport(
        out=str(out), format=format, profile_set_id=sid, wells=normalized.num_rows, treatments=consensus.num_rows,
        features=n_sel, files=files, plates=plates,
    )  # fmt: skip
