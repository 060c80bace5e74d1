"""``hts evaluate`` and ``hts train``: accuracy against ground truth, and training engines on a lab's own data.

Added to the main app with ``register(app)`` (thin commands: one library call each,
a rich table or ``--json``, errors as one line ``error: ...`` with exit code 1, from
:mod:`hts.cli.common`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hts.cli.common import err, out, print_json
from hts.cli.common import errors as _cli_errors
from hts.cli.common import pairs as _pairs
from hts.cli.common import param_values as _values
from hts.cli.common import workspace as _workspace

__all__ = ["register", "render_evaluation"]

_METRIC_COLUMNS = [
    ("n_true", "true"),
    ("n_pred", "pred"),
    ("ap", "AP"),
    ("ap50", "AP50"),
    ("ap75", "AP75"),
    ("f1", "F1"),
    ("precision", "prec"),
    ("recall", "recall"),
    ("mean_matched_iou", "IoU"),
    ("splits", "split"),
    ("merges", "merge"),
]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def render_evaluation(console, report, *, per_image: bool) -> None:
    """The overall (pooled) metrics as a table, with one row per image when ``per_image``."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    n = report.overall["images"]
    t = Table(
        title=f"{escape(report.pred)} vs truth {escape(report.truth)} ({n} image{'s' if n != 1 else ''})",
        box=box.SIMPLE_HEAD,
        padding=0,
        pad_edge=False,
        show_edge=False,
        caption="AP: mean over IoU 0.5:0.95 of TP/(TP+FP+FN); AP50, AP75 at IoU 0.5, 0.75; F1, prec(ision), recall, "
        "mean matched IoU at IoU 0.5; split / merge counts. Overall: TP, FP, FN pooled over the images.",
        caption_justify="left",
    )
    t.add_column("image", overflow="ellipsis", no_wrap=True, min_width=7, max_width=15)
    for k, head in _METRIC_COLUMNS:
        ints = k in ("n_true", "n_pred", "splits", "merges")
        t.add_column(head, justify="right", no_wrap=True, min_width=len(head) if ints else 5)
    if per_image:
        for r in report.per_image:
            t.add_row(escape(r["name"]), *[_cell(r.get(k)) for k, _ in _METRIC_COLUMNS])
        t.add_section()
    t.add_row("[bold]overall[/]", *[f"[bold]{_cell(report.overall.get(k))}[/]" for k, _ in _METRIC_COLUMNS])
    console.print(t)
    notes = []
    if report.unmatched_pred:
        notes.append(
            f"{len(report.unmatched_pred)} predictions without truth (e.g. {', '.join(report.unmatched_pred[:3])})"
        )
    if report.unmatched_truth:
        notes.append(
            f"{len(report.unmatched_truth)} truth files not used (e.g. {', '.join(report.unmatched_truth[:3])})"
        )
    if report.skipped:
        notes.append(f"{len(report.skipped)} fields not segmented yet (e.g. {', '.join(report.skipped[:3])})")
    for n in notes:
        err.print(f"[yellow]note:[/] {escape(n)}")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``train`` commands to ``app``."""
    app.command("evaluate")(evaluate)
    app.command("train")(train)


def evaluate(
    truth: Annotated[
        Path,
        typer.Option(
            "--truth",
            help="Ground truth: an instance label image (TIFF/PNG/.npy, 0 = background) or a folder of them. With --plate: files named by well and field, e.g. B03_0.tif, B03_f0.tif or B03_f0_nuclei.tif.",
            show_default=False,
        ),
    ],
    pred: Annotated[
        Optional[Path],
        typer.Option(
            "--pred", help="Predicted label image or folder (paired with --truth by file stem).", show_default=False
        ),
    ] = None,
    plate: Annotated[
        Optional[str],
        typer.Option(
            "--plate", help="Evaluate the labels of a segmented plate instead of --pred files.", show_default=False
        ),
    ] = None,
    labels: Annotated[
        str,
        typer.Option("--labels", help="With --plate: the label image to evaluate (nuclei, cells, nuclei_SUFFIX ...)."),
    ] = "nuclei",
    db: Annotated[
        Optional[Path], typer.Option("--db", help="Catalog file (default: workspace ./hts.duckdb).", show_default=False)
    ] = None,
    per_image: Annotated[
        bool, typer.Option("--per-image", help="One row (JSON: one entry) per image besides the overall numbers.")
    ] = False,
    overlap: Annotated[
        float,
        typer.Option(
            "--overlap",
            min=0.5,
            max=1.0,
            help="Splits / merges: the share of an object's area that must lie inside the other.",
        ),
    ] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
) -> None:
    """Score segmentation labels against ground truth: AP over IoU 0.5:0.95, AP@0.5/0.75, F1, splits, merges.

    Overall numbers pool the true positives, false positives and false negatives of all images.
    """
    from hts.tasks.evaluate import evaluate as run

    with _cli_errors("nothing was written"):
        workspace = _workspace(db) if plate is not None else None  # label files need no workspace
        report = run(pred, truth, plate=plate, labels=labels, workspace=workspace, overlap=overlap)
    if as_json:
        print_json(report.to_dict(per_image=per_image))
        return
    render_evaluation(out, report, per_image=per_image)


def train(
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            "-e",
            help="Which engine's network to train: nuclei, brightfield-unet, cytoplasm or fpf.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out", help="Engine folder to write; `hts segment --engine OUT` uses it.", show_default=False),
    ],
    plate: Annotated[
        Optional[str], typer.Option("--plate", help="Train on the fields of an ingested plate ...", show_default=False)
    ] = None,
    labels_from: Annotated[
        Optional[str],
        typer.Option(
            "--labels-from",
            help="... with targets derived from this stain channel of the same fields (e.g. DAPI; classic engine), no annotation needed.",
            show_default=False,
        ),
    ] = None,
    wells: Annotated[
        Optional[str],
        typer.Option("--wells", help="With --plate: wells to train on, e.g. 'A01:H12' or 'B,C05'.", show_default=False),
    ] = None,
    channels: Annotated[
        Optional[str],
        typer.Option(
            "--channels",
            help="With --plate: which channel plays which input role, e.g. 'brightfield=Mono' (default: guessed).",
            show_default=False,
        ),
    ] = None,
    masks: Annotated[
        Optional[Path],
        typer.Option(
            "--masks", help="Folder of instance masks (nuclei), paired by file stem with --images.", show_default=False
        ),
    ] = None,
    images: Annotated[
        Optional[Path],
        typer.Option(
            "--images",
            help="Folder of images for --masks (multi-channel as (C, Y, X) in the engine's input order).",
            show_default=False,
        ),
    ] = None,
    cells: Annotated[
        Optional[Path],
        typer.Option("--cells", help="Folder of whole-cell masks (cytoplasm, fpf) for --images.", show_default=False),
    ] = None,
    pixel_size: Annotated[
        Optional[float],
        typer.Option(
            "--pixel-size",
            help="µm per pixel of the training images (plates: overrides the metadata; masks: default unknown, scaled by nucleus size).",
            show_default=False,
        ),
    ] = None,
    minutes: Annotated[
        Optional[float],
        typer.Option(
            "--minutes",
            help="Time budget: the run is sized to it (and stopped at it, best weights kept).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps", min=1, help="Optimizer steps (default: fitted to --minutes, else 1000).", show_default=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split, the weights, sampling and augmentation.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from OUT/checkpoint.pt.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an engine already in OUT.")] = False,
    max_fields: Annotated[
        int, typer.Option("--max-fields", min=1, help="With --plate: use at most this many fields (a seeded spread).")
    ] = 48,
    target_param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--target-param",
            help="Classic-engine parameter NAME=VALUE for deriving the targets from the stain (repeatable), e.g. threshold_factor=0.5.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", min=1, help="Crops per step (default 8).", show_default=False)
    ] = None,
    base: Annotated[
        Optional[int],
        typer.Option(
            "--base",
            min=2,
            help="Network width (channels of the first level; default per engine).",
            show_default=False,
            hidden=True,
        ),
    ] = None,
    depth: Annotated[
        Optional[int],
        typer.Option(
            "--depth", min=1, help="Network depth (down-samplings; default 4).", show_default=False, hidden=True
        ),
    ] = None,
    db: Annotated[
        Optional[Path], typer.Option("--db", help="Catalog file (default: workspace ./hts.duckdb).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")] = False,
) -> None:
    """Train a deep engine on your own images; writes an engine folder that `hts segment --engine OUT` loads.

    From a plate: `hts train --engine brightfield-unet --out bf-model --plate P1 --labels-from DAPI --minutes 20`.
    From masks: `hts train --engine nuclei --out my-nuclei --images imgs/ --masks masks/`.
    """
    from hts.tasks.train import TrainData, TrainOptions, train_engine

    config: dict[str, Any] = {}
    arch = {k: v for k, v in (("base", base), ("depth", depth)) if v is not None}
    if arch:
        config["arch_config"] = arch
    if batch_size:
        config["batch_size"] = batch_size
    command = "hts " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    with (
        _cli_errors("completed work is saved; run the same command with --resume to continue"),
        _train_progress(not as_json) as progress,
    ):
        data = TrainData(
            plate=plate,
            labels_from=labels_from,
            wells=wells,
            channels=_pairs(channels, "--channels"),
            images=images,
            masks=masks,
            cells=cells,
            pixel_size_um=pixel_size,
            max_fields=max_fields,
            classic_params=_values(_pairs(",".join(target_param or []), "--target-param")),
        )
        options = TrainOptions(
            minutes=minutes, steps=steps, seed=seed, resume=resume, overwrite=overwrite, config=config
        )
        workspace = _workspace(db) if plate is not None else None  # mask folders need no workspace
        report = train_engine(engine, out_dir, data, options, workspace=workspace, progress=progress, command=command)
    if as_json:
        print_json(report.to_dict())
        return
    _print_train_report(report)


def _print_train_report(report) -> None:
    """What :func:`hts.tasks.train.train_engine` did, in a few lines."""
    verb = "Resumed and trained" if report.status == "resumed" else "Trained"
    how = "early stop" if report.stopped_early else "time limit" if report.timed_out else "all steps"
    val = report.metrics
    f1 = ", ".join(f"{k} F1@0.5 {val[k]['f1']:.3f} AP {val[k]['ap']:.3f}" for k in val if isinstance(val[k], dict))
    out.print(
        f"{verb} [bold]{report.engine}[/] → {report.out}\n"
        f"  {report.steps_run}/{report.steps} steps ({how}) in {report.seconds:.0f} s; "
        f"best validation loss {report.best_val_loss if report.best_val_loss is None else round(report.best_val_loss, 4)}\n"
        f"  {report.train_items} training / {report.val_items} validation items; pixel size {report.pixel_size_um} µm, "
        f"nucleus {report.nucleus_diameter_um} µm"
        + (f", cell {report.cell_diameter_um} µm" if report.cell_diameter_um else "")
        + f"\n  {val.get('set', '')}: {f1}\n"
        f"Use it: hts segment --engine {report.out}"
    )


class _train_progress:
    """A rich progress bar (steps, loss, validation loss) on stderr; yields the training callback (or None)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __enter__(self):
        if not self.enabled or not (err.is_terminal or os.environ.get("HTS_PROGRESS") == "1"):
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        )
        self.bar.__enter__()
        task = self.bar.add_task("", total=None)
        state = {"val": None, "loss": None}

        def update(ev: dict) -> None:
            if ev["event"] == "step":
                state["loss"] = ev["loss"] if state["loss"] is None else 0.9 * state["loss"] + 0.1 * ev["loss"]
            elif ev["event"] == "val" and ev.get("val_loss") is not None:
                state["val"] = ev["val_loss"]
            if ev["event"] in ("step", "val"):
                desc = f"loss {state['loss']:.4f}" if state["loss"] is not None else ""
                if state["val"] is not None:
                    desc += f"  val {state['val']:.4f}"
                self.bar.update(task, completed=ev["step"], total=ev["steps"], description=desc)

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
