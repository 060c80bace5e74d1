"""Phenotype profiles: cells -> well profiles -> normalised, feature-selected -> consensus;
phenotypic activity (mAP against the negative controls) and similarity search.

:func:`build_profiles` (``hts profile``) aggregates the cells of each plate's chosen run
per well inside DuckDB (:func:`hts.catalog.profiles.aggregate_wells`), normalises each
plate against its negative-control wells, selects features over the whole set, takes the
median of replicate wells per treatment (consensus), and stores it all as one profile set
with its recipe. :func:`compute_activity` (``hts activity``) and :func:`similar`
(``hts similar``) work on a stored set. The maths is :mod:`hts.compute.analysis.profiling`.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings as pywarnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from hts import __version__
from hts.catalog import profiles as store
from hts.catalog import runs as runs_db
from hts.compute.analysis import profiling as pf
from hts.config import Workspace
from hts.errors import CatalogError, ConfigError
from hts.tasks.segment import select_plates
from hts.wells import parse_well

__all__ = [
    "ProfileRecipe",
    "ProfileReport",
    "ActivityReport",
    "build_profiles",
    "compute_activity",
    "similar",
    "profile_table",
    "activity_pictures",
    "activity_of_run",
]

NEGATIVE = "negative_control"


@dataclass(frozen=True)
class ProfileRecipe:
    """How cells become profiles (every default is the common profiling choice).

    ``aggregation``: per-well median (robust to a few mis-segmented cells) or mean;
    ``normalization``: ``mad_robustize`` ((x - median) / (1.4826 MAD)) or ``standardize``;
    ``reference``: normalise each plate against its ``negative_control`` wells, or ``all``
    its wells (used anyway, with a warning, on a plate without negative controls);
    ``selection``: feature-selection operations in order (empty: keep every feature), with
    their thresholds.
    """

    aggregation: str = "median"
    normalization: str = "mad_robustize"
    reference: str = "negative_control"
    selection: tuple[str, ...] = pf.SELECTIONS
    min_variance: float = 1e-6
    na_cutoff: float = 0.05
    corr_threshold: float = 0.9
    outlier_cutoff: float = 500.0

    def __post_init__(self) -> None:
        if self.aggregation not in ("median", "mean"):
            raise ConfigError(f"--aggregate {self.aggregation}: choose median or mean")
        if self.normalization not in pf.NORMALIZATIONS:
            raise ConfigError(f"--normalize {self.normalization}: choose {' or '.join(pf.NORMALIZATIONS)}")
        if self.reference not in (NEGATIVE, "all"):
            raise ConfigError(f"--reference {self.reference}: choose negative_control or all")
        bad = [s for s in self.selection if s not in pf.SELECTIONS]
        if bad:
            raise ConfigError(f"--select {bad[0]}: choose from {', '.join(pf.SELECTIONS)}")
        if not 0 <= self.corr_threshold <= 1 or not 0 <= self.na_cutoff <= 1:
            raise ConfigError("--corr-threshold and --na-cutoff are fractions between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selection"] = list(self.selection)
        return d


@dataclass
class ProfileReport:
    profile_set_id: str
    built: bool  # False: an identical set was already stored
    plates: list[dict[str, Any]]
    n_wells: int
    n_features: int
    n_selected: int
    dropped: dict[str, list[str]]
    n_treatments: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choose_run(catalog, rec, engine: str | None, warnings: list[str]) -> runs_db.Run:
    runs = [r for r in runs_db.current_runs(catalog, rec.plate_id, complete=True) if not engine or r.engine == engine]
    if not runs:
        what = f" of engine {engine!r}" if engine else ""
        note = runs_db.unfinished_note(catalog, rec.plate_id)
        raise CatalogError(f"plate {rec.name}: no finished segmentation run{what} to profile (run `hts segment`){note}")
    if len(runs) > 1:
        warnings.append(
            f"plate {rec.name}: {len(runs)} finished runs; profiling the latest, {runs[-1].run_id[:8]} "
            f"({runs[-1].engine}); choose another with --engine"
        )
    return runs[-1]


def _set_id(recipe: ProfileRecipe, runs: list[runs_db.Run], catalog) -> str:
    # a run measured again (`hts measure --texture`) or a platemap changed makes a different set
    # the runs' measurements and how many fields and cells they hold now (a run grows under `hts watch`)
    marks = catalog.query(
        "SELECT r.run_id, CAST(r.features AS VARCHAR) AS f, count(f.well) AS fields, sum(f.n_cells) AS cells "
        "FROM runs r LEFT JOIN run_fields f ON f.run_id = r.run_id AND f.status = 'complete' "
        "WHERE r.run_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY r.run_id",
        [[r.run_id for r in runs]],
    )
    maps = catalog.query(
        "SELECT plate_id, count(*) AS n, CAST(hash(string_agg(well || coalesce(compound, '') || "
        "coalesce(CAST(concentration AS VARCHAR), '') || coalesce(unit, '') || role, ',' ORDER BY well)) AS VARCHAR) AS h "
        "FROM platemap WHERE plate_id IN (SELECT unnest(?)) GROUP BY plate_id ORDER BY plate_id",
        [[r.plate_id for r in runs]],
    )
    blob = json.dumps([recipe.to_dict(), marks, maps], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def build_profiles(
    plates: list[str] | None = None,
    *,
    workspace: Workspace,
    recipe: ProfileRecipe | None = None,
    engine: str | None = None,
    overwrite: bool = False,
) -> ProfileReport:
    """Build (or find) the profile set of ``plates`` (default: every plate with a finished run)."""
    t0 = time.perf_counter()
    recipe = recipe or ProfileRecipe()
    catalog = workspace.catalog
    warnings: list[str] = []
    with catalog.session(read_only=True):
        recs = select_plates(catalog, plates)
        if plates is None:
            done = [r for r in recs if runs_db.current_runs(catalog, r.plate_id, complete=True)]
            warnings += [f"plate {r.name}: no finished segmentation run; left out" for r in recs if r not in done]
            recs = done or recs
        runs = [_choose_run(catalog, rec, engine, warnings) for rec in recs]
        sid = _set_id(recipe, runs, catalog)
        exists = store.profile_set_exists(catalog, sid)
    if exists and not overwrite:
        store.make_current(catalog, sid)
        row = store.find_profile_set(catalog, sid)
        feats = store.load_features(catalog, sid)
        return _report(row, feats, built=False, seconds=time.perf_counter() - t0)

    features = store.profile_feature_columns(catalog)
    if not features:
        raise CatalogError(f"{catalog.name}: the cells table has no features to profile (run `hts measure`)")
    table = store.aggregate_wells(catalog, [r.run_id for r in runs], features, recipe.aggregation)
    if table.num_rows == 0:
        raise CatalogError("no cells in the chosen runs: nothing to profile")
    agg = store.as_matrix(table, features)
    meta = table.select(["plate_id", "plate", "run_id", "well", "role", "compound", "concentration", "unit", "n_cells"])
    normalized, plate_rows = _normalize(meta, agg, recipe, warnings)

    empty = np.isnan(agg).all(axis=0)
    sel = pf.select_features(
        normalized[:, ~empty], [f for f, e in zip(features, empty) if not e], recipe.selection,
        min_variance=recipe.min_variance, na_cutoff=recipe.na_cutoff, corr_threshold=recipe.corr_threshold,
        outlier_cutoff=recipe.outlier_cutoff,
    )  # fmt: skip
    selected = np.zeros(len(features), dtype=bool)
    selected[~empty] = sel.kept
    reasons: list[str | None] = ["no_values" if e else None for e in empty]
    for i, r in zip(np.flatnonzero(~empty), sel.reasons):
        reasons[i] = r
    if not selected.any():
        warnings.append("feature selection kept no feature: loosen it (--select, --corr-threshold) or add plates")

    cons_meta, cons = _consensus(meta, normalized)
    row = {
        "profile_set_id": sid, "hts_version": __version__, "recipe": recipe.to_dict(), "plates": plate_rows,
        "n_wells": meta.num_rows, "n_features": len(features), "n_selected": int(selected.sum()),
        "n_treatments": sum(r != NEGATIVE for r in cons_meta.column("role").to_pylist()), "warnings": warnings,
    }  # fmt: skip
    store.store_profile_set(catalog, row, features, selected, reasons, meta, agg, normalized, cons_meta, cons)
    feats = pa.table({"ordinal": range(1, len(features) + 1), "feature": features, "selected": selected.tolist(),
                      "reason": reasons})  # fmt: skip
    row = store.find_profile_set(catalog, sid)
    return _report(row, feats, built=True, seconds=time.perf_counter() - t0)


def _report(row: dict[str, Any], feats: pa.Table, *, built: bool, seconds: float) -> ProfileReport:
    dropped: dict[str, list[str]] = {}
    for f, r in zip(feats.column("feature").to_pylist(), feats.column("reason").to_pylist()):
        if r is not None:
            dropped.setdefault(r, []).append(f)
    return ProfileReport(
        profile_set_id=row["profile_set_id"], built=built, plates=row["plates"], n_wells=row["n_wells"],
        n_features=row["n_features"], n_selected=row["n_selected"], dropped=dropped,
        n_treatments=row["n_treatments"], warnings=row["warnings"],
        seconds=round(seconds, 2), recipe=row["recipe"],
    )  # fmt: skip


def _normalize(meta: pa.Table, agg: np.ndarray, recipe: ProfileRecipe, warnings: list[str]):
    """Each plate against its reference wells; one line per plate in the set's record."""
    plate_ids = np.asarray(meta.column("plate_id").to_pylist())
    roles = np.asarray([r or "" for r in meta.column("role").to_pylist()])
    names = meta.column("plate").to_pylist()
    runs = meta.column("run_id").to_pylist()
    compounds = meta.column("compound").to_pylist()
    out = np.empty_like(agg)
    rows = []
    for pid in dict.fromkeys(plate_ids):
        on = plate_ids == pid
        name = names[int(np.flatnonzero(on)[0])]
        ref = on & (roles == NEGATIVE) if recipe.reference == NEGATIVE else on
        reference = recipe.reference
        if recipe.reference == NEGATIVE and ref.sum() == 0:
            warnings.append(
                f"plate {name}: no negative-control wells in its platemap; normalised against all its wells"
            )
            ref, reference = on, "all"
        if ref.sum() < 2:
            raise CatalogError(
                f"plate {name}: {int(ref.sum())} reference well(s) with cells "
                f"({'its negative controls' if reference == NEGATIVE else 'no negative controls in its platemap, so all its wells'}); "
                "normalising a plate needs at least 2 (image more wells, or leave the plate out of `hts profile`)"
            )
        if recipe.reference == NEGATIVE and reference == NEGATIVE and ref.sum() < 3:
            warnings.append(f"plate {name}: only {int(ref.sum())} negative-control wells; its normalisation is noisy")
        out[on] = pf.normalize(agg[on], ref[on], recipe.normalization)
        treat = {(compounds[i], roles[i]) for i in np.flatnonzero(on) if compounds[i] and roles[i] != NEGATIVE}
        rows.append({"plate": name, "plate_id": str(pid), "run_id": runs[int(np.flatnonzero(on)[0])],
                     "reference": reference, "n_wells": int(on.sum()), "n_reference": int(ref.sum()),
                     "n_treatments": len(treat)})  # fmt: skip
    return out, rows


def _treatments(meta: pa.Table) -> tuple[np.ndarray, list[tuple[str, float, str, str]]]:
    """Each well's treatment code (-1: no compound) and the treatments (compound, concentration, unit, role)."""
    keys = list(zip(
        meta.column("compound").to_pylist(), meta.column("concentration").to_pylist(),
        meta.column("unit").to_pylist(), meta.column("role").to_pylist(),
    ))  # fmt: skip
    uniq: dict[tuple, int] = {}
    codes = np.full(len(keys), -1, dtype=np.int64)
    for i, (c, conc, unit, role) in enumerate(keys):
        if not c:
            continue
        key = (c, float(conc) if conc is not None else 0.0, unit or "", role or "sample")
        codes[i] = uniq.setdefault(key, len(uniq))
    return codes, list(uniq)


def _consensus(meta: pa.Table, normalized: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Median of the normalised profiles of each treatment's wells (NaN omitted, as pycytominer)."""
    codes, keys = _treatments(meta)
    plates = np.asarray(meta.column("plate_id").to_pylist())
    rows = []
    mats = []
    for i, (c, conc, unit, role) in enumerate(keys):
        on = codes == i
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features stay NaN
            mats.append(np.nanmedian(normalized[on], axis=0))
        rows.append({"compound": c, "concentration": conc, "unit": unit, "role": role,
                     "n_wells": int(on.sum()), "n_plates": len(set(plates[on]))})  # fmt: skip
    schema = pa.schema([("compound", pa.string()), ("concentration", pa.float64()), ("unit", pa.string()),
                        ("role", pa.string()), ("n_wells", pa.int32()), ("n_plates", pa.int32())])  # fmt: skip
    t = pa.Table.from_pylist(rows, schema=schema)
    return t, (np.vstack(mats) if mats else np.zeros((0, normalized.shape[1])))


def profile_table(
    workspace: Workspace, profile_set: str | None = None, *, level: str = "normalized", selected: bool = True
) -> pa.Table:
    """A profile set as one wide Arrow table in pycytominer's layout.

    ``level``: ``aggregated`` (per-well medians/means), ``normalized`` or ``consensus``;
    ``selected``: only the features feature selection kept. Metadata columns are
    ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Compound``, ``Metadata_Concentration``,
    ``Metadata_Unit``, ``Metadata_Role``, ``Metadata_Run``, ``Metadata_Object_Count``.
    """
    catalog = workspace.catalog
    row = store.find_profile_set(catalog, profile_set)
    sid = row["profile_set_id"]
    if level == "consensus":
        meta, x = store.load_consensus(catalog, sid)
        feats = store.load_features(catalog, sid)
        cols = {
            "Metadata_Compound": meta.column("compound"), "Metadata_Concentration": meta.column("concentration"),
            "Metadata_Unit": meta.column("unit"), "Metadata_Role": meta.column("role"),
            "Metadata_Wells": meta.column("n_wells"), "Metadata_Plates": meta.column("n_plates"),
        }  # fmt: skip
    elif level in ("aggregated", "normalized"):
        meta, agg, norm, feats = store.load_profiles(catalog, sid)
        x = agg if level == "aggregated" else norm
        cols = {
            "Metadata_Plate": meta.column("plate"), "Metadata_Well": meta.column("well"),
            "Metadata_Compound": meta.column("compound"), "Metadata_Concentration": meta.column("concentration"),
            "Metadata_Unit": meta.column("unit"), "Metadata_Role": meta.column("role"),
            "Metadata_Run": meta.column("run_id"), "Metadata_Object_Count": meta.column("n_cells"),
        }  # fmt: skip
    else:
        raise ConfigError(f"unknown profile level {level!r}; choose aggregated, normalized or consensus")
    keep = store.selected_mask(feats) if selected else None
    for j, name in enumerate(feats.column("feature").to_pylist()):
        if keep is None or keep[j]:
            cols[name] = pa.array(x[:, j], pa.float64())
    return pa.table(cols)


# -- activity ------------------------------------------------------------------------------


@dataclass
class ActivityReport:
    profile_set_id: str
    treatments: list[dict[str, Any]]  # compound, concentration, unit, n_wells, mAP, p, q, hit; best first
    n_hits: int
    n_controls: int
    null_size: int
    seed: int
    q_threshold: float
    metric: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _selected_matrix(norm: np.ndarray, feats: pa.Table) -> np.ndarray:
    keep = store.selected_mask(feats)
    if not keep.any():
        raise CatalogError("the profile set has no selected features (see `hts query --preset profile-features`)")
    return np.nan_to_num(norm[:, keep], nan=0.0)


def compute_activity(
    *,
    workspace: Workspace,
    profile_set: str | None = None,
    null_size: int = 10000,
    seed: int = 0,
    q_threshold: float = 0.05,
    metric: str = "cosine",
) -> ActivityReport:
    """Phenotypic activity of every treatment of a profile set (default: the latest), stored in ``activity``."""
    if null_size < 100:
        raise ConfigError("--null-size: use at least 100 permutations (10000 is the usual)")
    if not 0 < q_threshold < 1:
        raise ConfigError("--q: a false-discovery rate between 0 and 1, e.g. 0.05")
    t0 = time.perf_counter()
    catalog = workspace.catalog
    row = store.find_profile_set(catalog, profile_set)
    sid = row["profile_set_id"]
    meta, _, norm, feats = store.load_profiles(catalog, sid)
    x = _selected_matrix(norm, feats)
    codes, keys = _treatments(meta)
    control = np.asarray([r == NEGATIVE for r in meta.column("role").to_pylist()])
    warnings = []
    if not control.any():
        raise CatalogError("no negative-control wells in the profile set: activity is measured against them")
    singles = [k for i, k in enumerate(keys) if k[3] != NEGATIVE and (codes == i).sum() < 2]
    if singles:
        warnings.append(f"{len(singles)} treatment(s) with a single well have no activity (no replicate to match)")
    out = pf.activity(x, np.where(control, -1, codes), control, null_size=null_size, seed=seed, metric=metric)
    treat = []
    for c, m, p, q in zip(out["codes"], out["map"], out["p"], out["q"]):
        comp, conc, unit, _ = keys[c]
        treat.append({"compound": comp, "concentration": conc, "unit": unit, "n_wells": int((codes == c).sum()),
                      "mean_average_precision": float(m), "p_value": float(p), "q_value": float(q),
                      "hit": bool(q < q_threshold)})  # fmt: skip
    treat.sort(key=store.activity_rank)
    n = len(treat)
    table = pa.table({
        "compound": [r["compound"] for r in treat], "concentration": pa.array([r["concentration"] for r in treat], pa.float64()),
        "unit": [r["unit"] for r in treat], "n_wells": pa.array([r["n_wells"] for r in treat], pa.int32()),
        "mean_average_precision": pa.array([r["mean_average_precision"] for r in treat], pa.float64()),
        "p_value": pa.array([r["p_value"] for r in treat], pa.float64()),
        "q_value": pa.array([r["q_value"] for r in treat], pa.float64()),
        "hit": pa.array([r["hit"] for r in treat], pa.bool_()), "metric": [metric] * n,
        "null_size": pa.array([null_size] * n, pa.int32()), "seed": pa.array([seed] * n, pa.int64()),
        "q_threshold": pa.array([q_threshold] * n, pa.float64()),
    })  # fmt: skip
    store.store_activity(catalog, sid, table)
    return ActivityReport(
        profile_set_id=sid, treatments=treat, n_hits=sum(r["hit"] for r in treat), n_controls=int(control.sum()),
        null_size=null_size, seed=seed, q_threshold=q_threshold, metric=metric,
        seconds=round(time.perf_counter() - t0, 2), warnings=warnings,
    )  # fmt: skip


def activity_pictures(workspace: Workspace, profile_set: str | None = None) -> tuple[bytes, bytes | None, list[dict]]:
    """PNGs of a set's stored activity: mAP vs -log10 p, and the hits' consensus heatmap against the
    negative controls (None without hits); and the activity rows, best first."""
    from hts.reports.activity import activity_plot, hit_heatmap

    catalog = workspace.catalog
    sid = store.find_profile_set(catalog, profile_set)["profile_set_id"]
    rows = store.load_activity(catalog, sid)  # best first
    if not rows:
        raise CatalogError(f"profile set {sid[:12]} has no activity yet (run `hts activity`)")
    plot = activity_plot(rows, null_size=rows[0]["null_size"], q_threshold=rows[0]["q_threshold"])
    hits = {(r["compound"], r["concentration"]) for r in rows if r["hit"]}
    if not hits:
        return plot, None, rows
    meta, cons = store.load_consensus(catalog, sid)
    feats = store.load_features(catalog, sid)
    keep = store.selected_mask(feats)
    names = [f for f, k in zip(feats.column("feature").to_pylist(), keep) if k]
    labels, idx = [], []
    for i, (c, conc, role) in enumerate(
        zip(
            meta.column("compound").to_pylist(),
            meta.column("concentration").to_pylist(),
            meta.column("role").to_pylist(),
        )
    ):
        if (c, conc) in hits or role == NEGATIVE:
            labels.append(f"{c} {conc:g}" + (" (control)" if role == NEGATIVE else ""))
            idx.append(i)
    return plot, hit_heatmap(labels, cons[idx][:, keep], names), rows


def activity_of_run(workspace: Workspace, run_id: str) -> str | None:
    """The latest profile set built from ``run_id`` that has activity (None: none)."""
    rows = workspace.catalog.query(
        "SELECT s.profile_set_id FROM profile_sets s WHERE EXISTS (SELECT 1 FROM profiles p WHERE "
        "p.profile_set_id = s.profile_set_id AND p.run_id = ?) AND EXISTS (SELECT 1 FROM activity a WHERE "
        "a.profile_set_id = s.profile_set_id) ORDER BY s.current_at DESC LIMIT 1",
        [run_id],
    )
    return rows[0]["profile_set_id"] if rows else None


# -- similarity ----------------------------------------------------------------------------


def _parse_query(query: str, meta: pa.Table) -> tuple[str, Any]:
    """('well', row index) for ``PLATE/WELL`` or ``WELL``; ('compound', (name, concentration or None)) otherwise."""
    plates = meta.column("plate").to_pylist()
    wells = meta.column("well").to_pylist()
    plate, _, well = query.rpartition("/")
    try:
        w = parse_well(well).name
    except Exception:  # noqa: BLE001 - not a well: a compound name
        w = None
    if w is not None:
        hits = [i for i, (p, ww) in enumerate(zip(plates, wells)) if ww == w and (not plate or p == plate)]
        if len(hits) == 1:
            return "well", hits[0]
        if not hits:
            raise CatalogError(f"{query}: no profile of that well (is it in the profile set, with cells?)")
        raise CatalogError(f"{query}: that well is on {len(hits)} plates; write PLATE/{w}")
    name, _, conc = query.partition("@")
    if conc:
        try:
            return "compound", (name, float(conc.strip().removesuffix("uM").strip()))
        except ValueError:
            raise ConfigError(f"{query}: write COMPOUND@CONCENTRATION, e.g. CMPD-001@10") from None
    return "compound", (name, None)


def similar(
    query: str,
    *,
    workspace: Workspace,
    profile_set: str | None = None,
    top: int = 10,
    metric: str = "cosine",
    level: str = "consensus",
) -> dict[str, Any]:
    """The profiles nearest ``query``: a well (``PLATE/B05``, or ``B05`` on a one-plate set) or a
    compound (``NAME``, its highest concentration, or ``NAME@10``), with their activity where
    ``hts activity`` has run. ``level``: compare with every treatment's consensus profile, or
    with every ``well``'s profile."""
    if top < 1:
        raise ConfigError("--top: at least 1")
    if level not in ("consensus", "well"):
        raise ConfigError(f"--level {level}: choose consensus or well")
    catalog = workspace.catalog
    row = store.find_profile_set(catalog, profile_set)
    sid = row["profile_set_id"]
    meta, _, norm, feats = store.load_profiles(catalog, sid)
    cmeta, cons = store.load_consensus(catalog, sid)
    keep = store.selected_mask(feats)
    if not keep.any():
        raise CatalogError("the profile set has no selected features (see `hts query --preset profile-features`)")
    kind, what = _parse_query(query, meta)
    comps = cmeta.column("compound").to_pylist()
    concs = cmeta.column("concentration").to_pylist()
    if kind == "well":
        vec = norm[what, keep]
        own = what if level == "well" else None
        label = f"{meta.column('plate')[what].as_py()}/{meta.column('well')[what].as_py()}"
    else:
        name, conc = what
        idx = [i for i, c in enumerate(comps) if c == name and (conc is None or np.isclose(concs[i], conc))]
        if not idx:
            known = sorted(set(comps))
            raise CatalogError(f"{query}: no such compound{'/concentration' if conc is not None else ''} in the profile set"
                               f" (compounds: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''})")  # fmt: skip
        best = max(idx, key=lambda i: concs[i])
        own = best if level == "consensus" else None
        vec = cons[best, keep]
        label = f"{comps[best]} {concs[best]:g} {cmeta.column('unit')[best].as_py()}".strip()
    if level == "consensus":
        cand, cmp_, cconc, cunit, crole = cons, comps, concs, cmeta.column("unit"), cmeta.column("role")
    else:
        cand, cmp_, cconc = norm, meta.column("compound").to_pylist(), meta.column("concentration").to_pylist()
        cunit, crole = meta.column("unit"), meta.column("role")
    sims = pf.similarity(np.nan_to_num(vec)[None, :], np.nan_to_num(cand[:, keep]), metric)[0]
    act = {(r["compound"], r["concentration"]): r for r in store.load_activity(catalog, sid)}
    order = [i for i in np.argsort(-np.nan_to_num(sims, nan=-np.inf), kind="stable")[: top + 1] if i != own][:top]
    rows = []
    for i in order:
        a = act.get((cmp_[i], cconc[i]))
        r = {"compound": cmp_[i], "concentration": cconc[i], "unit": cunit[i].as_py(), "role": crole[i].as_py()}
        if level == "consensus":
            r["n_wells"] = cmeta.column("n_wells")[i].as_py()
        else:
            r = {"plate": meta.column("plate")[i].as_py(), "well": meta.column("well")[i].as_py()} | r
        r |= {"similarity": float(sims[i]), "mean_average_precision": a["mean_average_precision"] if a else None,
              "q_value": a["q_value"] if a else None, "hit": a["hit"] if a else None}  # fmt: skip
        rows.append(r)
    return {"profile_set_id": sid, "query": label, "metric": metric, "level": level, "neighbours": rows}
