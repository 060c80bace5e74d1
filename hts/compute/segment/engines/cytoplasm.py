"""cytoplasm: whole cells (and their nuclei) from a single cytoplasm or brightfield channel."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from skimage import filters

from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines._deep import DeepEngine, DeepParams
from hts.compute.segment.engines.base import BRIGHTFIELD_NAMES, CYTOPLASM_NAMES, Role


class CytoplasmParams(DeepParams):
    seeds: Literal["hmin", "log"] = Field(
        "hmin",
        description="Nucleus seeds: extended h-minima of the inverse distance transform, or multi-scale LoG blobs on the nucleus map.",
    )
    h_um: float = Field(1.5, gt=0, description="h of the extended h-minima, in µm.")
    nucleus_diameter_um: float = Field(10.0, gt=0, description="Typical nucleus diameter (LoG scales).")
    min_nucleus_area_um2: float = Field(10.0, ge=0, description="Smaller nuclei are discarded.")
    cell_max_distance_um: float = Field(30.0, gt=0, description="A cell extends at most this far from its nucleus.")


class CytoplasmEngine(DeepEngine):
    """Single-channel whole-cell segmentation (no nuclear stain needed).

    A U-Net classifies each pixel of one cytoplasm (or brightfield) channel as
    background, cytoplasm or nucleus. Nuclei: the nucleus probability is
    thresholded by multi-level Otsu, touching nuclei are split by a seeded
    watershed with seeds from extended h-minima of the inverse distance transform
    (h in µm) or from multi-scale LoG blobs. Cells: seeded watershed from those
    nuclei over the cell probability weighted by log intensity, inside the cell
    mask (multi-level Otsu of the cell probability), at most
    ``cell_max_distance_um`` from the nucleus. Every cell has its nucleus's id.
    """

    name = "cytoplasm"
    summary = "one cytoplasm/brightfield channel -> 3-class net -> nuclei and whole cells by seeded watershed"
    roles = {"cytoplasm": Role("cytoplasm or brightfield channel", guess=CYTOPLASM_NAMES + BRIGHTFIELD_NAMES)}
    outputs = ("nuclei", "cells")
    model_name = "cytoplasm"
    Params = CytoplasmParams

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        p, px = self.params, ctx["pixel_size_um"]
        probs = self.head(maps, "classes")  # (3, y, x): background, cytoplasm, nucleus
        nuc_p, cell_p = probs[2], probs[1] + probs[2]
        nuc_mask = pp.remove_small(pp.fill_holes(nuc_p > _otsu_high(nuc_p)), p.min_nucleus_area_um2 / px**2)
        nuclei = pp.split_touching(
            nuc_mask,
            seeds=p.seeds,
            diameter_px=pp.um_to_px(p.nucleus_diameter_um, px),
            h_px=pp.um_to_px(p.h_um, px),
            intensity=nuc_p,
        )
        lo, hi = ctx["norm"]["cytoplasm"]
        intensity = np.clip(pp.normalize(images["cytoplasm"], lo, hi), 1e-3, None)
        landscape = -(cell_p * np.log1p(intensity))
        cells = pp.grow_cells(
            nuclei, landscape, cell_p > _otsu_high(cell_p), max_distance_px=pp.um_to_px(p.cell_max_distance_um, px)
        )
        return {"nuclei": nuclei, "cells": cells}


def _otsu_high(prob: np.ndarray) -> float:
    """Multi-level Otsu threshold of a probability map (the upper of three classes' lower bound), at least 0.3."""
    try:
        t = float(filters.threshold_multiotsu(prob[::2, ::2], classes=3)[0])
    except ValueError:  # flat map
        t = 0.5
    return float(np.clip(t, 0.3, 0.7))
