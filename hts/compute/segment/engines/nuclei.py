"""nuclei: a deep generalist nucleus engine for stained nuclei."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines._deep import DeepEngine, DeepParams, adapt_scale_field
from hts.compute.segment.engines.base import NUCLEUS_NAMES, Role


class NucleiParams(DeepParams):
    """Post-processing of the foreground and distance maps.

    The defaults below are generic; a model folder's ``config.json`` may hold
    values tuned for its weights under ``postprocess`` (the shipped ``nuclei``
    and ``brightfield-unet`` models do), which replace them unless a parameter
    is passed explicitly.
    """

    foreground_threshold: float = Field(
        0.5, gt=0, lt=1, description="Foreground probability above which a pixel is nucleus."
    )
    split_h: float = Field(
        0.3,
        gt=0,
        description="Depth of the saddle in the predicted (radius-normalized) distance map that separates touching nuclei.",
    )
    min_area_um2: float = Field(10.0, ge=0, description="Smaller objects are discarded.")
    adapt_scale: bool = adapt_scale_field(
        True, "training size 12 µm; nuclei of ~6 to ~24 µm measured; up to 2x the compute on such fields"
    )


class NucleiEngine(DeepEngine):
    """Generalist nuclei (stained: Hoechst / DAPI; any imager and magnification).

    A U-Net predicts nucleus foreground and a distance-to-boundary map normalized
    by the typical nucleus radius; touching nuclei are split by a seeded watershed
    on that map (seeds: its h-maxima). Images are rescaled from the plate's pixel
    size to the training scale, so no tuning is needed across magnifications; a field
    whose nuclei are much larger or smaller than the training size (12 µm) is run again
    at the scale that gives them that size (``adapt_scale``).
    """

    name = "nuclei"
    summary = "deep generalist nucleus segmentation for stained nuclei (foreground + distance, seeded watershed)"
    roles = {"nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=NUCLEUS_NAMES)}
    outputs = ("nuclei",)
    model_name = "nuclei"
    Params = NucleiParams

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        return {"nuclei": instances_from_fg_dist(self, maps, "foreground", "distance", ctx)}

    def object_diameters(self, maps: np.ndarray) -> np.ndarray:
        """The nuclei's diameters (model pixels), from the post-processing run on maps at the model's scale."""
        from hts.compute.segment.scale import object_diameters_px

        lab = instances_from_fg_dist(self, maps, "foreground", "distance", {"pixel_size_um": self.train_pixel_um})
        return object_diameters_px(lab)


def instances_from_fg_dist(engine: DeepEngine, maps: np.ndarray, fg: str, dist: str, ctx) -> np.ndarray:
    """Instances from a foreground head and a normalized-distance head (shared by the nucleus-type engines).

    The minimum area is for nuclei of the training size: a field ``adapt_scale`` found to hold
    larger or smaller ones (``ctx["object_scale"]``) scales it by the square of their size.
    """
    p, px = engine.params, ctx["pixel_size_um"]
    min_px = p.min_area_um2 / px**2 * float(ctx.get("object_scale", 1.0)) ** 2
    mask = pp.remove_small(engine.head(maps, fg) > p.foreground_threshold, min_px)
    return pp.split_touching(mask, seeds="hmin", diameter_px=0, h_px=p.split_h, distance=engine.head(maps, dist))
