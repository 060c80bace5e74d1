"""brightfield-unet: nuclei found in label-free brightfield."""

from __future__ import annotations

import numpy as np

from hts.compute.engines._deep import DeepEngine
from hts.compute.engines.base import BRIGHTFIELD_NAMES, Role
from hts.compute.engines.nuclei import NucleiParams, instances_from_fg_dist


class BrightfieldUNetEngine(DeepEngine):
    """Label-free nuclei from a brightfield (or DIC / phase) channel.

    A U-Net trained on brightfield fields whose targets were derived from a
    paired nuclear stain (Hoechst / DAPI) of the same fields predicts nucleus
    foreground and a radius-normalized distance map; touching nuclei are split by
    a seeded watershed on the distance map. Once trained on a screen's own
    plates (`hts train --engine brightfield-unet --labels-from DAPI`), the stain
    can be dropped from later screens.
    """

    name = "brightfield-unet"
    summary = "U-Net finding nuclei in label-free brightfield (trained on stain-derived targets)"
    roles = {"brightfield": Role("brightfield / DIC / phase-contrast channel", guess=BRIGHTFIELD_NAMES)}
    outputs = ("nuclei",)
    model_name = "brightfield-unet"
    Params = NucleiParams

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        return {"nuclei": instances_from_fg_dist(self, maps, "foreground", "distance", ctx)}
