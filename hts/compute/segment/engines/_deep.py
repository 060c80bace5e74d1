"""Shared machinery of the deep engines: model loading, scale normalization, batched tiled inference, TTA.

A deep engine names a model folder under ``engines/`` (shipped weights,
``config.json``, ``CARD.md``). Its ``config.json`` records, besides the
network, the input roles in order, the percentile normalization, the pixel size
the model was trained at and the typical object diameter. At inference:

1. each input channel is normalized with field-level percentiles;
2. the field is rescaled so objects have the size the model saw in training
   (plate pixel size / training pixel size);
3. the rescaled field is cut into halo-padded tiles (sizes a multiple of the
   network's stride), the tiles are batched through the backend runner, and the
   tile cores are stitched into whole-field maps; with ``tta`` every batch is
   also run flipped and rotated by 90° and the maps averaged;
4. the maps are resized back to the field's pixel grid.

With ``adapt_scale`` (an engine that can measure its objects, :meth:`DeepEngine.object_diameters`)
step 2 is checked per field: when the median object found at the plate's pixel size is off the
model's training size by more than :data:`ADAPT_FACTOR`, the network runs once more at the scale
that gives that field's objects the training size (large mouse ES nuclei at 0.24 µm/px, small
lymphocytes at 0.65), and the tiling halo follows the objects' real size.

``config.json`` may also hold ``postprocess``: post-processing parameter values
tuned for the weights (e.g. the foreground threshold); they replace the
engine's defaults, while parameters the caller passes explicitly win.

:meth:`DeepEngine.from_folder` makes an engine of any folder of that shape (the
output of ``hts train``): the class of the engine its ``config.json`` names, with
the weights, checksum and card of the folder.
"""

from __future__ import annotations

import json
import math
from functools import cache, cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from skimage.transform import resize

from hts.compute.segment.engines.base import Engine, EngineParams
from hts.compute.segment.tiling import stitch_maps, tile_grid
from hts.errors import EngineError
from hts.resources import data_dir

__all__ = ["DeepEngine", "DeepParams", "ADAPT_FACTOR", "BATCH_PIXELS", "MODEL_TILE"]

#: ``adapt_scale`` runs the network again when a field's median object is larger or smaller than
#: the training size by more than this factor (what :mod:`hts.compute.segment.scale` calls agreement).
ADAPT_FACTOR = 1.25
#: ... and when it found at least this many whole objects at the scale before.
ADAPT_MIN_OBJECTS = 5
#: Most model pixels per backend call: tiles are batched up to ``batch_size`` of them or this many
#: pixels together, whichever comes first (8 tiles of 512², or one of 1448²), which bounds the
#: network's activations in memory whatever the tile size.
BATCH_PIXELS = 8 * 512 * 512
#: The default largest network tile (model pixels). 512 spent half the network's work on halos (a
#: 1024² field at 0.65 µm/px is 1331² model pixels for brightfield-unet: 16 tiles, 2.0x its pixels); a
#: tile as large as a typical field rescaled runs it whole (1.02x). Measured: docs/benchmarks.md.
MODEL_TILE = 1536


def adapt_scale_field(default: bool, note: str) -> Any:
    """The ``adapt_scale`` parameter of an engine that measures its objects (:meth:`DeepEngine.object_diameters`),
    with its own default and a note on it for ``hts engines``."""
    return Field(
        default,
        description=f"Per field: when the objects found at the plate's pixel size are more than {ADAPT_FACTOR}x "
        "larger or smaller than the model's training size, run the network again at the scale that gives them "
        f"that size ({note}).",
    )


class DeepParams(EngineParams):
    tta: bool = Field(
        False, description="Test-time augmentation: average the maps over flips and 90° rotations (4× the compute)."
    )
    batch_size: int = Field(
        8, ge=1, le=256, description=f"Most tiles per backend call (fewer when they hold over {BATCH_PIXELS:,} pixels)."
    )
    model_tile: int = Field(
        MODEL_TILE,
        ge=64,
        le=4096,
        description="Largest tile fed to the network, in model pixels: a field that fits is one tile; a larger one "
        "is cut into near-equal tiles, each with a halo of context (smaller tiles spend more on halos).",
    )


_TTA = [
    (lambda x: x, lambda y: y),
    (lambda x: x[..., ::-1], lambda y: y[..., ::-1]),
    (lambda x: x[..., ::-1, :], lambda y: y[..., ::-1, :]),
    (lambda x: np.rot90(x, 1, axes=(-2, -1)), lambda y: np.rot90(y, -1, axes=(-2, -1))),
]


class DeepEngine(Engine):
    """Base of engines backed by a shipped network."""

    backends = ("torch", "onnxruntime", "tensorrt")
    model_name: ClassVar[str]
    Params = DeepParams

    def __init__(self, params=None, *, backend: str = "auto", device: str = "auto"):
        super().__init__(params, backend=backend, device=device)
        from hts.compute.segment.backends import ModelSpec, load_runner

        path = self.model_path()
        if not (path / "config.json").exists():
            raise EngineError(f"engine {self.name}: no shipped model at {path} (missing config.json)")
        self.spec = ModelSpec.from_dir(path)
        self.spec.sha256  # noqa: B018 - verify the weights checksum before anything runs
        self.runner = load_runner(self.spec, backend, device, max_batch=self.params.batch_size)
        self.backend, self.device = self.runner.backend, self.runner.device
        inputs = self.spec.extra.get("inputs")
        if inputs != list(self.roles):
            raise EngineError(
                f"{path}/config.json: inputs {inputs} do not match engine {self.name} roles {list(self.roles)}"
            )
        self.params = self._with_model_defaults(self.params, path)

    def _with_model_defaults(self, params: DeepParams, path: Path) -> DeepParams:
        """``params`` with the model's tuned post-processing defaults (``config.json`` key ``postprocess``).

        ``postprocess`` maps parameter names to the values tuned for these
        weights (on their validation split); a parameter the caller set
        explicitly wins. Without the key the engine's own defaults hold.
        """
        tuned = self.spec.extra.get("postprocess") or {}
        if not isinstance(tuned, dict):
            raise EngineError(f"{path}/config.json: 'postprocess' must be an object of parameter values")
        unknown = sorted(set(tuned) - set(type(params).model_fields))
        if unknown:
            raise EngineError(
                f"{path}/config.json: 'postprocess' names unknown parameters of {self.name}: {', '.join(unknown)}"
            )
        update = {k: v for k, v in tuned.items() if k not in params.model_fields_set}
        if not update:
            return params
        try:
            return type(params)(**{**update, **params.model_dump(include=params.model_fields_set)})
        except ValueError as e:
            raise EngineError(f"{path}/config.json: invalid 'postprocess' values ({e})") from None

    @classmethod
    def model_path(cls) -> Path:
        return data_dir("engines") / cls.model_name

    @classmethod
    def from_folder(cls, path: str | Path) -> type[DeepEngine]:
        """The engine class of an engine folder: the registered deep engine its ``config.json`` names, weights from the folder.

        The returned subclass is named by the folder's absolute path (so that
        ``engine_class(cls.name)`` on a Dask worker finds the same folder); its
        ``model_sha256`` and ``card()`` come from the folder. Classes are cached
        per (engine, folder).

        Raises
        ------
        EngineError
            No such folder, no readable ``config.json``, or a ``name`` that is not a registered deep engine.
        """
        from hts.compute.segment.engines import engines

        folder = Path(path).expanduser().resolve()
        cfg_path = folder / "config.json"
        if not folder.is_dir():
            raise EngineError(f"{folder}: no such engine folder")
        if not cfg_path.is_file():
            raise EngineError(f"{folder}: not an engine folder (no config.json)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise EngineError(f"{cfg_path}: unreadable ({e})") from None
        base_name = cfg.get("name") if isinstance(cfg, dict) else None
        deep = {n: c for n, c in engines().items() if issubclass(c, DeepEngine)}
        if base_name not in deep:
            raise EngineError(f"{cfg_path}: 'name' is {base_name!r}, not a deep engine ({', '.join(deep)})")
        return _folder_engine(deep[base_name], str(folder))

    @classmethod
    def card(cls) -> str:
        card = cls.model_path() / "CARD.md"
        method = super().card()
        return method + ("\n\n" + card.read_text() if card.exists() else "\n\n(model card missing)")

    @property
    def model_sha256(self) -> str:
        return self.spec.sha256

    @cached_property
    def train_pixel_um(self) -> float:
        return float(self.spec.extra["pixel_size_um"])

    def max_object_um(self) -> float:
        return 2.0 * float(self.spec.extra.get("object_diameter_um", 20.0))

    # -- steps ------------------------------------------------------------------
    def prepare(self, images: dict[str, np.ndarray], pixel_size_um: float) -> dict[str, Any]:
        lo_p, hi_p = self.spec.extra.get("normalization", [1.0, 99.8])
        norm = {}
        for role in self.roles:
            if role in images:
                lo, hi = np.percentile(images[role][::2, ::2], [lo_p, hi_p])
                norm[role] = (float(lo), float(hi))
        return {"pixel_size_um": pixel_size_um, "norm": norm, "scale": pixel_size_um / self.train_pixel_um}

    def predict(self, images: dict[str, np.ndarray], ctx: dict[str, Any], *, tile: int, halo: int) -> np.ndarray:
        shape = next(iter(images.values())).shape
        x = np.stack(
            [
                (images[r].astype(np.float32) - ctx["norm"][r][0]) / max(ctx["norm"][r][1] - ctx["norm"][r][0], 1e-6)
                for r in self.roles
            ]
        )
        scale = ctx["scale"]
        maps = self._maps_at(x, scale, halo)
        want = float(self.spec.extra.get("object_diameter_um", 0.0)) / self.train_pixel_um
        # adapt_scale is a parameter of the engines that can measure their objects (object_diameters)
        d = self.object_diameters(maps) if getattr(self.params, "adapt_scale", False) and want > 0 else None
        if d is not None and len(d) >= ADAPT_MIN_OBJECTS:
            ratio = float(np.median(d)) / want
            if not 1 / ADAPT_FACTOR <= ratio <= ADAPT_FACTOR:
                new = scale / float(np.clip(ratio, 1 / 4, 4))
                # the network's halo in model pixels as in the first pass (its context is in model pixels)
                maps = self._maps_at(x, new, math.ceil(halo * scale / new))
                ctx["scale"] = new
                # the objects' size against the training size: post-processing sizes (minimum areas)
                # follow it, and so does the tiling halo of the instances (segment_field)
                ctx["object_scale"] = scale / new
                ctx["max_object_um"] = self.max_object_um() * scale / new
        if maps.shape[-2:] != shape:
            maps = resize(maps, (maps.shape[0], *shape), order=1, preserve_range=True).astype(np.float32)
        return maps

    def _maps_at(self, x: np.ndarray, scale: float, halo: int) -> np.ndarray:
        """The network's maps of the normalized field ``x`` rescaled by ``scale`` (model pixels)."""
        if abs(scale - 1.0) > 0.02:
            new = (max(8, round(x.shape[-2] * scale)), max(8, round(x.shape[-1] * scale)))
            x = resize(x, (x.shape[0], *new), order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        # the halo in model pixels, at most a quarter of the network's tile: a field upscaled 4x would
        # otherwise give every tile a few pixels of core inside 4x the halo (hundreds of tiles per field)
        return self._infer(x, halo=min(math.ceil(halo * scale), self.params.model_tile // 4))

    def object_diameters(self, maps: np.ndarray) -> np.ndarray | None:
        """Equivalent diameters (model pixels) of the whole objects in maps at the model's scale, for
        ``adapt_scale``; None for an engine that cannot tell (the default)."""
        return None

    def _infer(self, x: np.ndarray, *, halo: int) -> np.ndarray:
        """Whole-image maps from halo-padded tiles batched through the runner."""
        m = self.spec.multiple
        _, ny, nx = x.shape
        core = max(m, (self.params.model_tile - 2 * halo) // m * m)
        tiles = tile_grid((ny, nx), core, halo)
        transforms = _TTA if self.params.tta else _TTA[:1]
        outs: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        metas: list[tuple[int, int]] = []

        def flush() -> None:
            if not batch:
                return
            h = max(b.shape[-2] for b in batch)
            w = max(b.shape[-1] for b in batch)
            h, w = -(-h // m) * m, -(-w // m) * m
            stack = np.stack(
                [np.pad(b, ((0, 0), (0, h - b.shape[-2]), (0, w - b.shape[-1])), mode="reflect") for b in batch]
            )
            acc = None
            for fwd, back in transforms:
                y = self.runner(np.ascontiguousarray(fwd(stack)))
                y = back(y)
                acc = y if acc is None else acc + y
            acc /= len(transforms)
            for (hh, ww), y in zip(metas, acc):
                outs.append(np.ascontiguousarray(y[:, :hh, :ww]))
            batch.clear()
            metas.clear()

        for t in tiles:
            sub = x[(slice(None), *t.outer_slices)]
            # the batch is padded to its largest tile: count every tile at that size
            h = max([sub.shape[-2], *(b.shape[-2] for b in batch)])
            w = max([sub.shape[-1], *(b.shape[-1] for b in batch)])
            if batch and (len(batch) + 1) * h * w > BATCH_PIXELS:
                flush()
            batch.append(sub)
            metas.append(sub.shape[-2:])
            if len(batch) >= self.params.batch_size:
                flush()
        flush()
        return stitch_maps((ny, nx), tiles, outs, outs[0].shape[0])

    def head(self, maps: np.ndarray, name: str) -> np.ndarray:
        """The channels of one output head in ``maps`` (squeezed when it has one channel)."""
        start = 0
        for h in self.spec.heads:
            if h["name"] == name:
                out = maps[start : start + h["channels"]]
                return out[0] if h["channels"] == 1 else out
            start += h["channels"]
        raise EngineError(f"model {self.spec.name} has no output head {name!r}")


@cache
def _folder_engine(base: type[DeepEngine], folder: str) -> type[DeepEngine]:
    """A subclass of ``base`` whose model is the engine folder ``folder`` (an absolute path)."""
    path = Path(folder)
    return type(
        f"{base.__name__}Folder",
        (base,),
        {
            "__module__": base.__module__,
            "__doc__": base.__doc__,
            "name": folder,
            "base_engine": base.name,
            "summary": f"{base.summary} (weights from {folder})",
            "model_path": classmethod(lambda c: path),
        },
    )
