"""The sweep benchmark's bookkeeping: the flatness verdicts and the floor + per-object fit it reports."""

from __future__ import annotations

import pytest

from benchmarks.sweep import FLAT, _flatness, _linear_fit


def _row(objects: int, cpu: float, *, size: int = 2048, baseline: float | None = None) -> dict:
    mp = size * size / 1e6
    row = {"sweep": "density", "size": size, "objects": objects, "worker_total_s": cpu,
           "per_megapixel_s": {"worker_total": cpu / mp}, "per_object_ms": {"worker_total": 1000 * cpu / objects}}  # fmt: skip
    if baseline is not None:
        row.update(skimage_objects=objects, skimage_s=baseline)
        row["per_megapixel_s"]["skimage"] = baseline / mp
        row["per_object_ms"]["skimage"] = 1000 * baseline / objects
    return row


def test_linear_fit_recovers_floor_and_slope():
    n = [45, 189, 861, 1528, 4144]
    fit = _linear_fit(n, [1.2 + 0.0004 * k for k in n])
    assert fit["floor_s"] == pytest.approx(1.2, abs=1e-4)
    assert fit["per_object_ms"] == pytest.approx(0.4, abs=1e-4)
    assert fit["max_residual"] == pytest.approx(0.0, abs=1e-3)


def test_a_fixed_floor_is_never_flat_per_object_but_is_per_megapixel():
    # what the per-object target meets: 1.2 s of pixels per field plus 0.4 ms per object
    dens = [_row(k, 1.2 + 0.0004 * k, baseline=1.3 + 0.0015 * k) for k in (45, 189, 861, 1528, 4144)]
    sizes = [
        _row(480 * s * s // 2**20, 0.5 * s * s / 1e6 + 0.0004 * 480 * s * s / 2**20, size=s) for s in (512, 1024, 2048)
    ]
    for r in sizes:
        del r["sweep"]
    out = _flatness(sizes + dens, None)
    assert out["per_megapixel_over_sizes_within_25pct"]["worker_total"]
    assert not out["per_object_over_densities_within_25pct"]["worker_total"]
    assert not out["per_object_over_densities_within_25pct"]["skimage"]  # the baseline misses it too
    assert out["per_object_over_densities"]["worker_total"] > FLAT
    fits = out["linear_fit_over_densities"]
    assert fits["worker_total"]["floor_s"] == pytest.approx(1.2, abs=1e-3)
    assert fits["skimage"]["per_object_ms"] == pytest.approx(1.5, abs=1e-3)
