"""Train a deep engine from its recipe: the script that reproduces the shipped weights.

``engines/train_all.sh`` calls it with the arguments each model card records, e.g.::

    python engines/train_recipe.py --engine nuclei --out engines/nuclei --seed 0 --steps 600 \\
        --synthetic 64 --nuclei-folder ../shared/data/nuclei_train

Users train their own engines with ``hts train`` (from a plate or image folders);
this script is the recipe-level tool behind the shipped models: synthetic fields,
the nucleus image folder with its manifest, image + nuclear-stain pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hts.compute.train import training as T
from hts.synth.samples import synthetic_samples


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line training: ``python engines/train_recipe.py --engine nuclei --out engines/nuclei ...``."""
    ap = argparse.ArgumentParser(prog="python engines/train_recipe.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", required=True, choices=sorted(T.RECIPES))
    ap.add_argument(
        "--out",
        required=True,
        type=Path,
        help="model folder to write (model.safetensors, config.json, manifest.json, metrics.json)",
    )
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", type=int, help="network width (channels of the first level)")
    ap.add_argument("--depth", type=int, help="network depth (down-samplings)")
    ap.add_argument("--pixel-size", type=float, default=0.65, help="training pixel size, µm")
    ap.add_argument(
        "--object-diameter", type=float, default=12.0, help="typical object diameter, µm (halo; nucleus target radius)"
    )
    ap.add_argument(
        "--nucleus-diameter",
        type=float,
        help="typical nucleus diameter, µm (nucleus distance target; default --object-diameter)",
    )
    ap.add_argument("--cell-diameter", type=float, help="typical cell diameter, µm (cell distance target)")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--time-limit", type=float, help="stop after this many seconds (best weights kept)")
    ap.add_argument("--threads", type=int)
    ap.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: <cache>/training/<engine>-seed<seed>.pt)"
    )
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--init", type=Path, help="starting weights: an engine folder or a .safetensors file (fine-tuning)")
    ap.add_argument("--synthetic", type=int, default=0, help="number of synthetic training fields")
    ap.add_argument("--synthetic-val", type=int, default=0, help="number of synthetic validation fields")
    ap.add_argument(
        "--synthetic-channels",
        default=None,
        help="synth channel names per input, ';' between alternatives, e.g. 'GFP;Brightfield' (default per engine)",
    )
    ap.add_argument("--synthetic-seed", type=int, default=10_000, help="first synthetic seed")
    ap.add_argument("--synthetic-weight", type=float, default=1.0, help="total sampling weight of the synthetic fields")
    ap.add_argument(
        "--dense", type=float, default=0.0, help="fraction of synthetic fields drawn dense (density 0.85-1.0)"
    )
    ap.add_argument("--nuclei-folder", type=Path, help="folder of <name>_img.tif/<name>_mask.tif with manifest.csv")
    ap.add_argument("--nuclei-split", default="0.70,0.15,0.15", help="train,val,test fractions of --nuclei-folder")
    ap.add_argument("--nuclei-weight", type=float, default=1.0, help="total sampling weight of the real nucleus images")
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        help="IMAGE,STAIN[,PIXEL_UM|auto][,ROW0:ROW1]: label-free image + nuclear stain (ND2: FILE.nd2#CHANNEL, "
        "FILE.nd2#~CHANNEL for a channel used inverted)",
    )
    ap.add_argument(
        "--val-pair",
        action="append",
        default=[],
        help="like --pair, a validation item (e.g. another row band of the same field)",
    )
    ap.add_argument("--pair-weight", type=float, default=1.0, help="total sampling weight of the --pair samples")
    ap.add_argument("--invert-p", type=float, default=0.0, help="probability of inverting a channel (augmentation)")
    ap.add_argument(
        "--scale-range",
        default="0.8,1.2",
        help="LOW,HIGH: random zoom of the crops (augmentation); wider ranges teach objects of other sizes",
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    recipe = T.get_recipe(args.engine)
    arch_over = {k: v for k, v in (("base", args.base), ("depth", args.depth)) if v is not None}
    cfg = T.TrainConfig(
        engine=args.engine,
        arch_config=arch_over,
        pixel_size_um=args.pixel_size,
        object_diameter_um=args.object_diameter,
        nucleus_diameter_um=args.nucleus_diameter or args.object_diameter,
        cell_diameter_um=args.cell_diameter,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_every=args.val_every,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
        time_limit_s=args.time_limit,
        augment=T.Augment(invert_p=args.invert_p, scale=tuple(float(v) for v in args.scale_range.split(","))),
    )
    norm, px = cfg.normalization, cfg.pixel_size_um
    nuc_d = cfg.nucleus_diameter_um or cfg.object_diameter_um
    train_s: list[T.Sample] = []
    val_s: list[T.Sample] = []
    manifest: dict[str, Any] = {"engine": args.engine, "train": [], "validation": [], "test": []}

    def add(samples: list[T.Sample], into: list[T.Sample], part: str, total_weight: float) -> None:
        for s in samples:
            s.weight = total_weight / max(len(samples), 1)
            into.append(s)
            manifest[part].append(
                {
                    "name": s.name,
                    "source": s.source,
                    **{
                        k: v
                        for k, v in s.meta.items()
                        if k in ("modality", "scale", "rows", "pixel_size_um", "dataset")
                    },
                }
            )

    default_channels = {"nuclei": "DAPI", "brightfield-unet": "Brightfield", "cytoplasm": "GFP", "fpf": "DAPI+GFP"}
    alts = [a.split("+") for a in (args.synthetic_channels or default_channels[args.engine]).split(";")]
    if args.synthetic or args.synthetic_val:

        def synth(seeds: range) -> list[T.Sample]:
            out = []
            for i, seed in enumerate(seeds):
                kw = {}
                r = np.random.default_rng([seed, 31337])
                if args.dense and r.random() < args.dense:
                    kw["density"] = float(r.uniform(0.85, 1.0))
                out += synthetic_samples(
                    [seed], recipe=recipe, channels=alts[i % len(alts)], train_pixel_um=px, normalization=norm, **kw
                )
            return out

        s0 = args.synthetic_seed
        add(synth(range(s0, s0 + args.synthetic)), train_s, "train", args.synthetic_weight)
        add(synth(range(s0 + 5000, s0 + 5000 + args.synthetic_val)), val_s, "validation", args.synthetic_weight)
    if args.nuclei_folder:
        rows = T.nucleus_folder_samples(
            args.nuclei_folder, object_diameter_um=nuc_d, train_pixel_um=px, normalization=norm
        )
        fr = [float(v) for v in args.nuclei_split.split(",")]
        tr, va, te = T.split_samples(rows, fr, seed=args.seed, key=lambda s: s.name)
        add(tr, train_s, "train", args.nuclei_weight)
        add(va, val_s, "validation", args.nuclei_weight)
        for s in te:
            manifest["test"].append(
                {
                    "name": s.name,
                    "source": s.source,
                    "modality": s.meta.get("modality"),
                    "median_diameter_px": s.meta.get("median_diameter_px"),
                }
            )

    def load_pairs(specs: list[str]) -> list[T.Sample]:
        pairs = []
        for spec in specs:
            img_spec, stain_spec, ppx, rows_ = T.parse_pair(spec)
            image, stain, file_px = T.load_pair(img_spec, stain_spec)
            name = Path(img_spec.partition("#")[0]).stem + (f"_rows{rows_[0]}-{rows_[1]}" if rows_ else "")
            pairs += T.paired_stain_samples(
                image,
                stain,
                name=name,
                pixel_size_um=ppx or file_px,
                object_diameter_um=nuc_d,
                train_pixel_um=px,
                normalization=norm,
                rows=rows_,
                source=f"{img_spec} + {stain_spec}",
            )
        return pairs

    pairs = load_pairs(args.pair)
    if pairs:
        add(pairs, train_s, "train", args.pair_weight)
    val_pairs = load_pairs(args.val_pair)
    if val_pairs:
        add(val_pairs, val_s, "validation", args.pair_weight)
    if not train_s:
        raise SystemExit("no training data: give --synthetic, --nuclei-folder and/or --pair")

    ckpt = args.checkpoint
    if ckpt is None:
        from hts.compute.segment.backends import default_cache_dir

        ckpt = default_cache_dir() / "training" / f"{args.engine}-seed{args.seed}.pt"
    every = max(1, args.val_every // 5)

    def cb(ev: dict) -> None:
        if args.quiet:
            return
        if ev["event"] != "step" or ev["step"] % every == 0:
            print(T.format_event(ev), flush=True)

    print(
        f"{args.engine}: {len(train_s)} training and {len(val_s)} validation samples, {cfg.steps} steps, "
        f"{T.cpu_threads(cfg.threads)} threads; checkpoint {ckpt}",
        flush=True,
    )
    result = T.train(cfg, train_s, val_s, checkpoint=ckpt, resume=not args.no_resume, callback=cb, init=args.init)
    out = T.save_engine_model(args.out, result)
    manifest["config"] = cfg.to_dict()
    manifest["command"] = "python engines/train_recipe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(result.metrics, indent=1) + "\n")
    print(f"wrote {out} ({result.metrics['parameters']} parameters, {result.metrics['elapsed_s']} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
