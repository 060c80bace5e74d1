"""classic: threshold + seeded watershed, the CellProfiler-style baseline."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi
from skimage import filters

from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines.base import (
    CYTOPLASM_NAMES,
    NUCLEUS_NAMES,
    Engine,
    EngineParams,
    Role,
    SegmentResult,
)


class ClassicParams(EngineParams):
    nucleus_diameter_um: float = Field(10.0, gt=0, description="Typical nucleus diameter (LoG scale, size filters).")
    smoothing_um: float = Field(0.7, ge=0, description="Gaussian smoothing sigma before thresholding.")
    threshold: Literal["otsu", "local"] = Field(
        "otsu", description="Global Otsu on the field, or local (adaptive) threshold."
    )
    threshold_factor: float = Field(
        1.0, gt=0, description="Multiplies the threshold (CellProfiler's correction factor)."
    )
    local_block_um: float = Field(60.0, gt=0, description="Block size of the local threshold.")
    seeds: Literal["hmin", "log"] = Field(
        "hmin", description="Split touching nuclei by h-minima of the inverse distance transform, or by LoG blobs."
    )
    h_um: float = Field(1.0, gt=0, description="Depth h of the extended h-minima (saddle between touching nuclei).")
    min_nucleus_area_um2: float = Field(12.0, ge=0, description="Smaller nuclei are discarded.")
    cell_max_distance_um: float = Field(25.0, gt=0, description="A cell extends at most this far from its nucleus.")
    cell_threshold: Literal["multiotsu", "otsu"] = Field(
        "multiotsu",
        description="Cytoplasm foreground: lower threshold of a 3-class Otsu (keeps dim cells), or plain Otsu.",
    )
    cell_threshold_factor: float = Field(1.0, gt=0, description="Multiplies the cytoplasm threshold.")
    gradient_weight: float = Field(
        20.0,
        ge=0,
        description="Weight of the cytoplasm intensity gradient against distance from the nucleus when cells compete for pixels (0: pure distance, Voronoi-like).",
    )


class ClassicEngine(Engine):
    """Classic segmentation (the CellProfiler-style baseline; no model weights).

    Nuclei: Gaussian smoothing, Otsu threshold computed once per field (or a local
    threshold), holes filled, small objects removed, touching nuclei split by a
    seeded watershed on the distance transform with seeds from extended h-minima of
    its inverse (h in µm) or multi-scale LoG blobs. Cells: seeded watershed from
    the nuclei inside the cytoplasm foreground (lower class of a 3-class Otsu,
    holes filled), over a landscape of distance from the nucleus plus the
    cytoplasm intensity gradient (CellProfiler's "Propagation" idea), at most
    ``cell_max_distance_um`` from the nucleus; without a
    cytoplasm channel each nucleus is expanded by that distance (CellProfiler's
    "Distance-N"). Every cell has the id of its nucleus.
    """

    name = "classic"
    summary = "threshold + seeded watershed nuclei; cells grown from nuclei on a cytoplasm channel"
    roles = {
        "nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=NUCLEUS_NAMES),
        "cytoplasm": Role(
            "cytoplasm / cell-body channel; cells are nucleus expansions without it",
            required=False,
            guess=CYTOPLASM_NAMES,
        ),
    }
    outputs = ("nuclei", "cells")
    Params = ClassicParams

    def max_object_um(self) -> float:
        return self.params.nucleus_diameter_um + 2 * self.params.cell_max_distance_um

    @classmethod
    def measured_outputs(cls, channels: dict[str, str]) -> tuple[str, ...]:
        """Without a cytoplasm channel the cells are the nuclei expanded (Distance-N): written as labels,
        not measured (their features would repeat the nuclei's; their cytoplasm is background)."""
        return cls.outputs if "cytoplasm" in channels else ("nuclei",)

    @classmethod
    def cpu_seconds_per_megapixel(cls, channels: dict[str, str]) -> float | None:
        """Measured (docs/benchmarks.md: ``sweep``, ``pipeline``): 0.43 CPU-s per MP for dense 2048² nuclei
        fields with their features, 0.9-1.0 with a cytoplasm channel (cells grown on it, three compartments
        measured); rounded up. Subclasses (``foci``, plug-ins) were not measured: None, unless they say."""
        if cls is not ClassicEngine:
            return None
        return 1.0 if "cytoplasm" in channels else 0.5

    def prepare(self, images: dict[str, np.ndarray], pixel_size_um: float) -> dict[str, Any]:
        p = self.params
        sigma = pp.um_to_px(p.smoothing_um, pixel_size_um)
        ctx: dict[str, Any] = {"pixel_size_um": pixel_size_um, "sigma": sigma}
        if "cytoplasm" not in images:
            # cells are the nuclei expanded, done once over the stitched field (finalize): the tiles
            # only need a halo for nuclei (up to twice the expected diameter), not for whole cells
            ctx["max_object_um"] = 2 * p.nucleus_diameter_um
        nuc = images["nucleus"].astype(np.float32)
        lo, hi = np.percentile(nuc[::2, ::2], [0.5, 99.8])
        ctx["nuc_norm"] = (float(lo), float(hi))
        sm = pp.smooth(pp.normalize(nuc, lo, hi, copy=False), sigma)
        del nuc
        ctx["nuc_threshold"] = float(filters.threshold_otsu(sm)) * p.threshold_factor
        # the smoothed field, cut into the tiles (segment_field drops it for fields of many tiles)
        ctx["whole_field"] = {"nucleus": sm}
        if "cytoplasm" in images:
            cyt = images["cytoplasm"].astype(np.float32)
            clo, chi = np.percentile(cyt[::2, ::2], [0.5, 99.8])
            ctx["cyt_norm"] = (float(clo), float(chi))
            csm = ctx["whole_field"]["cytoplasm"] = pp.smooth(pp.normalize(cyt, clo, chi, copy=False), sigma)
            del cyt
            thr = None
            if p.cell_threshold == "multiotsu":
                try:
                    thr = filters.threshold_multiotsu(csm[::2, ::2], classes=3)[0]
                except ValueError:  # fewer than 3 grey levels (a blank or constant field): plain Otsu
                    thr = None
            if thr is None:
                thr = filters.threshold_otsu(csm)
            ctx["cyt_threshold"] = float(thr) * p.cell_threshold_factor
        return ctx

    @staticmethod
    def _smoothed(role: str, tile: np.ndarray, ctx: dict[str, Any], norm: str) -> np.ndarray:
        """The normalized, smoothed tile: cut from the field ``prepare`` smoothed while the driver keeps
        it (the tile's region ``ctx["tile_slices"]``; a tile's own smoothing differs from it only in
        the few pixels by the halo's outer edge), else computed."""
        full = ctx.get("whole_field", {}).get(role)
        if full is not None:
            if full.shape == tile.shape:
                return full
            where = ctx.get("tile_slices")
            if where is not None and full[where].shape == tile.shape:
                return full[where]
        return pp.smooth(pp.normalize(tile, *ctx[norm]), ctx["sigma"])

    def nuclei(self, nucleus: np.ndarray, ctx: dict[str, Any]) -> np.ndarray:
        p, px = self.params, ctx["pixel_size_um"]
        sm = self._smoothed("nucleus", nucleus, ctx, "nuc_norm")
        if p.threshold == "local":
            block = int(pp.um_to_px(p.local_block_um, px)) | 1
            thr = np.maximum(
                filters.threshold_local(sm, block_size=max(block, 3), offset=0), ctx["nuc_threshold"] * 0.5
            )
        else:
            thr = ctx["nuc_threshold"]
        mask = pp.threshold_mask(sm, thr, min_area_px=p.min_nucleus_area_um2 / px**2)
        return pp.split_touching(
            mask,
            seeds=p.seeds,
            diameter_px=pp.um_to_px(p.nucleus_diameter_um, px),
            h_px=pp.um_to_px(p.h_um, px),
            intensity=sm,
        )

    def cells(self, nuclei: np.ndarray, cytoplasm: np.ndarray | None, ctx: dict[str, Any]) -> np.ndarray:
        p, px = self.params, ctx["pixel_size_um"]
        reach = pp.um_to_px(p.cell_max_distance_um, px)
        if cytoplasm is None:  # Distance-N: the nuclei expanded (a field in blocks of the tile size)
            return pp.expand_labels(nuclei, reach, block=ctx.get("tile", 1024)).astype(np.int32, copy=False)
        csm = self._smoothed("cytoplasm", cytoplasm, ctx, "cyt_norm")
        mask = pp.fill_holes(csm > ctx["cyt_threshold"])
        # CellProfiler "Propagation"-like: distance from the nearest nucleus plus a
        # penalty for crossing intensity edges between cells.
        dist = ndi.distance_transform_edt(nuclei == 0)
        landscape = dist + p.gradient_weight * filters.sobel(csm)
        return pp.grow_cells(nuclei, landscape, mask, max_distance_px=reach, distance_to_nuclei=dist)

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        nuclei = self.nuclei(images["nucleus"], ctx)
        if "cytoplasm" not in images:
            return {"nuclei": nuclei}  # cells: finalize
        return {"nuclei": nuclei, "cells": self.cells(nuclei, images["cytoplasm"], ctx)}

    def finalize(
        self, labels: dict[str, np.ndarray], images: dict[str, np.ndarray], ctx: dict[str, Any]
    ) -> SegmentResult:
        if "cells" not in labels:
            labels = {**labels, "cells": self.cells(labels["nuclei"], None, ctx)}
        return SegmentResult(labels)
