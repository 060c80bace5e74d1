"""``hts runs`` (every run, with its snapshot on DuckLake) and ``hts catalog migrate`` (library calls:
:func:`hts.tasks.info.run_history`, :func:`hts.catalog.migrate.migrate_catalog`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from hts.cli.common import DbOpt, JsonOpt, err, errors, out, print_json, progress_bar, workspace

__all__ = ["register"]

catalog_app = typer.Typer(
    help="The catalog itself: move it between a DuckDB file and a DuckLake catalog (PostgreSQL + Parquet).",
    no_args_is_help=True,
)


def runs(
    plate: Annotated[
        Optional[str], typer.Argument(help="Only this plate (name, id or store path).", show_default=False)
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List every segmentation run, oldest first: replaced and failed runs included.

    On a DuckLake catalog each completed run shows the snapshot at which it completed;
    `hts query SQL --as-of RUN` reads the catalog as it was then (e.g. the cells of a
    plate before it was segmented again).

    Examples:
      hts runs
      hts runs DEMO-PLATE --json
    """
    from hts.tasks.info import run_history

    with errors():
        rows = run_history(plate, workspace=workspace(db))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("no runs yet (`hts segment` makes one)")
        return
    snap = "snapshot" in rows[0]
    t = Table(box=None, header_style="bold")
    for c in ("plate", "run", "engine", "state", "created", "fields", "cells", *(["snapshot"] if snap else [])):
        t.add_column(c, justify="right" if c in ("fields", "cells", "snapshot") else "left", no_wrap=True)
    for r in rows:
        t.add_row(
            escape(r["plate"]), r["run_id"][:8], escape(r["engine"]), r["state"],
            f"{r['created_at']:%Y-%m-%d %H:%M}", str(r["fields"]), f"{r['cells']:,}",
            *([str(r["snapshot"]) if r["snapshot"] is not None else "-"] if snap else []),
        )  # fmt: skip
    out.print(t)


@catalog_app.command("migrate")
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="The catalog to copy: a DuckDB file or ducklake:postgres://...")
    ],
    dest: Annotated[str, typer.Option("--to", help="The empty catalog to copy into (created when new).")],
    data_path: Annotated[
        Optional[str],
        typer.Option(
            "--data-path",
            help="Where a new DuckLake catalog keeps its Parquet files: a folder or s3://bucket/prefix/ "
            "(default: HTS_DATA_PATH / hts.toml data_path).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a workspace's catalog to another backend and verify it (row counts and checksums per table).

    The destination must hold no plates; the copy is one transaction, so an interrupted
    migration leaves it as it was. The source is never changed, nor are the plate stores
    (the catalog names them by path or URL). Then point the workspace at the new catalog
    (db = ... in hts.toml, HTS_DB or --db).

    Examples:
      hts catalog migrate --from hts.duckdb --to ducklake:postgres://hts@db.lab:5432/screens --data-path s3://lab/hts-lake/
      hts catalog migrate --from ducklake:postgres://hts@db.lab/screens --to copy.duckdb
    """
    from hts.catalog.migrate import migrate_catalog
    from hts.config import load_workspace

    with errors():
        src = load_workspace(db=source).catalog
        dst = load_workspace(db=dest, data_path=data_path).catalog
        with progress_bar("copying", not as_json) as bar:
            report = migrate_catalog(src, dst, progress=bar)
    if as_json:
        print_json({"source": report.source, "destination": report.destination, "tables": report.tables})
        return
    err.print(
        f"Copied {report.rows:,} rows in {len(report.tables)} tables from {escape(report.source)} "
        f"to {escape(report.destination)}; every table's rows and checksum verified"
    )


def register(app: typer.Typer) -> None:
    app.command()(runs)
    app.add_typer(catalog_app, name="catalog")
