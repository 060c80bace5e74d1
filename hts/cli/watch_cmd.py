"""``hts watch``: analyse a plate while the imager writes it (a library call: :func:`hts.tasks.watch.watch`)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from hts.cli import common as cli
from hts.cli.common import DbOpt, JsonOpt, SchedulerOpt, WorkersOpt

__all__ = ["register", "watch"]

_STYLE = {"flagged": "yellow", "broken": "red", "zprime": "bold", "end": "bold"}


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)


def watch(
    folder: Annotated[Path, typer.Argument(help="The plate folder the imager writes into.", show_default=False)],
    engine: Annotated[
        Optional[list[str]],
        typer.Option("--engine", "-e", help="Engine(s) to segment each field with (repeatable).", show_default=False),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param", "-p", help="Engine parameter NAME=VALUE (repeatable), as for hts segment.", show_default=False
        ),
    ] = None,
    platemap: Annotated[
        Optional[Path],
        typer.Option(
            "--platemap",
            help="Platemap CSV: wells are annotated as they arrive; its wells are the plate to expect.",
            show_default=False,
        ),
    ] = None,
    fields: Annotated[
        Optional[int],
        typer.Option(
            "--fields",
            min=1,
            help="Fields per well (default: the most any well the imager has finished has).",
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        Optional[int],
        typer.Option(
            "--channels",
            min=1,
            help="Channels per field, when no vendor file (.HTD, Index.idx.xml) names them.",
            show_default=False,
        ),
    ] = None,
    planes: Annotated[
        Optional[int],
        typer.Option(
            "--planes",
            min=1,
            help="Z planes per field of a Z-stack plate (the watch waits for all of them).",
            show_default=False,
        ),
    ] = None,
    timepoints: Annotated[
        Optional[int],
        typer.Option("--timepoints", min=1, help="Time points per field of a time-lapse plate.", show_default=False),
    ] = None,
    pixel_size: Annotated[
        Optional[float],
        typer.Option(
            "--pixel-size", help="Pixel size in µm, when the files do not say (as for hts segment).", show_default=False
        ),
    ] = None,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between listings of the folder.")] = 5.0,
    idle: Annotated[
        float, typer.Option("--idle", min=0.0, help="Stop after this many minutes without a new file.")
    ] = 30.0,
    metric: Annotated[
        str, typer.Option("--metric", help="Per-well value for the controls' Z' (as hts qc).")
    ] = "cell_count",
    reader: Annotated[
        Optional[str],
        typer.Option(
            "--reader", help="imagexpress, opera, cellomics, pattern (default: detected).", show_default=False
        ),
    ] = None,
    pattern: Annotated[
        Optional[str],
        typer.Option("--pattern", help="File naming for other TIFF layouts (as hts ingest).", show_default=False),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Plate name (default: from the files).", show_default=False)
    ] = None,
    plate_type: Annotated[
        Optional[int],
        typer.Option(
            "--plate-type", help="96, 384 or 1536 (default: the vendor file's, else guessed).", show_default=False
        ),
    ] = None,
    db: DbOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Analyse a plate while the microscope is still writing it: ingest, segment, QC field by field.

    Follows a TIFF plate folder (ImageXpress, Opera/Operetta, Cellomics, --pattern) by
    listing it every --poll seconds (network shares work). A field is taken when all its
    channels are there and every file is finished (size stable, TIFF readable); it is
    ingested and segmented at once on Dask, through the same code as `hts ingest` and
    `hts segment`, so well_stats, field_qc and `hts serve` fill in while imaging. Fields
    QC flags (focus, saturation, empty) and the controls' Z' are printed as they happen.
    A file that stays broken is reported and its field skipped.

    Ends when every platemap well has its fields, after --idle minutes without a new
    file, or on Ctrl-C. Stop and start it again at any time: it picks up where it was,
    and the finished plate equals a batch `hts ingest` + `hts segment` of the folder.

    Examples:
      hts watch /mnt/imager/PLATE-7 --platemap layout.csv
      hts watch incoming/ -e nuclei -e classic --poll 10 --idle 60
      hts demo live --live   (in another terminal: a plate being written)
    """
    from hts.tasks.watch import WatchOptions
    from hts.tasks.watch import watch as run

    stop = threading.Event()

    def first_interrupt(_sig, _frame):
        stop.set()
        cli.err.print("stopping after this round (Ctrl-C again to stop at once; run the same command to go on)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    t0 = time.monotonic()

    def show(e: dict) -> None:
        if as_json:
            return
        style = _STYLE.get(e["kind"], "")
        text = f"[{style}]{e['message']}[/]" if style else e["message"]
        cli.out.print(f"[dim]{time.monotonic() - t0:7.1f} s[/] {text}")

    with cli.errors():
        params = cli.param_values(cli.pairs(",".join(param), "--param")) if param else None
        options = WatchOptions(
            engines=tuple(engine or ["classic"]), params=params, pixel_size_um=pixel_size, platemap=platemap,
            fields=fields, channels=channels, planes=planes, timepoints=timepoints, format=reader, pattern=pattern, name=name, plate_wells=plate_type,
            poll_s=poll, idle_minutes=idle if idle > 0 else None, metric=metric,
        )  # fmt: skip
        previous = (
            signal.signal(signal.SIGINT, first_interrupt)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        try:
            if not as_json:
                cli.out.print(f"Watching {folder} (every {poll:g} s; Ctrl-C stops)")
            rep = run(
                folder,
                workspace=cli.workspace(db, scheduler),
                options=options,
                on_event=show,
                stop=stop,
                workers=workers,
            )
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    if as_json:
        cli.print_json(rep.to_dict())
        return
    cli.out.print(
        f"Plate [bold]{rep.plate or '-'}[/]: {rep.fields_ingested} fields ingested, {rep.fields_segmented} segmented "
        f"in {rep.seconds:.0f} s; ended: {rep.ended}"
        + (f"; {len(rep.skipped)} unreadable file(s) skipped" if rep.skipped else "")
    )
