"""Train: a deep engine's network on a lab's own images, written as an engine folder (``hts train``).

:func:`train_engine` takes the engine, the output folder, a :class:`TrainData`
(where the examples come from, their scale and split) and a
:class:`TrainOptions` (length and seed of the run, resume / overwrite, training
settings); training from a plate also needs the
:class:`~hts.config.Workspace` whose catalog holds it.

Training data (either or both):

- **A plate** already ingested (``plate``): fields of the plate store (time
  point 0, Z max-projected, as ``hts segment`` sees them), the engine's input
  channels chosen as ``hts segment`` chooses them (``channels`` or guessed
  from the channel names), and the targets **derived from a paired stain
  channel of the same fields** (``labels_from``, e.g. ``DAPI``): nuclei by the
  ``classic`` engine on that channel (:func:`hts.compute.train.training.stain_nuclei`);
  for whole-cell engines (``cytoplasm``, ``fpf``) cells by the classic engine
  grown from those nuclei over the engine's cytoplasm channel. So a screen that
  imaged brightfield and DAPI once can train ``brightfield-unet`` without any
  manual annotation, then drop the stain. At most ``max_fields`` fields are used
  (a seeded, spread-out choice).
- **Instance masks** (``images`` + ``masks``, optional ``cells``): image files
  (TIFF / PNG / ``.npy`` / ND2; multi-channel as ``(C, Y, X)`` in the engine's
  input order) paired by file stem with label images (0 = background).

Scale: the median target nucleus is measured in µm (where the pixel size is
known: the plate's, or ``pixel_size_um`` for mask images); the training pixel
size is chosen so that it spans ~18.5 px, as for the shipped models (12 µm at
0.65 µm/px), unless ``train_pixel_um`` is given. Both go into the folder's
``config.json`` (``pixel_size_um``, ``object_diameter_um``,
``nucleus_diameter_um``, ``cell_diameter_um``), so ``hts segment`` rescales
any plate to that scale. Mask images without a pixel size are rescaled so that
their median nucleus has that same measured (or, with nothing measured, 12 µm) size.

The loop is :func:`hts.compute.train.training.train`: augmentation, a validation
split of the fields / images (``val_fraction``, seeded), early stopping on the
validation loss (best weights kept), a checkpoint ``OUT/checkpoint.pt`` written
at every validation (``resume`` continues an interrupted run from it; it is
removed once a run ends, unless the time limit stopped it). ``minutes`` without
``steps`` sizes the run to the time: a few timed steps estimate the step cost.

The output folder is an engine folder that ``hts segment --engine OUT`` (or
``engine_class(OUT)``) loads: ``model.safetensors``, ``config.json``,
``CARD.md`` (a stub filled with the run's facts), ``training.json`` (the run),
``manifest.json`` (every training and validation item) and ``metrics.json``
(the trained engine, post-processing included, against the validation targets).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hts import __version__
from hts.errors import EngineError
from hts.formats.images import read_image

if TYPE_CHECKING:
    from hts.config import Workspace

__all__ = ["TrainData", "TrainOptions", "TrainReport", "train_engine", "PX_PER_NUCLEUS"]

#: Median nucleus diameter in training pixels (the shipped models: 12 µm at 0.65 µm/px).
PX_PER_NUCLEUS = 12.0 / 0.65
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".nd2")


@dataclass(frozen=True)
class TrainData:
    """Where the training examples come from (a plate, mask images, or both), their scale and their split.

    Checked when made: :class:`~hts.errors.EngineError` with the same one-line
    messages as the ``hts train`` options they stand for.

    Parameters
    ----------
    plate : str, optional
        An ingested plate to train on (name or id) ...
    labels_from : str, optional
        ... with targets derived from this stain channel of the same fields (needed with ``plate``).
    wells : str, optional
        With ``plate``: wells to train on (``"A01:H12"``, ``"B,C05"``); default all.
    channels : mapping of str to str, optional
        With ``plate``: which plate channel plays which input role (``{"brightfield": "Mono"}``);
        default guessed from the channel names, as ``hts segment`` does.
    images, masks : path, optional
        Together: a folder of images and a folder of their instance masks (nuclei), paired by file stem.
    cells : path, optional
        With ``images``: a folder of whole-cell masks (``cytoplasm``, ``fpf``).
    pixel_size_um : float, optional
        µm per pixel of the training images (plates: overrides the metadata; masks:
        default unknown, scaled by nucleus size).
    train_pixel_um : float, optional
        The training pixel size; default chosen so the median nucleus spans
        :data:`PX_PER_NUCLEUS` pixels.
    max_fields : int
        With ``plate``: use at most this many fields (a seeded spread).
    val_fraction : float
        Share of the items held out for validation, in ``[0, 1)``.
    classic_params : mapping, optional
        Classic-engine parameters for deriving the targets from the stain.
    """

    plate: str | None = None
    labels_from: str | None = None
    wells: str | None = None
    channels: Mapping[str, str] | None = None
    images: Path | None = None
    masks: Path | None = None
    cells: Path | None = None
    pixel_size_um: float | None = None
    train_pixel_um: float | None = None
    max_fields: int = 48
    val_fraction: float = 0.15
    classic_params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("images", "masks", "cells"):
            value = getattr(self, name)
            if name == "cells" and not value:
                value = None
            object.__setattr__(self, name, None if value is None else Path(value))
        if not 0 <= self.val_fraction < 1:
            raise EngineError(f"validation fraction {self.val_fraction} must be in [0, 1)")
        if (self.images is None) != (self.masks is None):
            raise EngineError(
                "--images and --masks go together: image files and their instance masks (same file stems)"
            )
        if self.plate is None and self.masks is None:
            raise EngineError("no training data: give --plate PLATE --labels-from CHANNEL, or --images DIR --masks DIR")
        if self.plate is not None and not self.labels_from:
            raise EngineError(
                "--plate needs --labels-from CHANNEL: the stain the training targets are derived from (e.g. DAPI)"
            )
        if self.max_fields < 1:
            raise EngineError(f"--max-fields {self.max_fields}: must be at least 1")


@dataclass(frozen=True)
class TrainOptions:
    """How long and how the run goes.

    Checked when made (:class:`~hts.errors.EngineError`, one line).

    Parameters
    ----------
    minutes : float, optional
        Time budget: without ``steps`` the run is sized to it; it is stopped at it (best weights kept).
    steps : int, optional
        Optimizer steps (default: those of the checkpoint being resumed, else fitted
        to ``minutes``, else 1000).
    seed : int
        Seeds the field choice, the split, the weights, sampling and augmentation.
    resume : bool
        Continue an interrupted run from ``OUT/checkpoint.pt``.
    overwrite : bool
        Replace an engine already in ``OUT``.
    config : mapping, optional
        Overrides of :class:`~hts.compute.train.training.TrainConfig` fields
        (``arch_config``, ``batch_size``, ``crop_sizes``, ``val_every``, ``patience``, ``lr``, ...).
    """

    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.minutes is not None and self.minutes <= 0:
            raise EngineError(f"--minutes {self.minutes}: must be positive")
        if self.steps is not None and self.steps < 1:
            raise EngineError(f"--steps {self.steps}: must be at least 1")


@dataclass
class TrainReport:
    """What :func:`train_engine` did."""

    engine: str
    out: str
    status: str  # "trained" or "resumed"
    steps_run: int
    steps: int
    best_val_loss: float | None
    stopped_early: bool
    timed_out: bool
    seconds: float
    train_items: int
    val_items: int
    pixel_size_um: float
    object_diameter_um: float
    nucleus_diameter_um: float
    cell_diameter_um: float | None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Raw:
    """One training image before rescaling: channels in the recipe's input order, its instance labels."""

    name: str
    image: np.ndarray  # (C, Y, X)
    labels: dict[str, np.ndarray]
    pixel_size_um: float | None
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- data


def _plate_items(recipe, data: TrainData, *, workspace: Workspace, seed: int) -> tuple[list[_Raw], dict[str, Any]]:
    """The fields of ``data.plate`` (at most ``data.max_fields``) with targets derived from ``data.labels_from``."""
    from hts.compute.segment.engines import engine_class, segment_field
    from hts.store import PlateStore
    from hts.tasks.segment import plate_pixel_size, resolve_channels, select_fields

    labels_from, wells, max_fields = str(data.labels_from), data.wells, data.max_fields
    classic_params = dict(data.classic_params or {})
    catalog = workspace.catalog
    rec = catalog.find_plate(data.plate)
    plate_channels = catalog.channel_names(rec.plate_id)
    lower = {c.lower(): i for i, c in enumerate(plate_channels)}
    if labels_from.lower() not in lower:
        raise EngineError(
            f"plate {rec.name} has no channel {labels_from!r}; its channels are: {', '.join(plate_channels)}"
        )
    stain_c = lower[labels_from.lower()]
    mapping = resolve_channels(engine_class(recipe.engine), plate_channels, dict(data.channels or {}), plate=rec.name)
    input_c = [lower[mapping[role].lower()] for role in recipe.inputs]
    px = plate_pixel_size(rec, data.pixel_size_um)
    _, fields = select_fields(catalog, rec, wells, complete_only=True)
    if not fields:
        raise EngineError(f"plate {rec.name}: no ingested fields" + (f" in wells {wells}" if wells else ""))
    if len(fields) > max_fields:
        pick = np.sort(np.random.default_rng([seed, 271828]).choice(len(fields), max_fields, replace=False))
        fields = [fields[i] for i in pick]
    store = PlateStore(rec.store_uri)
    classic = engine_class("classic")(classic_params or None)
    cyto_c = lower[mapping["cytoplasm"].lower()] if "cytoplasm" in mapping else None
    items = []
    for well, idx, path in fields:
        arr = store.read_field(path.rsplit("/", 1)[0], idx)
        planes = np.asarray(arr[0]).max(axis=1)  # (c, y, x): time point 0, Z maximum projection
        roles = {"nucleus": planes[stain_c]}
        if "cells" in recipe.labels and cyto_c is not None:
            roles["cytoplasm"] = planes[cyto_c]
        res = segment_field(classic, roles, pixel_size_um=px)
        labels = {"nuclei": res.labels["nuclei"]}
        if "cells" in recipe.labels:
            labels["cells"] = res.labels["cells"]
        items.append(
            _Raw(
                f"{rec.name}_{well}_{idx}",
                planes[input_c].astype(np.float32),
                labels,
                float(px),
                f"plate {rec.name} ({rec.store_uri}) well {well} field {idx}",
                {"well": well, "field": idx},
            )
        )
    info = {
        "plate": rec.name,
        "plate_id": rec.plate_id,
        "store": rec.store_uri,
        "wells": wells,
        "fields_used": len(items),
        "channels": mapping,
        "labels_from": plate_channels[stain_c],
        "pixel_size_um": px,
        "targets": "classic engine on "
        + plate_channels[stain_c]
        + (f" (cells grown over {mapping['cytoplasm']})" if "cells" in recipe.labels else ""),
        "classic_params": classic_params or {},
    }
    return items, info


def _mask_items(
    recipe, *, images: Path, masks: Path, cells: Path | None, pixel_size_um: float | None
) -> tuple[list[_Raw], dict[str, Any]]:
    from hts.tasks.evaluate import _key, _label_files, read_label_image

    for what, p in (("--images", images), ("--masks", masks), ("--cells", cells)):
        if p is not None and not Path(p).is_dir():
            raise EngineError(f"{what} {p}: no such folder")
    mask_files = _label_files(Path(masks))
    mask_by_key = {_key(s): p for s, p in mask_files.items()}
    cell_files = _label_files(Path(cells)) if cells else {}
    cell_by_key = {_key(s): p for s, p in cell_files.items()}
    items = []
    for p in sorted(Path(images).iterdir()):
        if not p.is_file() or p.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        m = mask_files.get(p.stem) or mask_by_key.get(_key(p.stem))
        if m is None or m == p:
            continue
        img = read_image(p).astype(np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3 or img.shape[0] != len(recipe.inputs):
            raise EngineError(
                f"{p}: image of shape {img.shape}; {recipe.engine} takes {len(recipe.inputs)} channel(s) "
                f"({', '.join(recipe.inputs)}) as (C, Y, X)"
            )
        labels = {"nuclei": read_label_image(m)}
        if "cells" in recipe.labels:
            c = cell_files.get(p.stem) or cell_by_key.get(_key(p.stem))
            if c is None:
                raise EngineError(
                    f"{p}: {recipe.engine} trains on whole cells; no cell mask for it in {cells or '(give --cells DIR)'}"
                )
            labels["cells"] = read_label_image(c)
        for k, v in labels.items():
            if v.shape != img.shape[-2:]:
                raise EngineError(f"{p} has shape {img.shape[-2:]} but its {k} mask has {v.shape}")
        items.append(_Raw(p.stem, img, labels, pixel_size_um, str(p), {"mask": str(m)}))
    if not items:
        raise EngineError(f"no image of {images} has a mask of the same file stem in {masks}")
    return items, {
        "images": str(images),
        "masks": str(masks),
        "cells": str(cells) if cells else None,
        "items": len(items),
        "pixel_size_um": pixel_size_um,
        "targets": "the given instance masks",
    }


def _median_um(items: Sequence[_Raw], key: str) -> float | None:
    from hts.compute.train.training import median_diameter_px

    ds = [
        d * it.pixel_size_um
        for it in items
        if it.pixel_size_um and key in it.labels
        for d in [median_diameter_px(it.labels[key])]
        if d
    ]
    return float(np.median(ds)) if ds else None


# ----------------------------------------------------------------------------- the run


def _calibrate_steps(cfg, samples, minutes: float) -> int:
    """Steps that fit in ``minutes``: the cost of a few timed steps of this model on these samples (20 % kept for validation)."""
    import torch

    from hts.compute.train import training as T

    torch.set_num_threads(T.cpu_threads(cfg.threads))
    model, _ = T._build(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([cfg.seed, 99])
    recipe = cfg.recipe
    phase = recipe.phases[-1]
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        x, t = T.make_batch(
            recipe,
            samples,
            rng,
            batch_size=cfg.batch_size,
            size=int(max(cfg.crop_sizes)),
            aug=cfg.augment,
            nucleus_radius_px=cfg.nucleus_radius_px,
            cell_radius_px=cfg.cell_radius_px,
        )
        loss, _ = T.total_loss(recipe, T._forward(model, x, recipe, phase), t, phase)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    return max(10, int(0.8 * minutes * 60.0 / per_step))


def _checkpoint_config(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False).get("config")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not resumed
        return None


def train_engine(
    engine: str,
    out: str | Path,
    data: TrainData,
    options: TrainOptions = TrainOptions(),
    *,
    workspace: Workspace | None = None,
    progress: Callable[[dict], Any] | None = None,
    command: str | None = None,
) -> TrainReport:
    """Train ``engine``'s network and write the engine folder ``out`` (the module docstring has the details).

    Parameters
    ----------
    engine : str
        The deep engine whose network is trained (``nuclei``, ``brightfield-unet``, ``cytoplasm``, ``fpf``).
    out : path
        The engine folder to write.
    data : TrainData
        Where the examples come from, their scale and split.
    options : TrainOptions
        Length, seed, resume / overwrite and training settings of the run.
    workspace : hts.config.Workspace, optional
        The workspace whose catalog holds ``data.plate``; needed only when training from a plate.
    progress : callable, optional
        Called with every training event (:func:`hts.compute.train.training.train`'s callback dicts).
    command : str, optional
        The command line, recorded in the folder.

    Raises
    ------
    EngineError
        One-line messages: unknown engine, an engine already in ``out``, unusable
        data, a plate without ``workspace``; plate look-ups raise
        :class:`~hts.errors.CatalogError` / :class:`~hts.errors.StoreError`.
    """
    from hts.compute.train import training as T

    t_start = time.monotonic()
    recipe = T.get_recipe(engine)
    out = Path(out).expanduser().resolve()
    ckpt = out / "checkpoint.pt"
    _check_out(out, ckpt, options)
    items, info = _load_items(recipe, data, seed=options.seed, workspace=workspace)
    scale = _Scale.of(recipe, items, data.train_pixel_um)
    train_s, val_s = _split(items, scale, data.val_fraction, seed=options.seed)
    cfg = _train_config(engine, recipe, scale, options)
    cfg, status = _fit_steps(cfg, train_s, options, ckpt)
    out.mkdir(parents=True, exist_ok=True)
    result = T.train(cfg, train_s, val_s, checkpoint=ckpt, resume=options.resume, callback=progress)

    metrics = _write_folder(out, _Run(engine, recipe, cfg, result, info, train_s, val_s, scale, status, command))
    if ckpt.exists() and not result.metrics["timed_out"]:
        ckpt.unlink()
    best = result.metrics["best"].get(str(recipe.phases[-1]), {}).get("val_loss")
    return TrainReport(
        engine=engine,
        out=str(out),
        status=status,
        steps_run=result.metrics["steps_run"],
        steps=cfg.steps,
        best_val_loss=best,
        stopped_early=result.metrics["stopped_early"],
        timed_out=result.metrics["timed_out"],
        seconds=round(time.monotonic() - t_start, 1),
        train_items=len(train_s),
        val_items=len(val_s),
        pixel_size_um=scale.train_px,
        object_diameter_um=cfg.object_diameter_um,
        nucleus_diameter_um=cfg.nucleus_diameter_um,
        cell_diameter_um=cfg.cell_diameter_um,
        metrics=metrics,
    )


def _check_out(out: Path, ckpt: Path, options: TrainOptions) -> None:
    """Refuse to replace an engine folder unless told to (or resuming its run)."""
    if (out / "config.json").exists() and not options.overwrite and not (options.resume and ckpt.exists()):
        raise EngineError(
            f"{out} already holds an engine; pass --overwrite to replace it (or --resume to continue its run)"
        )
    if out.exists() and not out.is_dir():
        raise EngineError(f"{out}: exists and is not a folder")


def _load_items(
    recipe, data: TrainData, *, seed: int, workspace: Workspace | None
) -> tuple[list[_Raw], dict[str, Any]]:
    """The raw training items of the plate and / or the mask folders, and what they were (by source)."""
    items: list[_Raw] = []
    info: dict[str, Any] = {}
    if data.plate is not None:
        if workspace is None:
            raise EngineError(
                f"training from plate {data.plate} needs the workspace whose catalog holds it: "
                "train_engine(..., workspace=hts.config.load_workspace())"
            )
        got, info["plate"] = _plate_items(recipe, data, workspace=workspace, seed=seed)
        items += got
    if data.masks is not None:
        got, info["masks"] = _mask_items(
            recipe, images=Path(data.images), masks=data.masks, cells=data.cells, pixel_size_um=data.pixel_size_um
        )
        items += got
    return items, info


@dataclass(frozen=True)
class _Scale:
    """Median object sizes of the targets (µm) and the training pixel size chosen from them."""

    nucleus_um: float
    cell_um: float | None
    train_px: float
    measured: bool  # False: no pixel size known, nucleus_um is the assumed 12 µm

    @classmethod
    def of(cls, recipe, items: Sequence[_Raw], train_pixel_um: float | None) -> _Scale:
        nuc_um = _median_um(items, "nuclei")
        measured = nuc_um is not None
        nuc_um = nuc_um or 12.0
        cell_um = None
        if "cells" in recipe.labels:
            cell_um = _median_um(items, "cells") or 25.0 * nuc_um / 12.0
        train_px = float(train_pixel_um or round(nuc_um / PX_PER_NUCLEUS, 4))
        return cls(nuc_um, cell_um, train_px, measured)


def _split(items: Sequence[_Raw], scale: _Scale, val_fraction: float, *, seed: int) -> tuple[list, list]:
    """The items rescaled to the training pixel size, split (seeded) into training and validation samples."""
    from hts.compute.train.training import make_sample, median_diameter_px, split_samples

    samples = []
    for it in items:
        px = it.pixel_size_um
        if not px:  # unknown pixel size: scale so that the median nucleus has the measured (or assumed) size
            d = median_diameter_px(it.labels["nuclei"])
            px = scale.nucleus_um / d if d else scale.train_px
        samples.append(
            make_sample(
                it.name,
                it.image,
                it.labels,
                pixel_size_um=px,
                train_pixel_um=scale.train_px,
                source=it.source,
                meta={**it.meta, "pixel_size_um": px},
            )
        )
    n = len(samples)
    n_val = 0 if n < 2 or val_fraction == 0 else min(n - 1, max(1, round(val_fraction * n)))
    train_s, val_s = split_samples(samples, [(n - n_val) / n, n_val / n], seed=seed, key=lambda s: s.name)
    return train_s, val_s


def _train_config(engine: str, recipe, scale: _Scale, options: TrainOptions):
    """The :class:`~hts.compute.train.training.TrainConfig` of the run (steps still to be fitted)."""
    from hts.compute.train import training as T

    nuc_um, cell_um = scale.nucleus_um, scale.cell_um
    cfg = T.TrainConfig(
        engine=engine,
        pixel_size_um=scale.train_px,
        object_diameter_um=round(cell_um if cell_um else nuc_um, 3),
        nucleus_diameter_um=round(nuc_um, 3),
        cell_diameter_um=round(cell_um, 3) if cell_um else None,
        seed=options.seed,
        time_limit_s=options.minutes * 60.0 if options.minutes else None,
        augment=T.Augment(invert_p=0.2) if "brightfield" in recipe.inputs else T.Augment(),
    )
    over = dict(options.config or {})
    for k in ("crop_sizes", "phase_fractions", "normalization"):
        if k in over:
            over[k] = tuple(over[k])
    if over:
        try:
            cfg = dataclasses.replace(cfg, **over)
        except TypeError as e:
            raise EngineError(f"training settings: {e}") from None
    return cfg


def _fit_steps(cfg, train_s, options: TrainOptions, ckpt: Path):
    """``cfg`` with its steps (given, the resumed run's, fitted to the minutes, or 1000) and the run's status."""
    from hts.compute.train import training as T

    status = "trained"
    prior = _checkpoint_config(ckpt) if options.resume and ckpt.exists() else None
    steps = options.steps
    if steps is None and prior is not None:
        steps = int(prior["steps"])
    if steps is None:
        steps = _calibrate_steps(cfg, train_s, options.minutes) if options.minutes else 1000
    cfg = dataclasses.replace(cfg, steps=int(steps))
    if prior is not None:
        cfg_resumed = T.TrainConfig.from_dict({**prior, "time_limit_s": cfg.time_limit_s, "threads": cfg.threads})
        if cfg_resumed.key() == cfg.key():
            status = "resumed"
    return cfg, status


@dataclass(frozen=True)
class _Run:
    """A finished training run: what the engine folder's files are written from."""

    engine: str
    recipe: Any
    cfg: Any  # TrainConfig
    result: Any  # hts.compute.train.training.train's result
    data: dict[str, Any]  # the training data, by source ("plate", "masks")
    train_s: list
    val_s: list
    scale: _Scale
    status: str
    command: str | None


def _write_folder(out: Path, run: _Run) -> dict[str, Any]:
    """The model, ``manifest.json``, ``training.json``, ``metrics.json`` and ``CARD.md``; returns the metrics."""
    from hts.compute.train import training as T

    cfg, result, data, command = run.cfg, run.result, run.data, run.command
    T.save_engine_model(out, result, extra={"trained_with": f"hts train (hts {__version__})"})
    metrics = _validate(out, run.recipe, run.val_s or run.train_s, held_out=bool(run.val_s))
    manifest = {
        "engine": run.engine,
        "data": data,
        "config": cfg.to_dict(),
        "command": command,
        "train": [_entry(s) for s in run.train_s],
        "validation": [_entry(s) for s in run.val_s],
    }
    summary = {
        **result.metrics,
        "status": run.status,
        "pixel_size_um": run.scale.train_px,
        "object_diameter_um": cfg.object_diameter_um,
        "nucleus_diameter_um": cfg.nucleus_diameter_um,
        "cell_diameter_um": cfg.cell_diameter_um,
        "object_size_measured": run.scale.measured,
        "data": data,
        "command": command,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    (out / "training.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "CARD.md").write_text(
        _card(run.engine, cfg, result, data, metrics, run.train_s, run.val_s, run.scale.measured, command)
    )
    return metrics


def _entry(s) -> dict[str, Any]:
    return {
        "name": s.name,
        "source": s.source,
        "shape": list(s.shape),
        **{k: v for k, v in s.meta.items() if k in ("well", "field", "mask", "pixel_size_um")},
    }


def _validate(out: Path, recipe, samples, *, held_out: bool) -> dict[str, Any]:
    """The trained engine (from its folder, post-processing included) against the targets of ``samples``."""
    from hts.compute.analysis.metrics import pool, score_image
    from hts.compute.segment.engines import engine_class, segment_field

    eng = engine_class(out)(backend="torch", device="cpu")
    per: dict[str, list] = {k: [] for k in recipe.labels}
    for s in samples:
        images = {role: s.image[i] for i, role in enumerate(recipe.inputs)}
        res = segment_field(eng, images, pixel_size_um=s.pixel_size_um)
        for k in recipe.labels:
            per[k].append({"name": s.name, **score_image(s.labels[k], res.labels[k])})
    keep = (
        "images",
        "n_true",
        "n_pred",
        "ap",
        "ap50",
        "ap75",
        "f1",
        "precision",
        "recall",
        "mean_matched_iou",
        "splits",
        "merges",
    )
    return {
        "set": "validation" if held_out else "training (no held-out items: fewer than 2)",
        "note": "the trained engine through its post-processing against the training targets of these items; "
        "counts pooled over the items (hts.compute.analysis.metrics)",
        **{
            k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in pool(v).items() if kk in keep}
            for k, v in per.items()
        },
    }


def _card(engine, cfg, result, data, metrics, train_s, val_s, measured, command) -> str:
    from hts.compute.train.training import get_recipe

    recipe = get_recipe(engine)
    m = result.metrics
    best = m["best"].get(str(recipe.phases[-1]), {})
    lines = [
        f"# {engine} — model card (trained with `hts train`)",
        "",
        "**Status: a lab-trained model.** This card was written by `hts train` from the facts of the run; "
        "add what the numbers below cannot say (what the images show, known failure modes).",
        "",
        "## Architecture",
        f"- `{recipe.arch}` {json.dumps(recipe.arch_config(cfg.arch_config))}; **{m['parameters']:,} parameters**.",
        f"- Heads: {', '.join(h['name'] for h in recipe.heads)}; post-processing: the `{engine}` engine's.",
        "",
        "## Inputs and scale",
        f"- Input roles in order: {', '.join(recipe.inputs)}; normalization percentiles {list(cfg.normalization)}.",
        f"- Training pixel size **{cfg.pixel_size_um} µm**; median nucleus **{cfg.nucleus_diameter_um} µm**"
        + (f", median cell **{cfg.cell_diameter_um} µm**" if cfg.cell_diameter_um else "")
        + (" (measured on the training targets)." if measured else " (assumed: no pixel size was known)."),
        "  `hts segment` rescales every plate by its pixel size / this one.",
        "",
        "## Training data",
    ]
    if "plate" in data:
        p = data["plate"]
        lines.append(
            f"- Plate **{p['plate']}** (`{p['store']}`), wells {p['wells'] or 'all'}: {p['fields_used']} fields "
            f"at {p['pixel_size_um']} µm/px; inputs {json.dumps(p['channels'])}; targets: {p['targets']}."
        )
    if "masks" in data:
        d = data["masks"]
        lines.append(
            f"- {d['items']} images of `{d['images']}` with instance masks of `{d['masks']}`"
            + (f" and cell masks of `{d['cells']}`" if d["cells"] else "")
            + "."
        )
    lines += [
        f"- {len(train_s)} training and {len(val_s)} validation items (seed {cfg.seed}); every item is in `manifest.json`.",
        "",
        "## Training run",
        f"- {m['steps_run']} of {cfg.steps} steps in {m['elapsed_s']} s on {m['threads']} CPU thread(s); "
        f"batch {cfg.batch_size}, crops {list(cfg.crop_sizes)}, Adam lr {cfg.lr}.",
        f"- Best validation loss {best.get('val_loss') if best.get('val_loss') is None else round(best['val_loss'], 4)} "
        f"at step {best.get('step')}; stopped early: {m['stopped_early']}; time limit reached: {m['timed_out']}.",
    ]
    if command:
        lines += ["", "Command:", "```", command, "```"]
    lines += [
        "",
        f"## Accuracy ({metrics['set']})",
        "The engine (post-processing included) against the targets of those items; AP = TP / (TP + FP + FN).",
        "",
        "| output | images | objects (true) | predicted | AP 0.5:0.95 | AP@0.5 | F1@0.5 | mean matched IoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in recipe.labels:
        r = metrics[k]
        lines.append(
            f"| {k} | {r['images']} | {r['n_true']} | {r['n_pred']} | {r['ap']:.3f} | {r['ap50']:.3f} | "
            f"{r['f1']:.3f} | {r['mean_matched_iou']:.3f} |"
        )
    lines += [
        "",
        "## Limitations",
        "- Targets derived from a stain by the classic engine carry its mistakes (merged clusters, missed dim nuclei)."
        if "plate" in data
        else "- As good as the masks it was trained on.",
        "- Validated only against the same kind of targets it was trained on; score it on annotated images with "
        "`hts evaluate` before relying on it.",
        "",
    ]
    return "\n".join(lines)
