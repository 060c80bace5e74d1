"""brightfield-unet: nuclei found in label-free brightfield."""

from __future__ import annotations

from hts.compute.segment.engines._deep import adapt_scale_field
from hts.compute.segment.engines.base import BRIGHTFIELD_NAMES, Role
from hts.compute.segment.engines.nuclei import NucleiEngine, NucleiParams


class BrightfieldUNetParams(NucleiParams):
    adapt_scale: bool = adapt_scale_field(
        False, "off by default: on this model's validation split it scored AP@0.5 0.664 against 0.668 without"
    )


class BrightfieldUNetEngine(NucleiEngine):
    """Label-free nuclei from a brightfield (or DIC / phase) channel.

    A U-Net trained on brightfield fields whose targets were derived from a
    paired nuclear stain (Hoechst / DAPI) of the same fields predicts nucleus
    foreground and a radius-normalized distance map; touching nuclei are split by
    a seeded watershed on the distance map (the ``nuclei`` engine's
    post-processing). Once trained on a screen's own plates with the stain, the
    stain can be dropped from later screens.
    """

    name = "brightfield-unet"
    summary = "U-Net finding nuclei in label-free brightfield (trained on stain-derived targets)"
    roles = {"brightfield": Role("brightfield / DIC / phase-contrast channel", guess=BRIGHTFIELD_NAMES)}
    model_name = "brightfield-unet"
    Params = BrightfieldUNetParams
