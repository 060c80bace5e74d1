"""Convert the Usiigaci phase-contrast TRAINING sets (set1-set45) from a git clone into TIFF pairs for training.

    python engines/prepare_usiigaci.py --repo /path/to/Usiigaci/.git --out ~/.cache/hts/usiigaci_tr

Repository github: oist/Usiigaci (MIT; Tsai et al., SoftwareX 9:230, 2019), commit
``9501d80``. Reads exactly ``Mask R-CNN/train/set<N>/raw.tif`` (10x phase
contrast, uint16, 0.8708 µm/px) and ``instances_ids.png`` (hand-drawn whole-cell
ids) for N = 1..45; the validation sets 46-50 are held out for evaluation and a
set number above 45 is refused.

Output layout as the development data's ``phase_cells_train/``:
``usiigaci_setNN_phase.tif`` (pixels unchanged), ``usiigaci_setNN_cells.tif``
(uint16, source ids unchanged), ``manifest.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

COMMIT = "9501d80c747cf82870dd596818fcf5c28c94d733"
TRAIN_SETS = range(1, 46)


def _blob(repo: Path, path: str) -> tuple[bytes, str]:
    def git(*a: str) -> bytes:
        return subprocess.run(["git", "--git-dir", str(repo), *a], check=True, capture_output=True).stdout

    sha = git("rev-parse", f"{COMMIT}:{path}").decode().strip()
    return git("cat-file", "blob", sha), sha


def convert(repo: Path, out: Path, sets: range = TRAIN_SETS) -> list[dict]:
    from PIL import Image

    if max(sets) > 45:
        raise SystemExit("sets 46-50 are held out for evaluation; only set1-set45 may be converted")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sets:
        raw, raw_sha = _blob(repo, f"Mask R-CNN/train/set{n}/raw.tif")
        ids, ids_sha = _blob(repo, f"Mask R-CNN/train/set{n}/instances_ids.png")
        img = tifffile.imread(io.BytesIO(raw))
        lab = np.asarray(Image.open(io.BytesIO(ids)).convert("L")).astype(np.uint16)
        if img.ndim != 2 or img.shape != lab.shape:
            raise SystemExit(f"set{n}: image {img.shape} and labels {lab.shape} do not match")
        name = f"usiigaci_set{n:02d}"
        tifffile.imwrite(out / f"{name}_phase.tif", img, compression="zlib")
        tifffile.imwrite(out / f"{name}_cells.tif", lab, compression="zlib")
        rows.append(
            {
                "name": name,
                "source_split": "train",
                "shape": "x".join(map(str, img.shape)),
                "dtype": str(img.dtype),
                "cells": int(len(np.unique(lab)) - 1),
                "source": f"github:oist/Usiigaci@{COMMIT}",
                "source_image": f"Mask R-CNN/train/set{n}/raw.tif",
                "source_image_blob": raw_sha,
                "source_mask": f"Mask R-CNN/train/set{n}/instances_ids.png",
                "source_mask_blob": ids_sha,
            }
        )
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="git directory of a clone of oist/Usiigaci")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    rows = convert(args.repo, args.out)
    print(f"wrote {len(rows)} pairs ({sum(r['cells'] for r in rows)} cells) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
