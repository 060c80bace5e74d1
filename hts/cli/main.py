"""The ``hts`` command line: a thin shell over the library.

Each command parses options, calls one library function and prints its result
(a rich table, or JSON with ``--json``). Errors from bad input are printed as a
single line ``error: ...`` with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from hts import __version__
from hts.cli.common import (
    DbOpt,
    GranularityOpt,
    JsonOpt,
    RodOpt,
    SchedulerOpt,
    TextureOpt,
    WorkersOpt,
    err,
    out,
    pairs,
    param_values,
    print_json,
    progress_bar,
    workspace,
)
from hts.cli.common import errors as _errors

app = typer.Typer(
    name="hts",
    help=(
        "High-throughput-screening plate analyzer.\n\n"
        "Typical session:\n\n"
        "  hts ingest plate.nd2    [dim]# into ./plates/<name>.zarr + ./hts.duckdb[/]\n\n"
        "  hts info PLATE          [dim]# wells, fields, channels, metadata[/]\n\n"
        "  hts annotate PLATE --platemap layout.csv\n\n"
        "  hts segment --engine classic   [dim]# labels into the plate, per-cell features into the catalog[/]\n\n"
        "  hts qc                  [dim]# Z', SSMD, flagged fields and wells[/]\n\n"
        "  hts query --preset cell-count\n\n"
        "  hts report PLATE        [dim]# heatmaps, overlays, one HTML summary[/]\n\n"
        "  hts export --out profiles/   [dim]# Parquet for pycytominer / polars[/]\n\n"
        "No data at hand? [bold]hts demo[/] writes a synthetic plate.\n\n"
        "The workspace (catalog and plates folder) comes from --db, HTS_DB / HTS_PLATES_DIR, "
        "./hts.toml, or the defaults ./hts.duckdb and ./plates/."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"hts {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    pass


# --------------------------------------------------------------------------- ingest
@app.command()
def ingest(
    source: Annotated[
        Path,
        typer.Argument(
            help="An .nd2 file or a folder of TIFFs (ImageXpress, Opera/Operetta, Cellomics, or --pattern).",
            show_default=False,
        ),
    ],
    out_: Annotated[
        Optional[str],
        typer.Option(
            "--out",
            help="Plate store: a path or a URL such as s3://bucket/plates/NAME.zarr (default: <plates dir>/<plate name>.zarr).",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    pattern: Annotated[
        Optional[str],
        typer.Option(
            "--pattern",
            help="File naming for other TIFF layouts, e.g. '{well}_s{field}_{channel}.tif' (placeholders: plate well row col field channel z t; * wildcard).",
            show_default=False,
        ),
    ] = None,
    reader: Annotated[
        Optional[str],
        typer.Option(
            "--reader",
            help="Force a reader: nd2, imagexpress, opera, cellomics, pattern (or a plug-in's; default: detected).",
            show_default=False,
        ),
    ] = None,
    reader_old: Annotated[
        Optional[str], typer.Option("--format", hidden=True, help="Old name of --reader (one release).")
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Plate name (default: from the file or folder).", show_default=False)
    ] = None,
    plate_type: Annotated[
        Optional[int],
        typer.Option(
            "--plate-type",
            help="96, 384 or 1536: the plate to fit wells on when positions carry no well names.",
            show_default=False,
        ),
    ] = None,
    channel_names: Annotated[
        Optional[str],
        typer.Option(
            "--channel-names",
            help="Comma-separated channel names for TIFF plates whose files only number them (e.g. 'DAPI,GFP').",
            show_default=False,
        ),
    ] = None,
    max_project: Annotated[
        bool, typer.Option("--max-project", help="Store the maximum projection over Z instead of the stack.")
    ] = False,
    tile: Annotated[int, typer.Option("--tile", help="Chunk size in y and x, pixels.")] = 1024,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing plate at the output.")] = False,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a plate (ND2 or TIFF folder) into OME-Zarr HCS and the catalog. Resumable."""
    from hts.tasks.ingest import ingest as run

    opts: dict[str, Any] = {}
    if plate_type:
        opts["plate_wells"] = plate_type
    if channel_names:
        opts["channel_names"] = [c.strip() for c in channel_names.split(",") if c.strip()]
    with _errors(), progress_bar("ingest", not as_json) as progress:
        report = run(
            source,
            workspace=workspace(db, scheduler),
            out=out_,
            overwrite=overwrite,
            max_project=max_project,
            tile=tile,
            reader=reader or reader_old,
            pattern=pattern,
            name=name,
            workers=workers,
            progress=progress,
            **opts,
        )
    if as_json:
        print_json(report.to_dict())
        return
    verb = {
        "ingested": "Ingested",
        "resumed": "Resumed and finished",
        "unchanged": "Already ingested (use --overwrite to redo)",
    }[report.status]
    out.print(
        f"{verb}: plate [bold]{report.name}[/] — {report.wells} wells, {report.fields_total} fields, "
        f"channels {', '.join(report.channels)}\n"
        f"  store   {report.store}\n  catalog {report.catalog}\n"
        f"  wrote {report.fields_written} fields ({report.megabytes_written:.1f} MB) in {report.seconds:.1f} s"
    )


# --------------------------------------------------------------------------- info / plates
@app.command()
def plates(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List the plates in the catalog."""
    from hts.tasks.info import list_plates

    with _errors():
        rows = list_plates(workspace=workspace(db))
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    t = Table("plate", "id", "wells", "fields", "channels", "status", "store")
    for r in rows:
        t.add_row(
            r["name"], r["plate_id"][:8], str(r["wells"]), str(r["fields"]), r["channels"], r["status"], r["store_uri"]
        )
    out.print(t if rows else "no plates yet: run `hts ingest SOURCE`")


@app.command()
def info(
    plate: Annotated[
        Optional[str],
        typer.Argument(help="Plate name, id or store path (default: the only plate).", show_default=False),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a plate as a grid of wells (fields per well), its channels and metadata."""
    from hts.tasks.info import plate_info

    with _errors():
        data = plate_info(plate, workspace=workspace(db))
    if as_json:
        print_json(data)
        return
    from hts.cli.render import render_info

    render_info(out, data)


@app.command()
def annotate(
    plate: Annotated[str, typer.Argument(help="Plate name, id or store path.", show_default=False)],
    platemap: Annotated[
        Path,
        typer.Option(
            "--platemap",
            help="CSV with columns well, role (sample / negative_control / positive_control / empty), and optional compound, concentration, unit, plus any free columns.",
            show_default=False,
        ),
    ],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Attach per-well treatments (compound, concentration, control role) from a platemap CSV."""
    from hts.catalog import annotate as run

    with _errors():
        catalog = workspace(db).catalog
        record = catalog.find_plate(plate)
        n = run(catalog, record, platemap)
    if as_json:
        print_json({"plate": record.name, "plate_id": record.plate_id, "wells_annotated": n})
        return
    out.print(f"Annotated {n} wells of plate [bold]{record.name}[/] from {platemap}")


@app.command()
def segment(
    plates: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Plates (name, id or store path). Default: every ingested plate in the catalog.", show_default=False
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            "-e",
            help="Segmentation engine: a name (`hts engines` lists them) or the folder of an engine trained with `hts train`.",
        ),
    ] = "classic",
    engine_path: Annotated[
        Optional[Path],
        typer.Option(
            "--engine-path", hidden=True, help="Old way to give an engine folder (one release): use --engine FOLDER."
        ),
    ] = None,
    db: DbOpt = None,
    channels: Annotated[
        Optional[str],
        typer.Option(
            "--channels",
            help="Which channel plays which role, e.g. 'nucleus=DAPI,cytoplasm=GFP' (default: guessed from channel names).",
            show_default=False,
        ),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param",
            "-p",
            help="Engine parameter NAME=VALUE (repeatable), e.g. -p nucleus_diameter_um=12. `hts engines --card NAME` lists them.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="auto, torch, onnxruntime or tensorrt (deep engines).")
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    tta: Annotated[
        bool,
        typer.Option(
            "--tta", help="Deep engines: average predictions over flips and 90° rotations (slower, slightly better)."
        ),
    ] = False,
    tile: Annotated[
        int, typer.Option("--tile", help="Tile size in pixels; larger fields are split with a halo and stitched.")
    ] = 1024,
    halo: Annotated[
        int, typer.Option("--halo", help="Minimum tile overlap in pixels (raised to the engine's largest object).")
    ] = 64,
    wells: Annotated[
        Optional[str], typer.Option("--wells", help="Wells to segment, e.g. 'A01:H12' or 'B,C05'.", show_default=False)
    ] = None,
    pixel_size: Annotated[
        Optional[float],
        typer.Option("--pixel-size", help="µm per pixel, for plates whose metadata lacks it.", show_default=False),
    ] = None,
    label_suffix: Annotated[
        Optional[str],
        typer.Option(
            "--label-suffix",
            help="Store labels as nuclei_SUFFIX etc., to keep several runs' labels side by side.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace labels written by another run (or redo this one).")
    ] = False,
    features: Annotated[
        bool,
        typer.Option(
            "--features/--no-features",
            help="Measure per-cell features (shape, intensity per channel, nucleus/cytoplasm) into the catalog's cells table right after segmenting each field.",
        ),
    ] = True,
    texture: TextureOpt = False,
    granularity: GranularityOpt = False,
    rod: RodOpt = False,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Segment plates with an engine on Dask workers and measure every cell. Resumable.

    Labels go into each field of the plate store (NGFF labels); per-cell features
    go into the catalog's [bold]cells[/] table (query them with `hts query`, export
    with `hts export`). --engine also takes the folder of a model trained with
    `hts train`.

    Examples:

      hts segment --engine classic

      hts segment PLATE1 --engine nuclei --backend onnxruntime --texture

      hts segment --engine foci --channels nucleus=DAPI,foci=FITC
    """
    from hts.api import segment as run

    params = param_values(pairs(",".join(param or []), "--param"))
    if tta:
        params["tta"] = True
    with _errors(), progress_bar("segment", not as_json) as progress:
        reports = run(
            plates or None,
            engine=engine_path.expanduser() if engine_path else engine,
            workspace=workspace(db, scheduler),
            channels=pairs(channels, "--channels"),
            params=params,
            backend=backend,
            device=device,
            tile=tile,
            halo=halo,
            wells=wells,
            overwrite=overwrite,
            label_suffix=label_suffix,
            pixel_size_um=pixel_size,
            workers=workers,
            features={"texture": texture, "granularity": granularity, "rod": rod} if features else False,
            progress=progress,
        )
    if as_json:
        print_json([r.to_dict() for r in reports])
        return
    for r in reports:
        if r.status == "skipped":
            err.print(f"[yellow]skipped[/] plate [bold]{escape(r.plate)}[/]: {escape(r.notes[0])}")
            continue
        verb = {
            "segmented": "Segmented",
            "resumed": "Resumed and finished",
            "unchanged": "Already segmented (same engine and parameters)",
        }[r.status]
        objs = ", ".join(f"{n} {k}" for k, n in sorted(r.objects.items()))
        out.print(
            f"{verb}: plate [bold]{r.plate}[/] with {r.engine} ({r.backend}, {r.device}) — "
            f"{r.fields_segmented}/{r.fields_total} fields in {r.seconds:.1f} s; {objs or 'no objects'}; "
            f"labels {', '.join(r.labels.values())}; run {r.run_id[:8]}"
            + (f"; {r.cells} cells measured" if r.cells else "")
        )
        for note in r.notes:
            out.print(f"[yellow]{escape(note)}[/]")
        for c in r.checks:
            out.print(
                f"[yellow]warning:[/] {c['fields']} of {c['of']} fields of {escape(r.plate)} (e.g. {c['example']}): "
                f"{escape(c['message'])}; `hts qc {escape(r.plate)}` lists them"
            )


@app.command()
def engines(
    card: Annotated[
        Optional[str], typer.Option("--card", help="Print one engine's model card and parameters.", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List segmentation engines and the package of each (plug-ins too): channels they read, outputs, backends, model cards."""
    from hts.compute.segment.engines import plugin_errors
    from hts.tasks.engines import describe_engines

    with _errors():
        rows = [e.to_dict() for e in describe_engines(card)]
    problems = plugin_errors()
    if as_json:
        print_json(rows)
        for e in problems:  # on stderr: stdout stays the JSON list
            err.print(f"not loaded: {escape(str(e))}", soft_wrap=True)
        return
    from hts.cli.render import render_engines

    render_engines(out, rows, full=card is not None, errors=[] if card else problems)


# --------------------------------------------------------------------------- query
@app.command()
def query(
    sql: Annotated[
        Optional[str],
        typer.Argument(
            help='A SQL query over the catalog (DuckDB dialect), e.g. "SELECT well, cell_count FROM well_stats".',
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            help="A named query instead of SQL: cell-count, dose-response, qc, hits, profile-features, dose-dependent-features (`--preset list` shows them).",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    format_: Annotated[str, typer.Option("--format", help="table (default: printed), csv, json or parquet.")] = "table",
    out_file: Annotated[
        Optional[Path],
        typer.Option("--out", help="Write the result to this file (csv/json/parquet).", show_default=False),
    ] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many rows.", show_default=False)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON (the same as --format json).")
    ] = False,
    allow_read: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--allow-read",
            help="A folder whose files the query may read (read_csv, read_parquet), e.g. a compound table to join; repeatable. Nothing is ever written.",
            show_default=False,
        ),
    ] = None,
    as_of: Annotated[
        Optional[str],
        typer.Option(
            "--as-of",
            help="Read the catalog as it was when this run (id or its first 6+ characters) completed: DuckLake catalogs only.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one read-only SQL query on the catalog; print it as a table or write CSV / JSON / Parquet.

    Read-only means: one query (SELECT / WITH / FROM), the catalog attached
    read-only, no file on this machine read or written by the SQL itself (no
    COPY, ATTACH, SET, PRAGMA, read_csv, glob), except reading the folders given
    with --allow-read.

    Tables: plates, wells, fields, channels, platemap, runs, run_fields, cells (one
    row per cell: Nuclei_*, Cells_*, Cytoplasm_* features). Views: well_stats
    (per well: cell_count and <feature>_mean/_median/_std, with the platemap),
    plate_stats, field_qc (focus, saturation, cell-count outliers, flags),
    cell_profiles (cells with Metadata_* columns).

    Examples:

      hts query "SELECT well, compound, cell_count FROM well_stats ORDER BY cell_count DESC LIMIT 5"

      hts query --preset dose-response --format csv --out dose.csv

      hts query "SELECT count(*) FROM cells" --as-of 3f2a9c    (DuckLake: as when run 3f2a9c completed)
    """
    from hts.errors import CatalogError
    from hts.tasks.query import FORMATS, preset_sql, presets, run_query, write_result

    if as_json:
        format_ = "json"
    if preset == "list":
        if as_json:
            print_json(presets())
            return
        for name, what in presets().items():
            out.print(f"[bold]{name}[/]  {escape(what)}")
        return
    with _errors():
        if format_ not in FORMATS:
            raise CatalogError(f"unknown format {format_!r}; choose one of {', '.join(FORMATS)}")
        if (sql is None) == (preset is None):
            raise CatalogError("give either a SQL query or --preset NAME")
        ws = workspace(db)
        table = run_query(
            sql if preset is None else preset_sql(preset),
            workspace=ws,
            limit=limit,
            allow_read=allow_read or (),
            as_of=as_of,
        )
        if out_file is not None:
            path = write_result(table, out_file, "csv" if format_ == "table" else format_, workspace=ws)
            err.print(f"wrote {table.num_rows} rows to {path}")
            return
    if format_ == "json":
        print_json(table.to_pylist())
    elif format_ == "csv":
        import pyarrow.csv as pcsv

        from hts.tasks.outputs import spreadsheet_safe_table

        buf = __import__("io").BytesIO()
        pcsv.write_csv(spreadsheet_safe_table(table), buf)
        sys.stdout.write(buf.getvalue().decode())
    elif format_ == "parquet":
        err.print("error: --format parquet needs --out FILE")
        raise typer.Exit(1)
    else:
        from hts.cli.render import render_arrow_table

        render_arrow_table(out, table)


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the demo plate into.")] = Path("demo"),
    format_: Annotated[str, typer.Option("--format", help="nd2, imagexpress, opera or cellomics.")] = "nd2",
    plate_type: Annotated[int, typer.Option("--plate-type", help="96, 384 or 1536.")] = 96,
    wells: Annotated[
        Optional[str],
        typer.Option("--wells", help="Wells to image, e.g. 'A01:H12' (default: the whole plate).", show_default=False),
    ] = None,
    fields: Annotated[int, typer.Option("--fields", min=1, help="Fields per well.")] = 2,
    size: Annotated[int, typer.Option("--size", min=64, help="Field size in pixels (square).")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    masks: Annotated[bool, typer.Option("--masks", help="Also write ground-truth nucleus and cell masks.")] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Write the plate into the folder as an imager would, field after field (TIFF layouts; default "
            "ImageXpress): watch it with `hts watch` in another terminal.",
        ),
    ] = False,
    rate: Annotated[float, typer.Option("--rate", min=0.01, help="With --live: fields per second.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic demo plate (nuclei, cytoplasm, brightfield; dose-response; platemap CSV).

    With --live the plate is written into the folder while you watch it: each field's
    images one channel after another, each file in pieces, at --rate fields per second.
    """
    import tempfile

    from hts.errors import SourceError
    from hts.synth import make_plate

    if live and format_ == "nd2":
        format_ = "imagexpress"
    staging = tempfile.TemporaryDirectory(prefix="hts-demo-live-") if live else None
    with _errors():
        try:
            plate = make_plate(
                Path(staging.name) if staging else out_dir,
                format=format_,
                plate_type=plate_type,
                wells=wells,
                fields=fields,
                shape=(size, size),
                seed=seed,
                masks=masks,
            )
        except ValueError as e:  # make_plate's own checks of its arguments
            opt = {
                "plate_type": "--plate-type",
                "well": "--wells",
                "wells": "--wells",
                "shape": "--size",
                "format": "--format",
            }
            first = str(e).split(" ", 1)[0]
            raise SourceError(f"{opt.get(first, 'demo')}: {e}") from None
    if staging is not None:
        from hts.synth.acquire import acquire

        out.print(
            f"Acquiring {len(plate.wells)} wells × {plate.fields} fields into {out_dir} at {rate:g} field(s)/s; "
            f"in another terminal:\n  hts watch {out_dir} --platemap {out_dir / plate.platemap.name}"
        )
        with _errors():
            try:
                n = acquire(plate.source, out_dir, fields_per_second=rate)
            finally:
                staging.cleanup()
        out.print(f"Acquisition finished: {n} fields in {out_dir}")
        return
    data = {
        "source": str(plate.source),
        "platemap": str(plate.platemap),
        "truth": str(plate.truth_dir) if plate.truth_dir else None,
        "wells": len(plate.wells),
        "fields_per_well": plate.fields,
        "channels": list(plate.channels),
    }
    if as_json:
        print_json(data)
        return
    out.print(
        f"Demo plate: {data['wells']} wells × {plate.fields} fields, channels {', '.join(data['channels'])}\n"
        f"  source   {data['source']}\n  platemap {data['platemap']}\n"
        f"Next: hts ingest {data['source']}"
    )


# Commands defined in their own modules.
from hts.cli import catalog_cmd, evaluate_cmd, profile_cmd, results_cmd, serve_cmd, watch_cmd  # noqa: E402

results_cmd.register(app)
evaluate_cmd.register(app)
profile_cmd.register(app)
watch_cmd.register(app)
serve_cmd.register(app)
catalog_cmd.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
