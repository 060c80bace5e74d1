#!/usr/bin/env bash
# Reproduce the shipped weights of the four deep engines and their held-out numbers.
#
#   engines/train_all.sh                 # all four, then the evaluation (about 7 h on 2 CPU cores)
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
TRAIN="$PY engines/train_recipe.py --no-resume"
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

# brightfield-unet and cytoplasm: real transmitted-light data (engines/train_label_free.py has the split rules).
#   The extra training pairs of the two sources are converted from clones of their repositories (full history
#   for BriFiSeg) into $HTS_CACHE_DIR; without the clones only the development data's pairs are used.
#   BRIFISEG_GIT / USIIGACI_GIT: git directories of clones of mgendarme/BriFiSeg and oist/Usiigaci.
CACHE=${HTS_CACHE_DIR:-$HOME/.cache/hts}
extra() {  # extra <name> <prepare script> <git dir>
  if [ -n "${3:-}" ] && [ ! -f "$CACHE/$1/manifest.csv" ]; then "$PY" "engines/$2" --repo "$3" --out "$CACHE/$1" >&2; fi
  if [ -f "$CACHE/$1/manifest.csv" ]; then echo "--extra $CACHE/$1"; fi
}
if want brightfield-unet; then  # stage 1, then stage 2 fine-tunes it at a lower learning rate (--init)
  X=$(extra brifiseg_tr prepare_brifiseg.py "${BRIFISEG_GIT:-}")
  nice -n 5 "$PY" engines/train_label_free.py brightfield-unet --data "$DATA" $X \
    --out "$STAGE/brightfield-unet-stage1" --steps 2600 --time-limit 7200 --checkpoint "$STAGE/brightfield-unet-real.pt"
  nice -n 5 "$PY" engines/train_label_free.py brightfield-unet --data "$DATA" $X --threads 1 --init "$STAGE/brightfield-unet-stage1" \
    --out engines/brightfield-unet --steps 6000 --lr 6e-4 --time-limit 6600 --checkpoint "$STAGE/brightfield-unet-ft.pt"
  "$PY" engines/tune_postprocess.py engines/brightfield-unet --data "$DATA" --write
fi
if want cytoplasm; then  # stage 1, then stages 2 and 3 fine-tune it at lower learning rates (--init)
  X=$(extra usiigaci_tr prepare_usiigaci.py "${USIIGACI_GIT:-}")
  nice -n 5 "$PY" engines/train_label_free.py cytoplasm --data "$DATA" $X --threads 1 \
    --out "$STAGE/cytoplasm-stage1" --steps 1500 --time-limit 4500 --checkpoint "$STAGE/cytoplasm-real.pt"
  nice -n 5 "$PY" engines/train_label_free.py cytoplasm --data "$DATA" $X --threads 1 --init "$STAGE/cytoplasm-stage1" \
    --out "$STAGE/cytoplasm-stage2" --steps 3000 --lr 6e-4 --time-limit 5400 --checkpoint "$STAGE/cytoplasm-ft.pt"
  nice -n 5 "$PY" engines/train_label_free.py cytoplasm --data "$DATA" $X --threads 1 --init "$STAGE/cytoplasm-stage2" \
    --out engines/cytoplasm --steps 3000 --lr 4e-4 --seed 1 --time-limit 5400 --checkpoint "$STAGE/cytoplasm-s3.pt"
  "$PY" engines/tune_postprocess.py engines/cytoplasm --data "$DATA" --write
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

from hts.compute.segment.engines import engine_class
from hts.compute.train.training import evaluate_engine, load_image, median_diameter_px, stain_nuclei
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
if "fpf" in both:
    write("fpf", {"note": note, "synthetic_heldout": both})
EOF
LF=""
for e in brightfield-unet cytoplasm; do want $e && LF="$LF $e"; done
if [ "$SELECTED" = "eval" ]; then LF="brightfield-unet cytoplasm"; fi
[ -n "$LF" ] && "$PY" engines/evaluate_label_free.py $LF --data "$DATA"
