"""One field's label images and channels -> one row per cell, CellProfiler-style columns.

A row is one *primary object*: the cell when the run produced ``cells``, else the
nucleus (nucleus-only engines). Columns, as pycytominer's merged single-cell
profiles name them:

- ``object_id`` (the primary object's label), ``nucleus_id`` (its nucleus: the
  nucleus whose pixels overlap the cell most; NULL if it has none),
  ``Location_Center_X`` / ``Location_Center_Y`` (primary object centroid, pixels);
- ``Nuclei_<feature>``, ``Cells_<feature>``, ``Cytoplasm_<feature>`` (cytoplasm =
  cell minus every nucleus) from :mod:`hts.compute.measure.features`, with
  ``Cells_Children_Nuclei_Count`` and ``Cells_Intensity_NucCytoRatio_<channel>``;
- with foci: ``Cells_Children_Foci_Count``, ``Cells_Children_Foci_PolarCount``
  (foci within 15 % of a pole along the cell's long axis), ``Cells_Sum_Foci_AreaShape_Area``,
  ``Cells_Mean_Foci_AreaShape_Area``, ``Cells_Mean_Foci_Intensity_MeanIntensity_<channel>``
  and ``Cells_Sum_Foci_Intensity_IntegratedIntensity_<channel>`` (a focus belongs to
  the cell it overlaps most);
- optional, behind :class:`MeasureOptions` flags: Haralick texture and granularity
  of the nuclei and cells, and the rod (bacterium) coordinate system of the cells.

Nuclei that overlap no cell are not rows (every engine grows cells from nuclei, so
this only drops fragments the cell step rejected).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from hts.compute.measure import features as F

__all__ = ["MeasureOptions", "measure_field", "parent_of", "column_safe", "COMPARTMENTS", "FEATURE_PREFIXES"]

COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
# Columns whose names start with one of these are features (aggregated by the well views).
FEATURE_PREFIXES = ("Location_", "Nuclei_", "Cells_", "Cytoplasm_")
POLE_FRACTION = 0.15


class MeasureOptions(BaseModel):
    """Which feature families to compute (shape and intensity always)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    texture: bool = Field(False, description="Haralick texture of nuclei and cells, every channel")
    texture_scale: int = Field(3, ge=1, le=32, description="pixel offset of the co-occurrence matrices")
    granularity: bool = Field(
        False, description="granularity spectrum (CellProfiler MeasureGranularity) of nuclei and cells"
    )
    rod: bool = Field(False, description="rod-cell coordinate system: length, width, curvature, volume, axial profile")

    def key(self) -> str:
        """Identity of the measurement (with the hts feature version) for resume bookkeeping."""
        doc = {"features": FEATURES_VERSION, **self.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# Bump when a feature definition changes, so `hts measure` recomputes old runs.
FEATURES_VERSION = 2  # 2: classic runs without a cytoplasm channel measure their nuclei only


def column_safe(channel: str) -> str:
    """A channel name as it appears in feature names: runs of other characters than letters/digits -> ``_``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", channel).strip("_") or "channel"


def parent_of(children: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each child object (sorted ids), the parent label it overlaps most (0: none).

    Returns ``(child_ids, parent_ids)``; ties go to the smaller parent id.
    """
    child_ids = F.object_ids(children)
    out = np.zeros(len(child_ids), np.int64)
    both = (children > 0) & (parents > 0)
    if not both.any() or not len(child_ids):
        return child_ids, out
    c = children[both].astype(np.int64)
    p = parents[both].astype(np.int64)
    # (child, parent) pairs as one integer key: 1-D unique is ~10x faster than unique(axis=1)
    base = int(p.max()) + 1
    if int(c.max()) < (1 << 62) // base:
        keys, counts = np.unique(c * base + p, return_counts=True)
        pairs = np.divmod(keys, base)
    else:  # ids too large to pack
        pairs, counts = np.unique(np.stack([c, p]), axis=1, return_counts=True)
    # sort by child, then overlap descending, then parent ascending; keep the first per child
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    pc, pp = pairs[0][order], pairs[1][order]
    first = np.r_[True, pc[1:] != pc[:-1]]
    out[np.searchsorted(child_ids, pc[first])] = pp[first]
    return child_ids, out


def _aligned(values: np.ndarray, ids: np.ndarray, want: np.ndarray, fill=np.nan) -> np.ndarray:
    """``values`` (aligned with sorted ``ids``) re-aligned with ``want`` ids; ``fill`` where absent."""
    out = np.full(len(want), fill, dtype=np.float64)
    if len(ids) and len(want):
        pos = np.searchsorted(ids, want)
        pos = np.clip(pos, 0, len(ids) - 1)
        hit = ids[pos] == want
        out[hit] = values[pos[hit]]
    return out


def measure_field(
    labels: Mapping[str, np.ndarray],
    images: Mapping[str, np.ndarray],
    *,
    pixel_size_um: float | None,
    options: MeasureOptions | None = None,
) -> pa.Table:
    """Per-cell features of one 2-D field.

    ``labels`` maps engine outputs (``nuclei``, ``cells``, ``foci``) to label images;
    ``images`` maps channel names to 2-D images of the same shape (names enter
    feature names through :func:`column_safe`: ``"Cy5 (far red)"`` -> ``Cy5_far_red``). Returns an Arrow
    table (one row per primary object, sorted by ``object_id``) whose columns are
    described in the module docstring.
    """
    options = options or MeasureOptions()
    images = {column_safe(ch): im for ch, im in images.items()}
    nuclei, cells, foci = labels.get("nuclei"), labels.get("cells"), labels.get("foci")
    if nuclei is None and cells is None:
        raise ValueError(f"nothing to measure: outputs {sorted(labels)} have neither nuclei nor cells")
    shape = (nuclei if nuclei is not None else cells).shape
    for name, im in [*labels.items(), *images.items()]:
        if np.shape(im) != shape:
            raise ValueError(f"{name}: shape {np.shape(im)} differs from {shape}")

    cols: dict[str, np.ndarray] = {}
    if cells is not None and nuclei is not None:
        comp = F.compartment_features(nuclei, cells, dict(images), pixel_size_um=pixel_size_um)
        ids = comp["cells"]["ObjectNumber"]
        nuc_ids, nuc_parent = parent_of(nuclei, cells)
        # each cell's nucleus: of the nuclei whose parent it is, the largest overlap -> largest area
        nucleus_of = np.zeros(len(ids), np.int64)
        n_children = np.zeros(len(ids))
        keep = nuc_parent > 0
        if keep.any():
            areas = comp["nuclei"]["AreaShape_Area"]
            nid, par, area = nuc_ids[keep], nuc_parent[keep], areas[keep]
            pos = np.searchsorted(ids, par)
            np.add.at(n_children, pos, 1)
            order = np.lexsort((nid, -area, pos))
            first = np.r_[True, pos[order][1:] != pos[order][:-1]]
            nucleus_of[pos[order][first]] = nid[order][first]
        cols["object_id"] = ids
        cols["nucleus_id"] = nucleus_of
        _add(cols, "Cells", comp["cells"], ids, ids)
        _add(cols, "Nuclei", comp["nuclei"], comp["nuclei"]["ObjectNumber"], nucleus_of)
        _add(cols, "Cytoplasm", comp["cytoplasm"], comp["cytoplasm"]["ObjectNumber"], ids)
        cols["Cells_Children_Nuclei_Count"] = n_children
        primary, primary_labels = "Cells", cells
    else:
        lab = cells if cells is not None else nuclei
        name = "Cells" if cells is not None else "Nuclei"
        feats = F.object_features(lab, dict(images), pixel_size_um=pixel_size_um)
        ids = feats["ObjectNumber"]
        cols["object_id"] = ids
        cols["nucleus_id"] = ids if name == "Nuclei" else np.zeros(len(ids), np.int64)
        _add(cols, name, feats, ids, ids)
        primary, primary_labels = name, lab
    cols["Location_Center_X"] = cols[f"{primary}_AreaShape_Center_X"]
    cols["Location_Center_Y"] = cols[f"{primary}_AreaShape_Center_Y"]

    if foci is not None and cells is not None:
        cols.update(_foci_per_cell(foci, cells, ids, images))
    if options.texture or options.granularity:
        from hts.compute.measure import texture as T

        for name, lab, want in (("Nuclei", nuclei, cols["nucleus_id"]), ("Cells", cells, ids)):
            if lab is None:
                continue
            own = F.object_ids(lab)
            for ch, im in images.items():
                fam = {}
                if options.texture:
                    fam.update(T.texture_features(lab, im, channel=ch, scale=options.texture_scale))
                if options.granularity:
                    fam.update(T.granularity_features(lab, im, channel=ch))
                _add(cols, name, fam, own, want)
    if options.rod:
        from hts.compute.measure import rod

        lab = primary_labels
        _add(cols, primary, rod.rod_features(lab, dict(images), pixel_size_um=pixel_size_um), F.object_ids(lab), ids)
    return _to_arrow(cols)


def _add(cols: dict, prefix: str, feats: Mapping[str, np.ndarray], own_ids: np.ndarray, want_ids: np.ndarray) -> None:
    same = len(own_ids) == len(want_ids) and np.array_equal(own_ids, want_ids)
    for k, v in feats.items():
        if k == "ObjectNumber":
            continue
        cols[f"{prefix}_{k}"] = (
            np.asarray(v, np.float64) if same else _aligned(np.asarray(v, np.float64), own_ids, want_ids)
        )


def _foci_per_cell(
    foci: np.ndarray, cells: np.ndarray, cell_ids: np.ndarray, images: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    from hts.compute.measure.rod import axial_position

    n = len(cell_ids)
    focus_ids, parent = parent_of(foci, cells)
    shape = F.object_features(foci, dict(images))  # shape and intensity of every focus, objects computed once
    inside = parent > 0
    pos = np.searchsorted(cell_ids, parent[inside]) if n else np.zeros(0, np.int64)
    out: dict[str, np.ndarray] = {}
    count = np.bincount(pos, minlength=n).astype(np.float64)
    area = shape["AreaShape_Area"][inside]
    out["Cells_Children_Foci_Count"] = count
    centres = np.stack([shape["AreaShape_Center_Y"][inside], shape["AreaShape_Center_X"][inside]], axis=1)
    axial = axial_position(cells, centres, parent[inside]) if inside.any() else np.zeros(0)
    polar = (axial <= POLE_FRACTION) | (axial >= 1 - POLE_FRACTION)
    out["Cells_Children_Foci_PolarCount"] = np.bincount(pos, weights=polar.astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["Cells_Sum_Foci_AreaShape_Area"] = np.bincount(pos, weights=area, minlength=n)
        out["Cells_Mean_Foci_AreaShape_Area"] = out["Cells_Sum_Foci_AreaShape_Area"] / count
        for ch in images:
            mean = shape[f"Intensity_MeanIntensity_{ch}"][inside]
            integ = shape[f"Intensity_IntegratedIntensity_{ch}"][inside]
            out[f"Cells_Mean_Foci_Intensity_MeanIntensity_{ch}"] = np.bincount(pos, weights=mean, minlength=n) / count
            out[f"Cells_Sum_Foci_Intensity_IntegratedIntensity_{ch}"] = np.bincount(pos, weights=integ, minlength=n)
    return out


def _to_arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    nucleus_id = cols.pop("nucleus_id").astype(np.int64)
    arrays = {
        "object_id": pa.array(cols.pop("object_id").astype(np.int64)),
        "nucleus_id": pa.array(nucleus_id, mask=nucleus_id == 0),
        "Location_Center_X": pa.array(cols.pop("Location_Center_X")),
        "Location_Center_Y": pa.array(cols.pop("Location_Center_Y")),
    }
    for k in sorted(cols):
        v = np.asarray(cols[k], np.float64)
        arrays[k] = pa.array(v, mask=~np.isfinite(v))  # NaN/inf -> NULL so SQL aggregates skip them
    return pa.table(arrays)
