"""Convert the BriFiSeg brightfield TRAINING pairs (A549, HeLa) from a git clone into TIFF pairs for training.

    python engines/prepare_brifiseg.py --repo /path/to/BriFiSeg/.git --out ~/.cache/hts/brifiseg_tr

The BriFiSeg repository (github: mgendarme/BriFiSeg, Apache-2.0; Gendarme et al.,
arXiv:2211.03072) held its data set only in history: commit ``24dea27`` added
``Dataset/`` and a later commit deleted it. This script reads that commit with
``git`` and converts exactly the paths ``Dataset/Task001_A549/{imagesTr,labelsTr}``
and ``Dataset/Task010_HELA/{imagesTr,labelsTr}``: 224 pairs per line. The test
splits (``imagesTs``/``labelsTs``) and every other task (MCF7, RPE1) are held out for
evaluation and are never read (a path outside the two ``Tr`` folders is refused).

The output has the layout and conversion of the development data's
``brightfield_train/`` folder, so the two can be used interchangeably:

- ``brifiseg_<line>_<id>_bf.tif``: the brightfield image, float32, source values
  unchanged (A549 about 0-255, HeLa 0-1 per image), array = NIfTI ``data[:, :, 0].T``;
- ``brifiseg_<line>_<id>_mask.tif``: uint16 instance labels, the connected
  components (scipy default, 4-connectivity) of the source's binary nucleus mask;
- ``manifest.csv``: line, source id, shape, value range, nucleus count, source
  commit, paths and git blob ids.

Needs ``nibabel`` (``pip install nibabel``) to read the NIfTI files; only for this
preparation step, never at run time.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

COMMIT = "24dea271418a5bb40b74cf33ff6e86fada0ebf1d"
TASKS = {"a549": ("Dataset/Task001_A549", "A549"), "hela": ("Dataset/Task010_HELA", "HELA")}
ALLOWED = tuple(f"{root}/{part}/" for root, _ in TASKS.values() for part in ("imagesTr", "labelsTr"))


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True).stdout


def _blob(repo: Path, path: str) -> tuple[bytes, str]:
    if not path.startswith(ALLOWED):
        raise SystemExit(f"refusing to read {path}: only the training folders {', '.join(ALLOWED)} may be used")
    sha = _git(repo, "rev-parse", f"{COMMIT}:{path}").decode().strip()
    return _git(repo, "cat-file", "blob", sha), sha


def _nifti(data: bytes) -> np.ndarray:
    import nibabel

    img = nibabel.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(img.dataobj)


def convert(repo: Path, out: Path, lines: tuple[str, ...] = ("a549", "hela")) -> list[dict]:
    """Write every training pair of ``lines`` into ``out``; returns the manifest rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in lines:
        root, prefix = TASKS[line]
        names = _git(repo, "ls-tree", "--name-only", f"{COMMIT}:{root}/imagesTr").decode().split()
        for name in sorted(names):
            sid = name[: -len("_0000.nii.gz")]  # A549_001
            num = sid.split("_", 1)[1]
            img_path, lab_path = f"{root}/imagesTr/{name}", f"{root}/labelsTr/{sid}.nii.gz"
            img_bytes, img_sha = _blob(repo, img_path)
            lab_bytes, lab_sha = _blob(repo, lab_path)
            img = _nifti(img_bytes)[:, :, 0].T.astype(np.float32)
            binary = _nifti(lab_bytes)[:, :, 0].T > 0
            labels, n = ndi.label(binary)
            stem = f"brifiseg_{line}_{num}"
            tifffile.imwrite(out / f"{stem}_bf.tif", img, compression="zlib")
            tifffile.imwrite(out / f"{stem}_mask.tif", labels.astype(np.uint16), compression="zlib")
            rows.append(
                {
                    "name": stem,
                    "line": line,
                    "source_split": "imagesTr/labelsTr",
                    "source_id": sid,
                    "image": f"{stem}_bf.tif",
                    "mask": f"{stem}_mask.tif",
                    "shape": "x".join(map(str, img.shape)),
                    "dtype": "float32",
                    "value_min": float(img.min()),
                    "value_max": float(img.max()),
                    "nuclei": int(n),
                    "source": f"github:mgendarme/BriFiSeg@{COMMIT}",
                    "source_image": img_path,
                    "source_image_blob": img_sha,
                    "source_label": lab_path,
                    "source_label_blob": lab_sha,
                }
            )
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--repo", required=True, type=Path, help="git directory of a clone of mgendarme/BriFiSeg (full history)"
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    args = ap.parse_args(argv)
    rows = convert(args.repo, args.out)
    print(f"wrote {len(rows)} pairs ({sum(r['nuclei'] for r in rows)} nuclei) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
