"""Per-cell features end to end: segment measures into `cells`, `measure` for existing runs,
resume, overwrite, and the well/plate/field views against direct computation."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import here

from hts.api import segment
from hts.catalog import Catalog
from hts.compute.measure import measure_field
from hts.errors import CatalogError
from hts.store import PlateStore
from hts.store.tables import run_parts_dir
from hts.tasks.measure import measure


@pytest.fixture
def plate(annotated_plate):
    return annotated_plate(wells="A01:B04", fields=2, shape=(160, 160))


def _cells(order="well, field_index, t, object_id"):
    with duckdb.connect("hts.duckdb", read_only=True) as con:
        return con.sql(f"SELECT * EXCLUDE (run_id) FROM cells ORDER BY {order}").to_arrow_table()


def test_segment_measures_every_cell_and_values_match_the_stored_labels(plate):
    (rep,) = segment(engine="classic", workspace=here())
    cat = Catalog("hts.duckdb")
    n = cat.query("SELECT count(*) AS n FROM cells")[0]["n"]
    assert n == rep.cells == rep.objects["cells"] > 100
    per_field = cat.query(
        "SELECT f.well, f.field_index, f.n_cells, c.n_objects FROM run_fields f "
        "JOIN run_object_counts c USING (run_id, well, field_index) WHERE c.output = 'cells'"
    )
    assert all(r["n_cells"] == r["n_objects"] for r in per_field)
    run = cat.query("SELECT run_id, features FROM runs")[0]
    assert '"texture": false' in run["features"]
    # one field recomputed from the stored labels and pixels equals what the table holds
    store = PlateStore(Path("plates/DEMO-PLATE.zarr"))
    labels = {k: store.read_labels("B/03/1", k)[0, 0, 0] for k in ("nuclei", "cells")}
    pix = store.read_field("B/03", 1)[0, :, 0]
    want = measure_field(labels, dict(zip(["DAPI", "GFP", "Brightfield"], pix)), pixel_size_um=0.65).to_pydict()
    got = cat.query("SELECT * FROM cells WHERE well = 'B03' AND field_index = 1 ORDER BY object_id")
    assert [r["object_id"] for r in got] == want["object_id"]
    for col in (
        "Cells_AreaShape_Area",
        "Nuclei_Intensity_MeanIntensity_DAPI",
        "Cytoplasm_Intensity_MedianIntensity_GFP",
        "Cells_AreaShape_Solidity",
    ):
        np.testing.assert_allclose([r[col] for r in got], want[col], rtol=1e-12)
    # parts are stored with the plate, one per field
    parts = sorted(run_parts_dir(store.path, run["run_id"]).glob("*.parquet"))
    assert len(parts) == 16 and pq.read_metadata(parts[0]).num_rows > 0


def test_views_aggregate_per_well_with_the_platemap(plate):
    segment(engine="classic", workspace=here())
    cat = Catalog("hts.duckdb")
    ws = cat.query("SELECT * FROM well_stats ORDER BY well")
    assert len(ws) == 8 and {r["role"] for r in ws} == {"negative_control", "sample", "positive_control"}
    direct = cat.query(
        "SELECT well, count(*) AS n, avg(Cells_AreaShape_Area) AS a, median(Nuclei_Intensity_MeanIntensity_DAPI) AS m "
        "FROM cells GROUP BY well ORDER BY well"
    )
    for r, d in zip(ws, direct):
        assert r["cell_count"] == d["n"] and r["cells_per_field"] == d["n"] / 2
        assert r["Cells_AreaShape_Area_mean"] == pytest.approx(d["a"])
        assert r["Nuclei_Intensity_MeanIntensity_DAPI_median"] == pytest.approx(d["m"])
        assert r["Cells_AreaShape_Area_std"] > 0
    (ps,) = cat.query("SELECT * FROM plate_stats")
    assert ps["n_wells"] == 8 and ps["cell_count"] == sum(r["cell_count"] for r in ws) and ps["n_negative_control"] == 2
    qc = cat.query("SELECT * FROM field_qc ORDER BY well, field_index")
    assert len(qc) == 16 and all(r["focus_score_min"] > 0 and r["saturated_fraction_max"] >= 0 for r in qc)
    assert all(
        r["cell_count"] == n["n_cells"]
        for r, n in zip(qc, cat.query("SELECT n_cells FROM run_fields ORDER BY well, field_index"))
    )
    prof = cat.query("SELECT * FROM cell_profiles LIMIT 1")[0]
    assert prof["Metadata_Plate"] == "DEMO-PLATE" and prof["Metadata_Well"] and prof["Metadata_Site"] in (0, 1)
    assert "Metadata_ObjectNumber" in prof and "plate_id" not in prof


def test_measure_an_unmeasured_run_then_skip_it(plate):
    (seg,) = segment(engine="classic", features=False, workspace=here())
    cat = Catalog("hts.duckdb")
    assert seg.cells == 0 and cat.query("SELECT count(*) AS n FROM cells")[0]["n"] == 0
    (rep,) = measure(workspace=here())
    assert rep.status == "measured" and rep.fields_measured == 16 and rep.cells == seg.objects["cells"]
    assert cat.query("SELECT count(*) AS n FROM cells")[0]["n"] == rep.cells
    (again,) = measure(workspace=here())
    assert again.status == "unchanged" and again.fields_measured == 0
    # segment again with features on: labels unchanged, nothing to measure either
    (seg2,) = segment(engine="classic", workspace=here())
    assert seg2.status == "unchanged" and seg2.fields_segmented == 0 and seg2.cells == rep.cells
    with pytest.raises(CatalogError, match="no segmentation runs for run 'zzz'"):
        measure(run="zzz", workspace=here())


def test_measuring_a_run_whose_label_image_is_gone_names_it(plate):
    import shutil

    from hts.errors import StoreError

    segment(engine="classic", features=False, workspace=here())
    shutil.rmtree(next(Path("plates").glob("*.zarr")) / "A" / "01" / "0" / "labels" / "cells")
    with pytest.raises(StoreError, match=r"A/01/0/labels/cells/0: no label image 'cells'"):
        measure(workspace=here())


def test_interrupted_measurement_resumes_to_the_same_table(plate, interrupt_field_task):
    segment(engine="classic", workspace=here())
    ref = _cells()
    segment(engine="classic", overwrite=True, workspace=here())  # fresh run, same labels and cells
    segment(engine="classic", features=False, label_suffix="x", workspace=here())
    restore = interrupt_field_task(6)
    with pytest.raises(KeyboardInterrupt):
        measure(
            run=Catalog("hts.duckdb").query("SELECT run_id FROM runs WHERE labels LIKE '%_x%'")[0]["run_id"],
            workspace=here(),
        )
    restore()
    measure(workspace=here())
    cat = Catalog("hts.duckdb")
    runs = cat.query("SELECT run_id, labels FROM runs WHERE status = 'complete' ORDER BY labels")
    assert len(runs) == 2
    with duckdb.connect("hts.duckdb", read_only=True) as con:
        for r in runs:
            got = con.sql(
                "SELECT * EXCLUDE (run_id) FROM cells WHERE run_id = $1 ORDER BY well, field_index, t, object_id",
                params=[r["run_id"]],
            ).to_arrow_table()
            assert got.equals(ref.select(got.column_names))


def test_overwrite_replaces_the_old_runs_cells_and_parts(plate):
    (a,) = segment(engine="classic", workspace=here())
    store = Path("plates/DEMO-PLATE.zarr")
    assert run_parts_dir(store, a.run_id).is_dir()
    (b,) = segment(engine="classic", params={"nucleus_diameter_um": 14.0}, overwrite=True, workspace=here())
    cat = Catalog("hts.duckdb")
    assert {r["run_id"] for r in cat.query("SELECT DISTINCT run_id FROM cells")} == {b.run_id}
    assert not run_parts_dir(store, a.run_id).exists()
    assert cat.query("SELECT count(*) AS n FROM cells")[0]["n"] == b.cells
