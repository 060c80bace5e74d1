#!/usr/bin/env bash
# Reproduce the shipped weights of the four deep engines and their held-out numbers.
#
#   engines/train_all.sh                 # all four, then the evaluation (about 100 min on 2 CPU cores)
#   engines/train_all.sh nuclei fpf      # some of them (then the evaluation of those)
#   engines/train_all.sh eval            # only the evaluation of the shipped weights
#
# Environment: PY (python, default .venv/bin/python), HTS_DEV_DATA (the development data folder with
# nuclei_train/, nuclei_gt/, nd2/; default ../shared/data beside the repository), HTS_STAGE_DIR (first-stage
# weights and checkpoints of the two-stage engines; default $TMPDIR/hts-train-stage). Training is
# deterministic for a given seed, except that --time-limit (a guard for slow machines) may end a run
# at a step that depends on the machine's speed; training.json in each folder records where it stopped.
# Checkpoints go to $HTS_CACHE_DIR/training (default ~/.cache/hts/training); --no-resume starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${HTS_DEV_DATA:-../shared/data}
NT=$DATA/nuclei_train
ISL=$NT/brightfield_pairs/isl_kevan08_wellA4_z06_rows0-703
TRAIN="$PY -m hts.compute.training --no-resume"
STAGE=${HTS_STAGE_DIR:-${TMPDIR:-/tmp}/hts-train-stage}  # first-stage weights and checkpoints (fine-tuning starts from them)
want() { [ $# -eq 0 ] && return 0; for e in $SELECTED; do [ "$e" = "$1" ] && return 0; done; return 1; }
SELECTED=${*:-nuclei brightfield-unet cytoplasm fpf eval}
if [ "$SELECTED" != "eval" ] && ! echo "$SELECTED" | grep -qw eval; then SELECTED="$SELECTED eval"; fi
if [ "$SELECTED" != "eval" ]; then mkdir -p "$STAGE"; fi

# nuclei: real nuclei_train fluorescence images (70 % train / 15 % validation / 15 % test, seed 0)
#         plus 40 synthetic DAPI fields. Stage 1 (the initial weights, 600 steps, real and synthetic
#         equal weight) into a scratch folder; stage 2 fine-tunes from it (--init) with the real images
#         at 3/4 of the sampling weight; then the post-processing is tuned on the validation split.
if want nuclei; then
  $TRAIN --engine nuclei --out "$STAGE/nuclei-stage1" --seed 0 --steps 600 --time-limit 570 \
    --checkpoint "$STAGE/nuclei-stage1.pt" --pixel-size 0.65 --object-diameter 12 \
    --nuclei-folder "$NT" --nuclei-split 0.70,0.15,0.15 --nuclei-weight 1 \
    --synthetic 40 --synthetic-val 4 --synthetic-channels DAPI --synthetic-weight 1
  nice -n 5 $TRAIN --engine nuclei --out engines/nuclei --seed 0 --steps 2000 --time-limit 2520 --lr 1e-3 --patience 15 \
    --init "$STAGE/nuclei-stage1" --checkpoint "$STAGE/nuclei-ft.pt" --pixel-size 0.65 --object-diameter 12 \
    --nuclei-folder "$NT" --nuclei-split 0.70,0.15,0.15 --nuclei-weight 3 \
    --synthetic 40 --synthetic-val 4 --synthetic-channels DAPI --synthetic-weight 1
  "$PY" engines/tune_postprocess.py engines/nuclei --data "$DATA" --write
fi

# brightfield-unet: stage 1 (the initial weights): 60 synthetic brightfield fields + the In Silico
#                   Labeling phase-contrast field rows 0-479 (nuclei from its DAPI by the classic engine).
#                   Stage 2 fine-tunes from it on the real pairs (3/4 of the weight): ISL rows 0-359 and the
#                   ND2 PBMC field rows 0-175 (targets: classic on its inverted "DAPI" channel, the dark
#                   dye-excluding cell disks), validated on ISL rows 360-479 and PBMC rows 176-255.
#                   ISL rows 480-703 and example-multichannel.nd2 stay held out.
if want brightfield-unet; then
  $TRAIN --engine brightfield-unet --out "$STAGE/brightfield-unet-stage1" --seed 0 --steps 500 --time-limit 480 \
    --checkpoint "$STAGE/brightfield-unet-stage1.pt" --pixel-size 0.65 --object-diameter 12 \
    --synthetic 60 --synthetic-val 4 --synthetic-channels Brightfield --synthetic-weight 3 \
    --pair "${ISL}_bf.tif,${ISL}_stain.tif,auto,0:480" --pair-weight 1 --invert-p 0.2
  PBMC=$DATA/nd2/example-pbmc.nd2
  nice -n 5 $TRAIN --engine brightfield-unet --out engines/brightfield-unet --seed 0 --steps 600 --time-limit 1200 \
    --lr 1e-3 --patience 10 --init "$STAGE/brightfield-unet-stage1" --checkpoint "$STAGE/brightfield-unet-ft.pt" \
    --pixel-size 0.65 --object-diameter 12 \
    --synthetic 60 --synthetic-channels Brightfield --synthetic-weight 1 \
    --pair "${ISL}_bf.tif,${ISL}_stain.tif,auto,0:360" --pair "$PBMC#Mono,$PBMC#~DAPI,0:176" \
    --val-pair "${ISL}_bf.tif,${ISL}_stain.tif,auto,360:480" --val-pair "$PBMC#Mono,$PBMC#~DAPI,176:256" \
    --pair-weight 3 --invert-p 0.2
  "$PY" engines/tune_postprocess.py engines/brightfield-unet --data "$DATA" --write
fi

# cytoplasm: 60 synthetic fields, the cytoplasm role played by GFP (2/3) or Brightfield (1/3).
if want cytoplasm; then
  $TRAIN --engine cytoplasm --out engines/cytoplasm --seed 0 --steps 500 --time-limit 480 \
    --pixel-size 0.65 --object-diameter 25 --nucleus-diameter 12 --cell-diameter 25 \
    --synthetic 60 --synthetic-val 6 --synthetic-channels "GFP;GFP;Brightfield"
fi

# fpf: 60 synthetic DAPI + GFP fields, 40 % of them dense (density 0.85-1.0); nucleus branch first
#      (40 % of the steps), then frozen while the cell branch trains.
if want fpf; then
  $TRAIN --engine fpf --out engines/fpf --seed 0 --steps 600 --time-limit 540 \
    --pixel-size 0.65 --object-diameter 25 --nucleus-diameter 12 --cell-diameter 25 \
    --synthetic 60 --synthetic-val 6 --synthetic-channels DAPI+GFP --dense 0.4
fi

want eval || exit 0
# Held-out evaluation through the real engines (post-processing included); writes engines/<name>/metrics.json.
HTS_DEV_DATA=$DATA "$PY" - <<'EOF'
import json, os
from pathlib import Path

import nd2
import numpy as np
import tifffile

from hts.compute.engines import engine_class
from hts.compute.training import evaluate_engine, load_image, median_diameter_px, stain_nuclei
from hts.synth import synth_field

data = Path(os.environ["HTS_DEV_DATA"])
TH = (0.5, 0.75)


def brief(m):
    return {"images": m["images"], "n_true": m["n_true"], "n_pred": m["n_pred"],
            **{k: {kk: round(v, 4) if isinstance(v, float) else v for kk, v in m[k].items()} for k in ("0.5", "0.75")}}


def write(name, metrics):
    p = Path("engines") / name / "metrics.json"
    if p.parent.is_dir():
        p.write_text(json.dumps(metrics, indent=1) + "\n")
        print(name, json.dumps(metrics, indent=1))


def deep(name):
    return engine_class(name)(backend="torch")


# held-out synthetic fields (seeds 9000-9009, never used for training: those seeds are 10000-15100)
SYN = [synth_field(shape=(512, 512), seed=9000 + i, density=d)
       for i, d in enumerate([0.3, 0.5, 0.7, 0.9, 1.0, 0.4, 0.6, 0.8, 0.95, 0.5])]
classic = engine_class("classic")()

# -- nuclei: DSB2018 stardist sample + the nuclei_train test split; classic beside
if (Path("engines/nuclei") / "config.json").exists():
    gt = tifffile.imread(data / "nuclei_gt/dsb2018_mask2d.tif")
    img = tifffile.imread(data / "nuclei_gt/dsb2018_img2d.tif")
    px = 12.0 / median_diameter_px(gt)  # unknown pixel size: the one that makes the median nucleus 12 µm
    dsb = [({"nucleus": img}, gt, px)]
    man = json.loads(Path("engines/nuclei/manifest.json").read_text())
    test = []
    for t in man["test"]:
        g = tifffile.imread(str(t["source"]).replace("_img.tif", "_mask.tif"))
        d = median_diameter_px(g)
        test.append(({"nucleus": load_image(t["source"])}, g, 12.0 / d if d else 0.65))
    syn = [({"nucleus": f.image[0]}, f.nuclei, 0.65) for f in SYN]
    out = {"note": "F1/AP at IoU 0.5 and 0.75, pooled over the images (AP = TP/(TP+FP+FN)); pixel size of real images "
                   "set so the median true nucleus is 12 µm", "pixel_size_um_dsb2018": px}
    for label, items in (("dsb2018_stardist_sample", dsb), ("nuclei_train_test_split", test), ("synthetic_dapi", syn)):
        out[label] = {"nuclei": brief(evaluate_engine(deep("nuclei"), items, thresholds=TH)),
                      "classic": brief(evaluate_engine(classic, items, thresholds=TH))}
    write("nuclei", out)

# -- brightfield-unet: ISL rows 480-703 (held out), ND2 multichannel pair, synthetic brightfield; truth from the stain
if (Path("engines/brightfield-unet") / "config.json").exists():
    man = json.loads(Path("engines/brightfield-unet/manifest.json").read_text())
    isl_px = next(t["pixel_size_um"] for t in man["train"] if t["name"].startswith("isl_"))
    root = data / "nuclei_train/brightfield_pairs/isl_kevan08_wellA4_z06_rows0-703"
    bf, st = tifffile.imread(f"{root}_bf.tif"), tifffile.imread(f"{root}_stain.tif")
    truth = stain_nuclei(st, isl_px)
    isl = [({"brightfield": bf[480:]}, truth[480:], isl_px)]
    with nd2.ND2File(data / "nd2/example-multichannel.nd2") as f:
        a, npx = np.asarray(f.asarray()), float(f.voxel_size().x)
    nd = [({"brightfield": a[0]}, stain_nuclei(a[1], npx, threshold_factor=0.5), npx)]
    syn = [({"brightfield": f.image[2]}, f.nuclei, 0.65) for f in SYN]
    out = {"note": "truth of the real pairs = classic engine on the paired DAPI (ISL: whole field at the estimated "
                   "pixel size, rows 480-703 scored; ND2: threshold_factor 0.5); synthetic: generator truth",
           "isl_pixel_size_um": isl_px}
    for label, items in (("isl_rows480-703_heldout", isl), ("nd2_example_multichannel", nd), ("synthetic_brightfield", syn)):
        out[label] = {"brightfield-unet": brief(evaluate_engine(deep("brightfield-unet"), items, thresholds=TH))}
    write("brightfield-unet", out)

# -- cytoplasm and fpf on the same synthetic fields (classic with DAPI + GFP beside)
both = {}
for name, roles in (("cytoplasm", lambda f: {"cytoplasm": f.image[1]}),
                    ("fpf", lambda f: {"nucleus": f.image[0], "cytoplasm": f.image[1]}),
                    ("classic", lambda f: {"nucleus": f.image[0], "cytoplasm": f.image[1]})):
    if name != "classic" and not (Path("engines") / name / "config.json").exists():
        continue
    eng = classic if name == "classic" else deep(name)
    res = {}
    for output, truth in (("cells", lambda f: f.cells), ("nuclei", lambda f: f.nuclei)):
        res[output] = brief(evaluate_engine(eng, [(roles(f), truth(f), 0.65) for f in SYN], output=output, thresholds=TH))
    both[name] = res
both["cytoplasm_brightfield"] = None
if "cytoplasm" in both:
    both["cytoplasm_brightfield"] = {"cells": brief(evaluate_engine(
        deep("cytoplasm"), [({"cytoplasm": f.image[2]}, f.cells, 0.65) for f in SYN], output="cells", thresholds=TH))}
note = ("10 held-out synthetic 512x512 fields (seeds 9000-9009, density 0.3-1.0), 0.65 µm/px; cytoplasm sees GFP "
        "(cytoplasm_brightfield: the Brightfield channel), fpf DAPI + GFP, classic DAPI + GFP")
for name in ("cytoplasm", "fpf"):
    if name in both:
        write(name, {"note": note, "synthetic_heldout": both})
EOF
