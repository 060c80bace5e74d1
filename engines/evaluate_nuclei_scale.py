"""How the nuclei engine copes with nuclei of another size than its training size, at the true pixel size.

    python engines/evaluate_nuclei_scale.py engines/nuclei [--compare OLD_FOLDER] --data ../shared/data [--write]

The real test images (the ``test`` items of the folder's ``manifest.json``) have no
pixel size; the evaluation elsewhere segments each at the pixel size that makes
its median true nucleus 12 µm (``px0``, an oracle scale). Here each image is
segmented at ``k * px0`` for k in 0.5 ... 2: the engine then takes its nuclei for
``12 k`` µm nuclei imaged at the stated pixel size, exactly as a plate whose
nuclei are 6 to 24 µm across reaches it (mouse ES cells at 0.24 µm/px, small
lymphocytes at 0.65). The engine's ``adapt_scale`` (on by default) measures the nuclei it finds
and runs again at the scale that makes them 12 µm; ``nuclei_fixed_scale`` is the same weights
without it. ``classic`` is scored the same way beside it. Pooled AP@0.5
(TP / (TP + FP + FN)) and F1@0.5 per k; with ``--write`` they go into the folder's
``metrics.json`` under ``scale_robustness``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import tifffile

from hts.compute.segment.engines import engine_class
from hts.compute.train.training import evaluate_engine, load_image, median_diameter_px

FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0)
#: Images whose k = 2 model input would exceed this many pixels are left out (tiny-nucleus DSB tiles
#: become 10+ Mpx fields there; minutes each on a CPU); the count kept is reported.
MAX_MODEL_PIXELS = 2_500_000


def _items(folder: Path, data: Path, train_px: float = 0.65) -> list[tuple[dict, object, float]]:
    man = json.loads((folder / "manifest.json").read_text())
    out = []
    for t in man["test"]:
        m = re.search(r"(nuclei_train/.*)$", str(t["source"]))
        src = data / m.group(1) if m else Path(t["source"])
        truth = tifffile.imread(str(src).replace("_img.tif", "_mask.tif"))
        d = median_diameter_px(truth)
        px = 12.0 / d if d else 0.65
        img = load_image(src)
        if img.size * (max(FACTORS) * px / train_px) ** 2 > MAX_MODEL_PIXELS:
            continue
        out.append(({"nucleus": img}, truth, px))
    return out


def score(engine, items, k: float) -> dict:
    m = evaluate_engine(engine, [(im, g, px * k) for im, g, px in items], thresholds=(0.5,))
    return {
        "ap50": round(m["0.5"]["ap"], 4),
        "f1": round(m["0.5"]["f1"], 4),
        "n_pred": m["n_pred"],
        "n_true": m["n_true"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument(
        "--compare", type=Path, help="another nuclei engine folder scored the same way (e.g. earlier weights)"
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--factors", default=",".join(map(str, FACTORS)), help="comma-separated k values")
    args = ap.parse_args(argv)
    items = _items(args.folder, args.data)
    factors = tuple(float(k) for k in args.factors.split(","))
    nuclei = engine_class("nuclei").from_folder(args.folder)
    engines = {
        "nuclei": nuclei(backend="torch"),  # shipped defaults: adapt_scale on
        "nuclei_fixed_scale": nuclei({"adapt_scale": False}, backend="torch"),
        "classic": engine_class("classic")(),
    }
    if args.compare:
        engines["compared"] = engine_class("nuclei").from_folder(args.compare)(backend="torch")
    res: dict = {
        "note": __doc__.split("\n\n")[1].replace("\n", " "),
        "images": len(items),
        "factors": list(factors),
        "max_model_pixels": MAX_MODEL_PIXELS,
    }
    for name, eng in engines.items():
        res[name] = {str(k): score(eng, items, k) for k in factors}
        print(name, json.dumps(res[name]), flush=True)
    if args.write:
        p = args.folder / "metrics.json"
        metrics = json.loads(p.read_text()) if p.exists() else {}
        metrics["scale_robustness"] = {k: v for k, v in res.items() if k != "compared"}
        p.write_text(json.dumps(metrics, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
