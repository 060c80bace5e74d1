"""Profiling maths against the references on the same input: pycytominer (normalize,
feature_select, consensus) and copairs (average precision, mAP, p-values, FDR)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hts.compute.analysis import profiling as pf

pycytominer = pytest.importorskip("pycytominer")
copairs_map = pytest.importorskip("copairs.map")
copairs_matching = pytest.importorskip("copairs.matching")


def _screen(seed=0, n_plates=2, wells=96, n_feat=40, nan_col=True):
    """Well profiles with correlated features, a constant one, an outlier one, a sparse-NaN one, treatments."""
    rng = np.random.default_rng(seed)
    rows = []
    treatments = ["DMSO"] * 16 + [f"C{i:02d}" for i in range(20) for _ in range(4)]
    for p in range(n_plates):
        for w in range(wells):
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"W{w:02d}", "Metadata_treatment": treatments[w]})
    meta = pd.DataFrame(rows)
    latent = rng.normal(size=(len(meta), 8))
    effect = {
        t: rng.normal(scale=2.0 if int(t[1:]) < 8 else 0.0, size=8) for t in sorted(set(treatments)) if t != "DMSO"
    }
    for i, t in enumerate(meta["Metadata_treatment"]):
        if t != "DMSO":
            latent[i] += effect[t]
    mix = rng.normal(size=(8, n_feat))
    x = latent @ mix + rng.normal(scale=0.3, size=(len(meta), n_feat)) + 100.0
    x[:, 3] = x[:, 2] * 2.0 + rng.normal(scale=1e-3, size=len(meta))  # correlated pair
    x[:, 5] = 7.0  # constant
    x[:, 7] *= 1e4  # huge values (outliers after normalisation)
    if nan_col:
        x[rng.choice(len(meta), 20, replace=False), 9] = np.nan  # 10 % missing
    names = [f"Cells_F{i:02d}" for i in range(n_feat)]
    return meta, x, names


def test_mad_robustize_and_standardize_equal_pycytominer():
    meta, x, names = _screen()
    for p in ("P0", "P1"):
        rows = (meta["Metadata_Plate"] == p).to_numpy()
        df = pd.concat([meta[rows].reset_index(drop=True), pd.DataFrame(x[rows], columns=names)], axis=1)
        control = (df["Metadata_treatment"] == "DMSO").to_numpy()
        for method in ("mad_robustize", "standardize"):
            ref = pycytominer.normalize(
                df, features=names, meta_features=list(meta.columns), method=method,
                samples="Metadata_treatment == 'DMSO'",
            )  # fmt: skip
            mine = pf.normalize(x[rows], control, method)
            np.testing.assert_allclose(mine, ref[names].to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)


def test_feature_selection_equals_pycytominer():
    meta, x, names = _screen()
    normed = np.vstack(
        [pf.normalize(x[(meta.Metadata_Plate == p).to_numpy()], (meta.Metadata_treatment == "DMSO").to_numpy()[(meta.Metadata_Plate == p).to_numpy()]) for p in ("P0", "P1")]
    )  # fmt: skip
    df = pd.concat([meta, pd.DataFrame(normed, columns=names)], axis=1)
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers"]
    ref = pycytominer.feature_select(df, features=names, operation=ops, corr_threshold=0.9, na_cutoff=0.05)
    sel = pf.select_features(normed, names, ops)
    assert sel.selected == [c for c in ref.columns if c in names]
    dropped = sel.dropped()
    assert "Cells_F05" in dropped["variance_threshold"]  # constant
    assert "Cells_F09" in dropped["drop_na_columns"]  # 10 % missing
    assert {"Cells_F02", "Cells_F03"} & set(dropped["correlation_threshold"])
    # NaN in a kept column: correlations over pairwise-complete rows, as pandas
    ops2 = ["variance_threshold", "correlation_threshold"]
    ref2 = pycytominer.feature_select(df, features=names, operation=ops2, corr_threshold=0.5)
    assert pf.select_features(normed, names, ops2, corr_threshold=0.5).selected == [
        c for c in ref2.columns if c in names
    ]


def test_consensus_median_equals_pycytominer():
    meta, x, names = _screen(nan_col=False)
    df = pd.concat([meta, pd.DataFrame(x, columns=names)], axis=1)
    ref = pycytominer.consensus(df, replicate_columns=["Metadata_treatment"], operation="median", features=names)
    ref = ref.set_index("Metadata_treatment").sort_index()
    codes, uniq = pd.factorize(meta["Metadata_treatment"], sort=True)
    mine = np.vstack([np.median(x[codes == i], axis=0) for i in range(len(uniq))])
    np.testing.assert_allclose(mine, ref[names].to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_activity_equals_copairs(tmp_path, seed):
    """Per-well AP, per-treatment mAP, p-values (same seed, same permutation count) and q-values."""
    meta, x, names = _screen(seed=seed, nan_col=False)
    x = np.vstack([pf.normalize(x[(meta.Metadata_Plate == p).to_numpy()], (meta.Metadata_treatment == "DMSO").to_numpy()[(meta.Metadata_Plate == p).to_numpy()]) for p in ("P0", "P1")])  # fmt: skip
    x = x[:, [i for i in range(x.shape[1]) if i not in (5,)]]  # the constant column is all NaN after MAD
    x = np.nan_to_num(x)
    df = copairs_matching.assign_reference_index(meta, "Metadata_treatment == 'DMSO'")
    ap = copairs_map.average_precision(
        df, x, pos_sameby=["Metadata_treatment", "Metadata_Reference_Index"], pos_diffby=[],
        neg_sameby=[], neg_diffby=["Metadata_treatment", "Metadata_Reference_Index"], progress_bar=False,
    )  # fmt: skip
    ref = copairs_map.mean_average_precision(
        ap, sameby=["Metadata_treatment"], null_size=2000, threshold=0.05, seed=seed, progress_bar=False,
        cache_dir=tmp_path / "copairs",
    ).set_index("Metadata_treatment").sort_index()  # fmt: skip

    codes, uniq = pd.factorize(meta["Metadata_treatment"], sort=True)
    control = (meta["Metadata_treatment"] == "DMSO").to_numpy()
    out = pf.activity(x, np.where(control, -1, codes), control, null_size=2000, seed=seed)
    treated = ~control
    np.testing.assert_allclose(out["ap"][treated], ap["average_precision"].to_numpy()[treated], rtol=1e-9)
    assert (out["n_pos"][treated] == ap["n_pos_pairs"].to_numpy()[treated]).all()
    assert (out["n_total"][treated] == ap["n_total_pairs"].to_numpy()[treated]).all()
    names_out = [uniq[c] for c in out["codes"]]
    assert names_out == list(ref.index)
    np.testing.assert_allclose(out["map"], ref["mean_average_precision"].to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(out["p"], ref["p_value"].to_numpy())
    np.testing.assert_allclose(out["q"], ref["corrected_p_value"].to_numpy(), rtol=1e-12)
    # the screen's design: treatments C00-C07 carry an effect, C08-C19 none
    hits = {n for n, q in zip(names_out, out["q"]) if q < 0.05}
    assert hits == {f"C{i:02d}" for i in range(8)}


def test_bh_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(3).uniform(size=200) ** 3
    p[:5] = p[5]  # ties
    np.testing.assert_allclose(pf.bh_qvalues(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)


def test_average_precision_by_hand():
    # ranking: pos 0.9, neg 0.8, pos 0.7, neg 0.1 -> precisions 1/1, 2/3 -> AP 5/6
    assert pf.average_precision([0.9, 0.7], [0.8, 0.1]) == pytest.approx(5 / 6)
    # a tie between a positive and a negative ranks the positive first
    assert pf.average_precision([0.5], [0.5]) == 1.0
    assert np.isnan(pf.average_precision([], [0.2]))


def test_similarity_metrics():
    a = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    s = pf.similarity(a, a)
    assert s[0, 0] == pytest.approx(1.0) and s[0, 1] == pytest.approx(1 / np.sqrt(14))
    c = pf.similarity(a, a + 5.0, "correlation")
    np.testing.assert_allclose(c, np.corrcoef(a, a + 5.0)[:2, 2:])
    with pytest.raises(ValueError, match="unknown similarity"):
        pf.similarity(a, a, "manhattan")
