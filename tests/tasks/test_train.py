"""`hts.tasks.train` (tiny networks, a few steps) and engine folders as engines, through `segment` unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hts.catalog import Catalog
from hts.compute.segment.engines import EngineError, engine_class, segment_field
from hts.compute.segment.engines._deep import DeepEngine
from hts.config import load_workspace
from hts.errors import HtsError
from hts.store import PlateStore
from hts.synth import make_plate, synth_field
from hts.tasks.train import TrainData, TrainOptions, train_engine

# a tiny network and short steps: seconds per run
TINY = {
    "arch_config": {"base": 4, "depth": 2},
    "batch_size": 2,
    "crop_sizes": (64,),
    "val_crop": 64,
    "val_every": 2,
    "warmup": 1,
    "patience": 100,
    "threads": 1,
}


@pytest.fixture
def mask_folders(tmp_path):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for s in (1, 2, 3):
        f = synth_field(shape=(128, 128), seed=s, channels=("DAPI",), density=0.6)
        tifffile.imwrite(imgs / f"img{s}.tif", f.image[0])
        tifffile.imwrite(masks / f"img{s}_mask.tif", f.nuclei.astype(np.uint16))
    return imgs, masks


@pytest.fixture
def plate(tmp_path):
    from hts.tasks.ingest import ingest

    p = make_plate(tmp_path / "raw", format="nd2", wells="A01:A02", fields=1, shape=(128, 128), masks=True)
    ingest(p.source, workspace=load_workspace())
    return p


def test_train_from_masks_writes_a_loadable_engine_folder(mask_folders, tmp_path):
    imgs, masks = mask_folders
    out = tmp_path / "my-nuclei"
    events: list[dict] = []
    rep = train_engine(
        "nuclei",
        out,
        TrainData(images=imgs, masks=masks, pixel_size_um=0.65),
        TrainOptions(steps=4, config=TINY),
        progress=events.append,
        command="hts train --engine nuclei ...",
    )
    assert rep.status == "trained" and rep.steps_run == 4 and rep.train_items == 2 and rep.val_items == 1
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == [
        "CARD.md",
        "config.json",
        "manifest.json",
        "metrics.json",
        "model.safetensors",
        "training.json",
    ]
    cfg = json.loads((out / "config.json").read_text())
    # the object size was measured on the masks (synthetic nuclei at 0.65 µm/px), the pixel size chosen from it
    assert cfg["name"] == "nuclei" and cfg["inputs"] == ["nucleus"]
    assert 8 < cfg["nucleus_diameter_um"] == cfg["object_diameter_um"] < 16
    assert cfg["pixel_size_um"] == pytest.approx(cfg["nucleus_diameter_um"] / (12 / 0.65), abs=1e-3)
    run = json.loads((out / "training.json").read_text())
    assert run["steps_run"] == 4 and run["object_size_measured"] is True and run["data"]["masks"]["items"] == 3
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["train"]) == 2 and len(man["validation"]) == 1 and man["train"][0]["mask"].endswith("_mask.tif")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["set"] == "validation" and metrics["nuclei"]["images"] == 1 and metrics["nuclei"]["n_true"] > 0
    card = (out / "CARD.md").read_text()
    assert "4 of 4 steps" in card and "hts train --engine nuclei" in card and f"{cfg['pixel_size_um']} µm" in card
    assert not (out / "checkpoint.pt").exists()

    cls = engine_class(str(out))
    assert issubclass(cls, engine_class("nuclei")) and cls.name == str(out.resolve())
    assert engine_class(out) is cls and engine_class(cls.name) is cls  # a worker resolves the name the same way
    eng = cls(backend="torch")
    assert eng.model_sha256 == cfg["weights_sha256"] != engine_class("nuclei")(backend="torch").model_sha256
    assert "trained with `hts train`" in cls.card()
    f = synth_field(shape=(96, 96), seed=7, channels=("DAPI",))
    assert segment_field(eng, {"nucleus": f.image[0]}, pixel_size_um=0.65).labels["nuclei"].shape == (96, 96)

    # the folder is not overwritten by accident
    with pytest.raises(EngineError, match="already holds an engine; pass --overwrite"):
        train_engine("nuclei", out, TrainData(images=imgs, masks=masks), TrainOptions(steps=2, config=TINY))


def test_train_on_a_plate_with_stain_derived_targets_then_segment_with_the_folder(plate, tmp_path):
    from hts.api import segment
    from hts.tasks.evaluate import evaluate

    out = tmp_path / "bf"
    ws = load_workspace()
    rep = train_engine(
        "brightfield-unet",
        out,
        TrainData(plate="DEMO-PLATE", labels_from="DAPI"),
        TrainOptions(steps=4, config=TINY),
        workspace=ws,
    )
    assert rep.train_items == 1 and rep.val_items == 1 and rep.metrics["set"] == "validation"
    run = json.loads((out / "training.json").read_text())
    d = run["data"]["plate"]
    assert d["plate"] == "DEMO-PLATE" and d["fields_used"] == 2 and d["labels_from"] == "DAPI"
    assert d["channels"] == {"brightfield": "Brightfield"} and "classic engine on DAPI" in d["targets"]
    assert {e["well"] for e in json.loads((out / "manifest.json").read_text())["train"]} <= {"A01", "A02"}
    assert "Plate **DEMO-PLATE**" in (out / "CARD.md").read_text()

    # segment(engine=<folder>) through the unchanged task: labels written, run recorded with the folder's checksum
    (r,) = segment(engine=str(out), workspace=ws)
    sha = json.loads((out / "config.json").read_text())["weights_sha256"]
    assert r.status == "segmented" and r.fields_segmented == 2 and r.engine == str(out.resolve())
    row = Catalog("hts.duckdb").query("SELECT engine, model_sha256, channels FROM runs")[0]
    assert row["engine"] == str(out.resolve()) and row["model_sha256"] == sha and "Brightfield" in row["channels"]
    lab = PlateStore(Path("plates/DEMO-PLATE.zarr")).read_labels("A/01/0", "nuclei")[:]
    assert lab.shape == (1, 1, 1, 128, 128)
    (again,) = segment(engine=str(out), workspace=ws)
    assert again.status == "unchanged"
    ev = evaluate(plate="DEMO-PLATE", truth=plate.truth_dir, labels="nuclei", workspace=ws)
    assert ev.overall["images"] == 2 and ev.overall["n_true"] > 5

    with pytest.raises(EngineError, match="--labels-from CHANNEL"):
        TrainData(plate="DEMO-PLATE")
    with pytest.raises(EngineError, match="has no channel 'Hoechst'"):
        train_engine(
            "brightfield-unet",
            tmp_path / "x",
            TrainData(plate="DEMO-PLATE", labels_from="Hoechst"),
            TrainOptions(steps=2, config=TINY),
            workspace=ws,
        )
    with pytest.raises(EngineError, match="training from plate DEMO-PLATE needs the workspace"):
        train_engine(
            "brightfield-unet",
            tmp_path / "x",
            TrainData(plate="DEMO-PLATE", labels_from="DAPI"),
            TrainOptions(steps=2, config=TINY),
        )


def test_whole_cell_engine_trains_on_plate_cells(plate, tmp_path):
    rep = train_engine(
        "cytoplasm",
        tmp_path / "cyto",
        TrainData(plate="DEMO-PLATE", labels_from="DAPI", wells="A01"),
        TrainOptions(steps=2, config=TINY),
        workspace=load_workspace(),
    )
    assert rep.train_items == 1 and rep.val_items == 0 and rep.metrics["set"].startswith("training")
    cfg = json.loads((tmp_path / "cyto" / "config.json").read_text())
    assert cfg["inputs"] == ["cytoplasm"] and cfg["cell_diameter_um"] > cfg["nucleus_diameter_um"] > 5
    assert cfg["object_diameter_um"] == cfg["cell_diameter_um"]
    assert set(rep.metrics) >= {"nuclei", "cells"}


def test_interrupted_training_resumes_from_the_checkpoint(mask_folders, tmp_path):
    imgs, masks = mask_folders
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_at_3(ev):
        if ev["event"] == "step" and ev["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_engine(
            "nuclei", out, TrainData(images=imgs, masks=masks), TrainOptions(steps=6, config=TINY), progress=stop_at_3
        )
    assert (out / "checkpoint.pt").exists() and not (out / "config.json").exists()
    steps: list[int] = []
    rep = train_engine(
        "nuclei",
        out,
        TrainData(images=imgs, masks=masks),
        TrainOptions(config=TINY, resume=True),
        progress=lambda ev: ev["event"] == "step" and steps.append(ev["step"]),
    )
    assert rep.status == "resumed" and rep.steps == 6 and steps == [3, 4, 5, 6]  # continued from the step-2 checkpoint
    assert (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


def test_minutes_size_the_run(mask_folders, tmp_path):
    imgs, masks = mask_folders
    rep = train_engine(
        "nuclei", tmp_path / "m", TrainData(images=imgs, masks=masks), TrainOptions(minutes=0.05, config=TINY)
    )
    assert rep.steps >= 10 and rep.seconds < 30


def test_bad_inputs_are_one_line_errors(mask_folders, tmp_path):
    imgs, masks = mask_folders
    data = TrainData(images=imgs, masks=masks)
    with pytest.raises(EngineError, match="no training recipe for engine 'classic'"):
        train_engine("classic", tmp_path / "o", data)
    with pytest.raises(EngineError, match="no training data"):
        TrainData()
    with pytest.raises(EngineError, match="--images and --masks go together"):
        TrainData(masks=masks)
    with pytest.raises(EngineError, match="cytoplasm trains on whole cells; no cell mask"):
        train_engine("cytoplasm", tmp_path / "o", data)
    with pytest.raises(
        EngineError, match=r"img1.tif: image of shape \(1, 128, 128\); fpf takes 2 channel\(s\) \(nucleus, cytoplasm\)"
    ):
        train_engine("fpf", tmp_path / "o", data)
    with pytest.raises(EngineError, match="--minutes -1"):
        TrainOptions(minutes=-1)
    with pytest.raises(EngineError, match=r"validation fraction 1 must be in \[0, 1\)"):
        TrainData(images=imgs, masks=masks, val_fraction=1)
    with pytest.raises(EngineError, match="training settings: .*nosuch"):
        train_engine("nuclei", tmp_path / "o", data, TrainOptions(steps=1, config={"nosuch": 1}))


def test_engine_folder_errors(tmp_path):
    with pytest.raises(EngineError, match="no such engine folder"):
        engine_class(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"not an engine folder \(no config.json\)"):
        engine_class(str(tmp_path / "empty"))
    (tmp_path / "classic").mkdir()
    (tmp_path / "classic" / "config.json").write_text(json.dumps({"name": "classic"}))
    with pytest.raises(EngineError, match="'name' is 'classic', not a deep engine"):
        engine_class(str(tmp_path / "classic"))
    with pytest.raises(EngineError, match="unknown engine 'nosuch'"):
        engine_class("nosuch")
    # the shipped folders work as paths too
    shipped = engine_class("nuclei").model_path()
    cls = DeepEngine.from_folder(shipped)
    assert cls.base_engine == "nuclei" and cls.name == str(shipped.resolve())
    assert isinstance(EngineError("x"), HtsError)
