"""local-threshold: nuclei by a local (block) threshold and a distance-transform watershed.

An hts engine from a package of its own: it uses only the public engine API
(``hts.compute.segment.engines``: ``Engine``, ``EngineParams``, ``Role``) and
scikit-image, and reaches hts through one entry point (see ../../README.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi
from skimage import feature, filters, segmentation

from hts.compute.segment.engines import Engine, EngineParams, Role

__all__ = ["LocalThresholdEngine", "LocalThresholdParams"]


class LocalThresholdParams(EngineParams):
    """Sizes are in µm, so one set of values serves every magnification (hts gives the pixel size)."""

    nucleus_diameter_um: float = Field(
        10.0, gt=0, description="Typical nucleus diameter: sets the window, the seed spacing and the size filter."
    )
    smoothing_um: float = Field(1.0, ge=0, description="Gaussian smoothing sigma before thresholding.")
    window_diameters: float = Field(3.0, gt=0, description="Side of the local-threshold window, in nucleus diameters.")
    offset: float = Field(
        0.02, description="Added to the local mean (in units of the field's 0.5-99.8 percentile range)."
    )
    floor: float = Field(
        0.5,
        ge=0,
        description="Pixels below this fraction of the field's Otsu threshold are background whatever their neighbourhood.",
    )
    min_area_um2: float = Field(12.0, ge=0, description="Smaller objects are discarded.")
    seed_spacing: float = Field(
        0.35, gt=0, le=2, description="Minimum distance between two nucleus seeds, in nucleus diameters."
    )


class LocalThresholdEngine(Engine):
    """Local-threshold nuclei (an example plug-in engine; no model weights).

    The nucleus channel is normalized with field-level percentiles and smoothed
    with a Gaussian. A pixel is nucleus when it is brighter than the
    Gaussian-weighted mean of its neighbourhood (a window a few nuclei wide) plus
    an offset, and brighter than a fraction of the field's Otsu threshold (so
    flat background never passes). Holes are filled, small objects dropped, and
    touching nuclei split by a watershed on the smoothed distance transform,
    seeded at its local maxima spaced at least ``seed_spacing`` diameters apart.
    """

    name = "local-threshold"
    summary = "local (block) threshold + distance watershed nuclei (example plug-in)"
    version = "1"
    roles = {"nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=("dapi", "hoechst", "dna", "nuc"))}
    outputs = ("nuclei",)
    Params = LocalThresholdParams

    def max_object_um(self) -> float:
        return 2.0 * self.params.nucleus_diameter_um

    def prepare(self, images: dict[str, np.ndarray], pixel_size_um: float) -> dict[str, Any]:
        # field-level statistics, so every tile of a large field thresholds the same way
        nuc = images["nucleus"].astype(np.float32)
        lo, hi = np.percentile(nuc[::2, ::2], [0.5, 99.8])
        sigma = self.params.smoothing_um / pixel_size_um
        sm = self._smooth(nuc, (float(lo), float(hi)), sigma)
        otsu = float(filters.threshold_otsu(sm)) if sm.min() < sm.max() else float(sm.max())
        return {
            "pixel_size_um": pixel_size_um,
            "norm": (float(lo), float(hi)),
            "sigma": sigma,
            "floor": otsu * self.params.floor,
        }

    @staticmethod
    def _smooth(img: np.ndarray, norm: tuple[float, float], sigma: float) -> np.ndarray:
        x = (img.astype(np.float32) - norm[0]) / max(norm[1] - norm[0], 1e-6)
        return filters.gaussian(x, sigma=sigma, preserve_range=True) if sigma > 0 else x

    def segment_tile(
        self, images: dict[str, np.ndarray], maps: np.ndarray | None, ctx: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        p, px = self.params, ctx["pixel_size_um"]
        diameter = p.nucleus_diameter_um / px
        sm = self._smooth(images["nucleus"], ctx["norm"], ctx["sigma"])
        window = max(3, int(p.window_diameters * diameter) | 1)
        local = filters.threshold_local(sm, window, method="gaussian", offset=-p.offset)
        mask = ndi.binary_fill_holes((sm > local) & (sm > ctx["floor"]))
        comps, n = ndi.label(mask)
        if n:
            small = np.bincount(comps.ravel()) < p.min_area_um2 / px**2
            small[0] = True
            mask = ~small[comps]
        dist = filters.gaussian(ndi.distance_transform_edt(mask), sigma=1.0, preserve_range=True)
        peaks = feature.peak_local_max(
            dist, min_distance=max(1, int(p.seed_spacing * diameter)), labels=ndi.label(mask)[0], exclude_border=False
        )
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        return {"nuclei": segmentation.watershed(-dist, markers, mask=mask).astype(np.int32)}
