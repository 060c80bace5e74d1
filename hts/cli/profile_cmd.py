"""``hts profile``, ``hts activity``, ``hts similar``: from cells to phenotype profiles, hits and neighbours.

Added to the main app with ``register(app)``; each command is one library call
(:mod:`hts.tasks.profile`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hts.cli import common as cli
from hts.cli.common import DbOpt, JsonOpt

__all__ = ["register"]

SetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--profile-set", help="Profile set id or prefix (default: the latest `hts profile`).", show_default=False
    ),
]
MetricOpt = Annotated[
    str, typer.Option("--metric", help="Profile similarity: cosine (default) or correlation.")
]  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
    app.command("activity")(activity)
    app.command("similar")(similar)


_REASONS = {
    "variance_threshold": "near-constant",
    "correlation_threshold": "correlated with a kept feature",
    "drop_na_columns": "missing in too many wells",
    "drop_outliers": "extreme values",
    "no_values": "no values (not measured in these runs)",
}


def profile(
    plates: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Plates (name, id or store path). Default: every plate with a finished run.", show_default=False
        ),
    ] = None,
    engine: Annotated[
        Optional[str],
        typer.Option(
            "--engine",
            help="Profile this engine's run (default: each plate's latest finished run).",
            show_default=False,
        ),
    ] = None,
    aggregate: Annotated[
        str, typer.Option("--aggregate", help="Cells -> well: median (robust to stray cells) or mean.")
    ] = "median",
    normalize: Annotated[
        str,
        typer.Option(
            "--normalize", help="mad_robustize ((x - median) / (1.4826 MAD)) or standardize ((x - mean) / sd)."
        ),
    ] = "mad_robustize",
    reference: Annotated[
        str,
        typer.Option("--reference", help="Normalise each plate against its negative_control wells, or all its wells."),
    ] = "negative_control",
    select: Annotated[
        Optional[list[str]],
        typer.Option(
            "--select",
            help="Feature selection, in order (repeatable): variance_threshold, correlation_threshold, "
            "drop_na_columns, drop_outliers; 'none' keeps every feature. Default: all four.",
            show_default=False,
        ),
    ] = None,
    corr_threshold: Annotated[
        float, typer.Option("--corr-threshold", help="Of two features correlated above this, one is dropped.")
    ] = 0.9,
    na_cutoff: Annotated[
        float, typer.Option("--na-cutoff", help="Drop a feature missing in more than this fraction of wells.")
    ] = 0.05,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Rebuild the set even if an identical one is stored.")
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build per-well phenotype profiles in the catalog: aggregate, normalise, select features, consensus.

    Cells of each plate's run are aggregated per well inside DuckDB (features only: object
    numbers, centroids and bounding boxes are identifiers, not phenotype), each plate is
    normalised against its negative-control wells, features are selected over all plates,
    and replicate wells of each treatment (compound + concentration) are merged into a
    consensus profile. The set is stored with its recipe (tables profile_sets, profiles,
    profile_features, consensus; view profile_values); building it again is a no-op.

    Next: `hts activity` (which treatments do something), `hts similar COMPOUND`,
    `hts export --profiles --out DIR` (pycytominer's files).

    Examples:
      hts profile                         # every plate, the defaults profiling uses
      hts profile P1 P2 --engine nuclei --aggregate mean
    """
    from hts.tasks.profile import ProfileRecipe, build_profiles

    with cli.errors():
        selection = () if select == ["none"] else tuple(select) if select else None
        kw = {} if selection is None else {"selection": selection}
        recipe = ProfileRecipe(
            aggregation=aggregate, normalization=normalize, reference=reference, corr_threshold=corr_threshold,
            na_cutoff=na_cutoff, **kw,
        )  # fmt: skip
        rep = build_profiles(
            plates or None, workspace=cli.workspace(db), recipe=recipe, engine=engine, overwrite=overwrite
        )
    if as_json:
        cli.print_json(rep.to_dict())
        return
    verb = "Built" if rep.built else "Already built"
    cli.out.print(
        f"{verb} profile set [bold]{rep.profile_set_id[:12]}[/]: {rep.n_wells} wells on {len(rep.plates)} plate(s), "
        f"{rep.n_selected} of {rep.n_features} features selected, {rep.n_treatments} treatments"
        + (f" ({rep.seconds:.1f} s)" if rep.built else "")
    )
    for p in rep.plates:
        against = "negative-control wells" if p["reference"] == "negative_control" else "wells (all of them)"
        cli.out.print(
            f"  {p['plate']}: {p['n_wells']} wells, normalised against {p['n_reference']} {against}, run {p['run_id'][:8]}"
        )
    for reason, feats in rep.dropped.items():
        cli.out.print(
            f"  dropped {len(feats)} {_REASONS.get(reason, reason)} ({reason}): {', '.join(feats[:4])}{' ...' if len(feats) > 4 else ''}"
        )
    for w in rep.warnings:
        cli.err.print(f"[yellow]warning:[/] {w}")
    cli.out.print("Next: hts activity · hts similar COMPOUND · hts export --profiles --out DIR")


def activity(
    profile_set: SetOpt = None,
    null_size: Annotated[
        int,
        typer.Option("--null-size", min=100, help="Permutations of the null distribution (p-values down to 1/(n+1))."),
    ] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutations (same seed: same p-values).")] = 0,
    q: Annotated[
        float, typer.Option("--q", help="False-discovery rate of the hit call (Benjamini-Hochberg q-value).")
    ] = 0.05,
    metric: MetricOpt = "cosine",
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Also write the mAP vs -log10 p plot as this PNG.", show_default=False),
    ] = None,
    heatmap: Annotated[
        Optional[Path],
        typer.Option(
            "--heatmap",
            help="Also write a feature heatmap of the hits vs the negative controls (PNG).",
            show_default=False,
        ),
    ] = None,
    show: Annotated[int, typer.Option("--show", help="List at most this many treatments.")] = 30,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which treatments change the phenotype: mean average precision against the negative controls.

    For every well of a treatment (compound + concentration), its replicate wells are
    ranked among the negative-control wells by profile similarity; the mean of those
    average precisions (mAP) is high when replicates resemble each other more than the
    controls. The p-value comes from random rankings (--null-size), q-values from
    Benjamini-Hochberg over all treatments; q < --q is a hit. The result is stored in
    the activity table (`hts query --preset hits`). As copairs computes it.
    """
    from hts.tasks.profile import compute_activity

    with cli.errors():
        ws = cli.workspace(db)
        rep = compute_activity(
            workspace=ws, profile_set=profile_set, null_size=null_size, seed=seed, q_threshold=q, metric=metric
        )
        written = _pictures(ws, rep, plot, heatmap)
    if as_json:
        cli.print_json(rep.to_dict() | {"files": written})
        return
    from rich.table import Table

    cli.out.print(
        f"Profile set [bold]{rep.profile_set_id[:12]}[/]: [bold]{rep.n_hits}[/] of {len(rep.treatments)} treatments active "
        f"at q < {rep.q_threshold:g} (against {rep.n_controls} negative-control wells; {rep.null_size} permutations)"
    )
    t = Table("compound", "concentration", "wells", "mAP", "p", "q", "hit")
    for r in rep.treatments[:show]:
        t.add_row(
            r["compound"], f"{r['concentration']:g} {r['unit']}".strip(), str(r["n_wells"]),
            f"{r['mean_average_precision']:.3f}", f"{r['p_value']:.2g}", f"{r['q_value']:.2g}",
            "[red]hit[/]" if r["hit"] else "",
        )  # fmt: skip
    cli.out.print(t)
    for w in rep.warnings:
        cli.err.print(f"[yellow]warning:[/] {w}")
    for f in written:
        cli.out.print(f"Wrote {f}")


def _pictures(ws, rep, plot: Path | None, heatmap: Path | None) -> list[str]:
    from hts.tasks.profile import activity_pictures

    if plot is None and heatmap is None:
        return []
    plot_png, heat_png, _ = activity_pictures(ws, rep.profile_set_id)
    written = []
    if plot is not None:
        plot.write_bytes(plot_png)
        written.append(str(plot))
    if heatmap is not None and heat_png is not None:
        heatmap.write_bytes(heat_png)
        written.append(str(heatmap))
    return written


def similar(
    query: Annotated[
        str,
        typer.Argument(
            help="A well (PLATE/B05, or B05 on a one-plate set) or a compound (NAME: its highest concentration; NAME@10).",
            show_default=False,
        ),
    ],
    top: Annotated[int, typer.Option("--top", min=1, help="How many neighbours.")] = 10,
    level: Annotated[
        str, typer.Option("--level", help="Compare with treatments' consensus profiles, or with every well's profile.")
    ] = "consensus",
    metric: MetricOpt = "cosine",
    profile_set: SetOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The treatments (or wells) whose profiles are nearest a well or a compound, with their activity.

    Compares the query's profile (a well's normalised profile, or a compound's consensus)
    with every treatment's consensus profile (or, --level well, every well's profile)
    over the selected features.

    Examples:
      hts similar CMPD-001               # its highest concentration
      hts similar CMPD-001@1.111 --top 5
      hts similar PLATE-1/B05 --level well
    """
    from hts.tasks.profile import similar as task

    with cli.errors():
        res = task(query, workspace=cli.workspace(db), profile_set=profile_set, top=top, metric=metric, level=level)
    if as_json:
        cli.print_json(res)
        return
    from rich.table import Table

    cli.out.print(
        f"Nearest [bold]{res['query']}[/] ({res['metric']} similarity, profile set {res['profile_set_id'][:12]}):"
    )
    wells = res["level"] == "well"
    t = Table(*(["plate", "well"] if wells else []), "compound", "conc.", "role", *([] if wells else ["wells"]),
              "sim.", "mAP", "q", "hit")  # fmt: skip
    for r in res["neighbours"]:
        t.add_row(
            *([r["plate"], r["well"]] if wells else []), r["compound"] or "",
            "" if r["concentration"] is None else f"{r['concentration']:g} {r['unit'] or ''}".strip(), (r["role"] or "").replace("_control", " ctrl"),
            *([] if wells else [str(r["n_wells"])]), f"{r['similarity']:.3f}",
            "" if r["mean_average_precision"] is None else f"{r['mean_average_precision']:.3f}",
            "" if r["q_value"] is None else f"{r['q_value']:.2g}", "[red]hit[/]" if r["hit"] else "",
        )  # fmt: skip
    cli.out.print(t)
