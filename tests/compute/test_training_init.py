"""Fine-tuning from given weights (``--init``) and the model's tuned post-processing defaults (``postprocess``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hts.compute.segment.engines import segment_field
from hts.compute.segment.engines._deep import DeepEngine
from hts.compute.train import training as T
from hts.errors import EngineError
from hts.synth.samples import synthetic_samples


def _tiny(**kw) -> T.TrainConfig:
    return T.TrainConfig(
        engine="nuclei",
        arch_config={"base": 4, "depth": 2},
        crop_sizes=(64,),
        val_crop=64,
        batch_size=2,
        warmup=1,
        patience=100,
        threads=1,
        **kw,
    )


@pytest.fixture(scope="module")
def samples():
    return synthetic_samples([1, 2], recipe="nuclei", channels=("DAPI",), shape=(128, 128))


@pytest.fixture(scope="module")
def folder(samples, tmp_path_factory) -> Path:
    result = T.train(_tiny(steps=2, val_every=2, seed=1), samples[:1], samples[1:])
    return T.save_engine_model(tmp_path_factory.mktemp("m") / "nuclei", result)


def test_init_starts_from_the_given_weights(samples, folder: Path):
    ref = T.train(_tiny(steps=2, val_every=2, seed=1), samples[:1], samples[1:]).model.state_dict()
    # zero steps after the init: nothing changes (the init is exactly what the folder holds)
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    for k, v in ref.items():
        torch.testing.assert_close(saved[k], v)
    model, _ = T._build(_tiny(steps=1, seed=5))
    T.load_init_weights(model, folder)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    T.load_init_weights(model, folder / "model.safetensors")  # a bare file works too
    # a fine-tuning run starts there, not from a fresh seeded network
    losses: dict[str, list[float]] = {"init": [], "fresh": []}
    for key, init in (("init", folder), ("fresh", None)):
        T.train(
            _tiny(steps=1, val_every=1, seed=5),
            samples[:1],
            samples[1:],
            init=init,
            callback=lambda ev, key=key: ev["event"] == "val" and losses[key].append(ev["val_loss"]),
        )
    assert losses["init"] != losses["fresh"]


def test_init_rejects_weights_of_another_network(folder: Path, tmp_path: Path):
    model, _ = T._build(T.TrainConfig(engine="nuclei", arch_config={"base": 8, "depth": 2}))
    with pytest.raises(EngineError, match="do not fit"):
        T.load_init_weights(model, folder)
    with pytest.raises(EngineError, match="no such"):
        T.load_init_weights(model, tmp_path / "missing.safetensors")


def test_cli_init_option(samples, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}
    real = T.train

    def spy(*a, **kw):
        seen["init"] = kw.get("init")
        return real(*a, **kw)

    monkeypatch.setattr(T, "train", spy)
    out = tmp_path / "ft"
    _train_recipe().main(
        [
            "--engine",
            "nuclei",
            "--out",
            str(out),
            "--steps",
            "1",
            "--val-every",
            "1",
            "--base",
            "4",
            "--depth",
            "2",
            "--synthetic",
            "1",
            "--synthetic-val",
            "1",
            "--init",
            str(folder),
            "--no-resume",
            "--threads",
            "1",
            "--checkpoint",
            str(tmp_path / "c.pt"),
            "--quiet",
        ]
    )
    assert Path(seen["init"]) == folder and (out / "model.safetensors").is_file()
    assert "--init" in json.loads((out / "manifest.json").read_text())["command"]


def _train_recipe():
    """engines/train_recipe.py, the script that reproduces the shipped weights (not part of the package API)."""
    import importlib.util

    from hts.resources import data_dir

    spec = importlib.util.spec_from_file_location("train_recipe", data_dir("engines") / "train_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _engine_class(folder: Path):
    return DeepEngine.from_folder(folder)


def test_config_postprocess_sets_the_defaults(folder: Path, tmp_path: Path, samples):
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(folder, tuned)
    cfg = json.loads((tuned / "config.json").read_text())
    cfg["postprocess"] = {"foreground_threshold": 0.4, "split_h": 0.15}
    (tuned / "config.json").write_text(json.dumps(cfg))
    plain = _engine_class(folder)(backend="torch")
    assert (plain.params.foreground_threshold, plain.params.split_h, plain.params.min_area_um2) == (0.5, 0.3, 10.0)
    eng = _engine_class(tuned)(backend="torch")
    assert (eng.params.foreground_threshold, eng.params.split_h, eng.params.min_area_um2) == (0.4, 0.15, 10.0)
    # an explicit parameter wins over the model's tuned default
    eng2 = _engine_class(tuned)({"split_h": 0.5}, backend="torch")
    assert (eng2.params.foreground_threshold, eng2.params.split_h) == (0.4, 0.5)
    segment_field(eng, {"nucleus": samples[0].image[0]}, pixel_size_um=0.65)

    cfg["postprocess"] = {"no_such_param": 1}
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="unknown parameters"):
        _engine_class(bad)(backend="torch")


def test_cli_val_pair_and_inverted_stain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import tifffile

    from hts.synth import synth_field

    f = synth_field(shape=(128, 128), seed=4, channels=("DAPI", "Brightfield"), density=0.6)
    tifffile.imwrite(tmp_path / "bf.tif", f.image[1])
    tifffile.imwrite(tmp_path / "st.tif", f.image[0])
    out = tmp_path / "bf"
    _train_recipe().main(
        [
            "--engine",
            "brightfield-unet",
            "--out",
            str(out),
            "--steps",
            "1",
            "--val-every",
            "1",
            "--base",
            "4",
            "--depth",
            "2",
            "--pair",
            f"{tmp_path / 'bf.tif'},{tmp_path / 'st.tif'},0.65,0:96",
            "--val-pair",
            f"{tmp_path / 'bf.tif'},{tmp_path / 'st.tif'},0.65,96:128",
            "--no-resume",
            "--threads",
            "1",
            "--checkpoint",
            str(tmp_path / "c.pt"),
            "--quiet",
        ]
    )
    man = json.loads((out / "manifest.json").read_text())
    assert [v["rows"] for v in man["train"]] == [[0, 96]] and [v["rows"] for v in man["validation"]] == [[96, 128]]
    assert json.loads((out / "training.json").read_text())["val_samples"] == 1


def test_load_pair_inverts_an_nd2_channel(monkeypatch: pytest.MonkeyPatch):
    import sys
    import types

    import numpy as np

    arr = np.stack([np.arange(12, dtype=np.uint16).reshape(3, 4), np.full((3, 4), 7, np.uint16)])
    arr[1, 0, 0] = 10

    class File:
        def __init__(self, path):
            self.metadata = types.SimpleNamespace(
                channels=[types.SimpleNamespace(channel=types.SimpleNamespace(name=n)) for n in ("Mono", "DAPI")]
            )

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def asarray(self):
            return arr

        def voxel_size(self):
            return types.SimpleNamespace(x=0.5)

    monkeypatch.setitem(sys.modules, "nd2", types.SimpleNamespace(ND2File=File))
    image, stain, px = T.load_pair("x.nd2#Mono", "x.nd2#~DAPI")
    assert px == 0.5 and (image == arr[0]).all()
    assert stain[0, 0] == 0 and stain[1, 1] == 3
