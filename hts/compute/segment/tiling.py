"""Tiles with a halo, and seam-free stitching of instance labels.

An image larger than a tile is cut into a grid of *cores* that cover it
exactly; each core is processed with a *halo* of context around it. Every
object found in a tile belongs to the tile whose core holds the object's
centroid, so an object straddling a seam is taken whole from exactly one tile
(the halo must be wider than the largest object) and never counted twice.
Objects linked across outputs (a cell and its nucleus share an id) move together.

Dense maps (network outputs) are stitched by keeping each tile's core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hts.compute.measure.features import object_ids

__all__ = ["Tile", "tile_grid", "stitch_maps", "tiled_instances"]


@dataclass(frozen=True)
class Tile:
    """A core region and the halo-extended region around it, as (y0, y1, x0, x1) in image coordinates."""

    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def outer_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.outer
        return slice(y0, y1), slice(x0, x1)

    @property
    def core_in_outer(self) -> tuple[slice, slice]:
        """The core as slices of the outer region."""
        (cy0, cy1, cx0, cx1), (oy0, _, ox0, _) = self.core, self.outer
        return slice(cy0 - oy0, cy1 - oy0), slice(cx0 - ox0, cx1 - ox0)

    @property
    def core_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.core
        return slice(y0, y1), slice(x0, x1)


def tile_grid(shape_yx: tuple[int, int], tile: int, halo: int) -> list[Tile]:
    """Cores of at most ``tile`` px covering ``shape_yx`` (near-equal sizes), each with ``halo`` px of context."""
    ny, nx = shape_yx
    tiles = []

    def cuts(n: int) -> list[int]:
        k = max(1, -(-n // tile))
        return [round(i * n / k) for i in range(k + 1)]

    for y0, y1 in zip(cuts(ny)[:-1], cuts(ny)[1:]):
        for x0, x1 in zip(cuts(nx)[:-1], cuts(nx)[1:]):
            outer = (max(0, y0 - halo), min(ny, y1 + halo), max(0, x0 - halo), min(nx, x1 + halo))
            tiles.append(Tile(core=(y0, y1, x0, x1), outer=outer))
    return tiles


def stitch_maps(shape_yx: tuple[int, int], tiles: list[Tile], outputs: list[np.ndarray], channels: int) -> np.ndarray:
    """Assemble per-tile dense maps (K, h, w over each tile's outer region) by keeping every tile's core."""
    dtype = outputs[0].dtype if outputs else np.float32
    full = np.zeros((channels, *shape_yx), dtype)
    for t, out in zip(tiles, outputs):
        full[(slice(None), *t.core_slices)] = out[(slice(None), *t.core_in_outer)]
    return full


def _ids(labels: np.ndarray) -> np.ndarray:
    """Sorted object ids (> 0) of a label image (a bincount: ~10x faster than np.unique on label images)."""
    return object_ids(labels)


def _owned(labels: np.ndarray, tile: Tile) -> np.ndarray:
    """Ids of objects in ``labels`` (outer-region coordinates) whose centroid lies in the tile's core."""
    y0, y1, x0, x1 = tile.core
    ids = _ids(labels)
    if ids.size == 0 or (y0, y1, x0, x1) == tile.outer:
        return ids  # nothing to decide when the core is the whole tile (a field in one tile)
    flat = labels.ravel()
    at = np.flatnonzero(flat)  # object pixels only, as int32 positions: ~5x less work than every pixel in int64
    if flat.size < 2**31:
        at = at.astype(np.int32)
    lab = flat[at]
    rows, cols = np.divmod(at, at.dtype.type(labels.shape[1]))
    n = np.bincount(lab)[ids]
    cy = np.bincount(lab, rows)[ids] / n + tile.outer[0]
    cx = np.bincount(lab, cols)[ids] / n + tile.outer[2]
    inside = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    return ids[inside]


def tiled_instances(
    shape_yx: tuple[int, int],
    segment: Callable[[Tile], dict[str, np.ndarray]],
    *,
    tile: int,
    halo: int,
    primary: str,
    tiles: list[Tile] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``segment(tile)`` on every tile and stitch the instance outputs.

    ``segment`` returns label images over the tile's outer region, one per
    output name; ids shared between outputs are one linked object, owned
    according to its ``primary`` output's centroid (outputs may hold objects with
    no primary partner: those are owned by their own centroid). Where a pasted
    object overlaps pixels already taken by an object of a neighbouring tile,
    the earlier object keeps them. Ids in the result are 1..N per output, linked
    objects keeping equal ids.
    """
    tiles = tiles if tiles is not None else tile_grid(shape_yx, tile, halo)
    full: dict[str, np.ndarray] = {}
    next_id = 1
    for t in tiles:
        res = segment(t)
        if not full:
            full = {k: np.zeros(shape_yx, np.int32) for k in res}
        prim = res[primary]
        keep = _owned(prim, t)
        extra_ids: dict[str, np.ndarray] = {}
        prim_ids = set(_ids(prim).tolist())
        for name, lab in res.items():
            if name == primary:
                continue
            own = _owned(lab, t)
            extra_ids[name] = np.array([i for i in own if i not in prim_ids], dtype=np.int64)
        ids = np.union1d(keep, np.concatenate([v for v in extra_ids.values()] or [np.array([], np.int64)]))
        ids = ids[ids > 0].astype(np.int64)
        if ids.size == 0:
            continue
        # map tile ids -> global ids
        lut_size = int(max(lab.max() for lab in res.values())) + 1
        lut = np.zeros(lut_size, np.int32)
        lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.int32)
        next_id += ids.size
        for name, lab in res.items():
            allowed = keep if name == primary else np.union1d(keep, extra_ids.get(name, []))
            mapped = lut[lab]
            ok = np.zeros(lut_size, bool)
            ok[np.asarray(allowed, np.int64)] = True
            mapped[~ok[lab]] = 0
            region = full[name][t.outer_slices]
            free = region == 0
            region[free] = mapped[free]
    return _relabel_jointly(full)


def _relabel_jointly(full: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Consecutive ids over all outputs together, so linked objects keep equal ids."""
    if not full:
        return {}
    present = np.unique(np.concatenate([_ids(v) for v in full.values()]))
    lut = np.zeros(int(present.max()) + 1 if present.size else 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    for v in full.values():  # in place, a band of rows at a time: no second copy of a field's labels
        step = max(1, (1 << 20) // max(v.shape[1], 1))
        for r0 in range(0, v.shape[0], step):
            v[r0 : r0 + step] = lut[v[r0 : r0 + step]]
    return full
