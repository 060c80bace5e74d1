"""Write the evaluation sets of docs/accuracy.md: truth label images and each engine's predictions.

    python docs/accuracy_sets.py OUT [--data ../shared/data]

then score every prediction folder with ``hts evaluate --pred OUT/<set>/pred/<engine> --truth OUT/<set>/truth``
(docs/accuracy.md lists the commands). Everything is deterministic: the shipped weights through the
engines (torch backend on the CPU, no TTA, post-processing included), the classic engine with its
defaults. Nothing is copied into the package; OUT is a scratch folder.

Sets (``OUT/<set>/truth/<name>.tif`` and ``OUT/<set>/pred/<engine>/<name>.tif``):

- ``nuclei_heldout``: the ``test`` items of engines/nuclei/manifest.json (18 real images of
  ``nuclei_train``: 15 DSB2018, 3 BBBC039), never trained on; their instance masks are the truth.
- ``dsb2018``: the stardist DSB2018 sample (``nuclei_gt/``, also in tests/data), never trained on.
  Real images have no pixel size: each is segmented at the pixel size that makes its median true
  nucleus 12 µm (the engines' training object size), the convention of the model cards.
- ``brightfield``: label-free nuclei on real transmitted light, truth = the classic engine on the
  registered nuclear stain of the same field: the In Silico Labeling phase-contrast field rows
  480-703 (held out from brightfield-unet's training; 0.448 µm/px estimated as in its manifest) and
  the ND2 ``example-multichannel`` Mono + DAPI pair (0.323 µm/px; classic threshold_factor 0.5 on the
  weak DAPI, as in the card). Predictions from the brightfield channel: brightfield-unet, cytoplasm
  (its nuclei output; its role accepts brightfield), and classic run on the brightfield channel as if
  it were a stain (the label-free baseline).
- ``synthetic_nuclei`` / ``synthetic_cells``: 10 synthetic 512x512 fields, seeds 9000-9009, density
  0.3-1.0, 0.65 µm/px (the held-out fields of the cards; training used seeds 10000-15100), generator
  truth. Nuclei: nuclei (DAPI), brightfield-unet (Brightfield), fpf (DAPI + GFP), cytoplasm (GFP),
  classic (DAPI + GFP). Cells: fpf (DAPI + GFP), cytoplasm (GFP; ``cytoplasm-bf``: Brightfield),
  classic (DAPI + GFP).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="development data folder with nuclei_train/, nuclei_gt/, nd2/",
    )
    ap.add_argument("--sets", default="nuclei_heldout,dsb2018,brightfield,synthetic")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from hts.compute.segment.engines import engine_class, segment_field
    from hts.compute.train.training import load_image, median_diameter_px, stain_nuclei

    torch.set_num_threads(2)
    data, out = args.data, args.out
    wanted = set(args.sets.split(","))
    engines: dict[str, object] = {}

    def eng(name: str, **params):
        key = name + json.dumps(params, sort_keys=True)
        if key not in engines:
            cls = engine_class(name)
            engines[key] = (
                cls(params or None, backend="torch", device="cpu") if name != "classic" else cls(params or None)
            )
        return engines[key]

    def write(path: Path, labels: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.asarray(labels).astype(np.int32), compression="zlib")

    def run(set_name: str, name: str, truth: np.ndarray, px: float, preds: dict[str, tuple[str, dict, str]]) -> None:
        """preds: label -> (engine, images by role, output)."""
        write(out / set_name / "truth" / f"{name}.tif", truth)
        for label, (engine, images, output) in preds.items():
            res = segment_field(eng(engine), images, pixel_size_um=px)
            write(out / set_name / "pred" / label / f"{name}.tif", res.labels[output])
        print(f"{set_name}/{name}: {len(np.unique(truth)) - 1} true objects, pixel {px:.4g} µm", flush=True)

    def oracle_px(mask: np.ndarray) -> float:
        d = median_diameter_px(mask)
        return 12.0 / d if d else 0.65

    if "nuclei_heldout" in wanted:
        man = json.loads((ROOT / "engines" / "nuclei" / "manifest.json").read_text())
        for t in man["test"]:
            img = load_image(data / "nuclei_train" / f"{t['name']}_img.tif")
            gt = tifffile.imread(data / "nuclei_train" / f"{t['name']}_mask.tif")
            run(
                "nuclei_heldout",
                t["name"],
                gt,
                oracle_px(gt),
                {"nuclei": ("nuclei", {"nucleus": img}, "nuclei"), "classic": ("classic", {"nucleus": img}, "nuclei")},
            )
    if "dsb2018" in wanted:
        img = tifffile.imread(data / "nuclei_gt" / "dsb2018_img2d.tif")
        gt = tifffile.imread(data / "nuclei_gt" / "dsb2018_mask2d.tif")
        run(
            "dsb2018",
            "dsb2018_img2d",
            gt,
            oracle_px(gt),
            {"nuclei": ("nuclei", {"nucleus": img}, "nuclei"), "classic": ("classic", {"nucleus": img}, "nuclei")},
        )
    if "brightfield" in wanted:
        import nd2

        man = json.loads((ROOT / "engines" / "brightfield-unet" / "manifest.json").read_text())
        isl_px = next(t["pixel_size_um"] for t in man["train"] if t["name"].startswith("isl_"))
        root = data / "nuclei_train" / "brightfield_pairs" / "isl_kevan08_wellA4_z06_rows0-703"
        bf, st = tifffile.imread(f"{root}_bf.tif"), tifffile.imread(f"{root}_stain.tif")
        truth = stain_nuclei(st, isl_px)[480:]  # whole field segmented, rows 480-703 (held out) scored
        band = bf[480:]
        bf_preds = {
            "brightfield-unet": ("brightfield-unet", {"brightfield": band}, "nuclei"),
            "cytoplasm": ("cytoplasm", {"cytoplasm": band}, "nuclei"),
            "classic": ("classic", {"nucleus": band}, "nuclei"),
        }
        run("brightfield", "isl_rows480-703", truth, isl_px, bf_preds)
        with nd2.ND2File(data / "nd2" / "example-multichannel.nd2") as f:
            a, npx = np.asarray(f.asarray()), float(f.voxel_size().x)
        truth = stain_nuclei(a[1], npx, threshold_factor=0.5)
        run(
            "brightfield",
            "nd2_example-multichannel",
            truth,
            npx,
            {k: (e, {next(iter(im)): a[0]}, o) for k, (e, im, o) in bf_preds.items()},
        )
    if "synthetic" in wanted:
        from hts.synth import synth_field

        for i, d in enumerate([0.3, 0.5, 0.7, 0.9, 1.0, 0.4, 0.6, 0.8, 0.95, 0.5]):
            f = synth_field(shape=(512, 512), seed=9000 + i, density=d)
            dapi, gfp, bright = f.image[0], f.image[1], f.image[2]
            name = f"synth_{9000 + i}"
            two = {"nucleus": dapi, "cytoplasm": gfp}
            run(
                "synthetic_nuclei",
                name,
                f.nuclei,
                0.65,
                {
                    "nuclei": ("nuclei", {"nucleus": dapi}, "nuclei"),
                    "brightfield-unet": ("brightfield-unet", {"brightfield": bright}, "nuclei"),
                    "fpf": ("fpf", two, "nuclei"),
                    "cytoplasm": ("cytoplasm", {"cytoplasm": gfp}, "nuclei"),
                    "classic": ("classic", two, "nuclei"),
                },
            )
            run(
                "synthetic_cells",
                name,
                f.cells,
                0.65,
                {
                    "fpf": ("fpf", two, "cells"),
                    "cytoplasm": ("cytoplasm", {"cytoplasm": gfp}, "cells"),
                    "cytoplasm-bf": ("cytoplasm", {"cytoplasm": bright}, "cells"),
                    "classic": ("classic", two, "cells"),
                },
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
