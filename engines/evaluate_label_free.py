"""Held-out evaluation of the label-free engines (brightfield-unet, cytoplasm); writes engines/<name>/metrics.json.

    python engines/evaluate_label_free.py brightfield-unet cytoplasm --data ../shared/data

Every image scored here was never trained on nor used to choose a model (the
test items of the folder's ``manifest.json``, the In Silico Labeling rows
480-703, the Nikon ``example-multichannel.nd2`` field, synthetic seeds 9000-9009).
Numbers are pooled over the images of a set: F1 and AP (TP / (TP + FP + FN))
at IoU 0.5 and 0.75, and AP averaged over IoU 0.5:0.95 (COCO-style).

brightfield-unet, BriFiSeg test fields (per cell line): scored twice, at the
source's "as if" pixel size (``brifiseg_pixel_size_um`` of the manifest: the one
at which the median training nucleus is 12 µm; the source states none) and as a
user without metadata would run it: the pixel size estimated from the line's
test fields by :func:`hts.compute.segment.scale.estimate_pixel_size`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nd2
import numpy as np
import tifffile

from hts.compute.segment.engines import engine_class
from hts.compute.segment.scale import estimate_pixel_size
from hts.compute.train.training import evaluate_engine, stain_nuclei
from hts.synth import synth_field

TH = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
ISL = "nuclei_train/brightfield_pairs/isl_kevan08_wellA4_z06_rows0-703"


def brief(m: dict) -> dict:
    ap = float(np.mean([m[str(t)]["ap"] for t in TH]))
    return {
        "images": m["images"],
        "n_true": m["n_true"],
        "n_pred": m["n_pred"],
        "ap_0.5:0.95": round(ap, 4),
        **{k: {kk: round(v, 4) if isinstance(v, float) else v for kk, v in m[k].items()} for k in ("0.5", "0.75")},
    }


def _local(path: str, data: Path) -> Path:
    """A manifest path, under ``data`` when it names a development-data folder."""
    for part in ("brightfield_train/", "phase_cells_train/"):
        if part in path:
            return data / (part + path.split(part, 1)[1])
    return Path(path)


def _syn() -> list:
    return [
        synth_field(shape=(512, 512), seed=9000 + i, density=d)
        for i, d in enumerate([0.3, 0.5, 0.7, 0.9, 1.0, 0.4, 0.6, 0.8, 0.95, 0.5])
    ]


def brightfield(folder: Path, data: Path) -> dict:
    man = json.loads((folder / "manifest.json").read_text())
    eng = engine_class("brightfield-unet").from_folder(folder)(backend="torch")
    out: dict = {
        "note": __doc__.split("\n\n")[2].replace("\n", " "),
        "brifiseg_pixel_size_um": man["brifiseg_pixel_size_um"],
    }
    by_line: dict[str, list] = {}
    for t in man["test"]:
        line = t["name"].split("_")[1]
        img = tifffile.imread(_local(t["source"], data))
        truth = tifffile.imread(_local(t["truth"], data))
        by_line.setdefault(line, []).append((img, truth))
    for line, items in sorted(by_line.items()):
        px = float(man["brifiseg_pixel_size_um"])
        res = {
            "as_if_pixel_size": brief(
                evaluate_engine(eng, [({"brightfield": i}, g, px) for i, g in items], thresholds=TH)
            )
        }
        t0 = time.monotonic()
        est = estimate_pixel_size(eng, [{"brightfield": i} for i, _ in items[:3]])
        if est is not None:
            res["estimated_pixel_size_um"] = est.pixel_size_um
            res["estimate_seconds"] = round(time.monotonic() - t0, 1)
            res["estimated"] = brief(
                evaluate_engine(eng, [({"brightfield": i}, g, est.pixel_size_um) for i, g in items], thresholds=TH)
            )
        out[f"brifiseg_{line}_test"] = res
        print(line, json.dumps(res), flush=True)
    # In Silico Labeling phase contrast, rows 480-703 (held out); truth = classic on the paired DAPI
    isl_px = next(v["pixel_size_um"] for v in man["validation"] if v["name"].startswith("isl_"))
    bf, st = tifffile.imread(data / f"{ISL}_bf.tif"), tifffile.imread(data / f"{ISL}_stain.tif")
    truth = stain_nuclei(st, isl_px)
    out["isl_rows480-703_heldout"] = brief(
        evaluate_engine(eng, [({"brightfield": bf[480:]}, truth[480:], isl_px)], thresholds=TH)
    )
    out["isl_pixel_size_um"] = isl_px
    with nd2.ND2File(data / "nd2/example-multichannel.nd2") as f:
        a, npx = np.asarray(f.asarray()), float(f.voxel_size().x)
    out["nd2_example_multichannel"] = brief(
        evaluate_engine(
            eng, [({"brightfield": a[0]}, stain_nuclei(a[1], npx, threshold_factor=0.5), npx)], thresholds=TH
        )
    )
    out["synthetic_brightfield"] = brief(
        evaluate_engine(eng, [({"brightfield": f.image[2]}, f.nuclei, 0.65) for f in _syn()], thresholds=TH)
    )
    for k in ("isl_rows480-703_heldout", "nd2_example_multichannel", "synthetic_brightfield"):
        print(k, json.dumps(out[k]), flush=True)
    return out


def cytoplasm(folder: Path, data: Path) -> dict:
    man = json.loads((folder / "manifest.json").read_text())
    eng = engine_class("cytoplasm").from_folder(folder)(backend="torch")
    items = [
        (
            {"cytoplasm": tifffile.imread(_local(t["source"], data))},
            tifffile.imread(_local(t["truth"], data)),
            float(t["pixel_size_um"]),
        )
        for t in man["test"]
    ]
    out: dict = {
        "note": "whole cells; Usiigaci test sets "
        + ", ".join(t["name"] for t in man["test"])
        + " (10x phase contrast, 0.8708 µm/px, hand-drawn truth); synthetic: seeds 9000-9009 at 0.65 µm/px"
    }
    out["usiigaci_test"] = brief(evaluate_engine(eng, items, output="cells", thresholds=TH))
    print("usiigaci", json.dumps(out["usiigaci_test"]), flush=True)
    syn = _syn()
    out["synthetic_gfp"] = brief(
        evaluate_engine(eng, [({"cytoplasm": f.image[1]}, f.cells, 0.65) for f in syn], output="cells", thresholds=TH)
    )
    out["synthetic_brightfield"] = brief(
        evaluate_engine(eng, [({"cytoplasm": f.image[2]}, f.cells, 0.65) for f in syn], output="cells", thresholds=TH)
    )
    print("synthetic", json.dumps(out["synthetic_gfp"]), json.dumps(out["synthetic_brightfield"]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engines", nargs="+", choices=("brightfield-unet", "cytoplasm"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--root", type=Path, default=Path("engines"), help="folder holding the engine folders")
    args = ap.parse_args(argv)
    for name in args.engines:
        folder = args.root / name
        metrics = brightfield(folder, args.data) if name == "brightfield-unet" else cytoplasm(folder, args.data)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"wrote {folder / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
