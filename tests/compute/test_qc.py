"""QC formulas against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hts.compute.analysis.qc import assay_quality, robust_z, ssmd, z_prime


def test_z_prime_and_ssmd_by_hand():
    pos = [10.0, 12.0, 14.0]  # mean 12, sd 2
    neg = [1.0, 2.0, 3.0]  # mean 2, sd 1
    assert z_prime(pos, neg) == pytest.approx(1 - 3 * (2 + 1) / 10)
    assert ssmd(pos, neg) == pytest.approx(10 / math.sqrt(4 + 1))
    assert ssmd(neg, pos) == pytest.approx(-10 / math.sqrt(5))
    assert z_prime(pos + [float("nan")], neg) == pytest.approx(0.1)  # NaN wells ignored
    assert math.isnan(z_prime([1.0], neg)) and math.isnan(z_prime([2.0, 2.0], [2.0, 2.0]))
    assert assay_quality(0.7) == "excellent" and assay_quality(0.2) == "marginal" and assay_quality(-1) == "unusable"
    assert assay_quality(float("nan")) == "unknown"


def test_robust_z_flags_the_outlier_only():
    v = np.array([100, 102, 98, 101, 99, 100, 30, np.nan])
    z = robust_z(v)
    assert abs(z[6]) > 10 and np.all(np.abs(z[:6]) < 2) and np.isnan(z[7])
    assert np.all(robust_z([5, 5, 5]) == 0)
