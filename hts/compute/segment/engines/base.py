"""The segmentation engine contract and the field-level driver.

An engine turns the channels of one field into instance label images. It
declares the channel *roles* it needs (``nucleus``, ``cytoplasm``,
``brightfield``, ``foci``), its outputs (the first is the primary object; a
cell and its nucleus share an id), the backends it can run on, and its
parameters as a pydantic model whose sizes are in µm.

:func:`segment_field` drives any engine over a field of any size:

1. ``prepare``: field-level statistics (normalization percentiles,
   thresholds), so every tile of the field uses the same ones; whole-field arrays
   the tiles may cut their region from (``ctx["tile_slices"]``, set before each tile)
   go under ``ctx["whole_field"]``, which the driver keeps for fields of up to
   :data:`KEEP_WHOLE_FIELD_TILES` tiles and drops for larger ones (memory bounded by
   a tile there);
   ``ctx["max_object_um"]``, when set, sizes the tiling halo for this field instead
   of :meth:`Engine.max_object_um` (an engine that builds its largest objects in
   ``finalize`` needs a halo for the others only; ``predict`` may raise it when it finds the
   field's objects larger than expected); the driver sets ``ctx["tile"]``, the
   block size field-level steps in ``finalize`` work in;
2. ``predict`` (deep engines): network maps for the whole field, computed on
   halo-padded tiles batched through the backend and stitched by their cores;
3. ``segment_tile``: instances per tile (with a halo wider than the largest
   object), stitched seam-free by :func:`hts.compute.segment.tiling.tiled_instances`;
4. ``finalize``: field-level steps that need all objects (foci assignment).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from hts.compute.measure.features import object_ids
from hts.compute.segment.tiling import Tile, tile_grid, tiled_instances
from hts.errors import EngineError

__all__ = ["Engine", "EngineParams", "Role", "SegmentResult", "segment_field", "KEEP_WHOLE_FIELD_TILES"]

#: ``ctx["whole_field"]`` is kept for fields of at most this many tiles (a 2048² field at the
#: default 1024-px tile: one float32 copy per channel, 16 MB), and dropped above it.
KEEP_WHOLE_FIELD_TILES = 4


class EngineParams(BaseModel):
    """Base of every engine's parameters: unknown keys are errors, and so are NaN and infinite values."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Role:
    """A channel an engine reads."""

    description: str
    required: bool = True
    guess: tuple[str, ...] = ()  # channel-name prefixes that usually play this role (case-insensitive)


NUCLEUS_NAMES = ("dapi", "hoechst", "dna", "nuc", "draq5", "h2b", "d0")
BRIGHTFIELD_NAMES = ("brightfield", "bright", "bf", "mono", "dic", "phase", "trans", "pc")
CYTOPLASM_NAMES = (
    "gfp",
    "fitc",
    "cyto",
    "actin",
    "phalloidin",
    "cellmask",
    "tritc",
    "rfp",
    "mcherry",
    "cy5",
    "cellbody",
    "d2",
)


@dataclass
class SegmentResult:
    """Labels of one field (per output) and optional per-object properties (per output)."""

    labels: dict[str, np.ndarray]
    properties: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {k: int(len(object_ids(v))) for k, v in self.labels.items()}


class Engine:
    """Base class. Subclasses set the class attributes and implement ``segment_tile``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    version: ClassVar[str] = "1"
    roles: ClassVar[dict[str, Role]]
    outputs: ClassVar[tuple[str, ...]]
    backends: ClassVar[tuple[str, ...]] = ("numpy",)
    Params: ClassVar[type[EngineParams]] = EngineParams

    def __init__(
        self, params: EngineParams | dict[str, Any] | None = None, *, backend: str = "auto", device: str = "auto"
    ):
        self.params = params if isinstance(params, EngineParams) else self.Params(**(params or {}))
        if self.backends == ("numpy",):
            if backend not in ("auto", "numpy"):
                raise EngineError(
                    f"engine {self.name} runs with numpy on the CPU; --backend {backend} is for the deep engines"
                )
            if device not in ("auto", "cpu"):
                raise EngineError(f"engine {self.name} runs on the CPU; --device {device} is for the deep engines")
        self.backend = "numpy" if self.backends == ("numpy",) else backend
        self.device = "cpu" if self.backends == ("numpy",) else device

    # -- description ------------------------------------------------------------
    @classmethod
    def card(cls) -> str:
        """The model card (deep engines) or a method description (classic engines)."""
        return inspect.cleandoc(cls.__doc__ or "")

    @property
    def model_sha256(self) -> str | None:
        return None

    def max_object_um(self) -> float:
        """Diameter of the largest object the engine outputs; the tiling halo must exceed it."""
        return 40.0

    @classmethod
    def measured_outputs(cls, channels: dict[str, str]) -> tuple[str, ...]:
        """The outputs whose objects get per-cell features, for a run reading ``channels`` (role -> channel).

        All of them by default. An engine whose cells are only a geometric expansion of its
        nuclei for some channel mappings (no cell-body channel) leaves ``cells`` out there:
        their Cells_ features would repeat the nuclei's, their Cytoplasm_ ones measure background.
        """
        return tuple(cls.outputs)

    @classmethod
    def cpu_seconds_per_megapixel(cls, channels: dict[str, str]) -> float | None:
        """About the CPU seconds one core spends per megapixel of field to segment it and measure its
        default features, for a run reading ``channels`` (role -> channel); None (the default): not known.

        Only engines whose kernels spend most of their time in compiled code that releases the GIL
        (numpy, scipy, scikit-image) give one: a local run estimated small enough then runs in threads
        of the calling process instead of starting worker processes
        (:data:`hts.orchestrate.dask.SMALL_COMPUTE_S`). Engines that load models give none.
        """
        return None

    # -- the four steps ------------------------------------------------------------
    def prepare(self, images: dict[str, np.ndarray], pixel_size_um: float) -> dict[str, Any]:
        return {"pixel_size_um": pixel_size_um}

    def predict(self, images: dict[str, np.ndarray], ctx: dict[str, Any], *, tile: int, halo: int) -> np.ndarray | None:
        return None

    def segment_tile(
        self, images: dict[str, np.ndarray], maps: np.ndarray | None, ctx: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def finalize(
        self, labels: dict[str, np.ndarray], images: dict[str, np.ndarray], ctx: dict[str, Any]
    ) -> SegmentResult:
        return SegmentResult(labels)


def segment_field(
    engine: Engine, images: dict[str, np.ndarray], *, pixel_size_um: float, tile: int = 1024, halo: int = 64
) -> SegmentResult:
    """Segment one 2-D field given as ``{role: (y, x) array}`` with ``engine``, tiled and stitched."""
    shape = next(iter(images.values())).shape
    ctx = engine.prepare(images, pixel_size_um)
    ctx.setdefault("tile", tile)  # field-level steps in finalize work in blocks of this size too

    def halo_for(largest_um: float) -> int:  # the instance halo: 1.25 x the largest object, at least ``halo``
        return max(int(halo), math.ceil(1.25 * largest_um / pixel_size_um))

    largest = float(ctx.get("max_object_um", engine.max_object_um()))
    maps = engine.predict(images, ctx, tile=tile, halo=halo_for(largest))
    # predict may have found this field's objects larger than expected (ctx["max_object_um"] raised)
    halo_px = halo_for(max(largest, float(ctx.get("max_object_um", largest))))
    tiles = tile_grid(shape, tile, halo_px)
    if len(tiles) > KEEP_WHOLE_FIELD_TILES:
        ctx.pop("whole_field", None)

    def run(t: Tile) -> dict[str, np.ndarray]:
        sl = t.outer_slices
        ctx["tile_slices"] = sl
        region = {role: im[sl] for role, im in images.items()}
        return engine.segment_tile(region, None if maps is None else maps[(slice(None), *sl)], ctx)

    labels = tiled_instances(shape, run, tile=tile, halo=halo_px, primary=engine.outputs[0], tiles=tiles)
    ctx.pop("whole_field", None)  # the tiles are done: not alive through finalize
    return engine.finalize(labels, images, ctx)
