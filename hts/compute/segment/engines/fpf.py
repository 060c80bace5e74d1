"""fpf: feature pyramid fusion of nucleus features into whole-cell segmentation."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines._deep import DeepEngine
from hts.compute.segment.engines.base import CYTOPLASM_NAMES, NUCLEUS_NAMES, Role
from hts.compute.segment.engines.nuclei import NucleiParams, instances_from_fg_dist


class FPFParams(NucleiParams):
    adapt_scale: bool = Field(False, description="Not used by fpf (its nuclei and cells are sized together).")
    cell_foreground_threshold: float = Field(0.5, gt=0, lt=1, description="Cell foreground probability threshold.")
    cell_max_distance_um: float = Field(40.0, gt=0, description="A cell extends at most this far from its nucleus.")


class FPFEngine(DeepEngine):
    """Feature pyramid fusion (nucleus channel + cell channel -> nuclei and whole cells).

    Two encoder-decoders with pyramid (FPN-style) outputs: a nucleus model,
    trained first on the nucleus channel and then frozen, and a cell model whose
    every pyramid level receives the nucleus model's features of the same level
    by addition. Heads: nucleus foreground and distance, cell foreground and
    distance. Nuclei come from the nucleus heads (seeded watershed on the
    distance map); cells by seeded watershed from those nuclei over the inverted
    cell distance map inside the cell foreground, so every cell is linked to its
    nucleus (same id). Fusion helps most on clustered, touching cells.
    """

    name = "fpf"
    summary = "feature pyramid fusion: nucleus features added into the cell model; nuclei + whole cells"
    roles = {
        "nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=NUCLEUS_NAMES),
        "cytoplasm": Role("cell channel (cytoplasm / membrane / cell body)", guess=CYTOPLASM_NAMES),
    }
    outputs = ("nuclei", "cells")
    model_name = "fpf"
    Params = FPFParams

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        p, px = self.params, ctx["pixel_size_um"]
        nuclei = instances_from_fg_dist(self, maps, "nucleus_foreground", "nucleus_distance", ctx)
        cell_mask = self.head(maps, "cell_foreground") > p.cell_foreground_threshold
        cells = pp.grow_cells(
            nuclei,
            -self.head(maps, "cell_distance"),
            cell_mask,
            max_distance_px=pp.um_to_px(p.cell_max_distance_um, px),
        )
        return {"nuclei": nuclei, "cells": cells}
