"""Network targets from instance labels: the one definition training and inference share.

- *foreground*: 1 inside any object;
- *distance*: per object, the Euclidean distance to its boundary divided by the
  object's radius at training scale (``radius_px``), clipped to [0, 1.5]: about 1
  at the centre of a typical object, 0 at its edge, and a saddle between touching
  objects, which the seeded watershed uses to split them;
- *classes*: background / cytoplasm / nucleus (one-hot), for single-channel
  whole-cell models.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["foreground_distance", "three_class", "DIST_CLIP"]

DIST_CLIP = 1.5


def _touching_boundaries(labels: np.ndarray, *, between_objects: bool = False) -> np.ndarray:
    """Pixels with a 4-neighbour of another value (background or another object; with
    ``between_objects``, another object only: the shared edge of touching objects)."""
    boundary = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        d = np.diff(labels, axis=axis) != 0
        if between_objects:
            a, b = (labels[:-1], labels[1:]) if axis == 0 else (labels[:, :-1], labels[:, 1:])
            d &= (a > 0) & (b > 0)
        sl_a = [slice(None)] * 2
        sl_b = [slice(None)] * 2
        sl_a[axis] = slice(None, -1)
        sl_b[axis] = slice(1, None)
        boundary[tuple(sl_a)] |= d
        boundary[tuple(sl_b)] |= d
    return boundary


def foreground_distance(labels: np.ndarray, *, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, normalized distance) float32 maps of an instance label image."""
    fg = (labels > 0).astype(np.float32)
    # distance to the nearest pixel that is background or another object: erode boundaries between touching objects
    inside = (labels > 0) & ~_touching_boundaries(labels)
    dist = ndi.distance_transform_edt(inside).astype(np.float32)
    dist = np.clip(dist / max(radius_px, 1e-6), 0.0, DIST_CLIP).astype(np.float32)
    return fg, dist


def three_class(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """One-hot (3, y, x): background, cytoplasm (cell minus nucleus), nucleus.

    Where two cells touch, the pixels on their shared edge are background, so
    the network learns the line that separates neighbouring cells (the cell
    watershed then follows it).
    """
    out = np.zeros((3, *cells.shape), np.float32)
    cells = np.asarray(cells)
    shared = _touching_boundaries(cells, between_objects=True)
    nuc = (nuclei > 0) & ~shared
    cyt = (cells > 0) & ~nuc & ~shared
    out[2][nuc] = 1
    out[1][cyt] = 1
    out[0][~nuc & ~cyt] = 1
    return out
