"""The benchmark entry point's network matrix (backend × precision), run on this machine's CPU."""

from __future__ import annotations

import pytest

from benchmarks.unet import network_matrix


def test_network_matrix_measures_what_runs_and_says_why_the_rest_cannot():
    rows = network_matrix(
        "nuclei", backends=["torch", "onnxruntime"], precisions=["fp32", "fp16"], device="cpu", size=64, repeat=1
    )
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


def test_unknown_names_are_refused_before_anything_runs(monkeypatch):
    import benchmarks.unet as unet

    monkeypatch.setattr(unet, "unet_benchmark", lambda *a, **k: pytest.fail("ran before checking the names"))
    with pytest.raises(ValueError, match="'fp8'.*'jax'|'jax'.*'fp8'"):
        network_matrix("nuclei", backends=["torch", "jax"], precisions=["fp32", "fp8"], device="cpu", size=64)


def test_a_combination_that_fails_is_a_row_and_the_rest_still_run(monkeypatch):
    import benchmarks.unet as unet

    def fake(engine, *, backend, precision, **kw):
        if backend == "torch":
            raise RuntimeError("CUDA out of memory")
        return {"engine": engine, "backend": backend, "precision": precision, "fields_per_s": 1.0}

    monkeypatch.setattr(unet, "unet_benchmark", fake)
    seen = []
    rows = network_matrix(
        "nuclei", backends=["torch", "onnxruntime"], precisions=["fp32"], device="cpu", on_row=seen.append
    )
    assert rows == seen and rows[0]["failed"] == "RuntimeError: CUDA out of memory" and rows[1]["fields_per_s"] == 1.0


def test_engine_cost_measures_each_folder_on_a_real_field():
    import argparse

    from benchmarks.engine_cost import run

    args = dict(engine="nuclei", folder=None, size=256, pixel_size=0.5, repeat=1, backend="torch")
    out = run(argparse.Namespace(**args, param=None))
    (row,) = out["runs"]
    assert row["folder"] == "engines/nuclei" and row["cpu_s"] > 0 and row["objects"]["nuclei"] > 5
    assert row["model_pixels"] == round(256 * 0.5 / row["train_pixel_um"]) ** 2 and row["peak_rss_mb"] > 100
    # engine parameters reach the engine: the same field in 64-px network tiles finds the same nuclei
    small = run(argparse.Namespace(**args, param=["model_tile=64", "batch_size=2"]))
    assert small["params"] == {"model_tile": 64, "batch_size": 2}
    assert abs(small["runs"][0]["objects"]["nuclei"] - row["objects"]["nuclei"]) <= 2
