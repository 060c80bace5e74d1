"""Screening quality metrics: Z'-factor, SSMD, robust z-scores.

Z' = 1 - 3 (sd_p + sd_n) / |mean_p - mean_n| (Zhang et al. 1999): above 0.5 the
controls are separated by an excellent assay window, 0..0.5 marginal, below 0
they overlap. SSMD = (mean_p - mean_n) / sqrt(sd_p^2 + sd_n^2) (Zhang 2007):
|SSMD| >= 2 is a strong effect, >= 3 very strong. Standard deviations are the
sample ones (n - 1), as plate QC conventionally reports them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["z_prime", "ssmd", "robust_z", "assay_quality"]


def _clean(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def z_prime(positive, negative) -> float:
    """Z'-factor of two control groups (NaN with fewer than 2 values in a group or equal means)."""
    p, n = _clean(positive), _clean(negative)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    gap = abs(p.mean() - n.mean())
    if gap == 0:
        return float("nan")
    return float(1.0 - 3.0 * (p.std(ddof=1) + n.std(ddof=1)) / gap)


def ssmd(positive, negative) -> float:
    """Strictly standardized mean difference of positive vs negative controls."""
    p, n = _clean(positive), _clean(negative)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    denom = np.sqrt(p.var(ddof=1) + n.var(ddof=1))
    if denom == 0:
        return float("nan")
    return float((p.mean() - n.mean()) / denom)


def robust_z(values) -> np.ndarray:
    """(x - median) / (1.4826 MAD) of each value; NaN stays NaN; 0 where the MAD is 0."""
    a = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(a)
    out = np.full(a.shape, np.nan)
    if not ok.any():
        return out
    med = np.median(a[ok])
    mad = 1.4826 * np.median(np.abs(a[ok] - med))
    out[ok] = (a[ok] - med) / mad if mad > 0 else 0.0
    return out


def assay_quality(zp: float) -> str:
    """Conventional reading of a Z'-factor."""
    if not np.isfinite(zp):
        return "unknown"
    if zp >= 0.5:
        return "excellent"
    if zp > 0:
        return "marginal"
    return "unusable"
