"""foci: fluorescent clusters / spots inside cells, with their position along the cell's long axis."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi
from skimage import morphology

from hts.compute.measure.rod import axial_position
from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines.base import CYTOPLASM_NAMES, NUCLEUS_NAMES, Role, SegmentResult
from hts.compute.segment.engines.classic import ClassicEngine, ClassicParams


class FociParams(ClassicParams):
    foci_diameter_um: float = Field(
        1.5, gt=0, description="Typical focus diameter: the white top-hat keeps structures up to about twice this."
    )
    foci_threshold_mads: float = Field(
        8.0, gt=0, description="A focus pixel is this many MADs above the median top-hat response inside cells."
    )
    min_foci_area_um2: float = Field(0.6, ge=0, description="Smaller spots are noise (single hot pixels).")
    polar_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="A focus within this fraction of the cell length from either end is polar."
    )


class FociEngine(ClassicEngine):
    """Foci / clusters: nuclei and cells as the classic engine, plus spots on a foci channel.

    Spots: white top-hat (disk of twice the focus diameter) on the smoothed foci
    channel, thresholded at median + k·MAD of the top-hat response inside cells,
    small specks removed. Each focus is assigned to the cell it overlaps most;
    foci touching no cell are dropped. For each focus the position of its centroid
    along the cell's long axis (first principal axis of the cell's pixels) is
    reported from 0 to 1, and foci within ``polar_fraction`` of either end are
    flagged polar. Foci ids are their own; their cell is a property of the focus
    (NGFF ``image-label`` properties: ``cell``, ``axis_position``, ``polar``).
    """

    name = "foci"
    summary = "fluorescent foci/clusters assigned to the cell they touch, with long-axis position and polar flag"
    roles = {
        "nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=NUCLEUS_NAMES),
        "foci": Role(
            "the channel with the spots / clusters",
            guess=("foci", "spot", "cluster", "tritc", "rfp", "mcherry", "cy3", "cy5"),
        ),
        "cytoplasm": Role("cytoplasm channel for cell outlines (optional)", required=False, guess=CYTOPLASM_NAMES),
    }
    outputs = ("nuclei", "cells", "foci")
    Params = FociParams

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        return super().segment_tile({k: v for k, v in images.items() if k != "foci"}, maps, ctx)

    def finalize(
        self, labels: dict[str, np.ndarray], images: dict[str, np.ndarray], ctx: dict[str, Any]
    ) -> SegmentResult:
        labels = super().finalize(labels, images, ctx).labels  # the cells of a run without a cytoplasm channel
        p, px = self.params, ctx["pixel_size_um"]
        cells = labels["cells"]
        img = pp.smooth(images["foci"].astype(np.float32), ctx["sigma"] / 2)
        radius = max(1, int(round(pp.um_to_px(p.foci_diameter_um, px))))
        tophat = morphology.white_tophat(img, morphology.disk(radius))
        # noise level of the top-hat inside cells (outside, the flat background would understate it)
        inside = tophat[cells > 0] if (cells > 0).any() else tophat.ravel()
        med = float(np.median(inside))
        mad = float(np.median(np.abs(inside - med))) or 1e-6
        mask = pp.remove_small(tophat > med + p.foci_threshold_mads * 1.4826 * mad, p.min_foci_area_um2 / px**2)
        spots, n = ndi.label(mask)
        props: list[dict[str, Any]] = []
        foci = np.zeros_like(cells)
        if n:
            ids = np.arange(1, n + 1)
            # the cell each spot overlaps most: count (spot, cell) pixel pairs, keep the largest per spot
            sel = (spots > 0) & (cells > 0)
            pair, count = np.unique(
                spots[sel].astype(np.int64) * (int(cells.max()) + 1) + cells[sel], return_counts=True
            )
            spot_of, cell_of_pair = pair // (int(cells.max()) + 1), pair % (int(cells.max()) + 1)
            order = np.lexsort((count, spot_of))  # by spot, then count ascending: last per spot is the best
            owner = np.zeros(n + 1, np.int64)
            owner[spot_of[order]] = cell_of_pair[order]
            owner = owner[1:]
            kept = ids[owner > 0]
            lut = np.zeros(n + 1, np.int32)
            lut[kept] = np.arange(1, kept.size + 1)
            foci = lut[spots]
            if kept.size:
                cy = ndi.mean(np.indices(spots.shape)[0], spots, kept)
                cx = ndi.mean(np.indices(spots.shape)[1], spots, kept)
                cell_of = owner[kept - 1]
                pos = axial_position(cells, np.stack([cy, cx], axis=1), cell_of)
                polar = (pos < p.polar_fraction) | (pos > 1 - p.polar_fraction)
                for new_id, c, a, pl in zip(range(1, kept.size + 1), cell_of, pos, polar):
                    props.append(
                        {
                            "label-value": int(new_id),
                            "cell": int(c),
                            "axis_position": round(float(a), 4),
                            "polar": bool(pl),
                        }
                    )
        out = dict(labels)
        out["foci"] = foci.astype(np.int32)
        return SegmentResult(out, {"foci": props})
