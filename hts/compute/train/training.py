"""Training the deep engines' networks: data sets, augmentation, losses, the loop, evaluation.

The pieces, each usable on its own (the ``hts train`` command is a thin layer on top):

- :data:`RECIPES`: per deep engine, its input roles, output heads, architecture
  and which targets / losses train which head (:class:`Recipe`).
- :class:`Sample`: one training image ``(C, Y, X)`` float32, normalized exactly
  as at inference (field-level percentiles, :func:`normalize_channels`) and
  rescaled to the model's training pixel size, with its instance labels
  (``"nuclei"``, optionally ``"cells"``). Network targets are derived from the
  labels with :mod:`hts.compute.train.targets` after augmentation
  (:func:`make_targets`), so geometric augmentation never distorts them.
- Loaders: :func:`nucleus_folder_samples` (a folder of ``<name>_img.tif`` /
  ``<name>_mask.tif`` with a ``manifest.csv``), :func:`paired_stain_samples`
  (an image channel plus nuclei derived from a paired nuclear stain by the
  classic engine), :func:`mask_folder_samples` (explicit image and mask folders);
  synthetic fields come from :func:`hts.synth.samples.synthetic_samples`.
- :class:`Augment` / :func:`random_crop`: flips, 90° rotations, scale jitter,
  intensity gain / offset / gamma, blur, noise, inversion; random crops whose
  sides are multiples of the network's ``multiple``; all drawn from a seeded
  generator, so a run is reproducible (and a resumed run continues identically).
- :func:`train`: Adam with warm-up and cosine decay, validation loss with early
  stopping (the best weights are kept), a checkpoint file per run
  (save / resume), an optional progress callback, ``torch`` threads set to the
  cores this process may use. FPF models train in two phases: the nucleus
  branch on nucleus targets, then :meth:`~hts.compute.segment.nets.FPFNet.freeze_nucleus`
  and the cell branch.
- :func:`save_engine_model`: the engine folder (``model.safetensors`` +
  ``config.json`` with the keys :class:`~hts.compute.segment.engines._deep.DeepEngine` reads).
- :func:`match_instances` (from :mod:`hts.compute.analysis.metrics`, where the metrics are
  defined) / :func:`evaluate_engine`: AP, F1 and mean matched IoU at IoU
  thresholds, through a real engine (post-processing included).

``hts train`` (:mod:`hts.tasks.train`) is the command that trains an engine from a
plate or image folders; ``engines/train_recipe.py`` is the script that reproduces the
shipped weights from their recipes (what ``engines/train_all.sh`` calls).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.transform import resize

from hts.compute.analysis.metrics import match_instances, summarize
from hts.compute.segment.backends import save_model_dir
from hts.compute.segment.nets import build_model, count_parameters
from hts.compute.train.targets import foreground_distance, three_class
from hts.errors import EngineError
from hts.formats.images import read_image

__all__ = [
    "Recipe",
    "RECIPES",
    "HeadLoss",
    "Sample",
    "Augment",
    "TrainConfig",
    "TrainResult",
    "normalize_channels",
    "make_sample",
    "parse_pair",
    "load_pair",
    "format_event",
    "nucleus_folder_samples",
    "paired_stain_samples",
    "mask_folder_samples",
    "median_diameter_px",
    "split_samples",
    "make_targets",
    "random_crop",
    "make_batch",
    "train",
    "save_engine_model",
    "match_instances",
    "evaluate_engine",
    "load_image",
    "cpu_threads",
    "stain_nuclei",
    "get_recipe",
    "head_loss",
    "total_loss",
    "load_init_weights",
    "labelled_folder_samples",
    "cell_cores",
]

log = logging.getLogger(__name__)

FG_DIST_HEADS = [
    {"name": "foreground", "channels": 1, "activation": "sigmoid"},
    {"name": "distance", "channels": 1, "activation": "relu"},
]


# ============================================================================ recipes


@dataclass(frozen=True)
class HeadLoss:
    """How one output head is trained.

    ``kind``: ``"bce_dice"`` (sigmoid foreground: binary cross-entropy + soft dice),
    ``"distance"`` (relu distance: L1 inside the objects named by ``mask`` (a
    foreground target), down-weighted by ``outside_weight`` elsewhere), or
    ``"ce_dice"`` (softmax classes: cross-entropy + soft dice).
    ``target``: the key of :func:`make_targets`' output. ``phase``: FPF
    training phase (0 = nucleus branch, 1 = cell branch); 0 for single-phase models.
    """

    head: str
    kind: str
    target: str
    weight: float = 1.0
    mask: str | None = None
    outside_weight: float = 0.1
    phase: int = 0


@dataclass(frozen=True)
class Recipe:
    """What a deep engine's network looks like and how each head is trained."""

    engine: str
    inputs: tuple[str, ...]
    heads: tuple[dict, ...]
    arch: str
    losses: tuple[HeadLoss, ...]
    labels: tuple[str, ...]  # instance labels a sample must carry ("nuclei", "cells")
    default_arch_config: dict = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return sum(h["channels"] for h in self.heads)

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(sorted({h.phase for h in self.losses}))

    def arch_config(self, overrides: dict | None = None) -> dict:
        cfg = dict(self.default_arch_config)
        cfg.update(overrides or {})
        if self.arch == "unet":
            cfg.update(in_channels=len(self.inputs), out_channels=self.out_channels)
        return cfg


_NUC_LOSSES = (
    HeadLoss("foreground", "bce_dice", "nucleus_foreground"),
    HeadLoss("distance", "distance", "nucleus_distance", mask="nucleus_foreground"),
)

RECIPES: dict[str, Recipe] = {
    "nuclei": Recipe(
        "nuclei", ("nucleus",), tuple(FG_DIST_HEADS), "unet", _NUC_LOSSES, ("nuclei",), {"base": 16, "depth": 4}
    ),
    "brightfield-unet": Recipe(
        "brightfield-unet",
        ("brightfield",),
        tuple(FG_DIST_HEADS),
        "unet",
        _NUC_LOSSES,
        ("nuclei",),
        {"base": 16, "depth": 4},
    ),
    "cytoplasm": Recipe(
        "cytoplasm",
        ("cytoplasm",),
        ({"name": "classes", "channels": 3, "activation": "softmax"},),
        "unet",
        (HeadLoss("classes", "ce_dice", "classes"),),
        ("nuclei", "cells"),
        {"base": 16, "depth": 4},
    ),
    "fpf": Recipe(
        "fpf",
        ("nucleus", "cytoplasm"),
        (
            {"name": "nucleus_foreground", "channels": 1, "activation": "sigmoid"},
            {"name": "nucleus_distance", "channels": 1, "activation": "relu"},
            {"name": "cell_foreground", "channels": 1, "activation": "sigmoid"},
            {"name": "cell_distance", "channels": 1, "activation": "relu"},
        ),
        "fpf",
        (
            HeadLoss("nucleus_foreground", "bce_dice", "nucleus_foreground", phase=0),
            HeadLoss("nucleus_distance", "distance", "nucleus_distance", mask="nucleus_foreground", phase=0),
            HeadLoss("cell_foreground", "bce_dice", "cell_foreground", phase=1),
            HeadLoss("cell_distance", "distance", "cell_distance", mask="cell_foreground", phase=1),
        ),
        ("nuclei", "cells"),
        {"base": 12, "depth": 4, "nucleus_out": 2, "cell_out": 2},
    ),
}


def get_recipe(engine: str) -> Recipe:
    try:
        return RECIPES[engine]
    except KeyError:
        raise EngineError(f"no training recipe for engine {engine!r} (known: {', '.join(RECIPES)})") from None


# ============================================================================ samples and loaders


@dataclass
class Sample:
    """One training image at the model's training scale.

    Attributes
    ----------
    name : str
        Unique name (file stem, ``synth-<seed>``, ...).
    image : ndarray
        ``(C, Y, X)`` float32, channels in the recipe's input order, normalized
        with :func:`normalize_channels` and rescaled to ``pixel_size_um``.
    labels : dict of str to ndarray
        Instance labels ``(Y, X)`` int32: ``"nuclei"`` and, for whole-cell
        models, ``"cells"`` (a cell has its nucleus's id).
    pixel_size_um : float
        Pixel size of ``image`` (the training pixel size).
    source : str
        Provenance: file path(s) or the synthetic generator call.
    weight : float
        Relative probability of drawing this sample for a batch.
    """

    name: str
    image: np.ndarray
    labels: dict[str, np.ndarray]
    pixel_size_um: float
    source: str = ""
    weight: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[-2:]


def cpu_threads(threads: int | None = None) -> int:
    """``threads``, else the cores this process may use (``sched_getaffinity``)."""
    if threads:
        return max(1, int(threads))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def normalize_channels(image: np.ndarray, normalization: Sequence[float] = (1.0, 99.8)) -> np.ndarray:
    """``(C, Y, X)`` (or ``(Y, X)``) -> float32 with each channel mapped ``(x - p_low) / (p_high - p_low)``.

    The percentiles are taken over every second pixel of the whole field, exactly as
    :meth:`hts.compute.segment.engines._deep.DeepEngine.prepare` does at inference.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[None]
    lo_p, hi_p = normalization
    out = np.empty(img.shape, np.float32)
    for c in range(img.shape[0]):
        lo, hi = np.percentile(img[c][::2, ::2], [lo_p, hi_p])
        out[c] = (img[c].astype(np.float32) - float(lo)) / max(float(hi) - float(lo), 1e-6)
    return out


def _rescale(
    image: np.ndarray, labels: dict[str, np.ndarray], factor: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image (linear, anti-aliased when shrinking) and labels (nearest) scaled by ``factor``."""
    if abs(factor - 1.0) <= 0.02:
        return image, labels
    ny, nx = image.shape[-2:]
    new = (max(8, round(ny * factor)), max(8, round(nx * factor)))
    img = resize(image, (image.shape[0], *new), order=1, anti_aliasing=factor < 1, preserve_range=True).astype(
        np.float32
    )
    labs = {
        k: resize(v, new, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32) for k, v in labels.items()
    }
    return img, labs


def make_sample(
    name: str,
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    *,
    pixel_size_um: float,
    train_pixel_um: float,
    normalization: Sequence[float] = (1.0, 99.8),
    source: str = "",
    weight: float = 1.0,
    meta: dict | None = None,
) -> Sample:
    """A :class:`Sample` from raw pixels: normalized (as at inference), then rescaled to ``train_pixel_um``."""
    img = normalize_channels(image, normalization)
    labs = {k: np.asarray(v).astype(np.int32) for k, v in labels.items()}
    for k, v in labs.items():
        if v.shape != img.shape[-2:]:
            raise EngineError(f"sample {name}: labels {k!r} have shape {v.shape}, the image {img.shape[-2:]}")
    img, labs = _rescale(img, labs, pixel_size_um / train_pixel_um)
    return Sample(name, img, labs, float(train_pixel_um), source, float(weight), dict(meta or {}))


def median_diameter_px(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter of the objects of an instance label image (None when empty)."""
    lab = np.asarray(labels)
    _, areas = np.unique(lab[lab > 0], return_counts=True)
    if not len(areas):
        return None
    return float(np.sqrt(4.0 * np.median(areas) / np.pi))


def load_image(path: str | Path) -> np.ndarray:
    """A 2-D image from a TIFF / PNG / ND2 / ``.npy`` file; RGB(A) images become grayscale
    (:func:`hts.formats.images.read_image`)."""
    return read_image(path)


def nucleus_folder_samples(
    folder: str | Path,
    *,
    names: Sequence[str] | None = None,
    object_diameter_um: float = 12.0,
    train_pixel_um: float = 0.65,
    normalization: Sequence[float] = (1.0, 99.8),
    modalities: Sequence[str] | None = ("fluorescence",),
    invert_colour: bool = True,
    weight: float = 1.0,
) -> list[Sample]:
    """Real nucleus images with instance masks from ``folder`` (``<name>_img.tif`` + ``<name>_mask.tif``).

    Samples are listed by ``folder/manifest.csv`` (columns ``name``, ``modality``,
    ...; without it every ``*_img.tif`` with a mask is taken). ``names`` selects
    some; ``modalities`` keeps rows whose modality starts with one of them (None:
    all). Colour (RGB) images become grayscale, inverted with ``invert_colour``
    (stained nuclei are dark in brightfield). The pixel size of these images is
    unknown: each is rescaled so that its median nucleus diameter is
    ``object_diameter_um`` at ``train_pixel_um`` (images without nuclei keep
    their size).
    """
    folder = Path(folder)
    rows: list[dict[str, str]]
    if (folder / "manifest.csv").is_file():
        with open(folder / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [{"name": p.name[: -len("_img.tif")], "modality": ""} for p in sorted(folder.glob("*_img.tif"))]
    if names is not None:
        wanted = set(names)
        rows = [r for r in rows if r["name"] in wanted]
        missing = wanted - {r["name"] for r in rows}
        if missing:
            raise EngineError(f"{folder}: samples not found: {', '.join(sorted(missing))}")
    if modalities is not None:
        rows = [r for r in rows if any(r.get("modality", "").startswith(m) for m in modalities)]
    out = []
    for r in rows:
        img_path, mask_path = folder / f"{r['name']}_img.tif", folder / f"{r['name']}_mask.tif"
        if not mask_path.is_file():
            continue
        raw = read_image(img_path, rgb="keep")
        colour = raw.ndim == 3
        img = read_image(img_path)
        if colour and invert_colour:
            img = img.max() - img
        mask = read_image(mask_path).astype(np.int32)
        d = median_diameter_px(mask)
        px_est = train_pixel_um if d is None else object_diameter_um / d  # "as if" pixel size
        out.append(
            make_sample(
                r["name"],
                img,
                {"nuclei": mask},
                pixel_size_um=px_est,
                train_pixel_um=train_pixel_um,
                normalization=normalization,
                source=str(img_path),
                weight=weight,
                meta={
                    "modality": r.get("modality", ""),
                    "median_diameter_px": d,
                    "scale": px_est / train_pixel_um,
                    "dataset": r.get("dataset", ""),
                },
            )
        )
    return out


def stain_nuclei(stain: np.ndarray, pixel_size_um: float, **classic_params: Any) -> np.ndarray:
    """Nucleus instance labels of a nuclear-stain image by the classic engine."""
    from hts.compute.segment.engines import engine_class, segment_field

    eng = engine_class("classic")(classic_params or None)
    return segment_field(eng, {"nucleus": stain}, pixel_size_um=pixel_size_um).labels["nuclei"]


def paired_stain_samples(
    image: np.ndarray,
    stain: np.ndarray,
    *,
    name: str,
    pixel_size_um: float | None = None,
    object_diameter_um: float = 12.0,
    train_pixel_um: float = 0.65,
    normalization: Sequence[float] = (1.0, 99.8),
    classic_params: dict | None = None,
    rows: tuple[int, int] | None = None,
    source: str = "",
    weight: float = 1.0,
) -> list[Sample]:
    """A label-free ``image`` (brightfield / phase / cytoplasm) whose nuclei come from a registered ``stain``.

    Nuclei: the classic engine on ``stain``. With ``pixel_size_um=None`` the
    pixel size is estimated: classic runs once at a nominal size, and the pixel
    size is set so that the median nucleus is ``object_diameter_um``. ``rows``
    keeps a band of rows (after segmenting the whole field), e.g. to hold out
    the rest. Returns a list (of one sample) like the other loaders.
    """
    image, stain = np.asarray(image), np.asarray(stain)
    if image.shape != stain.shape:
        raise EngineError(f"{name}: image {image.shape} and stain {stain.shape} differ in shape")
    params = dict(classic_params or {})
    if pixel_size_um is None:
        first = stain_nuclei(stain, train_pixel_um, **params)
        d = median_diameter_px(first)
        pixel_size_um = train_pixel_um if d is None else object_diameter_um / d
    nuclei = stain_nuclei(stain, pixel_size_um, **params)
    img = image
    if rows is not None:
        img, nuclei = image[rows[0] : rows[1]], nuclei[rows[0] : rows[1]]
        # normalize with the band's own percentiles (what inference on that band would do)
    s = make_sample(
        name,
        img,
        {"nuclei": nuclei},
        pixel_size_um=pixel_size_um,
        train_pixel_um=train_pixel_um,
        normalization=normalization,
        source=source,
        weight=weight,
        meta={"pixel_size_um": pixel_size_um, "rows": rows, "targets": "classic engine on the paired stain"},
    )
    return [s]


def mask_folder_samples(
    image_dir: str | Path,
    mask_dir: str | Path,
    *,
    pixel_size_um: float | None,
    cells_dir: str | Path | None = None,
    pattern: str = "*.tif",
    object_diameter_um: float = 12.0,
    train_pixel_um: float = 0.65,
    normalization: Sequence[float] = (1.0, 99.8),
    weight: float = 1.0,
) -> list[Sample]:
    """Images with explicit instance masks: ``image_dir/<stem>.*`` with ``mask_dir/<stem>.*`` (same stem).

    Multi-channel images are ``(C, Y, X)`` stacks in the recipe's input order.
    ``cells_dir`` adds whole-cell masks. ``pixel_size_um=None``: unknown, each
    image is rescaled so that its median nucleus is ``object_diameter_um``.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    out = []
    for p in sorted(image_dir.glob(pattern)):
        masks = sorted(mask_dir.glob(p.stem + ".*"))
        if not masks:
            continue
        img = load_image(p) if p.suffix.lower() == ".nd2" else _read_stack(p)
        labels = {"nuclei": _read_stack(masks[0]).astype(np.int32)}
        if cells_dir is not None:
            cm = sorted(Path(cells_dir).glob(p.stem + ".*"))
            if cm:
                labels["cells"] = _read_stack(cm[0]).astype(np.int32)
        px = pixel_size_um
        if px is None:
            d = median_diameter_px(labels["nuclei"])
            px = train_pixel_um if d is None else object_diameter_um / d
        out.append(
            make_sample(
                p.stem,
                img,
                labels,
                pixel_size_um=px,
                train_pixel_um=train_pixel_um,
                normalization=normalization,
                source=str(p),
                weight=weight,
            )
        )
    return out


def labelled_folder_samples(
    folder: str | Path,
    names: Sequence[str],
    *,
    image_suffix: str,
    labels: dict[str, str],
    pixel_size_um: float,
    train_pixel_um: float = 0.65,
    normalization: Sequence[float] = (1.0, 99.8),
    weight: float = 1.0,
    derive_nuclei: float | None = None,
    meta: dict | None = None,
) -> list[Sample]:
    """Named images of one acquisition with instance labels: ``<name><image_suffix>.tif`` + ``<name><suffix>.tif``.

    ``labels`` maps a label kind (``"nuclei"``, ``"cells"``) to its file suffix
    (e.g. ``{"nuclei": "_mask"}``). Every image of the folder is taken at the one
    ``pixel_size_um`` (a plate's fields share their optics), unlike
    :func:`nucleus_folder_samples`, which rescales each image by its own nuclei.
    ``derive_nuclei``: for whole-cell truth without nucleus truth, the
    ``"nuclei"`` labels become each cell's core, the pixels whose distance to the
    cell's edge is at least that fraction of the cell's largest distance (the
    seeds the cell watershed grows from); recorded in the sample's ``meta``.
    """
    folder = Path(folder)
    out = []
    for name in names:
        img_path = folder / f"{name}{image_suffix}.tif"
        if not img_path.is_file():
            raise EngineError(f"{img_path}: no such image")
        labs = {}
        for kind, suffix in labels.items():
            lp = folder / f"{name}{suffix}.tif"
            if not lp.is_file():
                raise EngineError(f"{lp}: no such label image")
            labs[kind] = read_image(lp, rgb="keep").astype(np.int32)
        m = dict(meta or {})
        if derive_nuclei is not None:
            labs["nuclei"] = cell_cores(labs["cells"], derive_nuclei)
            m["nuclei"] = f"cell cores (distance >= {derive_nuclei} x the cell's largest)"
        img = read_image(img_path, rgb="keep")
        out.append(
            make_sample(
                name,
                img,
                labs,
                pixel_size_um=pixel_size_um,
                train_pixel_um=train_pixel_um,
                normalization=normalization,
                source=str(img_path),
                weight=weight,
                meta={"pixel_size_um": pixel_size_um, **m},
            )
        )
    return out


def cell_cores(cells: np.ndarray, fraction: float) -> np.ndarray:
    """Each cell's core: its pixels at least ``fraction`` of the cell's largest distance from its edge (same ids)."""
    from skimage.segmentation import find_boundaries

    cells = np.asarray(cells).astype(np.int32)
    inner = (cells > 0) & ~find_boundaries(cells, mode="inner")
    dist = ndi.distance_transform_edt(inner)
    n = int(cells.max())
    if n == 0:
        return np.zeros_like(cells)
    peak = ndi.maximum(dist, cells, index=np.arange(n + 1))
    peak = np.asarray(peak, np.float32)
    return np.where((cells > 0) & (dist >= fraction * peak[cells]) & (dist > 0), cells, 0).astype(np.int32)


def _read_stack(path: Path) -> np.ndarray:
    return read_image(path, rgb="keep" if path.suffix.lower() in (".tif", ".tiff") else "gray")


def split_samples(
    items: Sequence[Any], fractions: Sequence[float], *, seed: int = 0, key: Callable[[Any], str] = str
) -> list[list[Any]]:
    """Deterministic split of ``items`` into parts of the given fractions (the last part takes the rest).

    The order is a seeded permutation of the items sorted by ``key``, so the
    split does not depend on the order the items come in.
    """
    items = sorted(items, key=key)
    order = np.random.default_rng(seed).permutation(len(items))
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        n = len(items) - start if i == len(fractions) - 1 else int(round(frac * len(items)))
        parts.append([items[j] for j in order[start : start + n]])
        start += n
    return parts


# ============================================================================ targets and augmentation


def make_targets(
    recipe: Recipe, labels: dict[str, np.ndarray], *, nucleus_radius_px: float, cell_radius_px: float | None = None
) -> dict[str, np.ndarray]:
    """The training targets of ``recipe`` from instance labels (definitions: :mod:`hts.compute.train.targets`).

    Keys: ``nucleus_foreground``, ``nucleus_distance`` (all recipes with nuclei
    heads), ``cell_foreground``, ``cell_distance`` (fpf), ``classes`` (cytoplasm).
    """
    needed = {hl.target for hl in recipe.losses} | {hl.mask for hl in recipe.losses if hl.mask}
    out: dict[str, np.ndarray] = {}
    if needed & {"nucleus_foreground", "nucleus_distance"}:
        out["nucleus_foreground"], out["nucleus_distance"] = foreground_distance(
            labels["nuclei"], radius_px=nucleus_radius_px
        )
    if needed & {"cell_foreground", "cell_distance"}:
        out["cell_foreground"], out["cell_distance"] = foreground_distance(
            labels["cells"], radius_px=cell_radius_px or 2.0 * nucleus_radius_px
        )
    if "classes" in needed:
        out["classes"] = three_class(labels["nuclei"], labels["cells"])
    return {k: v for k, v in out.items() if k in needed}


@dataclass
class Augment:
    """Random augmentation suited to microscopy (every range is sampled uniformly; probabilities per crop).

    Geometric (image and labels together, before the targets are computed):
    flips, 90° rotations, scale jitter (``scale``). Intensity (image only, per
    channel): gain, offset, gamma (on the positive part), Gaussian blur (sigma
    px, probability ``blur_p``), additive Gaussian noise (std, probability
    ``noise_p``) and inversion (``invert_p``; for transmitted-light channels
    whose contrast sign varies). ``Augment.none()`` turns everything off.

    Transmitted-light modalities (off by default; :meth:`label_free` turns them on):
    uneven illumination (``illumination_p``: the crop multiplied by a smooth
    random field of relative amplitude ``illumination``), DIC-like relief
    (``relief_p``: a directional derivative of the smoothed image, at a random
    angle, added with a random weight, as DIC's shear direction varies between
    microscopes) and phase-contrast-like halos (``halo_p``: the difference to a
    wide Gaussian blur added back, which brightens or darkens object rims).
    """

    flips: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.8, 1.2)
    gain: tuple[float, float] = (0.75, 1.35)
    offset: tuple[float, float] = (-0.08, 0.08)
    gamma: tuple[float, float] = (0.75, 1.35)
    blur: tuple[float, float] = (0.3, 1.5)
    blur_p: float = 0.25
    noise: tuple[float, float] = (0.005, 0.06)
    noise_p: float = 0.4
    invert_p: float = 0.0
    illumination: tuple[float, float] = (0.1, 0.5)
    illumination_p: float = 0.0
    relief: tuple[float, float] = (0.3, 1.5)
    relief_p: float = 0.0
    halo: tuple[float, float] = (-0.6, 1.0)
    halo_p: float = 0.0

    @classmethod
    def none(cls) -> Augment:
        return cls(
            flips=False,
            rot90=False,
            scale=(1.0, 1.0),
            gain=(1.0, 1.0),
            offset=(0.0, 0.0),
            gamma=(1.0, 1.0),
            blur_p=0.0,
            noise_p=0.0,
            invert_p=0.0,
        )

    @classmethod
    def label_free(cls) -> Augment:
        """The augmentation of the transmitted-light engines: contrast sign, defocus, illumination, DIC relief, halos, scale."""
        return cls(
            scale=(0.7, 1.4), blur=(0.5, 2.5), blur_p=0.3, invert_p=0.2, illumination_p=0.5, relief_p=0.2, halo_p=0.2
        )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """A smooth random multiplicative field ``1 + a * f`` (``f`` in [-1, 1]): a tilted plane plus a broad Gaussian bump."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    yy, xx = yy / max(ny - 1, 1) - 0.5, xx / max(nx - 1, 1) - 0.5
    gy, gx = rng.uniform(-1, 1, 2)
    cy, cx = rng.uniform(-0.7, 0.7, 2)
    w = float(rng.uniform(0.3, 0.9))
    f = gy * yy + gx * xx + float(rng.uniform(-1, 1)) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
    f = f / max(float(np.abs(f).max()), 1e-6)
    return (1.0 + amplitude * f).astype(np.float32)


def _pad_to(a: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Mirror-pad the last two axes to at least ``ny`` x ``nx`` (repeatedly, for tiny images).

    Image and labels are mirrored alike, so mirrored objects stay consistent with their labels.
    """
    while a.shape[-2] < ny or a.shape[-1] < nx:
        need_y, need_x = max(0, ny - a.shape[-2]), max(0, nx - a.shape[-1])
        sy, sx = min(need_y, a.shape[-2] - 1), min(need_x, a.shape[-1] - 1)
        pad = [(0, 0)] * (a.ndim - 2) + [(sy // 2, sy - sy // 2), (sx // 2, sx - sx // 2)]
        a = np.pad(a, pad, mode="symmetric")
    return a


def random_crop(
    sample: Sample,
    size: int,
    rng: np.random.Generator,
    aug: Augment,
    *,
    margin: int = 16,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A ``size`` x ``size`` augmented crop: (image ``(C, size, size)``, labels of a ``size + 2 * margin`` window).

    The labels keep a ``margin`` on every side so that :func:`make_targets` sees
    objects cut by the crop whole enough; :func:`make_batch` trims it after
    computing the targets.
    """
    s = float(rng.uniform(*aug.scale)) if aug.scale[0] != aug.scale[1] else 1.0
    win = size + 2 * margin
    src = int(math.ceil(win / s))
    img, labs = sample.image, sample.labels
    if img.shape[-2] < src or img.shape[-1] < src:
        img = _pad_to(img, src, src)
        labs = {k: _pad_to(v, src, src) for k, v in labs.items()}
    y0 = int(rng.integers(0, img.shape[-2] - src + 1))
    x0 = int(rng.integers(0, img.shape[-1] - src + 1))
    im = img[:, y0 : y0 + src, x0 : x0 + src]
    lb = {k: v[y0 : y0 + src, x0 : x0 + src] for k, v in labs.items()}
    if src != win:
        im = resize(im, (im.shape[0], win, win), order=1, anti_aliasing=s < 1, preserve_range=True).astype(np.float32)
        lb = {
            k: resize(v, (win, win), order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
            for k, v in lb.items()
        }
    k = int(rng.integers(0, 4)) if aug.rot90 else 0
    fy, fx = (bool(rng.integers(0, 2)), bool(rng.integers(0, 2))) if aug.flips else (False, False)

    def geo(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        if fy:
            a = a[..., ::-1, :]
        if fx:
            a = a[..., ::-1]
        return np.ascontiguousarray(a)

    im, lb = geo(im), {k2: geo(v) for k2, v in lb.items()}
    im = im[:, margin : margin + size, margin : margin + size].copy()
    for c in range(im.shape[0]):
        x = im[c]
        if aug.invert_p and rng.random() < aug.invert_p:
            x = 1.0 - x
        if aug.relief_p and rng.random() < aug.relief_p:
            t = float(rng.uniform(0, 2 * np.pi))
            sm = ndi.gaussian_filter(x, float(rng.uniform(0.7, 2.0)))
            d = np.cos(t) * ndi.sobel(sm, axis=-1) + np.sin(t) * ndi.sobel(sm, axis=-2)
            x = x + float(rng.uniform(*aug.relief)) * d / 4.0
        if aug.halo_p and rng.random() < aug.halo_p:
            x = x + float(rng.uniform(*aug.halo)) * (x - ndi.gaussian_filter(x, float(rng.uniform(3.0, 10.0))))
        if aug.illumination_p and rng.random() < aug.illumination_p:
            x = x * _smooth_field(rng, x.shape, float(rng.uniform(*aug.illumination)))
        g = float(rng.uniform(*aug.gamma))
        if g != 1.0:
            x = np.sign(x) * np.abs(x) ** g
        x = x * float(rng.uniform(*aug.gain)) + float(rng.uniform(*aug.offset))
        if aug.blur_p and rng.random() < aug.blur_p:
            x = ndi.gaussian_filter(x, float(rng.uniform(*aug.blur)))
        if aug.noise_p and rng.random() < aug.noise_p:
            x = x + rng.normal(0.0, float(rng.uniform(*aug.noise)), x.shape).astype(np.float32)
        im[c] = x
    return im.astype(np.float32), lb


def make_batch(
    recipe: Recipe,
    samples: Sequence[Sample],
    rng: np.random.Generator,
    *,
    batch_size: int,
    size: int,
    aug: Augment,
    nucleus_radius_px: float,
    cell_radius_px: float | None = None,
    margin: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch of augmented crops: images ``(N, C, size, size)`` and ``{target: (N, K, size, size)}``."""
    w = np.array([s.weight for s in samples], float)
    idx = rng.choice(len(samples), size=batch_size, p=w / w.sum())
    m = margin if margin is not None else int(math.ceil(1.5 * (cell_radius_px or 2 * nucleus_radius_px)))
    xs, ts = [], []
    for i in idx:
        im, lb = random_crop(samples[i], size, rng, aug, margin=m)
        tg = make_targets(recipe, lb, nucleus_radius_px=nucleus_radius_px, cell_radius_px=cell_radius_px)
        xs.append(im)
        ts.append({k: (v if v.ndim == 3 else v[None])[:, m : m + size, m : m + size] for k, v in tg.items()})
    x = torch.from_numpy(np.stack(xs))
    targets = {k: torch.from_numpy(np.ascontiguousarray(np.stack([t[k] for t in ts]))) for k in ts[0]}
    return x, targets


def _val_batches(
    recipe: Recipe,
    samples: Sequence[Sample],
    *,
    size: int,
    crops_per_sample: int,
    seed: int,
    batch_size: int,
    nucleus_radius_px: float,
    cell_radius_px: float | None,
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Fixed validation crops (no augmentation), batched."""
    rng = np.random.default_rng([seed, 424242])
    items = []
    m = int(math.ceil(1.5 * (cell_radius_px or 2 * nucleus_radius_px)))
    for s in samples:
        for _ in range(crops_per_sample):
            im, lb = random_crop(s, size, rng, Augment.none(), margin=m)
            tg = make_targets(recipe, lb, nucleus_radius_px=nucleus_radius_px, cell_radius_px=cell_radius_px)
            items.append(
                (im, {k: (v if v.ndim == 3 else v[None])[:, m : m + size, m : m + size] for k, v in tg.items()})
            )
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        x = torch.from_numpy(np.stack([c[0] for c in chunk]))
        t = {k: torch.from_numpy(np.ascontiguousarray(np.stack([c[1][k] for c in chunk]))) for k in chunk[0][1]}
        out.append((x, t))
    return out


# ============================================================================ losses


def _head_slices(heads: Sequence[dict]) -> dict[str, slice]:
    out, c = {}, 0
    for h in heads:
        out[h["name"]] = slice(c, c + h["channels"])
        c += h["channels"]
    return out


def _soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    return 1.0 - ((2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def head_loss(hl: HeadLoss, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of one head: ``logits`` are that head's raw channels ``(N, K, H, W)``."""
    t = targets[hl.target]
    if hl.kind == "bce_dice":
        return F.binary_cross_entropy_with_logits(logits, t) + _soft_dice(torch.sigmoid(logits), t)
    if hl.kind == "distance":
        pred = torch.relu(logits)
        inside = targets[hl.mask] if hl.mask else (t > 0).float()
        w = inside + hl.outside_weight * (1.0 - inside)
        return (w * (pred - t).abs()).sum() / w.sum().clamp_min(1.0)
    if hl.kind == "ce_dice":
        return F.cross_entropy(logits, t.argmax(1)) + _soft_dice(torch.softmax(logits, 1), t)
    raise ValueError(f"unknown loss kind {hl.kind!r}")


def total_loss(
    recipe: Recipe, logits: torch.Tensor, targets: dict[str, torch.Tensor], phase: int = 0
) -> tuple[torch.Tensor, dict[str, float]]:
    sl = _head_slices(recipe.heads)
    parts: dict[str, float] = {}
    total = logits.new_zeros(())
    for hl in recipe.losses:
        if hl.phase != phase:
            continue
        v = head_loss(hl, logits[:, sl[hl.head]], targets)
        parts[hl.head] = float(v.detach())
        total = total + hl.weight * v
    return total, parts


# ============================================================================ training loop


@dataclass
class TrainConfig:
    """Everything that shapes a training run (recorded in the checkpoint and the model's config.json).

    Attributes
    ----------
    engine : str
        A key of :data:`RECIPES`.
    arch_config : dict
        Overrides of the recipe's architecture (``base``, ``depth``, ``norm``, ...).
    pixel_size_um : float
        Training pixel size (samples must already be at it: the loaders rescale).
    object_diameter_um : float
        Typical object diameter the engine's halo is sized from; the nucleus
        distance target uses ``nucleus_diameter_um`` (default: this).
    nucleus_diameter_um, cell_diameter_um : float, optional
        Radii of the nucleus and cell distance targets (``diameter / 2 / pixel_size_um``).
    normalization : (float, float)
        Percentiles of the input normalization (recorded for inference).
    steps : int
        Optimizer steps in all (FPF: split between the phases by ``phase_fractions``).
    batch_size, crop_sizes
        Crops per step; crop sides drawn per step from ``crop_sizes`` (multiples of the net's ``multiple``).
    lr, weight_decay, warmup
        Adam; the learning rate warms up linearly over ``warmup`` steps, then decays with a cosine to 5 %.
    val_every, patience
        Validation every ``val_every`` steps; stop after ``patience`` validations without improvement.
    val_crop, val_crops_per_sample
        Fixed validation crops.
    seed : int
        Seeds weights, sampling and augmentation.
    threads : int, optional
        torch CPU threads (default: the cores this process may use).
    time_limit_s : float, optional
        Stop (keeping the best weights) once the run has taken this long.
    """

    engine: str
    arch_config: dict = field(default_factory=dict)
    pixel_size_um: float = 0.65
    object_diameter_um: float = 12.0
    nucleus_diameter_um: float | None = None
    cell_diameter_um: float | None = None
    normalization: tuple[float, float] = (1.0, 99.8)
    steps: int = 1000
    batch_size: int = 8
    crop_sizes: tuple[int, ...] = (128, 144, 160, 176, 192)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 30
    val_every: int = 50
    patience: int = 6
    val_crop: int = 192
    val_crops_per_sample: int = 2
    phase_fractions: tuple[float, ...] = (0.4, 0.6)
    seed: int = 0
    threads: int | None = None
    time_limit_s: float | None = None
    augment: Augment = field(default_factory=Augment)

    @property
    def recipe(self) -> Recipe:
        return get_recipe(self.engine)

    @property
    def nucleus_radius_px(self) -> float:
        return (self.nucleus_diameter_um or self.object_diameter_um) / 2.0 / self.pixel_size_um

    @property
    def cell_radius_px(self) -> float | None:
        return None if self.cell_diameter_um is None else self.cell_diameter_um / 2.0 / self.pixel_size_um

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"] = dataclasses.asdict(self.augment)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        aug = d.pop("augment", None)
        for k in ("normalization", "crop_sizes", "phase_fractions"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**d)
        if aug:
            cfg.augment = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        return cfg

    def key(self) -> str:
        """Hash of the settings that must match for a checkpoint to be resumed (time limit, threads excluded)."""
        d = self.to_dict()
        d.pop("time_limit_s", None)
        d.pop("threads", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained network (best weights, eval mode) and its metrics."""

    model: torch.nn.Module
    config: TrainConfig
    metrics: dict
    history: list[dict]


def _build(cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    recipe = cfg.recipe
    arch_config = recipe.arch_config(cfg.arch_config)
    torch.manual_seed(cfg.seed)
    return build_model(recipe.arch, arch_config), arch_config


def _lr_at(cfg: TrainConfig, step: int, start: int, n: int) -> float:
    i = step - start
    if i < cfg.warmup:
        return cfg.lr * (i + 1) / cfg.warmup
    frac = min(1.0, (i - cfg.warmup) / max(1, n - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _phase_bounds(cfg: TrainConfig) -> list[tuple[int, int, int]]:
    """(phase, first step, number of steps) per phase of the recipe."""
    phases = cfg.recipe.phases
    if len(phases) == 1:
        return [(phases[0], 0, cfg.steps)]
    fr = np.array(cfg.phase_fractions[: len(phases)], float)
    ns = np.floor(fr / fr.sum() * cfg.steps).astype(int)
    ns[-1] = cfg.steps - ns[:-1].sum()
    starts = np.concatenate([[0], np.cumsum(ns)[:-1]])
    return [(p, int(s), int(n)) for p, s, n in zip(phases, starts, ns)]


def _forward(model: torch.nn.Module, x: torch.Tensor, recipe: Recipe, phase: int) -> torch.Tensor:
    """Logits of all heads; in FPF phase 0 only the nucleus branch runs (cell channels are zeros)."""
    if recipe.arch == "fpf" and phase == 0:
        nuc, _ = model.nucleus(x[:, 0:1])
        return torch.cat([nuc, nuc.new_zeros((nuc.shape[0], model.cell_out, *nuc.shape[2:]))], 1)
    return model(x)


def _prepare_phase(model: torch.nn.Module, recipe: Recipe, phase: int) -> None:
    if recipe.arch == "fpf" and phase >= 1 and not model.nucleus_frozen:
        model.freeze_nucleus()


def _state_copy(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_init_weights(model: torch.nn.Module, init: str | Path) -> None:
    """Load starting weights into ``model``: an engine folder or a ``.safetensors`` file (all keys must fit).

    Raises
    ------
    EngineError
        No such file, or weights that do not fit the network.
    """
    from safetensors.torch import load_file

    path = Path(init)
    if path.is_dir():
        from hts.compute.segment.backends import ModelSpec

        spec = ModelSpec.from_dir(path)
        spec.sha256  # noqa: B018 - verifies the file
        path = spec.weights_path
    if not path.is_file():
        raise EngineError(f"--init {init}: no such weights file or engine folder")
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EngineError(f"--init {init}: weights do not fit the network ({str(e).splitlines()[0]})") from None
    log.info("starting from weights %s", path)


def train(
    config: TrainConfig,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] = (),
    *,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    callback: Callable[[dict], Any] | None = None,
    init: str | Path | None = None,
) -> TrainResult:
    """Train ``config.engine``'s network on ``train_samples``; validate on ``val_samples``.

    Parameters
    ----------
    config : TrainConfig
    train_samples, val_samples : sequence of Sample
        At ``config.pixel_size_um``, channels in the recipe's input order, with
        the labels the recipe needs. Without validation samples there is no
        early stopping and the last weights are kept.
    checkpoint : path, optional
        The run's checkpoint file, written at every validation (and at the end):
        model, optimizer, step, best weights, history, RNG-free state (the batch
        of step ``i`` is drawn from a generator seeded by ``(seed, phase, i)``,
        so a resumed run draws the same batches as an uninterrupted one).
    resume : bool
        Continue from ``checkpoint`` when it exists and was written with the same
        settings (:meth:`TrainConfig.key`); otherwise start afresh.
    callback : callable, optional
        Called with a dict per logged step (``{"event": "step"|"val"|"phase"|"done",
        "step", "steps", "loss", "val_loss", "lr", "elapsed_s", ...}``).
    init : path, optional
        Starting weights (fine-tuning): an engine folder (its ``config.json``
        names the weights, checksum verified) or a ``.safetensors`` file of the
        same architecture. A resumed checkpoint takes precedence.

    Returns
    -------
    TrainResult
        ``model`` holds the best (lowest validation loss) weights of the last phase, in eval mode.
    """
    recipe = config.recipe
    if not train_samples:
        raise EngineError(f"train {config.engine}: no training samples")
    for s in [*train_samples, *val_samples]:
        if s.image.shape[0] != len(recipe.inputs):
            raise EngineError(
                f"sample {s.name}: {s.image.shape[0]} channels, {config.engine} takes {len(recipe.inputs)} ({', '.join(recipe.inputs)})"
            )
        missing = [k for k in recipe.labels if k not in s.labels]
        if missing:
            raise EngineError(f"sample {s.name}: missing labels {missing} (needed by {config.engine})")
        if abs(s.pixel_size_um - config.pixel_size_um) > 1e-6:
            raise EngineError(
                f"sample {s.name}: pixel size {s.pixel_size_um} µm, the run trains at {config.pixel_size_um} µm"
            )
    threads = cpu_threads(config.threads)
    torch.set_num_threads(threads)
    model, arch_config = _build(config)
    if init is not None:
        load_init_weights(model, init)
    m = getattr(model, "multiple", 1)
    bad = [c for c in (*config.crop_sizes, config.val_crop) if c % m]
    if bad:
        raise EngineError(f"crop sizes {bad} are not multiples of the network's {m}")
    bounds = _phase_bounds(config)
    ckpt_path = Path(checkpoint) if checkpoint else None
    state: dict[str, Any] = {"step": 0, "phase_index": 0, "history": [], "best": {}, "elapsed_s": 0.0}
    opt_state = None
    if ckpt_path and resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("key") == config.key():
            if ck.get("frozen"):
                model.freeze_nucleus()
            model.load_state_dict(ck["model"])
            opt_state = ck["optimizer"]
            state = {k: ck[k] for k in ("step", "phase_index", "history", "best", "elapsed_s")}
            state["best"] = {int(k): v for k, v in state["best"].items()}
            log.info("resuming %s from %s at step %d", config.engine, ckpt_path, state["step"])
        else:
            log.warning("checkpoint %s was written with other settings; starting afresh", ckpt_path)
    t0 = time.monotonic() - float(state["elapsed_s"])
    history: list[dict] = state["history"]
    emit = callback or (lambda ev: None)
    val_cache: dict[int, list] = {}
    stopped_early = timed_out = False

    def val_loss(phase: int) -> float | None:
        if not val_samples:
            return None
        if phase not in val_cache:
            val_cache[phase] = _val_batches(
                recipe,
                val_samples,
                size=config.val_crop,
                crops_per_sample=config.val_crops_per_sample,
                seed=config.seed,
                batch_size=config.batch_size,
                nucleus_radius_px=config.nucleus_radius_px,
                cell_radius_px=config.cell_radius_px,
            )
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for x, t in val_cache[phase]:
                v, _ = total_loss(recipe, _forward(model, x, recipe, phase), t, phase)
                tot += float(v) * len(x)
                n += len(x)
        model.train()
        return tot / max(n, 1)

    def save_ckpt(phase_index: int, with_optimizer: bool = True) -> None:
        if not ckpt_path:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(
            {
                "key": config.key(),
                "config": config.to_dict(),
                "arch_config": arch_config,
                "model": model.state_dict(),
                "optimizer": opt.state_dict() if with_optimizer else None,
                "step": step,
                "phase_index": phase_index,
                "frozen": bool(getattr(model, "nucleus_frozen", False)),
                "history": history,
                "best": state["best"],
                "elapsed_s": time.monotonic() - t0,
            },
            tmp,
        )
        os.replace(tmp, ckpt_path)

    step = int(state["step"])
    opt = None
    for pi, (phase, start, n) in enumerate(bounds):
        if pi < state["phase_index"]:
            continue
        _prepare_phase(model, recipe, phase)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if opt_state is not None and pi == state["phase_index"] and step > start:
            opt.load_state_dict(opt_state)
        best = state["best"].get(pi, {"val_loss": math.inf, "step": None, "weights": None, "bad": 0})
        state["best"][pi] = best
        if len(bounds) > 1:
            emit({"event": "phase", "phase": phase, "step": step, "steps": config.steps})
        model.train()
        if step < start:
            step = start
        stop_phase = False
        while step < start + n and not stop_phase:
            lr = _lr_at(config, step, start, n)
            for g in opt.param_groups:
                g["lr"] = lr
            rng = np.random.default_rng([config.seed, phase, step])
            size = int(rng.choice(config.crop_sizes))
            x, t = make_batch(
                recipe,
                train_samples,
                rng,
                batch_size=config.batch_size,
                size=size,
                aug=config.augment,
                nucleus_radius_px=config.nucleus_radius_px,
                cell_radius_px=config.cell_radius_px,
            )
            loss, parts = total_loss(recipe, _forward(model, x, recipe, phase), t, phase)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            rec = {
                "event": "step",
                "step": step,
                "steps": config.steps,
                "phase": phase,
                "loss": float(loss.detach()),
                "parts": parts,
                "lr": lr,
                "elapsed_s": round(time.monotonic() - t0, 2),
            }
            history.append({k: rec[k] for k in ("step", "phase", "loss", "lr", "elapsed_s")})
            emit(rec)
            last = step == start + n
            over = config.time_limit_s is not None and time.monotonic() - t0 > config.time_limit_s
            if step % config.val_every == 0 or last or over:
                vl = val_loss(phase)
                improved = vl is None or vl < best["val_loss"] - 1e-4
                if improved:
                    best.update(val_loss=math.inf if vl is None else vl, step=step, weights=_state_copy(model), bad=0)
                else:
                    best["bad"] += 1
                history.append(
                    {"step": step, "phase": phase, "val_loss": vl, "elapsed_s": round(time.monotonic() - t0, 2)}
                )
                emit(
                    {
                        "event": "val",
                        "step": step,
                        "steps": config.steps,
                        "phase": phase,
                        "val_loss": vl,
                        "best_val_loss": best["val_loss"],
                        "best_step": best["step"],
                        "elapsed_s": round(time.monotonic() - t0, 2),
                    }
                )
                if vl is not None and best["bad"] >= config.patience:
                    stopped_early = stop_phase = True
                if over:
                    timed_out = stop_phase = True
                save_ckpt(pi)
        if best["weights"] is not None:
            model.load_state_dict(best["weights"])
        if timed_out:  # the checkpoint written at the last validation lets a later call continue this phase
            break
        state["phase_index"] = pi + 1
        step = max(step, start + n)
        save_ckpt(pi + 1, with_optimizer=False)
    model.eval()
    elapsed = time.monotonic() - t0
    train_losses = [h["loss"] for h in history if "loss" in h]
    metrics = {
        "engine": config.engine,
        "steps_run": step,
        "steps": config.steps,
        "best": {
            str(bounds[pi][0]): {"val_loss": b["val_loss"] if math.isfinite(b["val_loss"]) else None, "step": b["step"]}
            for pi, b in state["best"].items()
        },
        "final_train_loss": float(np.mean(train_losses[-20:])) if train_losses else None,
        "stopped_early": stopped_early,
        "timed_out": timed_out,
        "elapsed_s": round(elapsed, 1),
        "threads": threads,
        "parameters": count_parameters(model),
        "train_samples": len(train_samples),
        "val_samples": len(val_samples),
    }
    emit({"event": "done", **metrics})
    return TrainResult(model=model, config=config, metrics=metrics, history=history)


def save_engine_model(
    path: str | Path,
    result: TrainResult | torch.nn.Module,
    config: TrainConfig | None = None,
    *,
    name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write an engine model folder (``model.safetensors`` + ``config.json``) that the deep engine loads.

    ``config.json`` gets the keys the engines read: ``inputs``, ``normalization``,
    ``pixel_size_um``, ``object_diameter_um`` (and the nucleus / cell target
    diameters), besides ``extra``.
    """
    if isinstance(result, TrainResult):
        model, config = result.model, result.config
    else:
        model = result
    if config is None:
        raise EngineError("save_engine_model: the TrainConfig is needed")
    recipe = config.recipe
    arch_config = recipe.arch_config(config.arch_config)
    ex = {
        "inputs": list(recipe.inputs),
        "normalization": list(config.normalization),
        "pixel_size_um": config.pixel_size_um,
        "object_diameter_um": config.object_diameter_um,
        "nucleus_diameter_um": config.nucleus_diameter_um or config.object_diameter_um,
    }
    if config.cell_diameter_um is not None:
        ex["cell_diameter_um"] = config.cell_diameter_um
    ex.update(extra or {})
    return save_model_dir(
        path,
        model,
        name=name or config.engine,
        arch=recipe.arch,
        arch_config=arch_config,
        heads=[dict(h) for h in recipe.heads],
        in_channels=len(recipe.inputs),
        extra=ex,
    )


# ============================================================================ evaluation


def evaluate_engine(
    engine: Any,
    items: Sequence[tuple[dict[str, np.ndarray], np.ndarray, float]],
    *,
    output: str = "nuclei",
    thresholds: Sequence[float] = (0.5, 0.75),
) -> dict:
    """Segment each ``(images by role, truth labels, pixel size µm)`` with ``engine`` and match ``output``.

    ``engine`` is an engine instance or a registered engine name (then built
    with the torch backend). Returns pooled metrics (:func:`match_instances`
    counts summed over the images) plus ``per_image``.
    """
    from hts.compute.segment.engines import engine_class, segment_field

    if isinstance(engine, str):
        cls = engine_class(engine)
        engine = cls(backend="torch") if "torch" in getattr(cls, "backends", ()) else cls()
    per = []
    for images, truth, px in items:
        res = segment_field(engine, images, pixel_size_um=px)
        per.append(match_instances(truth, res.labels[output], thresholds))
    out = summarize(per, thresholds)
    out["per_image"] = per
    return out


# ============================================================================ command line


def parse_pair(spec: str) -> tuple[str, str, float | None, tuple[int, int] | None]:
    """``IMAGE,STAIN[,PIXEL_UM][,ROW0:ROW1]``"""
    parts = spec.split(",")
    if len(parts) < 2:
        raise SystemExit(f"--pair {spec!r}: expected IMAGE,STAIN[,PIXEL_UM|auto][,ROW0:ROW1]")
    px = None
    rows = None
    for p in parts[2:]:
        if ":" in p:
            a, b = p.split(":")
            rows = (int(a), int(b))
        elif p != "auto":
            px = float(p)
    return parts[0], parts[1], px, rows


def load_pair(image: str, stain: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Two files, or one ND2 file given twice as ``FILE.nd2#CHANNEL`` (channel name or index; ``#~CHANNEL``: inverted)."""

    def one(spec: str) -> tuple[np.ndarray, float | None]:
        path, _, ch = spec.partition("#")
        if path.lower().endswith(".nd2"):
            import nd2

            with nd2.ND2File(path) as f:
                arr = np.asarray(f.asarray())
                names = [c.channel.name for c in f.metadata.channels]
                px = float(f.voxel_size().x)
            inv = ch.startswith("~")
            ch = ch[1:] if inv else ch
            idx = names.index(ch) if ch in names else int(ch)
            return (arr[idx].max() - arr[idx] if inv else arr[idx]), px
        return load_image(path), None

    a, pa = one(image)
    b, _ = one(stain)
    return a, b, pa


def format_event(ev: dict) -> str:
    if ev["event"] == "step":
        return f"step {ev['step']}/{ev['steps']} phase {ev['phase']} loss {ev['loss']:.4f} lr {ev['lr']:.2e} t {ev['elapsed_s']:.0f}s"
    if ev["event"] == "val":
        vl = ev["val_loss"]
        return f"  val step {ev['step']}: {vl if vl is None else round(vl, 4)} (best {ev['best_val_loss']:.4f} @ {ev['best_step']}) t {ev['elapsed_s']:.0f}s"
    if ev["event"] == "phase":
        return f"phase {ev['phase']} from step {ev['step']}"
    return "done " + json.dumps({k: v for k, v in ev.items() if k != "event"})
