"""Read-only SQL over the catalog, with results as rows or written to CSV / JSON / Parquet."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from hts.catalog.db import _one_line
from hts.config import Workspace
from hts.errors import CatalogError
from hts.resources import data_dir

__all__ = ["run_query", "FORMATS", "presets", "preset_sql", "cancel_after", "snapshot_of_run"]

FORMATS = ("table", "csv", "json", "parquet")


def presets() -> dict[str, str]:
    """Named queries shipped in ``schemas/queries/<name>.sql``: name -> their leading comment, whole."""
    out = {}
    for p in sorted((data_dir("schemas") / "queries").glob("*.sql")):
        lines = []
        for line in p.read_text().splitlines():
            if not line.startswith("--"):
                break
            lines.append(line.removeprefix("--").strip())
        out[p.stem] = " ".join(lines)
    return out


def preset_sql(name: str) -> str:
    path = data_dir("schemas") / "queries" / f"{name}.sql"
    if not path.is_file():
        raise CatalogError(f"unknown preset {name!r}; presets: {', '.join(presets())}")
    return path.read_text()


@contextmanager
def cancel_after(con: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    """Interrupt ``con``'s query after ``seconds`` (None: never); a :class:`CatalogError` raised
    inside then says that the query was cancelled and why."""
    if seconds is None:
        yield
        return
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(seconds, stop)
    timer.start()
    try:
        yield
    except CatalogError:
        if fired.is_set():
            raise CatalogError(
                f"the query ran longer than {seconds:g} s and was cancelled; narrow it (WHERE, LIMIT)"
            ) from None
        raise
    finally:
        timer.cancel()


def run_query(
    sql: str,
    *,
    workspace: Workspace,
    limit: int | None = None,
    allow_read: list[str | Path] | tuple = (),
    timeout_s: float | None = None,
    as_of: str | None = None,
) -> pa.Table:
    """Run one query ``sql`` on the catalog; return the result as an Arrow table.

    What "read-only" guarantees (:meth:`~hts.catalog.Catalog.user_connection`):
    the catalog is attached read-only, ``sql`` must be a single query (several
    statements, ``SET``, ``PRAGMA``, ``ATTACH``, ``COPY``, ``INSERT``, DDL are
    refused), and no file on the host is read or written (``read_csv``,
    ``read_text``, ``glob``, ``COPY ... TO`` fail) except reading files under
    the folders of ``allow_read``. Errors come back as one-line
    :class:`~hts.errors.CatalogError` messages, DuckDB's hints kept.
    ``timeout_s``: cancel the query after this long (the web app's SQL box).
    ``as_of``: a run id (or its first 6+ characters): read the catalog as it was when that run
    completed (DuckLake catalogs keep every snapshot; a DuckDB file keeps none).
    """
    catalog = workspace.catalog
    snapshot = snapshot_of_run(catalog, as_of) if as_of else None
    with catalog.user_connection(allow_read=allow_read, snapshot=snapshot) as con, cancel_after(con, timeout_s):
        stmt = catalog.check_user_sql(con, sql)
        try:
            rel = con.sql(stmt.query)
            if rel is None:
                raise CatalogError("the statement returned no rows (only queries are allowed)")
            if limit is not None:
                rel = rel.limit(limit)
            # DuckDB >= 1.4 names it to_arrow_table(); older releases fetch_arrow_table().
            fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
            return fetch()
        except duckdb.Error as e:
            raise CatalogError(_one_line(e)) from None


def snapshot_of_run(catalog, run: str) -> int:
    """The catalog snapshot at which run ``run`` (an id or its first 6+ characters) completed."""
    if not catalog.keeps_snapshots:
        raise CatalogError(
            f"--as-of reads the catalog as it was: that needs a DuckLake catalog (snapshots); "
            f"{catalog.name} is a DuckDB file, which keeps only its present state"
        )
    if len(run) < 6:
        raise CatalogError(f"--as-of {run!r}: give a run id or at least its first 6 characters")
    ids = [r["run_id"] for r in catalog.query("SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [run])]
    if len(ids) != 1:
        raise CatalogError(
            f"--as-of {run!r}: {'no run' if not ids else f'{len(ids)} runs'} with that id (`hts runs` lists them)"
        )
    return catalog.snapshot_of_run(ids[0])


def write_result(table: pa.Table, path: str | Path, fmt: str, *, workspace: Workspace) -> Path:
    """Write a query result as CSV, JSON (records) or Parquet; never onto the workspace's catalog or a plate store."""
    from hts.tasks.outputs import check_output_path, spreadsheet_safe_table

    check_output_path(path, workspace.catalog, plates_dir=workspace.plates_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(spreadsheet_safe_table(table), path)
    elif fmt == "json":
        import json

        path.write_text(json.dumps(table.to_pylist(), default=str, indent=1) + "\n")
    else:
        raise CatalogError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return path
