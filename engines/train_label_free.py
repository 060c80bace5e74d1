"""Train the label-free engines on real transmitted-light data: brightfield-unet (nuclei) and cytoplasm (whole cells).

    python engines/train_label_free.py brightfield-unet --data ../shared/data --extra ~/.cache/hts/brifiseg_tr \
        --out engines/brightfield-unet
    python engines/train_label_free.py cytoplasm --data ../shared/data --out engines/cytoplasm

Every run is reproducible: the split is a seeded function of the file names, the
batches of step ``i`` are drawn from ``(seed, i)``, and the output folder gets
``manifest.json`` (every training / validation / test item, the split rule, the
pixel sizes, the command), ``training.json`` (what the run did) and the weights.

brightfield-unet
    Real: BriFiSeg brightfield (A549, HeLa; DAPI-derived nucleus masks) from the
    development data's ``brightfield_train/`` and, with ``--extra``, every other
    training pair of the source (``engines/prepare_brifiseg.py``); the In Silico
    Labeling phase-contrast field (rows 0-359, nuclei from its DAPI); the Nikon
    PBMC ND2 ``Mono`` channel (rows 0-175, nuclei: the dark cell disks of its
    ``DAPI`` channel). Synthetic brightfield fields beside them.
    Split: per cell line, 8 validation and 8 test images are drawn (seeded) from
    ``brightfield_train/``; the other three quadrants of their source field
    (source ids in the same block of four) are left out of training too, so the
    test fields share no acquisition field with training.
    The BriFiSeg pixel size is not known: one "as if" pixel size for the whole
    source (the one that makes the pooled median training nucleus 12 µm).
cytoplasm
    Real: Usiigaci 10x phase-contrast fields with hand-drawn whole-cell masks
    (``phase_cells_train/``, 0.8708 µm/px); nuclei truth does not exist there, so
    the nucleus class is each cell's core (``cell_cores``), the seed the cell
    watershed grows from. Synthetic fluorescence (GFP) and brightfield fields
    beside them. Split: whole runs of set numbers (``USIIGACI_VAL``, ``USIIGACI_TEST``),
    their neighbouring sets left out of training.

The held-out sets of docs/accuracy.md (BriFiSeg test splits, MCF7, Usiigaci sets
46-50) are never read.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from hts.compute.train import training as T
from hts.synth.samples import synthetic_samples

PBMC_ROWS, ISL_ROWS = ((0, 176), (176, 256)), ((0, 360), (360, 480))
ISL = "nuclei_train/brightfield_pairs/isl_kevan08_wellA4_z06_rows0-703"


def _ids(folder: Path) -> dict[str, list[str]]:
    """Names per cell line from ``manifest.csv`` (column ``line``)."""
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["line"], []).append(r["name"])
    return out


def _block(name: str) -> tuple[str, int]:
    """(line, block of four source ids): the four quadrants of one source field share a block."""
    _, line, num = name.split("_")
    return line, (int(num) - 1) // 4


def brifiseg_split(shared: Path, extra: Path | None, *, seed: int, n_val: int = 8, n_test: int = 8) -> dict:
    """Validation and test names (from the shared folder) and the training names (shared + extra, blocks excluded)."""
    val, test = [], []
    for line, names in sorted(_ids(shared).items()):
        order = np.random.default_rng([seed, len(line), sum(map(ord, line))]).permutation(sorted(names))
        val += list(order[:n_val])
        test += list(order[n_val : n_val + n_test])
    held = {_block(n) for n in val + test}
    pool = {n: shared for names in _ids(shared).values() for n in names}
    if extra is not None:
        pool.update({n: extra for names in _ids(extra).values() for n in names if n not in pool})
    train = sorted(n for n in pool if _block(n) not in held)
    return {
        "validation": sorted(val),
        "test": sorted(test),
        "train": train,
        "folders": {n: str(pool[n]) for n in pool},
        "rule": f"per line {n_val} validation + {n_test} test names drawn (seed {seed}) from brightfield_train; "
        "training: every other pair whose source-id block of four holds no validation/test name",
    }


def brifiseg_pixel_size(folders: dict[str, str], names: list[str], diameter_um: float = 12.0) -> float:
    import tifffile

    ds = [T.median_diameter_px(tifffile.imread(str(Path(folders[n]) / f"{n}_mask.tif"))) for n in names]
    return diameter_um / float(np.median([d for d in ds if d]))


def build_brightfield(args, cfg: T.TrainConfig, manifest: dict) -> tuple[list, list]:
    data = args.data
    split = brifiseg_split(data / "brightfield_train", args.extra, seed=args.seed)
    bf_px = brifiseg_pixel_size(split["folders"], split["train"])
    manifest["split"] = {"rule": split["rule"], "validation": split["validation"], "test": split["test"]}
    manifest["brifiseg_pixel_size_um"] = bf_px
    kw = dict(
        image_suffix="_bf",
        labels={"nuclei": "_mask"},
        pixel_size_um=bf_px,
        train_pixel_um=cfg.pixel_size_um,
        normalization=cfg.normalization,
    )

    def bf(names: list[str], weight: float) -> list:
        out = []
        for n in names:
            out += T.labelled_folder_samples(
                split["folders"][n], [n], weight=weight, meta={"dataset": "brifiseg"}, **kw
            )
        return out

    nuc_d = cfg.nucleus_diameter_um
    isl_img, isl_stain, _ = T.load_pair(str(data / f"{ISL}_bf.tif"), str(data / f"{ISL}_stain.tif"))
    pbmc = str(data / "nd2/example-pbmc.nd2")
    pb_img, pb_stain, pb_px = T.load_pair(f"{pbmc}#Mono", f"{pbmc}#~DAPI")

    def pairs(i: int) -> list:
        common = dict(object_diameter_um=nuc_d, train_pixel_um=cfg.pixel_size_um, normalization=cfg.normalization)
        return T.paired_stain_samples(
            isl_img,
            isl_stain,
            name=f"isl_rows{ISL_ROWS[i][0]}-{ISL_ROWS[i][1]}",
            rows=ISL_ROWS[i],
            source=f"{data / ISL}_bf.tif + {data / ISL}_stain.tif",
            **common,
        ) + T.paired_stain_samples(
            pb_img,
            pb_stain,
            name=f"pbmc_rows{PBMC_ROWS[i][0]}-{PBMC_ROWS[i][1]}",
            pixel_size_um=pb_px,
            rows=PBMC_ROWS[i],
            source=f"{pbmc}#Mono + {pbmc}#~DAPI",
            **common,
        )

    train, val = [], []
    _add(manifest, train, "train", bf(split["train"], 1.0), 0.72)
    _add(manifest, val, "validation", bf(split["validation"], 1.0), 0.72)
    tp, vp = pairs(0), pairs(1)
    _add(manifest, train, "train", tp[:1], 0.10)
    _add(manifest, train, "train", tp[1:], 0.08)
    _add(manifest, val, "validation", vp, 0.18)
    syn = synthetic_samples(
        range(10_000, 10_000 + args.synthetic),
        recipe="brightfield-unet",
        channels=("Brightfield",),
        train_pixel_um=cfg.pixel_size_um,
        normalization=cfg.normalization,
    )
    _add(manifest, train, "train", syn, 0.10)
    for n in split["test"]:
        manifest["test"].append(
            {
                "name": n,
                "source": str(Path(split["folders"][n]) / f"{n}_bf.tif"),
                "truth": str(Path(split["folders"][n]) / f"{n}_mask.tif"),
                "pixel_size_um": bf_px,
            }
        )
    return train, val


# Usiigaci sets are frames / fields of a few experiments (consecutive sets look alike): validation and test are
# whole runs of set numbers, of both cell sizes, and training leaves out their neighbours (+-1) too.
USIIGACI_VAL, USIIGACI_TEST = (25, 27, 34, 36), (10, 12, 41, 43, 45)


def usiigaci_split(names: list[str]) -> dict:
    num = {n: int(n.rsplit("set", 1)[1]) for n in names}
    near = {k + d for k in (*USIIGACI_VAL, *USIIGACI_TEST) for d in (-1, 0, 1)}
    return {
        "validation": sorted(n for n in names if num[n] in USIIGACI_VAL),
        "test": sorted(n for n in names if num[n] in USIIGACI_TEST),
        "train": sorted(n for n in names if num[n] not in near),
        "rule": f"validation sets {USIIGACI_VAL}, test sets {USIIGACI_TEST} (both cell sizes); training: "
        "every other set 1-45 not next to them (+-1)",
    }


def build_cytoplasm(args, cfg: T.TrainConfig, manifest: dict) -> tuple[list, list]:
    shared = args.data / "phase_cells_train"
    folders = {}
    for folder in ([args.extra] if args.extra is not None else []) + [shared]:
        with open(folder / "manifest.csv", newline="") as f:
            folders.update({r["name"]: folder for r in csv.DictReader(f)})
    split = usiigaci_split(sorted(folders))
    missing = [
        n
        for n in split["validation"] + split["test"]
        if folders[n] != shared and not (shared / f"{n}_phase.tif").is_file()
    ]
    if missing:
        raise SystemExit(f"validation/test sets missing from {shared}: {missing}")
    manifest["split"] = {k: split[k] for k in ("rule", "validation", "test")}
    px = 0.8708
    kw = dict(
        image_suffix="_phase",
        labels={"cells": "_cells"},
        pixel_size_um=px,
        train_pixel_um=cfg.pixel_size_um,
        normalization=cfg.normalization,
        derive_nuclei=args.core,
        meta={"dataset": "usiigaci"},
    )

    def real(names: list[str]) -> list:
        return [s for n in names for s in T.labelled_folder_samples(folders[n], [n], **kw)]

    train, vals = [], []
    _add(manifest, train, "train", real(split["train"]), 0.75)
    _add(manifest, vals, "validation", real(split["validation"]), 0.75)
    alts = [("GFP",), ("GFP",), ("Brightfield",)]
    syn = []
    for i, seed in enumerate(range(10_000, 10_000 + args.synthetic)):
        syn += synthetic_samples(
            [seed],
            recipe="cytoplasm",
            channels=alts[i % 3],
            train_pixel_um=cfg.pixel_size_um,
            normalization=cfg.normalization,
        )
    _add(manifest, train, "train", syn, 0.25)
    for n in split["test"]:
        manifest["test"].append(
            {
                "name": n,
                "source": str(folders[n] / f"{n}_phase.tif"),
                "truth": str(folders[n] / f"{n}_cells.tif"),
                "pixel_size_um": px,
            }
        )
    return train, vals


def _add(manifest: dict, into: list, part: str, samples: list, total_weight: float) -> None:
    for s in samples:
        s.weight = total_weight / max(len(samples), 1)
        into.append(s)
        manifest[part].append(
            {
                "name": s.name,
                "source": s.source,
                **{k: v for k, v in s.meta.items() if k in ("rows", "pixel_size_um", "dataset", "seed", "nuclei")},
            }
        )


SETTINGS = {
    # training pixel size, nucleus / cell diameters (µm) of the distance targets
    "brightfield-unet": dict(pixel_size_um=0.5, object_diameter_um=12.0, nucleus_diameter_um=12.0),
    "cytoplasm": dict(pixel_size_um=1.0, object_diameter_um=40.0, nucleus_diameter_um=12.0, cell_diameter_um=40.0),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engine", choices=sorted(SETTINGS))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="development data folder")
    ap.add_argument("--extra", type=Path, help="more training pairs of the same source (see the module doc)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", type=int, default=40)
    ap.add_argument("--core", type=float, default=0.5, help="cytoplasm: cell-core fraction standing in for the nucleus")
    ap.add_argument("--time-limit", type=float, default=None)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--init", type=Path, default=None, help="start from these weights (an engine folder): fine-tuning")
    ap.add_argument("--dry-run", action="store_true", help="load the data and write manifest.json only (no training)")
    args = ap.parse_args(argv)

    cfg = T.TrainConfig(
        engine=args.engine,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        val_every=100,
        patience=8,
        time_limit_s=args.time_limit,
        threads=args.threads,
        augment=T.Augment.label_free(),
        crop_sizes=(128, 160, 192),
        val_crop=192,
        val_crops_per_sample=2,
        **SETTINGS[args.engine],
    )
    manifest: dict = {"engine": args.engine, "train": [], "validation": [], "test": []}
    t0 = time.monotonic()
    build = build_brightfield if args.engine == "brightfield-unet" else build_cytoplasm
    train, val = build(args, cfg, manifest)
    print(
        f"{args.engine}: {len(train)} training, {len(val)} validation samples ({time.monotonic() - t0:.0f} s to load)",
        flush=True,
    )
    manifest["config"] = cfg.to_dict()
    manifest["command"] = "python engines/train_label_free.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"wrote {args.out / 'manifest.json'} (dry run)")
        return 0
    ckpt = args.checkpoint or Path(f"/tmp/hts-train-{args.engine}-seed{args.seed}.pt")

    def cb(ev: dict) -> None:
        if ev["event"] != "step" or ev["step"] % 20 == 0:
            print(T.format_event(ev), flush=True)

    result = T.train(cfg, train, val, checkpoint=ckpt, callback=cb, init=args.init)
    out = T.save_engine_model(args.out, result)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(result.metrics, indent=1) + "\n")
    print(f"wrote {out} ({result.metrics['parameters']} parameters, {result.metrics['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
