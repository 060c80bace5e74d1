"""Image-based profiling on well profiles: normalisation, feature selection, consensus,
phenotypic activity (mean average precision) and similarity.

These are the steps pycytominer (normalize, feature_select, consensus) and copairs
(average_precision, mean_average_precision) run on pandas frames. They are written here
on numpy matrices (wells x features) because hts keeps profiles in the catalog as Arrow
arrays and the per-well matrix is small next to the cells it came from; the tests check
every function against pycytominer and copairs on the same input (values within 1e-9,
the same p-values for the same seed and permutation count).

The aggregation of cells into wells is not here: it runs as SQL inside DuckDB
(:mod:`hts.tasks.profile`).

Conventions follow the references:

- ``mad_robustize``: ``(x - median) / (1.4826 * MAD + 1e-18)``, statistics of the
  reference wells (the plate's negative controls), NaN omitted;
- ``standardize``: ``(x - mean) / std`` (population std; a constant feature is
  divided by 1), NaN omitted;
- feature selection drops: variance <= ``min_variance``; more than ``na_cutoff`` of
  the wells missing; of every pair correlated above ``corr_threshold`` (Pearson, signed)
  the feature with the larger summed absolute correlation; any absolute value above
  ``outlier_cutoff``. Operations run in order, each on what the previous ones kept;
- average precision of a treated well: its replicates (same treatment, other wells) are
  the positives, the negative-control wells the negatives, ranked by cosine similarity;
  mAP of a treatment is the mean over its wells; its p-value is the fraction of a null
  distribution (``null_size`` random rankings with the same numbers of positives and
  negatives, seeded as copairs seeds them) above the mAP, ``(n + 1) / (null_size + 1)``; q-values are
  Benjamini-Hochberg over all treatments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NORMALIZATIONS",
    "SELECTIONS",
    "MAD_SCALE",
    "normalize",
    "select_features",
    "Selection",
    "average_precision",
    "null_distributions",
    "map_pvalues",
    "bh_qvalues",
    "activity",
    "similarity",
]

NORMALIZATIONS = ("mad_robustize", "standardize")
#: Feature-selection operations, in the order hts runs them by default.
SELECTIONS = ("variance_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers")
#: MAD of a normal distribution's sample -> its standard deviation.
MAD_SCALE = 1.4826
_EPS_MAD = 1e-18


def normalize(x: np.ndarray, reference: np.ndarray, method: str = "mad_robustize") -> np.ndarray:
    """Normalise the rows of ``x`` (wells x features) against the rows ``reference`` selects.

    ``reference`` is a boolean mask (or row indices) of the wells whose statistics
    centre and scale every well: a plate's negative controls, or all its wells.
    """
    x = np.asarray(x, dtype=np.float64)
    ref = x[reference]
    if ref.shape[0] == 0:
        raise ValueError("no reference wells to normalise against")
    with np.errstate(all="ignore"):
        if method == "mad_robustize":
            center = np.nanmedian(ref, axis=0)
            mad = np.nanmedian(np.abs(ref - center), axis=0) * MAD_SCALE
            return (x - center) / (mad + _EPS_MAD)
        if method == "standardize":
            center = np.nanmean(ref, axis=0)
            std = np.sqrt(np.nanvar(ref, axis=0))
            # as scikit-learn's StandardScaler: a (near-)constant feature is divided by 1
            std = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(center), 1.0), 1.0, std)
            return (x - center) / std
    raise ValueError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")


@dataclass
class Selection:
    """Which features feature selection kept, and why each other one was dropped."""

    features: list[str]
    kept: np.ndarray  # bool per feature
    reasons: list[str | None]  # None where kept, else the operation that dropped it

    @property
    def selected(self) -> list[str]:
        return [f for f, k in zip(self.features, self.kept) if k]

    def dropped(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f, r in zip(self.features, self.reasons):
            if r is not None:
                out.setdefault(r, []).append(f)
        return out


def _pearson(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of ``x``; NaN: pairwise-complete rows (as pandas)."""
    if np.isfinite(x).all():
        with np.errstate(all="ignore"):
            return np.corrcoef(x, rowvar=False)
    m = np.isfinite(x).astype(np.float64)
    z = np.where(m > 0, x, 0.0)
    n = m.T @ m
    sx, sy = z.T @ m, m.T @ z
    sxx, syy = (z * z).T @ m, m.T @ (z * z)
    sxy = z.T @ z
    with np.errstate(all="ignore"):
        cov = n * sxy - sx * sy
        r = cov / np.sqrt((n * sxx - sx * sx) * (n * syy - sy * sy))
    r[n < 2] = np.nan
    return np.clip(r, -1.0, 1.0)


def _variance_excluded(x: np.ndarray, min_variance: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        var = np.nanvar(x, axis=0)
    return ~(var > min_variance)  # NaN variance (no values) is dropped too


def _na_excluded(x: np.ndarray, cutoff: float) -> np.ndarray:
    return np.isnan(x).sum(axis=0) / max(x.shape[0], 1) > cutoff


def _correlation_excluded(x: np.ndarray, threshold: float) -> np.ndarray:
    """Of each pair with r > threshold, the feature whose summed |r| is larger (pycytominer's rule)."""
    k = x.shape[1]
    out = np.zeros(k, dtype=bool)
    if k < 2:
        return out
    r = _pearson(x)
    order = np.argsort(np.nansum(np.abs(r), axis=0), kind="quicksort")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    a, b = np.nonzero(np.tril(r > threshold, k=-1))  # NaN compares False
    out[np.where(rank[a] > rank[b], a, b)] = True
    return out


def _outlier_excluded(x: np.ndarray, cutoff: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        hi = np.abs(np.nanmax(x, axis=0))
        lo = np.abs(np.nanmin(x, axis=0))
    return (hi > cutoff) | (lo > cutoff)


def select_features(
    x: np.ndarray,
    features: Sequence[str],
    operations: Sequence[str] = SELECTIONS,
    *,
    min_variance: float = 1e-6,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    outlier_cutoff: float = 500.0,
) -> Selection:
    """Feature selection over the rows of ``x`` (normalised well profiles); see the module notes."""
    x = np.asarray(x, dtype=np.float64)
    features = list(features)
    if x.shape[1] != len(features):
        raise ValueError(f"{x.shape[1]} columns but {len(features)} feature names")
    unknown = [op for op in operations if op not in SELECTIONS]
    if unknown:
        raise ValueError(f"unknown feature selection {unknown[0]!r}; choose from {', '.join(SELECTIONS)}")
    kept = np.ones(len(features), dtype=bool)
    reasons: list[str | None] = [None] * len(features)
    for op in operations:
        idx = np.flatnonzero(kept)
        sub = x[:, idx]
        if op == "variance_threshold":
            drop = _variance_excluded(sub, min_variance)
        elif op == "drop_na_columns":
            drop = _na_excluded(sub, na_cutoff)
        elif op == "correlation_threshold":
            drop = _correlation_excluded(sub, corr_threshold)
        else:
            drop = _outlier_excluded(sub, outlier_cutoff)
        for i in idx[drop]:
            kept[i] = False
            reasons[i] = op
    return Selection(features, kept, reasons)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return an @ bn.T


def similarity(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Similarity of every row of ``a`` with every row of ``b``: cosine, or Pearson correlation across features."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        if metric == "cosine":
            return _cosine(a, b)
        if metric == "correlation":
            return _cosine(a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True))
    raise ValueError(f"unknown similarity {metric!r}; choose cosine or correlation")


def average_precision(pos_sims: np.ndarray, neg_sims: np.ndarray) -> float:
    """AP of one query: its positives' and negatives' similarities ranked together, highest first.

    Ranked on ``1 - similarity`` in float32 as copairs ranks, ties putting positives first.
    """
    one = np.float32(1.0)
    pos = np.sort(one - np.asarray(pos_sims, dtype=np.float32))
    neg = np.sort(one - np.asarray(neg_sims, dtype=np.float32))
    if pos.size == 0:
        return float("nan")
    above = np.searchsorted(neg, pos, side="left")  # negatives ranked strictly before each positive
    hits = np.arange(1, pos.size + 1)
    return float(np.sum(hits / (hits + above)) / pos.size)


def null_distributions(confs: np.ndarray, null_size: int, seed: int) -> np.ndarray:
    """AP of ``null_size`` random rankings for each (positives, total) row of ``confs``.

    ``confs`` must be unique rows in ascending order (``np.unique(..., axis=0)``): the
    seed of each configuration is drawn in that order, as copairs draws it, so the same
    ``seed`` gives copairs' null distributions. float32, one row per configuration.
    """
    confs = np.asarray(confs, dtype=np.int64).reshape(-1, 2)
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs))
    out = np.empty((len(confs), null_size), dtype=np.float32)
    for i, (k, m) in enumerate(confs):
        rng = np.random.default_rng(seeds[i])
        dtype = np.uint16 if m < 2**16 else np.uint32
        idx = np.tile(np.arange(m, dtype=dtype), (null_size, 1))
        rng.permuted(idx, axis=1, out=idx)
        rel_k = np.sort(idx[:, :k], axis=1)
        pr_k = np.arange(1, k + 1, dtype=np.float32) / (rel_k + 1)
        out[i] = (pr_k.sum(axis=1) / k).astype(np.float32)
    return out


def map_pvalues(
    ap: np.ndarray, n_pos: np.ndarray, n_total: np.ndarray, groups: np.ndarray, *, null_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mAP and permutation p-value per group from per-query APs.

    ``groups`` gives each query's group code (0..G-1); queries with NaN AP or no
    positives are left out. Returns (group codes present, mAP, p-value), groups ascending.
    """
    ap = np.asarray(ap, dtype=np.float64)
    ok = np.isfinite(ap) & (np.asarray(n_pos) > 0)
    ap, groups = ap[ok], np.asarray(groups)[ok]
    confs = np.stack([np.asarray(n_pos)[ok], np.asarray(n_total)[ok]], axis=1)
    if len(ap) == 0:
        return np.array([], dtype=np.int64), np.array([]), np.array([])
    uconfs, rev = np.unique(confs, axis=0, return_inverse=True)
    nulls = null_distributions(uconfs, null_size, seed)
    codes = np.unique(groups)
    maps = np.empty(len(codes))
    pvals = np.empty(len(codes))
    for j, g in enumerate(codes):
        members = np.flatnonzero(groups == g)
        maps[j] = ap[members].mean()
        null = nulls[rev.ravel()[members]].mean(axis=0)
        pvals[j] = ((null > maps[j]).sum() + 1) / (null_size + 1)
    return codes, maps, pvals


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), as statsmodels' ``fdr_bh``."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def activity(
    x: np.ndarray,
    treatment: np.ndarray,
    control: np.ndarray,
    *,
    null_size: int = 10000,
    seed: int = 0,
    metric: str = "cosine",
) -> dict[str, np.ndarray]:
    """Phenotypic activity of each treatment against the negative controls.

    ``x``: well profiles (rows); ``treatment``: each row's treatment code (>= 0; -1 for
    rows that are neither); ``control``: bool, the negative-control rows. Each treated
    row is a query: positives are the other rows of its treatment, negatives the control
    rows. Returns per-row ``ap``, ``n_pos``, ``n_total`` and per-treatment ``codes``,
    ``map``, ``p``, ``q`` (treatments with a single well have no mAP and are absent).
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    treatment = np.asarray(treatment)
    control = np.asarray(control, dtype=bool)
    queries = np.flatnonzero((treatment >= 0) & ~control)
    negs = np.flatnonzero(control)
    ap = np.full(len(x), np.nan)
    n_pos = np.zeros(len(x), dtype=np.int64)
    n_total = np.zeros(len(x), dtype=np.int64)
    if len(negs) == 0 or len(queries) == 0:
        empty = np.array([])
        return {"ap": ap, "n_pos": n_pos, "n_total": n_total, "codes": empty.astype(np.int64), "map": empty,
                "p": empty, "q": empty}  # fmt: skip
    # similarities rounded to float32, as copairs computes them (so rankings tie the same way)
    neg_sims = similarity(x[queries], x[negs], metric).astype(np.float32)
    for qi, q in enumerate(queries):
        partners = queries[(treatment[queries] == treatment[q]) & (queries != q)]
        if len(partners) == 0:
            continue
        pos_sims = similarity(x[q : q + 1], x[partners], metric).astype(np.float32)[0]
        ap[q] = average_precision(pos_sims, neg_sims[qi])
        n_pos[q] = len(partners)
        n_total[q] = len(partners) + len(negs)
    codes, maps, pvals = map_pvalues(ap, n_pos, n_total, treatment, null_size=null_size, seed=seed)
    return {
        "ap": ap,
        "n_pos": n_pos,
        "n_total": n_total,
        "codes": codes,
        "map": maps,
        "p": pvals,
        "q": bh_qvalues(pvals),
    }
