"""`hts profile` / `activity` / `similar` on a real segmented synthetic screen: every stored number
against pycytominer and copairs run on the same cells, known actives recovered, bad inputs one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CELLOMICS
from typer.testing import CliRunner

from hts.cli.main import app

pycytominer = pytest.importorskip("pycytominer")

runner = CliRunner()

#: (compound, concentration µM, role) per pair of columns 2-11; the synthetic phenotype follows the dose
#: (hts.synth.dose_of: Hill curve around the compound's EC50, CMPD-001 0.8 µM, CMPD-002 6 µM, others 3 µM)
TREATMENTS = [
    ("CMPD-001", 30.0, "sample"),  # active
    ("CMPD-002", 30.0, "sample"),  # active
    ("CMPD-001", 0.0001, "sample"),  # far below its EC50: inactive
    ("INERT-1", 0.001, "sample"),  # inactive
    ("REF", 30.0, "positive_control"),  # active
]
ACTIVE = {("CMPD-001", 30.0), ("CMPD-002", 30.0), ("REF", 30.0)}
INACTIVE = {("CMPD-001", 0.0001), ("INERT-1", 0.001)}


def screen_rows(controls: bool = True) -> list[dict]:
    rows = []
    for r in "ABCD":
        for c in range(1, 13):
            well = f"{r}{c:02d}"
            if c in (1, 12):
                role = "negative_control" if controls else "sample"
                rows.append({"well": well, "compound": "DMSO", "concentration": 0.0, "unit": "uM", "role": role})
            else:
                comp, conc, role = TREATMENTS[(c - 2) // 2]
                rows.append({"well": well, "compound": comp, "concentration": conc, "unit": "uM", "role": role})
    return rows


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """Two 48-well plates (A01:D12, one 256² field per well), DMSO in columns 1 and 12, five treatments
    in 8 wells per plate, ingested, annotated, segmented (classic) and measured."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    root = tmp_path_factory.mktemp("screen")
    ws = Workspace.at(root / "ws", scheduler="sync")
    for i in (1, 2):
        p = make_plate(
            root / f"raw{i}", format="nd2", wells="A01:D12", fields=1, shape=(256, 256), name=f"SCREEN-{i}",
            seed=i, platemap_rows=screen_rows(),
        )  # fmt: skip
        plate = hts.ingest(p.source, ws)
        plate.annotate(p.platemap)
        hts.segment(plate, engine="classic")
    return ws


@pytest.fixture
def screen_copy(screen, tmp_path):
    from hts.config import Workspace

    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(screen.db, root / "hts.duckdb")
    return Workspace(db=root / "hts.duckdb", plates_dir=screen.plates_dir, scheduler="sync")


def test_profiles_equal_pycytominer_on_the_same_cells(screen_copy):
    """aggregate -> normalize (negcon, mad_robustize) -> feature_select -> consensus, value for value."""
    import hts
    from hts.catalog import profiles as pstore

    ws = screen_copy
    rep = hts.profile(workspace=ws)
    assert rep.built and rep.n_wells == 96 and len(rep.plates) == 2 and rep.warnings == []
    assert rep.n_treatments == 5  # DMSO is the reference, not a treatment
    meta, agg, norm, feats = pstore.load_profiles(ws.catalog, rep.profile_set_id)
    names = feats.column("feature").to_pylist()
    # identifiers and positions are not features (pycytominer's infer would take Nuclei_ObjectNumber etc.)
    assert not [n for n in names if "Center" in n or "BoundingBoxM" in n or "Location" in n or "ObjectNumber" in n]
    assert "Nuclei_AreaShape_Area" in names and "Cells_Intensity_NucCytoRatio_GFP" in names

    cells = hts.query("SELECT * FROM cell_profiles", ws).to_pandas()
    ref_agg = pycytominer.aggregate(
        cells, strata=["Metadata_Plate", "Metadata_Well"], features=names, operation="median"
    )
    ref_agg = ref_agg.sort_values(["Metadata_Plate", "Metadata_Well"]).reset_index(drop=True)
    assert ref_agg["Metadata_Well"].tolist() == meta.column("well").to_pylist()
    np.testing.assert_allclose(agg, ref_agg[names].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)

    platemap = hts.query("SELECT p.name AS Metadata_Plate, m.well AS Metadata_Well, m.role AS Metadata_Role, m.compound AS "
                         "Metadata_Compound, m.concentration AS Metadata_Concentration FROM platemap m JOIN plates p "
                         "USING (plate_id)", ws).to_pandas()  # fmt: skip
    ref_agg = ref_agg.merge(platemap, on=["Metadata_Plate", "Metadata_Well"])
    ref_norm = pd.concat(
        [
            pycytominer.normalize(
                ref_agg[ref_agg.Metadata_Plate == p].reset_index(drop=True), features=names, method="mad_robustize",
                meta_features=["Metadata_Plate", "Metadata_Well", "Metadata_Role", "Metadata_Compound", "Metadata_Concentration"],
                samples="Metadata_Role == 'negative_control'",
            )
            for p in ("SCREEN-1", "SCREEN-2")
        ],
        ignore_index=True,
    )  # fmt: skip
    np.testing.assert_allclose(norm, ref_norm[names].to_numpy(float), rtol=1e-9, atol=1e-9, equal_nan=True)

    # features with no values in these runs are reported, not selected; the rest as pycytominer selects
    empty = [n for n, r in zip(names, feats.column("reason").to_pylist()) if r == "no_values"]
    have = [n for n in names if n not in empty]
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers"]
    ref_sel = pycytominer.feature_select(ref_norm, features=have, operation=ops)
    selected = [n for n, s in zip(names, feats.column("selected").to_pylist()) if s]
    assert selected == [c for c in ref_sel.columns if c in have]
    assert 10 < len(selected) < len(have)
    assert sum(len(v) for v in rep.dropped.values()) == len(names) - len(selected)

    ref_cons = pycytominer.consensus(
        ref_norm, replicate_columns=["Metadata_Compound", "Metadata_Concentration"], operation="median", features=names
    ).sort_values(["Metadata_Compound", "Metadata_Concentration"])  # fmt: skip
    cmeta, cons = pstore.load_consensus(ws.catalog, rep.profile_set_id)
    assert list(zip(cmeta.column("compound").to_pylist(), cmeta.column("concentration").to_pylist())) == list(
        zip(ref_cons.Metadata_Compound, ref_cons.Metadata_Concentration)
    )
    np.testing.assert_allclose(cons, ref_cons[names].to_numpy(float), rtol=1e-9, atol=1e-9, equal_nan=True)
    assert cmeta.column("n_wells").to_pylist() == [16] * 6 and cmeta.column("n_plates").to_pylist() == [2] * 6


def test_activity_finds_the_actives_and_equals_copairs(screen_copy, tmp_path):
    import hts
    from hts.catalog import profiles as pstore

    copairs_map = pytest.importorskip("copairs.map")
    copairs_matching = pytest.importorskip("copairs.matching")
    ws = screen_copy
    rep = hts.profile(workspace=ws)
    act = hts.activity(ws, null_size=5000, seed=7)
    got = {(t["compound"], t["concentration"]): t for t in act.treatments}
    assert set(got) == ACTIVE | INACTIVE  # DMSO is the reference, not a treatment
    assert all(got[k]["hit"] and got[k]["q_value"] < 0.05 for k in ACTIVE)
    assert not any(got[k]["hit"] for k in INACTIVE)
    assert act.n_hits == 3 and act.n_controls == 16

    # copairs on the same normalised, selected profiles gives the same mAP and p-values
    meta, _, norm, feats = pstore.load_profiles(ws.catalog, rep.profile_set_id)
    x = np.nan_to_num(norm[:, np.asarray(feats.column("selected").to_pylist())])
    df = pd.DataFrame({
        "treatment": [f"{c}@{k}" for c, k in zip(meta.column("compound").to_pylist(), meta.column("concentration").to_pylist())],
        "role": meta.column("role").to_pylist(),
    })  # fmt: skip
    df = copairs_matching.assign_reference_index(df, "role == 'negative_control'")
    ap = copairs_map.average_precision(
        df, x, pos_sameby=["treatment", "Metadata_Reference_Index"], pos_diffby=[], neg_sameby=[],
        neg_diffby=["treatment", "Metadata_Reference_Index"], progress_bar=False,
    )  # fmt: skip
    ref = copairs_map.mean_average_precision(
        ap, sameby=["treatment"], null_size=5000, threshold=0.05, seed=7, progress_bar=False, cache_dir=tmp_path
    ).set_index("treatment")  # fmt: skip
    for (c, k), t in got.items():
        r = ref.loc[f"{c}@{k}"]
        assert t["mean_average_precision"] == pytest.approx(r["mean_average_precision"], rel=1e-9)
        assert t["p_value"] == pytest.approx(r["p_value"], rel=1e-12)
        assert t["q_value"] == pytest.approx(r["corrected_p_value"], rel=1e-9)
    stored = hts.query("SELECT compound, concentration, hit FROM activity ORDER BY q_value", ws)
    assert stored.height == 5 and stored["hit"].sum() == 3

    # the plate report gains an activity section: hits table, mAP plot, the hits' feature heatmap
    res = hts.report("SCREEN-1", workspace=ws, out=tmp_path / "report")
    page = Path(res.html).read_text()
    assert "Phenotypic activity" in page and "3 of 5 treatments differ from the negative controls" in page
    assert {Path(i).name for i in res.images} >= {"activity.png", "activity_hits.png"}


def test_similar_puts_same_phenotype_first(screen_copy):
    import hts

    ws = screen_copy
    hts.profile(workspace=ws)
    res = hts.similar("CMPD-002", ws, top=3)
    assert res["query"] == "CMPD-002 30 uM"
    first_two = {(n["compound"], n["concentration"]) for n in res["neighbours"][:2]}
    assert first_two == {("CMPD-001", 30.0), ("REF", 30.0)}  # the same (dose-driven) phenotype
    assert res["neighbours"][0]["similarity"] > 0.8 > res["neighbours"][2]["similarity"]
    well = hts.similar("SCREEN-2/B02", ws, top=1)  # a CMPD-001 30 µM well
    assert well["neighbours"][0]["compound"] in {"CMPD-001", "REF"}
    wells = hts.similar("SCREEN-2/B02", ws, top=10, level="well")
    assert len(wells["neighbours"]) == 10 and ("SCREEN-2", "B02") not in {
        (n["plate"], n["well"]) for n in wells["neighbours"]
    }
    assert all(n["compound"] in {"CMPD-001", "CMPD-002", "REF"} for n in wells["neighbours"])  # active wells only
    with pytest.raises(Exception, match="no such compound"):
        hts.similar("NOPE", ws)
    with pytest.raises(Exception, match="on 2 plates; write PLATE/B02"):
        hts.similar("B02", ws)


def test_rebuild_is_a_noop_and_the_recipe_makes_the_set(screen_copy):
    import hts
    from hts.tasks.profile import ProfileRecipe

    ws = screen_copy
    a = hts.profile(workspace=ws)
    b = hts.profile(workspace=ws)
    assert not b.built and b.profile_set_id == a.profile_set_id and b.n_selected == a.n_selected
    c = hts.profile(workspace=ws, recipe=ProfileRecipe(aggregation="mean", selection=("variance_threshold",)))
    assert c.built and c.profile_set_id != a.profile_set_id and c.n_selected > a.n_selected
    assert c.recipe["aggregation"] == "mean"
    # the latest set asked for is the current one (activity, similar, export use it)
    hts.profile(workspace=ws)
    assert (
        hts.query("SELECT profile_set_id FROM profile_sets ORDER BY current_at DESC LIMIT 1", ws).item()
        == a.profile_set_id
    )
    assert hts.query("SELECT count(*) FROM profiles", ws).item() == 192


def test_cli_profile_activity_similar_export(screen_copy, tmp_path):
    import polars as pl

    db = str(screen_copy.db)
    r = runner.invoke(app, ["profile", "--db", db])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert (
        "Built profile set" in text
        and "96 wells on 2 plate(s)" in text
        and "normalised against 8 negative-control wells" in text
    )
    assert "dropped" in text and "Next: hts activity" in text
    plot, heat = tmp_path / "act.png", tmp_path / "hits.png"
    r = runner.invoke(app, ["activity", "--db", db, "--null-size", "2000", "--plot", str(plot), "--heatmap", str(heat)])
    assert r.exit_code == 0, r.output
    assert "3 of 5 treatments active" in " ".join(r.output.split())
    assert plot.read_bytes()[:4] == b"\x89PNG" and heat.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(app, ["similar", "CMPD-001@30", "--db", db, "--top", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert {n["compound"] for n in json.loads(r.output)["neighbours"]} == {"CMPD-002", "REF"}
    r = runner.invoke(app, ["query", "--preset", "hits", "--db", db, "--format", "json"])
    assert r.exit_code == 0 and sum(row["hit"] for row in json.loads(r.output)) == 3
    r = runner.invoke(app, ["query", "--preset", "profile-features", "--db", db, "--format", "json"])
    assert {row["reason"] for row in json.loads(r.output)} >= {None, "correlation_threshold"}

    out = tmp_path / "profiles"
    r = runner.invoke(app, ["export", "--profiles", "--out", str(out), "--db", db])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["SCREEN-1_augmented.parquet", "SCREEN-1_normalized_feature_select_negcon.parquet",
                     "SCREEN-2_augmented.parquet", "SCREEN-2_normalized_feature_select_negcon.parquet",
                     "activity.parquet", "consensus.parquet", "features.parquet"]  # fmt: skip
    norm = pl.read_parquet(out / "SCREEN-1_normalized_feature_select_negcon.parquet")
    assert norm.height == 48 and norm["Metadata_Object_Count"].min() > 0
    # pycytominer reads it as its own: inferred features are exactly the selected ones, no identifiers
    from pycytominer.cyto_utils import infer_cp_features

    feats = pl.read_parquet(out / "features.parquet")
    assert infer_cp_features(norm.to_pandas()) == feats.filter(pl.col("selected"))["feature"].to_list()
    csv = tmp_path / "csv"
    r = runner.invoke(app, ["export", "--profiles", "--out", str(csv), "--db", db, "--format", "csv"])
    assert r.exit_code == 0 and (csv / "consensus.csv").read_text().startswith('"Metadata_Compound",')


def test_bad_inputs_are_one_line(screen_copy, tmp_path):
    db = str(screen_copy.db)

    def fails(*args):
        r = runner.invoke(app, [*args, "--db", db])
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        return " ".join(r.output.split())

    assert "no profiles yet (run `hts profile` first)" in fails("activity")
    assert "no profiles yet" in fails("similar", "CMPD-001")
    assert "--normalize zscore: choose mad_robustize or standardize" in fails("profile", "--normalize", "zscore")
    assert "--select magic: choose from" in fails("profile", "--select", "magic")
    assert "no plate named 'NOPE'" in fails("profile", "NOPE") or "NOPE" in fails("profile", "NOPE")
    assert "no finished segmentation run of engine 'nuclei'" in fails("profile", "--engine", "nuclei")
    assert runner.invoke(app, ["profile", "--db", db]).exit_code == 0
    assert "write COMPOUND@CONCENTRATION" in fails("similar", "CMPD-001@lots")
    assert "no profile set 'ffff'" in fails("activity", "--profile-set", "ffff")


def test_plate_without_controls_warns_and_activity_refuses(tmp_path):
    """A platemap without negative controls: normalised against all wells (a warning), no activity (a clear error)."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    ws = Workspace.at(tmp_path / "nc", scheduler="sync")
    p = make_plate(tmp_path / "raw", format="nd2", wells="A01:B12", fields=1, shape=(128, 128), name="NOCTRL",
                   platemap_rows=[r for r in screen_rows(controls=False) if r["well"][0] in "AB"])  # fmt: skip
    plate = hts.ingest(p.source, ws)
    plate.annotate(p.platemap)
    hts.segment(plate, engine="classic")
    rep = hts.profile(workspace=ws)
    assert rep.warnings == ["plate NOCTRL: no negative-control wells in its platemap; normalised against all its wells"]
    assert rep.plates[0]["reference"] == "all" and rep.plates[0]["n_reference"] == 24
    with pytest.raises(Exception, match="no negative-control wells in the profile set"):
        hts.activity(ws)


def test_one_well_plate_is_a_clear_message():
    """The real Cellomics example (one well, one field): segmented and measured, profiling says why it cannot."""
    assert runner.invoke(app, ["ingest", str(CELLOMICS)]).exit_code == 0
    r = runner.invoke(app, ["segment", "--engine", "classic", "--pixel-size", "0.65"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    text = " ".join(r.output.split())
    assert (
        "plate AS_09125_050116030001: 1 reference well(s) with cells (no negative controls in its platemap, "
        "so all its wells); normalising a plate needs at least 2" in text
    )


def test_dose_series_plate_activity_follows_the_dose(tmp_path):
    """`hts demo`'s dose-response plate (4 replicate rows per compound, 10 concentrations, DMSO and a reference):
    high concentrations are hits, the lowest are not; the dose-dependent-features preset finds the GFP ratio."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    ws = Workspace.at(tmp_path / "dose", scheduler="sync")
    p = make_plate(tmp_path / "raw", format="nd2", fields=1, shape=(192, 192))
    plate = hts.ingest(p.source, ws)
    plate.annotate(p.platemap)
    hts.segment(plate, engine="classic")
    rep = hts.profile(plate, workspace=ws)
    assert rep.n_wells == 96 and rep.n_treatments == 21  # 2 compounds x 10 concentrations + the reference
    act = {(t["compound"], t["concentration"]): t for t in hts.activity(ws, null_size=2000).treatments}
    assert act[("CMPD-001", 30.0)]["hit"] and act[("CMPD-002", 30.0)]["hit"]
    lowest = min(k for c, k in act if c == "CMPD-001")
    assert not act[("CMPD-001", lowest)]["hit"] and not act[("CMPD-002", lowest)]["hit"]
    from hts.tasks.query import preset_sql

    dose = hts.query(preset_sql("dose-dependent-features"), ws)
    first = dose.filter(dose["compound"] == "CMPD-001").head(10)
    assert first["concentrations"].to_list() == [10] * 10 and first["spearman_dose"].abs().head(5).min() >= 0.85
    assert any("GFP" in f for f in first["feature"])  # the reporter the synthetic compounds move
