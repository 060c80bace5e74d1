"""``hts measure``, ``hts qc``, ``hts export`` and ``hts report``: what comes after segmentation.

Added to the main app with ``register(app)``; each command is one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hts.cli import common as cli
from hts.cli.common import DbOpt, GranularityOpt, JsonOpt, RodOpt, SchedulerOpt, TextureOpt, WorkersOpt

__all__ = ["register"]

PlatesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Plates (name, id or store path). Default: every plate in the catalog.", show_default=False),
]
RunOpt = Annotated[
    Optional[str],
    typer.Option(
        "--run", help="Only this segmentation run (id or prefix; `hts info PLATE` lists runs).", show_default=False
    ),
]


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    if v is None or v != v:  # None or NaN
        return "n/a"
    return fmt.format(v)


def register(app: typer.Typer) -> None:
    """Add the result commands to ``app``."""
    app.command("measure")(measure)
    app.command("qc")(qc)
    app.command("export")(export)
    app.command("report")(report)


def measure(
    plates: PlatesArg = None,
    run: RunOpt = None,
    db: DbOpt = None,
    texture: TextureOpt = False,
    granularity: GranularityOpt = False,
    rod: RodOpt = False,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure per-cell features of existing segmentation runs into the cells table. Resumable.

    `hts segment` already measures shape and intensity; use this for runs made
    with --no-features, or to add texture, granularity or rod features
    (fields measured with the same options are skipped).
    """
    from hts.tasks.measure import measure as run_measure

    with cli.errors(), cli.progress_bar("measure", not as_json) as progress:
        reports = run_measure(
            plates or None,
            workspace=cli.workspace(db, scheduler),
            run=run,
            features={"texture": texture, "granularity": granularity, "rod": rod},
            workers=workers,
            progress=progress,
        )
    if as_json:
        cli.print_json([r.to_dict() for r in reports])
        return
    for r in reports:
        verb = "Measured" if r.status == "measured" else "Already measured"
        cli.out.print(
            f"{verb}: plate [bold]{r.plate}[/] run {r.run_id[:8]} ({r.engine}) — {r.fields_measured} fields "
            f"in {r.seconds:.1f} s; {r.cells} cells in the catalog"
        )


def qc(
    plates: PlatesArg = None,
    run: RunOpt = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="Per-well value for Z' and SSMD: cell_count, or any well_stats column / feature (a feature means its per-well median), e.g. Cells_Intensity_NucCytoRatio_GFP.",
        ),
    ] = "cell_count",
    db: DbOpt = None,
    show: Annotated[int, typer.Option("--show", help="List at most this many flagged fields.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Plate QC: Z'-factor and SSMD between control wells, out-of-focus / saturated / outlier fields, flagged wells.

    Controls come from the platemap's role column (positive_control, negative_control;
    `hts annotate PLATE --platemap FILE`). Z' > 0.5: an excellent assay window;
    |SSMD| >= 2: a strong effect. Exits with code 3 if a run's Z' is below 0 (the controls overlap).
    """
    from hts.tasks.qc import plate_qc

    with cli.errors():
        reports = plate_qc(plates or None, workspace=cli.workspace(db), run=run, metric=metric)
    if as_json:
        cli.print_json([r.to_dict() for r in reports])
    else:
        from rich.table import Table

        for r in reports:
            colour = {"excellent": "green", "marginal": "yellow", "unusable": "red"}.get(r.quality, "dim")
            cli.out.print(
                f"[bold]{r.plate}[/] run {r.run_id[:8]} ({r.engine}), metric [bold]{r.metric}[/]: "
                f"Z' = [{colour}]{_num(r.z_prime)}[/] ({r.quality}), SSMD = {_num(r.ssmd, '{:.2f}')}; "
                f"positive {r.positive['wells']} wells mean {_num(r.positive['mean'], '{:.4g}')} sd {_num(r.positive['sd'], '{:.3g}')}, "
                f"negative {r.negative['wells']} wells mean {_num(r.negative['mean'], '{:.4g}')} sd {_num(r.negative['sd'], '{:.3g}')}"
            )
            cli.out.print(
                f"  {len(r.flagged_fields)} of {r.fields} fields flagged; {len(r.flagged_wells)} wells flagged"
            )
            if r.flagged_fields and show:
                t = Table("well", "field", "cells", "focus z", "saturated", "flags")
                for f in r.flagged_fields[:show]:
                    t.add_row(
                        f["well"],
                        str(f["field_index"]),
                        str(f["cell_count"]),
                        _num(f["focus_z"], "{:.1f}"),
                        _num(f["saturated_fraction_max"], "{:.2%}"),
                        ", ".join(f["flags"]),
                    )
                cli.out.print(t)
            for w in r.flagged_wells[:show]:
                cli.out.print(f"  well {w['well']}: {w['reason']}")
    if any(r.z_prime == r.z_prime and r.z_prime < 0 for r in reports):
        raise typer.Exit(3)


def export(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write: cells/ (hive-partitioned by plate and well), wells/wells.parquet, fields_qc/fields_qc.parquet; a folder per table.",
            show_default=False,
        ),
    ],
    plates: PlatesArg = None,
    run: RunOpt = None,
    format_: Annotated[str, typer.Option("--format", help="parquet (default) or csv.")] = "parquet",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the folder if it is not empty.")] = False,
    profiles: Annotated[
        bool,
        typer.Option(
            "--profiles",
            help="Export a profile set (`hts profile`) instead of the cells, as pycytominer writes one: per plate "
            "<plate>_augmented and <plate>_normalized_feature_select_negcon, consensus, features, activity.",
        ),
    ] = False,
    profile_set: Annotated[
        Optional[str],
        typer.Option(
            "--profile-set", help="With --profiles: this set (id or prefix; default the latest).", show_default=False
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export per-cell profiles (Metadata_Plate / _Well / _Site + platemap columns) and per-well aggregates.

    Read it with polars (pl.scan_parquet("OUT/cells/**/*.parquet", hive_partitioning=True))
    or pycytominer (the Metadata_* columns are inside every file). With --profiles, the
    well profiles of `hts profile` instead.
    """
    from hts.tasks.export import export as run_export
    from hts.tasks.export import export_profiles

    if profiles:
        with cli.errors():
            rep = export_profiles(
                out_dir, workspace=cli.workspace(db), profile_set=profile_set, format=format_, overwrite=overwrite
            )
        if as_json:
            cli.print_json(rep.to_dict())
            return
        cli.out.print(
            f"Exported profile set {rep.profile_set_id[:12]}: {rep.wells} wells of {', '.join(rep.plates)}, "
            f"{rep.treatments} consensus profiles, {rep.features} selected features ({rep.files} files) to {rep.out}"
        )
        return
    with cli.errors():
        rep = run_export(
            out_dir, workspace=cli.workspace(db), plates=plates or None, run=run, format=format_, overwrite=overwrite
        )
    if as_json:
        cli.print_json(rep.to_dict())
        return
    cli.out.print(
        f"Exported {rep.cells} cells from {', '.join(rep.plates)} ({rep.wells} wells, {rep.files} files) to {rep.out}"
    )


def report(
    plate: Annotated[str, typer.Argument(help="Plate (name, id or store path).", show_default=False)],
    run: RunOpt = None,
    value: Annotated[
        Optional[list[str]],
        typer.Option(
            "--value",
            "-v",
            help="Per-well value to map (repeatable): cell_count, or a well_stats column / feature (a feature means its per-well median).",
            show_default=False,
        ),
    ] = None,
    sql: Annotated[
        Optional[str],
        typer.Option(
            "--sql",
            help="Also map a query's result: it must return a 'well' column and a numeric column.",
            show_default=False,
        ),
    ] = None,
    field: Annotated[
        Optional[list[str]],
        typer.Option(
            "--field",
            "-f",
            help="Overlay this field, e.g. B03 or B03/1 (repeatable). Default: a negative and a positive control and the extreme wells.",
            show_default=False,
        ),
    ] = None,
    overlays: Annotated[
        int, typer.Option("--overlays", min=0, help="How many fields to overlay when --field is not given.")
    ] = 4,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Folder for the PNGs and report.html (default: reports/<plate>/).", show_default=False
        ),
    ] = None,
    metric: Annotated[
        Optional[str],
        typer.Option(
            "--metric",
            help="The assay metric whose Z' / SSMD lead the QC table (default: the first -v value); the other values follow.",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a plate report: heatmaps, dose-response fits, segmentation overlays and one self-contained HTML page.

    Examples:

      hts report DEMO-PLATE

      hts report DEMO-PLATE -v cell_count -v Cells_Intensity_NucCytoRatio_GFP -f B03/1

      hts report DEMO-PLATE --sql "SELECT well, avg(Nuclei_AreaShape_Area) AS area FROM cells GROUP BY well"
    """
    from hts.tasks.report import report as run_report

    with cli.errors():
        res = run_report(
            plate,
            workspace=cli.workspace(db),
            run=run,
            values=value or None,
            sql=sql,
            fields=field or None,
            n_overlays=overlays,
            out=out_dir,
            metric=metric,
        )
    if as_json:
        cli.print_json(res.to_dict())
        return
    cli.out.print(
        f"Report of [bold]{res.plate}[/] (run {res.run_id[:8]}): {res.html}  ({len(res.images)} pictures in {res.out})"
    )
