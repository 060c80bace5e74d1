"""Scale from the data: the pixel size at which an engine's nuclei have the size the engine expects.

Engines work in µm (deep engines rescale fields to their training pixel size,
classic sizes its filters in µm), so a plate without a pixel size in its
metadata cannot be segmented until one is known. :func:`estimate_pixel_size`
finds one from the fields themselves by a quick pass of the engine at a few
pixel sizes:

1. for each candidate pixel size ``c`` (a geometric grid over 0.1-1.3 µm, the
   range of 10x-100x objectives on common cameras) the engine segments the
   centre crop of a few fields as if at ``c``;
2. the median nucleus found measures ``d`` px, which implies the pixel size
   ``D / d`` (``D``: the engine's typical nucleus diameter in µm);
3. the smallest candidate whose implied pixel size agrees with itself within
   :data:`AGREE` (a fixed point of ``c -> D / d(c)``, with enough objects) wins
   (else the closest agreement), and one more pass at its implied pixel size
   refines it.

A candidate far from the truth makes the engine see objects at the wrong
scale, so what it finds there does not imply ``c`` back; near the truth it does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from hts.compute.segment.engines.base import Engine, segment_field

__all__ = ["ScaleEstimate", "estimate_pixel_size", "engine_nucleus_diameter_um", "object_diameters_px", "CANDIDATES"]

#: Candidate pixel sizes (µm): geometric steps of ~1.45x from 0.1 to 1.3.
CANDIDATES: tuple[float, ...] = tuple(round(0.1 * (13.0 ** (i / 7)), 4) for i in range(8))
#: A candidate agrees with itself when the pixel size it implies is within this factor of it.
AGREE = 1.25


@dataclass
class ScaleEstimate:
    """The estimated pixel size and how it was found."""

    pixel_size_um: float
    diameter_px: float  # median nucleus diameter at that pixel size
    diameter_um: float  # the engine's typical nucleus diameter the estimate assumes
    n_objects: int
    tried: list[dict] = field(default_factory=list)  # per candidate: pixel size, objects, median diameter, implied

    def message(self, output: str = "nuclei") -> str:
        return (
            f"pixel size unknown: {output} measure ~{self.diameter_px:.0f} px, segmenting as if "
            f"{self.pixel_size_um:.3g} µm/px; pass --pixel-size to fix it"
        )


def engine_nucleus_diameter_um(engine: Engine) -> float:
    """The typical nucleus diameter (µm) an engine is built for (model config, else its parameters, else 10)."""
    spec = getattr(engine, "spec", None)
    if spec is not None:
        extra = spec.extra
        return float(extra.get("nucleus_diameter_um") or extra.get("object_diameter_um") or 10.0)
    return float(getattr(engine.params, "nucleus_diameter_um", 10.0))


def object_diameters_px(labels: np.ndarray, *, exclude_border: bool = True) -> np.ndarray:
    """Equivalent-circle diameters (px) of the objects of a label image (those touching the border left out)."""
    lab = np.asarray(labels)
    if exclude_border and lab.size:
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = ~np.isin(lab, edge[edge > 0])
        lab = np.where(keep, lab, 0)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    return np.sqrt(4.0 * areas / np.pi) if len(ids) else np.zeros(0)


def _crop(image: np.ndarray, side: int) -> np.ndarray:
    ny, nx = image.shape
    y0, x0 = max(0, (ny - side) // 2), max(0, (nx - side) // 2)
    return image[y0 : y0 + side, x0 : x0 + side]


def _measure(engine: Engine, fields: Sequence[dict[str, np.ndarray]], px: float, crop: int, output: str) -> np.ndarray:
    train_px = getattr(engine, "train_pixel_um", None)
    # keep a deep engine's own input within ``crop``² pixels whatever the candidate's upscaling
    side = crop if train_px is None else max(96, min(crop, int(crop * train_px / px)))
    ds = []
    with _fixed_scale(engine):
        for images in fields:
            sub = {role: _crop(np.asarray(im), side) for role, im in images.items()}
            res = segment_field(engine, sub, pixel_size_um=px, tile=4096)
            ds.append(object_diameters_px(res.labels[output]))
    return np.concatenate(ds) if ds else np.zeros(0)


@contextmanager
def _fixed_scale(engine: Engine) -> Iterator[None]:
    """``engine`` without per-field rescaling (``adapt_scale``) inside the block: a candidate pixel size
    must be judged at its own scale, in one network pass on the crop."""
    params = getattr(engine, "params", None)
    if not getattr(params, "adapt_scale", False):
        yield
        return
    engine.params = params.model_copy(update={"adapt_scale": False})
    try:
        yield
    finally:
        engine.params = params


def estimate_pixel_size(
    engine: Engine,
    fields: Sequence[dict[str, np.ndarray]],
    *,
    candidates: Sequence[float] = CANDIDATES,
    crop: int = 512,
    min_objects: int = 5,
    output: str = "nuclei",
) -> ScaleEstimate | None:
    """The pixel size (µm) at which ``engine`` finds nuclei of its typical size in ``fields``.

    Parameters
    ----------
    engine : Engine
        Any engine with a ``nuclei`` output (``output`` names another).
    fields : sequence of dict
        ``{role: (y, x) image}`` of a few fields of the plate (their centre
        ``crop`` is used; fewer pixels for candidates the engine upscales).
    min_objects : int
        A candidate needs at least this many whole objects to count.

    Returns
    -------
    ScaleEstimate or None
        None when no candidate finds enough objects (an empty or unreadable plate).
    """
    d_um = engine_nucleus_diameter_um(engine)
    tried = []
    for c in candidates:
        ds = _measure(engine, fields, c, crop, output)
        med = float(np.median(ds)) if len(ds) else math.nan
        implied = d_um / med if len(ds) >= min_objects and med > 0 else math.nan
        tried.append({"pixel_size_um": c, "objects": int(len(ds)), "median_diameter_px": med, "implied_um": implied})
    ok = [t for t in tried if math.isfinite(t["implied_um"])]
    if not ok:
        return None
    # The smallest candidate that (nearly) implies itself: past the true pixel size a network sees its
    # objects too small and cuts texture into "nuclei" that imply larger sizes again (on real brightfield
    # the ratio is within 15 % there too), so the first agreeing candidate from the fine end is taken;
    # without one, the closest agreement.
    agree = [t for t in ok if abs(math.log(t["implied_um"] / t["pixel_size_um"])) <= math.log(AGREE)]
    best = agree[0] if agree else min(ok, key=lambda t: abs(math.log(t["implied_um"] / t["pixel_size_um"])))
    px = float(np.clip(best["implied_um"], min(candidates) / 1.5, max(candidates) * 1.5))
    ds = _measure(engine, fields, px, crop, output)
    if len(ds) >= min_objects:
        refined = float(np.clip(d_um / float(np.median(ds)), px / 1.5, px * 1.5))
        tried.append(
            {
                "pixel_size_um": px,
                "objects": int(len(ds)),
                "median_diameter_px": float(np.median(ds)),
                "implied_um": refined,
                "refinement": True,
            }
        )
        px = refined
    return ScaleEstimate(
        pixel_size_um=round(px, 4), diameter_px=d_um / px, diameter_um=d_um, n_objects=int(len(ds)), tried=tried
    )
