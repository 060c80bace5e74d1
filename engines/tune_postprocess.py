"""Tune a nucleus-type deep engine's post-processing on its VALIDATION images; optionally write it to config.json.

    python engines/tune_postprocess.py engines/nuclei --data ../shared/data [--write]
    python engines/tune_postprocess.py engines/brightfield-unet --data ../shared/data [--write]
    python engines/tune_postprocess.py engines/cytoplasm --data ../shared/data [--write]

The network maps of every validation image are computed once (torch, no TTA),
then the post-processing parameters of the ``nuclei`` engine family
(``foreground_threshold``, ``split_h``, ``min_area_um2``) or of ``cytoplasm``
(``seeds``, ``h_um``, ``min_nucleus_area_um2``, ``cell_max_distance_um``; scored on
cells) are swept over a grid and scored by pooled AP@0.5 (ties: mean AP over IoU 0.5-0.95). Only the
``validation`` items of the folder's ``manifest.json`` are used — never the test
split or the held-out sets of ``docs/accuracy.md``. With ``--write`` the best
values go into ``config.json`` under ``postprocess`` (the engine reads them as
its defaults; the weights and their checksum are untouched).

Validation items: labelled-folder images (``source`` a ``*_bf.tif`` / ``*_phase.tif``
with its ``*_mask.tif`` / ``*_cells.tif``, at the recorded ``pixel_size_um``); real images (``source`` a ``*_img.tif`` of ``nuclei_train``,
truth its ``*_mask.tif``, segmented at the pixel size that makes the median true
nucleus 12 µm, as in the evaluation); paired-stain items (``source``
``IMAGE + STAIN``; truth the classic engine on the stain at the recorded pixel
size, ``rows`` band scored); synthetic items (``synth_field`` regenerated from
the recorded call) only when a folder has no real validation item.

``cytoplasm`` serves fluorescent cytoplasm stains and brightfield as well as phase
contrast, so its real (phase-contrast) validation images are joined by synthetic
fields of both (:data:`CYTO_SYNTH_SEEDS`, outside its training seeds 10000-15100 and
the evaluation's 9000-9009) as a guard: the objective stays the real images' pooled
AP@0.5, among the settings that keep each synthetic modality's AP@0.5 at :data:`GUARD`
of its value at the engine's default parameters or more. Tuned on phase contrast alone,
a 200 µm² minimum cell core once scored better there and lost nearly every synthetic
cell (``engines/cytoplasm/CARD.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np

from hts.compute.analysis.metrics import match_instances, summarize
from hts.compute.segment.engines import engine_class, segment_field

GRID = {
    "foreground_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "split_h": (0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3),
    "min_area_um2": (0.0, 5.0, 10.0, 20.0, 30.0),
}
# cytoplasm: stage 1 sweeps the seeds (nucleus / cell-core split), stage 2 the cell extent; scored on cells
CYTO_GRID = {
    "seeds": ("hmin", "log"),
    "h_um": (0.75, 1.5, 3.0, 6.0, 12.0),
    "min_nucleus_area_um2": (10.0, 40.0, 100.0, 200.0, 400.0),
    "cell_max_distance_um": (15.0, 20.0, 30.0, 45.0, 60.0),
}


# cytoplasm: a setting must keep this share of each synthetic modality's AP@0.5 at the defaults
GUARD = 0.9
# cytoplasm's synthetic validation fields: seed -> density (channels: 1 the cytoplasm stain, 2 brightfield)
CYTO_SYNTH_SEEDS = {8000: 0.3, 8001: 0.5, 8002: 0.7, 8003: 0.9, 8004: 0.6}


def synthetic_cell_items(role: str) -> list[tuple[dict, np.ndarray, float, str, str]]:
    """Synthetic whole-cell validation fields, fluorescent stain and brightfield, with their modality."""
    from hts.synth import synth_field

    out = []
    for seed, density in CYTO_SYNTH_SEEDS.items():
        f = synth_field(shape=(512, 512), seed=seed, density=density)
        out.append(({role: f.image[1]}, f.cells, 0.65, f"synth{seed}_gfp", "synthetic stain"))
        out.append(({role: f.image[2]}, f.cells, 0.65, f"synth{seed}_bf", "synthetic brightfield"))
    return out


def validation_items(folder: Path, data: Path, role: str) -> list[tuple[dict, np.ndarray, float, str]]:
    import tifffile

    from hts.compute.train.training import load_image, load_pair, median_diameter_px, stain_nuclei

    man = json.loads((folder / "manifest.json").read_text())
    real, synth = [], []
    for v in man["validation"]:
        src = str(v["source"])
        if " + " in src:  # paired stain: IMAGE + STAIN
            img_spec, stain_spec = [_rebase(s, data) for s in src.split(" + ")]
            image, stain, _ = load_pair(img_spec, stain_spec)
            px = float(v["pixel_size_um"])
            truth = stain_nuclei(stain, px)
            if v.get("rows"):
                r0, r1 = v["rows"]
                image, truth = image[r0:r1], truth[r0:r1]
            real.append(({role: image}, truth, px, v["name"]))
        elif src.endswith(("_bf.tif", "_phase.tif")) and v.get(
            "pixel_size_um"
        ):  # labelled folder (one pixel size per source)
            suffix = "_mask.tif" if src.endswith("_bf.tif") else "_cells.tif"
            src = _rebase(src, data)
            truth = tifffile.imread(src.rsplit("_", 1)[0] + suffix)
            real.append(({role: tifffile.imread(src)}, truth, float(v["pixel_size_um"]), v["name"]))
        elif src.endswith("_img.tif"):
            src = _rebase(src, data)
            truth = tifffile.imread(src.replace("_img.tif", "_mask.tif"))
            d = median_diameter_px(truth)
            real.append(({role: load_image(src)}, truth, 12.0 / d if d else 0.65, v["name"]))
        elif src.startswith("hts.synth.synth_field("):
            synth.append(v)
    if real:
        return real
    from hts.synth import synth_field

    out = []
    for v in synth:
        call = v["source"][len("hts.synth.synth_field(") : -1]
        kw = eval(f"dict({call})", {"__builtins__": {"dict": dict}})  # noqa: S307 - our own manifest's generator call
        channels = kw.pop("channels")
        f = synth_field(**{**kw, "channels": tuple(channels)})
        out.append(({role: f.image[0]}, f.nuclei, 0.65, v["name"]))
    return out


def _rebase(path: str, data: Path) -> str:
    """A manifest path (written relative to the repository, e.g. ``../shared/data/...``) under ``data``."""
    m = re.search(r"(nuclei_train/.*|nd2/.*|brightfield_train/.*|phase_cells_train/.*)$", path)
    return str(data / m.group(1)) if m else path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--write", action="store_true", help="store the best values in config.json ('postprocess')")
    args = ap.parse_args(argv)

    cfg = json.loads((args.folder / "config.json").read_text())
    base = engine_class(cfg["name"])
    folder_cls = base.from_folder(args.folder)
    role = cfg["inputs"][0]
    cyto = cfg["name"] == "cytoplasm"
    items = [(*it, "real" if cyto else "validation") for it in validation_items(args.folder, args.data, role)]
    if cyto:
        items += synthetic_cell_items(role)
    groups = sorted({it[4] for it in items})
    print(f"{len(items)} validation images: {', '.join(i[3] for i in items)}", flush=True)

    grid, output = (CYTO_GRID, "cells") if cyto else (GRID, "nuclei")
    eng = folder_cls({k: v for k, v in base.Params().model_dump().items() if k in grid}, backend="torch")
    cache: dict[int, np.ndarray] = {}
    predict = eng.predict

    def cached(images, ctx, *, tile, halo):
        key = id(next(iter(images.values())))
        if key not in cache:
            cache[key] = predict(images, ctx, tile=tile, halo=halo)
        return cache[key]

    eng.predict = cached
    th = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

    ref: dict[str, float] = {}  # each modality's AP@0.5 at the defaults (the guard's reference)

    def score(params: dict) -> tuple[float, float, dict]:
        """The objective (the real images' pooled AP@0.5, less 1 where a synthetic modality falls below
        the guard; a single modality: its AP@0.5), the mean AP@0.5:0.95, and each modality's AP@0.5."""
        eng.params = eng.Params(**params)
        per = [
            (g, match_instances(t, segment_field(eng, im, pixel_size_um=px).labels[output], th))
            for im, t, px, _, g in items
        ]
        by = {g: summarize([m for gg, m in per if gg == g], th) for g in groups}
        ap50 = {g: round(s["0.5"]["ap"], 4) for g, s in by.items()}
        ap_mean = float(np.mean([s[k]["ap"] for s in by.values() for k in s if re.fullmatch(r"0\.\d+", k)]))
        if len(groups) == 1:
            return ap50[groups[0]], ap_mean, ap50
        guarded = all(ap50[g] >= GUARD * ref.get(g, 0.0) for g in groups if g != "real")
        return ap50["real"] - (0.0 if guarded else 1.0), ap_mean, ap50

    default = {k: base.Params().model_dump()[k] for k in grid}
    d50, dap, ds = score(default)
    ref.update(ds)
    print(f"default {default}: objective {d50:.4f} AP {dap:.4f} {ds if len(groups) > 1 else ''}", flush=True)
    results = []

    def trial(p: dict, label: str = " ") -> None:
        a50, a_, g = score(p)
        results.append((a50, a_, p, g))
        print(f"{label} {p}: objective {a50:.4f} AP {a_:.4f} {g if len(groups) > 1 else ''}", flush=True)

    current = {k: v for k, v in cfg.get("postprocess", {}).items() if k in grid}
    if current and current != default:  # what the folder uses now competes too
        trial({**default, **current}, "current")
    keys = list(grid)
    # stage 1: the first two parameters together at the defaults of the rest; then each other one at the best so far
    for a, b in itertools.product(grid[keys[0]], grid[keys[1]]):
        trial({**default, keys[0]: a, keys[1]: b})
    for k in keys[2:]:
        best = max(results, key=lambda r: (round(r[0], 4), r[1]))[2]
        for v in grid[k]:
            trial({**best, k: v})
    b50, bap, best, bgroups = max(results, key=lambda r: (round(r[0], 4), r[1]))
    print(
        f"best {best}: objective {b50:.4f} AP {bap:.4f} {bgroups} (default objective {d50:.4f} AP {dap:.4f} {ds})",
        flush=True,
    )
    if args.write:
        cfg = json.loads((args.folder / "config.json").read_text())
        cfg["postprocess"] = best
        cfg["postprocess_tuning"] = {
            "on": f"{len(items)} validation images ({', '.join(i[3] for i in items)})",
            "grid": {k: list(v) for k, v in grid.items()},
            "objective": f"pooled AP@0.5 of {output}"
            + (
                f" on the real images, keeping each synthetic modality at >= {GUARD:.0%} of its AP@0.5 at the defaults;"
                " ties and validation_ap: mean AP@0.5:0.95 over the modalities"
                if len(groups) > 1
                else "; ties: mean AP@0.5:0.95"
            ),
            "validation_ap50": round(b50, 4),
            **({"validation_ap50_by_modality": bgroups} if len(groups) > 1 else {}),
            "validation_ap": round(bap, 4),
            "default": default,
            "default_validation_ap50": round(d50, 4),
            "default_validation_ap": round(dap, 4),
            **({"default_validation_ap50_by_modality": ds} if len(groups) > 1 else {}),
        }
        (args.folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"wrote postprocess to {args.folder / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
