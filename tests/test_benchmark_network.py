"""The benchmark entry point's network matrix (backend × precision), run on this machine's CPU."""

from __future__ import annotations

import pytest

from benchmarks.unet import network_matrix


def test_network_matrix_measures_what_runs_and_says_why_the_rest_cannot():
    rows = network_matrix("nuclei", backends=["torch", "onnxruntime"], precisions=["fp32", "fp16"],
                          device="cpu", size=64, repeat=1)
    by = {(r["backend"], r["precision"]): r for r in rows}
    assert set(by) == {("torch", "fp32"), ("torch", "fp16"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")}
    for backend in ("torch", "onnxruntime"):
        r = by[backend, "fp32"]
        assert "skipped" not in r and r["device"] == "cpu" and r["input"] == [1, 1, 64, 64]
        # the shipped U-Net: 25.5 GFLOP per 512² field, so 1/64 of it at 64²
        assert r["forward_GFLOP"] == pytest.approx(25.5 / 64, rel=0.02)
        assert r["fields_per_s"] > 0 and 0 < r["fraction_of_fp32_peak"]
    assert "needs a CUDA device" in by["torch", "fp16"]["skipped"]
    assert "fp32 only" in by["onnxruntime", "fp16"]["skipped"]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision 'fp8'"):
        network_matrix("nuclei", backends=["torch"], precisions=["fp8"], device="cpu", size=64, repeat=1)
