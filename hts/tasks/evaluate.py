"""Evaluate: segmentation labels against ground truth (``hts evaluate``).

What is compared
----------------
- ``pred`` and ``truth`` are each an instance label image file (TIFF, PNG or
  ``.npy``; 0 = background, one positive id per object) or a folder of them.
  Two folders are paired by file stem (``img01.tif`` with ``img01.png``); a stem
  that pairs with nothing also tries without a trailing ``_mask``, ``_masks``,
  ``_label``, ``_labels``, ``_gt``, ``_truth``, ``_pred`` or ``_seg``
  (``img01_mask.tif`` pairs with ``img01.tif``). A file and a folder: the
  folder's file with the file's stem.
- ``plate`` (instead of ``pred``): the label images ``labels`` (e.g. ``nuclei``)
  that ``hts segment`` wrote into a plate store of the ``workspace`` (an
  :class:`hts.config.Workspace`, needed only here). ``truth`` is then a folder
  whose files are named by well and field (the field index of the store,
  0-based)::

      <WELL>_<FIELD>[_t<T>][_<NAME>].<ext>      B03_0.tif   B03_f0.tif   B03_f1_t2.tif   B03_f0_nuclei.tif

  The well as ``B03`` or ``B3``; the field as ``0`` or ``f0``; an optional time
  point ``t<T>`` (default 0); an optional label name, so ``hts demo --masks``
  truth folders (``B03_f0_nuclei.tif``, ``B03_f0_cells.tif``) work as they are:
  a file with a name is used only for the labels of that name (``nuclei`` also
  for ``nuclei_<suffix>`` from ``--label-suffix``). Fields without a truth
  file, and fields the run has not finished, are left out (and listed).

Metrics are those of :mod:`hts.compute.analysis.metrics` (definitions there): per image
and overall, where overall counts are **pooled** — TP, FP and FN summed over
all images, the scores computed from the sums.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hts.compute.analysis.metrics import AP_THRESHOLDS, pool, score_image
from hts.errors import HtsError, ImageFileError
from hts.formats.images import read_image

if TYPE_CHECKING:
    from hts.catalog import Catalog
    from hts.config import Workspace

__all__ = [
    "EvaluationError",
    "LabelFileError",
    "ShapeMismatchError",
    "NoPairsError",
    "EvaluationReport",
    "LABEL_SUFFIXES",
    "evaluate",
    "evaluate_arrays",
    "read_label_image",
    "pair_folders",
    "parse_field_stem",
]

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
_STRIP = re.compile(r"[_-](mask|masks|label|labels|gt|truth|pred|prediction|seg)$", re.IGNORECASE)
_FIELD_STEM = re.compile(
    r"^(?P<well>[A-Za-z]{1,2}\d{1,2})[_-]f?(?P<field>\d+)(?:[_-]t(?P<t>\d+))?(?:[_-](?P<name>[A-Za-z][\w-]*))?$"
)


class EvaluationError(HtsError):
    """``hts evaluate`` cannot compare what it was given."""


class LabelFileError(EvaluationError):
    """A label image file is missing, unreadable or not an instance label image."""


class ShapeMismatchError(EvaluationError):
    """A prediction and its truth differ in shape."""


class NoPairsError(EvaluationError):
    """No prediction could be paired with a truth image."""


@dataclass
class EvaluationReport:
    """The result of :func:`evaluate`: overall (pooled) metrics and one entry per image pair."""

    pred: str
    truth: str
    overall: dict[str, Any]
    per_image: list[dict[str, Any]]
    unmatched_pred: list[str] = field(default_factory=list)
    unmatched_truth: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # plate fields without finished labels
    thresholds: tuple[float, ...] = AP_THRESHOLDS
    overlap: float = 0.5

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        d = {
            "pred": self.pred,
            "truth": self.truth,
            "pooling": "overall counts are pooled: TP/FP/FN summed over the images, scores computed from the sums",
            "ap_thresholds": list(self.thresholds),
            "split_merge_overlap": self.overlap,
            "overall": self.overall,
        }
        if per_image:
            d["per_image"] = self.per_image
        d.update(unmatched_pred=self.unmatched_pred, unmatched_truth=self.unmatched_truth, skipped=self.skipped)
        return d


# ----------------------------------------------------------------------------- files


def read_label_image(path: str | Path) -> np.ndarray:
    """An instance label image (2-D, int64) from a TIFF / PNG / ``.npy`` file; singleton axes are dropped.

    Raises
    ------
    LabelFileError
        Missing or unreadable file, not 2-D, colour, negative or fractional values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES and path.is_file():
        raise LabelFileError(f"{path}: not a label image file (use {', '.join(LABEL_SUFFIXES)})")
    try:
        a = read_image(path, rgb="keep")
    except ImageFileError as e:
        raise LabelFileError(str(e)) from None
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and suffix == ".png":
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise LabelFileError(f"{path}: a colour image, not an instance label image")
        a = a[..., 0]
    a = np.squeeze(a)
    if a.ndim != 2:
        raise LabelFileError(f"{path}: expected a 2-D label image, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise LabelFileError(f"{path}: label values must be whole numbers (0 = background)")
    elif a.dtype.kind not in "iu":
        raise LabelFileError(f"{path}: label image of type {a.dtype} (expected integers)")
    if a.size and a.min() < 0:
        raise LabelFileError(f"{path}: negative label values")
    return a.astype(np.int64)


def _label_files(folder: Path) -> dict[str, Path]:
    """Stem -> file of the label images in ``folder`` (an error when two files share a stem)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith("."):
            if p.stem in out:
                raise EvaluationError(f"{folder}: two label images for {p.stem!r}: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out


def _key(stem: str) -> str:
    return _STRIP.sub("", stem)


def pair_folders(pred: Path, truth: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair the label images of two folders by stem (see the module docstring).

    Returns ``(pairs, unmatched_pred, unmatched_truth)``; pairs are ``(name, pred file, truth file)``.
    """
    pf, tf = _label_files(pred), _label_files(truth)
    pairs: dict[str, tuple[Path, Path]] = {s: (pf[s], tf[s]) for s in pf if s in tf}
    rest_p = {s: p for s, p in pf.items() if s not in pairs}
    rest_t = {s: p for s, p in tf.items() if s not in pairs}
    by_key_t: dict[str, list[str]] = {}
    for s in rest_t:
        by_key_t.setdefault(_key(s), []).append(s)
    for s, p in sorted(rest_p.items()):
        cands = by_key_t.get(_key(s), [])
        if len(cands) == 1:
            pairs[s] = (p, rest_t.pop(cands.pop()))
    used_p = {v[0] for v in pairs.values()}
    unmatched_p = sorted(p.name for p in pf.values() if p not in used_p)
    return ([(n, a, b) for n, (a, b) in sorted(pairs.items())], unmatched_p, sorted(p.name for p in rest_t.values()))


def parse_field_stem(stem: str) -> tuple[str, int, int, str | None] | None:
    """``(well, field, t, name)`` of a truth file stem named by well and field (``B03_f0_nuclei``), else None."""
    from hts.wells import parse_well

    m = _FIELD_STEM.match(stem)
    if not m:
        return None
    try:
        well = parse_well(m["well"]).name
    except ValueError:
        return None
    return well, int(m["field"]), int(m["t"] or 0), m["name"]


# ----------------------------------------------------------------------------- evaluation


def evaluate_arrays(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    thresholds: Sequence[float] = AP_THRESHOLDS,
    overlap: float = 0.5,
    pred: str = "",
    truth: str = "",
) -> EvaluationReport:
    """Score ``(name, prediction, truth)`` label images; the report's overall numbers are pooled."""
    per = []
    for name, p, t in pairs:
        p, t = np.asarray(p), np.asarray(t)
        if p.shape != t.shape:
            raise ShapeMismatchError(f"{name}: prediction has shape {p.shape} but truth has {t.shape}")
        per.append({"name": name, **score_image(t, p, thresholds=thresholds, overlap=overlap)})
    if not per:
        raise NoPairsError(f"nothing to evaluate: no prediction paired with a truth image ({pred} vs {truth})")
    return EvaluationReport(
        pred=pred,
        truth=truth,
        overall=pool(per, thresholds=thresholds),
        per_image=per,
        thresholds=tuple(thresholds),
        overlap=overlap,
    )


def evaluate(
    pred: str | Path | None = None,
    truth: str | Path | None = None,
    *,
    plate: str | None = None,
    labels: str = "nuclei",
    workspace: Workspace | None = None,
    thresholds: Sequence[float] = AP_THRESHOLDS,
    overlap: float = 0.5,
) -> EvaluationReport:
    """Compare predicted label images with ground truth (the module docstring says what each argument can be).

    ``workspace`` is the workspace whose catalog holds ``plate`` (needed only with ``plate``).

    Raises
    ------
    LabelFileError, ShapeMismatchError, NoPairsError, EvaluationError
        One-line messages naming the files at fault; plate look-ups raise
        :class:`~hts.errors.CatalogError` / :class:`~hts.errors.StoreError`.
    """
    if truth is None:
        raise EvaluationError("--truth is needed: a label image or a folder of them")
    truth = Path(truth)
    if not truth.exists():
        raise LabelFileError(f"{truth}: no such file or folder")
    if plate is not None:
        if pred is not None:
            raise EvaluationError("give either --pred (label images) or --plate (labels in a plate store), not both")
        if workspace is None:
            raise EvaluationError(
                f"evaluating plate {plate} needs the workspace whose catalog holds it: "
                "evaluate(..., workspace=hts.config.load_workspace())"
            )
        return _evaluate_plate(
            plate, truth, labels=labels, catalog=workspace.catalog, thresholds=thresholds, overlap=overlap
        )
    if pred is None:
        raise EvaluationError("--pred is needed (a label image or a folder of them), or --plate PLATE --labels NAME")
    pred = Path(pred)
    if not pred.exists():
        raise LabelFileError(f"{pred}: no such file or folder")
    unmatched_p: list[str] = []
    unmatched_t: list[str] = []
    if pred.is_dir() and truth.is_dir():
        files, unmatched_p, unmatched_t = pair_folders(pred, truth)
    elif pred.is_dir() or truth.is_dir():
        folder, one = (pred, truth) if pred.is_dir() else (truth, pred)
        cands = _label_files(folder)
        hit = cands.get(one.stem) or next((p for s, p in cands.items() if _key(s) == _key(one.stem)), None)
        if hit is None:
            raise NoPairsError(f"{folder}: no label image named like {one.name} (stem {one.stem!r})")
        files = [(one.stem, *((hit, one) if pred.is_dir() else (one, hit)))]
    else:
        files = [(pred.stem, pred, truth)]
    if not files:
        raise NoPairsError(
            f"no label images of {pred} and {truth} share a file stem "
            f"(e.g. {', '.join((unmatched_p + ['-'])[:2])} vs {', '.join((unmatched_t + ['-'])[:2])})"
        )
    per = []
    for name, pp, tp in files:
        p, t = read_label_image(pp), read_label_image(tp)
        if p.shape != t.shape:
            raise ShapeMismatchError(f"{pp} has shape {p.shape} but {tp} has {t.shape}")
        per.append(
            {
                "name": name,
                "pred_file": str(pp),
                "truth_file": str(tp),
                **score_image(t, p, thresholds=thresholds, overlap=overlap),
            }
        )
    return EvaluationReport(
        pred=str(pred),
        truth=str(truth),
        overall=pool(per, thresholds=thresholds),
        per_image=per,
        unmatched_pred=unmatched_p,
        unmatched_truth=unmatched_t,
        thresholds=tuple(thresholds),
        overlap=overlap,
    )


def _evaluate_plate(
    plate: str, truth: Path, *, labels: str, catalog: Catalog, thresholds: Sequence[float], overlap: float
) -> EvaluationReport:
    """The labels ``labels`` of a plate's store against truth files named by well and field."""
    from hts.catalog import runs as runs_db
    from hts.store import PlateStore

    rec = catalog.find_plate(plate)
    owners = runs_db.label_owners(catalog, rec.plate_id)
    if labels not in owners:
        have = ", ".join(sorted(owners)) or "none"
        raise EvaluationError(f"plate {rec.name} has no labels {labels!r} (labels: {have}); run `hts segment` first")
    pending = runs_db.pending_run_fields(catalog, owners[labels]["run_id"])
    fields = catalog.field_paths(rec.plate_id)
    base_name = labels.split("_", 1)[0]
    wanted, unmatched_t = _plate_truth(truth, fields, labels=labels, plate=rec.name)
    store = PlateStore(rec.store_uri)
    per, skipped = [], []
    for (well, fi, t), tp in sorted(wanted.items()):
        name = f"{well}_{fi}" + (f"_t{t}" if t else "")
        if (well, fi) in pending:
            skipped.append(name)
            continue
        arr = store.read_labels(fields[(well, fi)], labels)
        if t >= arr.shape[0]:
            raise EvaluationError(f"{tp}: time point {t}, but plate {rec.name} has {arr.shape[0]}")
        p = np.asarray(arr[t, 0, 0]).astype(np.int64)
        tr = read_label_image(tp)
        if p.shape != tr.shape:
            raise ShapeMismatchError(
                f"{rec.store_uri}/{fields[(well, fi)]}/labels/{labels} has shape {p.shape} but {tp} has {tr.shape}"
            )
        per.append(
            {
                "name": name,
                "well": well,
                "field": fi,
                "t": t,
                "truth_file": str(tp),
                **score_image(tr, p, thresholds=thresholds, overlap=overlap),
            }
        )
    pred_desc = f"plate {rec.name} labels {labels}"
    if not per:
        raise NoPairsError(
            f"no field of plate {rec.name} has a truth file in {truth} "
            f"(name them by well and field, e.g. B03_0.tif or B03_f0_{base_name}.tif)"
            + (f"; {len(skipped)} fields with truth are not segmented yet" if skipped else "")
        )
    return EvaluationReport(
        pred=pred_desc,
        truth=str(truth),
        overall=pool(per, thresholds=thresholds),
        per_image=per,
        unmatched_truth=sorted(unmatched_t),
        skipped=skipped,
        thresholds=tuple(thresholds),
        overlap=overlap,
    )


def _plate_truth(
    truth: Path, fields: Mapping[tuple[str, int], str], *, labels: str, plate: str
) -> tuple[dict[tuple[str, int, int], Path], list[str]]:
    """Truth files by ``(well, field, t)`` of the plate's ``fields``, and the names of the files left unused.

    ``truth`` is a folder of files named by well and field, or one file when the plate has one field.
    """
    base_name = labels.split("_", 1)[0]
    if truth.is_dir():
        truth_files = sorted(p for p in truth.iterdir() if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES)
    elif len(fields) == 1:
        ((w, f),) = fields
        truth_files = [truth]
    else:
        raise EvaluationError(
            f"--plate needs --truth to be a folder of files named by well and field "
            f"(e.g. B03_0.tif); {truth} is one file and plate {plate} has {len(fields)} fields"
        )
    wanted: dict[tuple[str, int, int], Path] = {}
    unmatched_t: list[str] = []
    for p in truth_files:
        parsed = parse_field_stem(p.stem) if truth.is_dir() else (w, f, 0, None)
        if parsed is None:
            unmatched_t.append(p.name)
            continue
        well, fi, t, name = parsed
        if name is not None and name not in (labels, base_name):
            continue  # the truth of another output (B03_f0_cells.tif when evaluating nuclei)
        if (well, fi) not in fields:
            unmatched_t.append(p.name)
            continue
        if (well, fi, t) in wanted:
            raise EvaluationError(
                f"{truth}: two truth files for well {well} field {fi}: {wanted[(well, fi, t)].name} and {p.name}"
            )
        wanted[(well, fi, t)] = p
    return wanted, unmatched_t
