"""measure_field: one row per cell, compartments linked, CellProfiler names, foci per cell."""

from __future__ import annotations

import numpy as np
import pytest

from hts.compute.measure import MeasureOptions, measure_field, parent_of
from hts.compute.measure import features as F
from hts.synth import synth_field


def test_parent_of_picks_the_largest_overlap():
    children = np.zeros((6, 8), np.int32)
    parents = np.zeros((6, 8), np.int32)
    parents[:, :4] = 1
    parents[:, 4:] = 2
    children[1:3, 2:5] = 5  # 2 px in parent 1 per row, 1 px in parent 2
    children[4, 6] = 7  # only in parent 2
    children[0, 0] = 9
    parents[0, 0] = 0  # outside any parent
    ids, par = parent_of(children, parents)
    assert ids.tolist() == [5, 7, 9] and par.tolist() == [1, 2, 0]


@pytest.fixture(scope="module")
def field():
    f = synth_field(seed=3, shape=(256, 256), dose=0.0)
    return f, {c: f.image[i] for i, c in enumerate(f.channels)}


def test_rows_are_cells_with_their_nucleus_and_cytoplasm(field):
    f, images = field
    tab = measure_field({"nuclei": f.nuclei, "cells": f.cells}, images, pixel_size_um=0.5).to_pydict()
    cell_ids = F.object_ids(f.cells)
    assert tab["object_id"] == cell_ids.tolist()
    # every synthetic cell holds its own nucleus (same id) -> linked, one child
    assert tab["nucleus_id"] == tab["object_id"]
    assert set(tab["Cells_Children_Nuclei_Count"]) == {1.0}
    cell_area = F.shape_features(f.cells)["AreaShape_Area"]
    nuc_shape = F.shape_features(f.nuclei)
    nuc_ids = F.object_ids(f.nuclei)
    np.testing.assert_array_equal(tab["Cells_AreaShape_Area"], cell_area)
    pos = np.searchsorted(nuc_ids, tab["nucleus_id"])
    np.testing.assert_array_equal(tab["Nuclei_AreaShape_Area"], nuc_shape["AreaShape_Area"][pos])
    # cytoplasm = cell minus nucleus
    nuc_in_cell = np.bincount(f.cells[f.nuclei > 0], minlength=cell_ids.max() + 1)[cell_ids]
    np.testing.assert_array_equal(np.array(tab["Cytoplasm_AreaShape_Area"]), cell_area - nuc_in_cell)
    gfp = F.intensity_features(f.cells, images["GFP"], channel="GFP")["Intensity_MeanIntensity_GFP"]
    np.testing.assert_allclose(tab["Cells_Intensity_MeanIntensity_GFP"], gfp, rtol=1e-12)
    np.testing.assert_allclose(tab["Location_Center_X"], tab["Cells_AreaShape_Center_X"])
    assert tab["Nuclei_AreaShape_Area_um2"][0] == pytest.approx(tab["Nuclei_AreaShape_Area"][0] * 0.25)
    assert all(np.isfinite(v) and v > 0 for v in tab["Cells_Intensity_NucCytoRatio_DAPI"])


def test_dose_moves_signal_into_the_nucleus():
    def ratio(dose):
        f = synth_field(seed=4, shape=(256, 256), dose=dose)
        images = {c: f.image[i] for i, c in enumerate(f.channels)}
        tab = measure_field({"nuclei": f.nuclei, "cells": f.cells}, images, pixel_size_um=0.65)
        return np.nanmedian(np.array(tab["Cells_Intensity_NucCytoRatio_GFP"].to_numpy(zero_copy_only=False), float))

    assert ratio(1.0) > 1.5 * ratio(0.0)


def test_nucleus_only_runs_and_cells_without_a_nucleus(field):
    f, images = field
    tab = measure_field({"nuclei": f.nuclei}, images, pixel_size_um=None)
    assert tab.num_rows == len(F.object_ids(f.nuclei))
    assert not [c for c in tab.column_names if c.startswith(("Cells_", "Cytoplasm_"))]
    assert "Nuclei_Intensity_MedianIntensity_DAPI" in tab.column_names

    cells = np.zeros((40, 40), np.int32)
    cells[2:18, 2:18] = 1
    cells[22:38, 22:38] = 2
    nuclei = np.zeros_like(cells)
    nuclei[6:12, 6:12] = 4
    t = measure_field(
        {"nuclei": nuclei, "cells": cells}, {"DAPI": (nuclei > 0) * 1000 + 10}, pixel_size_um=1.0
    ).to_pydict()
    assert t["object_id"] == [1, 2] and t["nucleus_id"] == [4, None]
    assert t["Nuclei_AreaShape_Area"] == [36.0, None]
    assert t["Cells_Children_Nuclei_Count"] == [1.0, 0.0]
    assert t["Cytoplasm_AreaShape_Area"] == [256.0 - 36.0, 256.0]


def test_foci_per_cell_count_area_intensity_and_poles():
    cells = np.zeros((30, 80), np.int32)
    cells[5:15, 5:75] = 1  # a horizontal rod, 70 px long
    cells[18:28, 5:40] = 2  # a cell without foci
    nuclei = np.zeros_like(cells)
    nuclei[8:12, 35:45] = 1
    nuclei[20:26, 15:25] = 2
    foci = np.zeros_like(cells)
    foci[9:11, 6:8] = 1  # at the left pole
    foci[9:11, 38:40] = 2  # middle
    foci[9:12, 71:74] = 3  # right pole
    spots = np.where(foci > 0, 500, 100).astype(np.uint16)
    t = measure_field({"nuclei": nuclei, "cells": cells, "foci": foci}, {"FITC": spots}, pixel_size_um=1.0).to_pydict()
    assert t["Cells_Children_Foci_Count"] == [3.0, 0.0]
    assert t["Cells_Children_Foci_PolarCount"] == [2.0, 0.0]
    assert t["Cells_Sum_Foci_AreaShape_Area"] == [4.0 + 4.0 + 9.0, 0.0]
    assert (
        t["Cells_Mean_Foci_AreaShape_Area"][0] == pytest.approx(17 / 3)
        and t["Cells_Mean_Foci_AreaShape_Area"][1] is None
    )
    assert t["Cells_Mean_Foci_Intensity_MeanIntensity_FITC"][0] == pytest.approx(500 / 65535)
    assert t["Cells_Sum_Foci_Intensity_IntegratedIntensity_FITC"][0] == pytest.approx(17 * 500 / 65535)


def test_bad_input_and_options():
    with pytest.raises(ValueError, match="neither nuclei nor cells"):
        measure_field({"foci": np.zeros((4, 4), np.int32)}, {}, pixel_size_um=1.0)
    with pytest.raises(ValueError, match="GFP: shape"):
        measure_field({"nuclei": np.zeros((4, 4), np.int32)}, {"GFP": np.zeros((5, 4))}, pixel_size_um=1.0)
    empty = measure_field(
        {"nuclei": np.zeros((8, 8), np.int32)}, {"DAPI": np.zeros((8, 8), np.uint16)}, pixel_size_um=1.0
    )
    assert empty.num_rows == 0 and "Nuclei_AreaShape_Area" in empty.column_names
    assert MeasureOptions().key() != MeasureOptions(texture=True).key()
    with pytest.raises(Exception, match="extra"):
        MeasureOptions(textures=True)


def test_channel_names_are_made_sql_friendly():
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    tab = measure_field({"nuclei": lab}, {"Cy5 (far red)": np.ones((8, 8), np.uint16)}, pixel_size_um=None)
    assert "Nuclei_Intensity_MeanIntensity_Cy5_far_red" in tab.column_names


def test_optional_families_texture_granularity_rod(field):
    f, images = field
    images = {"DAPI": images["DAPI"]}
    base = measure_field({"nuclei": f.nuclei, "cells": f.cells}, images, pixel_size_um=0.5)
    full = measure_field(
        {"nuclei": f.nuclei, "cells": f.cells},
        images,
        pixel_size_um=0.5,
        options=MeasureOptions(texture=True, granularity=True, rod=True, texture_scale=2),
    ).to_pydict()
    from hts.compute.measure.rod import rod_features
    from hts.compute.measure.texture import granularity_features, texture_features

    ids = F.object_ids(f.cells)
    tex = texture_features(f.cells, images["DAPI"], channel="DAPI", scale=2)
    np.testing.assert_allclose(
        full["Cells_Texture_Contrast_DAPI_2_00_256"], tex["Texture_Contrast_DAPI_2_00_256"], rtol=1e-12
    )
    gran = granularity_features(f.nuclei, images["DAPI"], channel="DAPI")
    pos = np.searchsorted(F.object_ids(f.nuclei), full["nucleus_id"])
    np.testing.assert_allclose(full["Nuclei_Granularity_3_DAPI"], gran["Granularity_3_DAPI"][pos], rtol=1e-12)
    rod = rod_features(f.cells, images, pixel_size_um=0.5)
    np.testing.assert_allclose(full["Cells_Rod_Length_um"], rod["Rod_Length_um"], rtol=1e-12)
    assert len(full) > base.num_columns + 2 * 52 + 2 * 16 and len(full["object_id"]) == len(ids)
