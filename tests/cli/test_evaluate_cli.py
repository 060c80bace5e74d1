"""`hts evaluate` and `hts train` on the command line (registered on a fresh Typer app)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import typer
from typer.testing import CliRunner

from hts.cli.evaluate_cmd import register

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def boxes(*rects, shape=(32, 32)) -> np.ndarray:
    a = np.zeros(shape, np.uint16)
    for i, (y0, y1, x0, x1) in enumerate(rects):
        a[y0:y1, x0:x1] = i + 1
    return a


@pytest.fixture
def folders(tmp_path):
    t, p = tmp_path / "truth", tmp_path / "pred"
    t.mkdir()
    p.mkdir()
    gt = boxes((0, 8, 0, 8), (16, 24, 16, 24))
    tifffile.imwrite(t / "img1.tif", gt)
    tifffile.imwrite(t / "img2.tif", gt)
    tifffile.imwrite(p / "img1.tif", gt)
    tifffile.imwrite(p / "img2.tif", boxes((0, 8, 0, 8)))  # one of two found
    return p, t


def test_evaluate_json_and_table(app, folders):
    p, t = folders
    r = runner.invoke(app, ["evaluate", "--pred", str(p), "--truth", str(t), "--json", "--per-image"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    o = d["overall"]
    assert (o["tp"], o["fp"], o["fn"], o["images"]) == (3, 0, 1, 2) and o["ap"] == pytest.approx(0.75)
    assert [x["ap"] for x in d["per_image"]] == [1.0, 0.5] and "pooled" in d["pooling"]
    r = runner.invoke(app, ["evaluate", "--pred", str(p), "--truth", str(t), "--json"])
    assert "per_image" not in json.loads(r.output)
    r = runner.invoke(app, ["evaluate", "--pred", str(p), "--truth", str(t), "--per-image"])
    assert r.exit_code == 0, r.output
    assert "AP: mean over IoU 0.5:0.95" in r.output and "merge" in r.output  # fits 80 columns
    rows = {line.split()[0]: line.split()[1:] for line in r.output.splitlines() if line.startswith(("img", "overall"))}
    assert rows["img2"] == ["2", "1", "0.500", "0.500", "0.500", "0.667", "1.000", "0.500", "1.000", "0", "0"]
    assert rows["overall"][:3] == ["4", "3", "0.750"]
    r = runner.invoke(app, ["evaluate", "--pred", str(p / "img1.tif"), "--truth", str(t / "img1.tif")])
    assert r.exit_code == 0 and "1.000" in r.output and "img1" not in r.output.split("overall")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pred", "nope.tif", "--truth", "{t}/img1.tif"], "nope.tif: no such file"),
        (["--pred", "{p}/small.tif", "--truth", "{t}/img1.tif"], "small.tif has shape (16, 32) but"),
        (["--pred", "{p}/other", "--truth", "{t}"], "share a file stem"),
        (["--truth", "{t}"], "--pred is needed"),
        (["--plate", "X", "--truth", "{t}"], "no plates in the catalog"),
    ],
)
def test_evaluate_errors_are_one_line(app, folders, args, message):
    p, t = folders
    tifffile.imwrite(p / "small.tif", boxes((0, 8, 0, 8))[:16])
    (p / "other").mkdir()
    tifffile.imwrite(p / "other" / "zzz.tif", boxes((0, 8, 0, 8)))
    r = runner.invoke(app, ["evaluate", *[a.format(p=p, t=t) for a in args]])
    assert r.exit_code == 1, r.output
    out = r.output.strip()
    assert out.startswith("error:") and message in " ".join(out.split()) and "Traceback" not in out


def test_train_then_evaluate_the_trained_engine(app, tmp_path):
    from hts.compute.segment.engines import engine_class
    from hts.synth import synth_field

    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for s in (1, 2):
        f = synth_field(shape=(128, 128), seed=s, channels=("DAPI",))
        tifffile.imwrite(imgs / f"f{s}.tif", f.image[0])
        tifffile.imwrite(masks / f"f{s}.tif", f.nuclei.astype(np.uint16))
    out = tmp_path / "eng"
    args = [
        "train",
        "--engine",
        "nuclei",
        "--out",
        str(out),
        "--images",
        str(imgs),
        "--masks",
        str(masks),
        "--pixel-size",
        "0.65",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--base",
        "4",
        "--depth",
        "2",
    ]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["steps_run"] == 2 and rep["out"] == str(out.resolve()) and rep["val_items"] == 1
    assert engine_class(str(out)).name == str(out.resolve())
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.output.startswith("error:") and "--overwrite" in r.output
    r = runner.invoke(app, [*args, "--overwrite", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "Trained nuclei" in r.output and "hts segment --engine" in r.output
    r = runner.invoke(app, ["train", "--engine", "nuclei", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "no training data" in r.output

    # the folder segments a plate through `hts segment --engine-path`
    from hts.cli.main import app as hts_app
    from hts.synth import make_plate

    plate = make_plate(tmp_path / "raw", wells="A01", fields=1, shape=(128, 128), channels=("DAPI",), masks=True)
    assert runner.invoke(hts_app, ["ingest", str(plate.source)]).exit_code == 0
    r = runner.invoke(hts_app, ["segment", "--engine-path", str(out), "--json"])
    assert r.exit_code == 0, r.output
    (seg,) = json.loads(r.output)
    assert seg["engine"] == str(out.resolve()) and seg["fields_segmented"] == 1

    # --plate: the commands resolve the workspace (--db) and hand it to the library
    ev = ["evaluate", "--plate", "DEMO-PLATE", "--truth", str(plate.truth_dir), "--json"]
    r = runner.invoke(app, [*ev, "--db", "hts.duckdb"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["overall"]["images"] == 1
    r = runner.invoke(app, [*ev, "--db", str(tmp_path / "other.duckdb")])
    assert r.exit_code == 1 and r.output.startswith("error:") and "other.duckdb" in r.output
    r = runner.invoke(
        app,
        [
            "train",
            "--engine",
            "nuclei",
            "--out",
            str(tmp_path / "from-plate"),
            "--plate",
            "DEMO-PLATE",
            "--labels-from",
            "DAPI",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--base",
            "4",
            "--depth",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["train_items"] == 1


def test_registered_on_the_hts_app(folders):
    from hts.cli.main import app as hts_app

    p, t = folders
    r = runner.invoke(hts_app, ["evaluate", "--pred", str(p), "--truth", str(t), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["overall"]["ap"] == pytest.approx(0.75)
    assert runner.invoke(hts_app, ["train", "--help"]).exit_code == 0
