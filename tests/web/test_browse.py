"""The browser's library layer (hts.tasks.browse.Browser) on a real ingested, segmented plate: values asserted
against the catalog and the store, every bad reference a one-line error."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from hts.errors import CatalogError, StoreError
from hts.tasks.browse import TILE, Browser, NotFound

PLATE = "DEMO-PLATE"
GFP_RATIO = "Cells_Intensity_NucCytoRatio_GFP_median"


@pytest.fixture(scope="module")
def b(browse_ws):
    return Browser(browse_ws)


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_plates_counts_and_qc(b, browse_ws):
    (row,) = b.plates()
    n = browse_ws.catalog.query("SELECT count(*) AS n FROM cells")[0]["n"]
    assert row["name"] == PLATE and row["cells"] == n > 1000
    assert row["wells"] == 96 and row["fields_complete"] == 96 and row["runs"] == 1 and row["running"] == 0
    assert row["qc"]["engine"] == "classic" and row["qc"]["quality"] in ("excellent", "marginal", "unusable")


def test_plate_heatmap_values_equal_well_stats(b, browse_ws):
    d = b.plate(PLATE, metric=GFP_RATIO)
    assert (d["plate_type"], len(d["rows"]), len(d["columns"]), len(d["wells"])) == (96, 8, 12, 96)
    expect = {
        r["well"]: r["v"]
        for r in browse_ws.catalog.query(
            f"SELECT well, {GFP_RATIO} AS v FROM well_stats WHERE run_id = ?", [d["run"]["run_id"]]
        )
    }
    got = {w["well"]: w["value"] for w in d["wells"]}
    assert got.keys() == expect.keys()
    assert all(got[k] == pytest.approx(expect[k], rel=1e-12) for k in got)
    # the demo platemap: vehicle in column 1, positive control in column 12; the GFP ratio separates them
    roles = {w["well"]: w["role"] for w in d["wells"]}
    assert roles["A01"] == "negative_control" and roles["A12"] == "positive_control"
    assert d["qc"]["z_prime"] > 0.5 and d["qc"]["quality"] == "excellent"
    assert d["qc"]["positive"]["wells"] == 8 and d["qc"]["negative"]["wells"] == 8


def test_metrics_list_counts_first_then_well_stats_columns(b):
    m = b.metrics(PLATE)
    assert m[:2] == ["cell_count", "cells_per_field"]
    assert GFP_RATIO in m and "row_index" not in m and "concentration" not in m


def test_unknown_metric_plate_well_field_are_one_line(b):
    with pytest.raises(CatalogError, match="no per-well metric 'Nope'"):
        b.plate(PLATE, metric="Nope")
    with pytest.raises(NotFound, match="no plate 'NOPE'"):
        b.plate("NOPE")
    with pytest.raises(NotFound, match="not a well name"):
        b.well(PLATE, "../../etc")
    with pytest.raises(NotFound, match="no field 3"):
        b.field(PLATE, "B05", 3)
    with pytest.raises(NotFound, match="no label image '../x'"):
        b.outline_tile(PLATE, "B05", 0, "../x", 0, 0, 0)
    with pytest.raises(NotFound, match="pyramid levels 0..0, not 4"):
        b.tile(PLATE, "B05", 0, 4, 0, 0)
    with pytest.raises(NotFound, match=r"no tile \(1, 0\)"):
        b.tile(PLATE, "B05", 0, 0, 1, 0)
    with pytest.raises(NotFound, match="channels 0..2, not 9"):
        b.tile(PLATE, "B05", 0, 0, 0, 0, channels=[9])


def test_well_fields_numbers_and_dose(b, browse_ws):
    d = b.well(PLATE, "b05", metric=GFP_RATIO)  # well names are normalised
    assert d["well"] == "B05" and d["platemap"]["role"] == "sample"
    (f,) = d["fields"]
    n = browse_ws.catalog.query("SELECT count(*) AS n FROM cells WHERE well = 'B05'")[0]["n"]
    assert f["cell_count"] == n == d["stats"]["cell_count"]
    dose = d["dose"]
    assert dose["compound"] == d["platemap"]["compound"] and dose["well"] == "B05"
    mine = [p for p in dose["points"] if p["well"] == "B05"]
    assert len(mine) == 1 and mine[0]["value"] == pytest.approx(d["stats"][GFP_RATIO])
    assert sum(p.get("vehicle", False) for p in dose["points"]) == 8  # the vehicle wells at dose 0
    assert dose["fit"]["ok"] and len(dose["curve"]) == 60
    assert b.well(PLATE, "A01", metric=GFP_RATIO)["dose"] is None  # a control well has no series


def test_field_meta_from_store(b):
    m = b.field(PLATE, "B05", 0)
    assert m.shape == (1, 3, 1, 256, 256) and m.levels == 1
    assert [c["label"] for c in m.channels] == ["DAPI", "GFP", "Brightfield"]
    assert [c["active"] for c in m.channels] == [True, True, False]  # brightfield off for a fluorescence run
    assert set(m.labels) == {"nuclei", "cells"} and m.label_colors["nuclei"] == "#00ffff"
    assert m.pixel_size_um == pytest.approx(0.65)


def test_tile_is_the_composite_of_the_stored_pixels(b, browse_ws):
    from hts.reports.tiles import composite
    from hts.store.ngff import PlateStore

    m = b.field(PLATE, "B05", 0)
    img = _image(b.tile(PLATE, "B05", 0, 0, 0, 0, channels=[1]))
    assert img.shape == (256, 256, 3)  # a field smaller than TILE gives one partial tile
    raw = np.asarray(PlateStore(m.store_uri).read_image(m.path, 0)[0, 1, 0])
    expect = composite([raw], [m.channels[1]["color"]], [m.channels[1]["window"]])
    assert np.abs(img.astype(int) - expect.astype(int)).mean() < 2.0  # JPEG quality 90
    assert img[..., 1].mean() > 10 * max(img[..., 0].mean(), img[..., 2].mean())  # GFP is green


def test_contrast_window_changes_the_tile(b):
    dim = _image(b.tile(PLATE, "B05", 0, 0, 0, 0, channels=[1], windows={1: (0, 60000)}))
    bright = _image(b.tile(PLATE, "B05", 0, 0, 0, 0, channels=[1], windows={1: (0, 600)}))
    assert bright[..., 1].mean() > 3 * dim[..., 1].mean()


def test_outline_tile_marks_label_edges_exactly(b):
    from skimage.segmentation import find_boundaries

    from hts.store.ngff import PlateStore

    m = b.field(PLATE, "B05", 0)
    png = _image(b.outline_tile(PLATE, "B05", 0, "nuclei", 0, 0, 0))
    assert png.shape == (256, 256, 4)
    lab = np.asarray(PlateStore(m.store_uri).read_labels(m.path, "nuclei")[0, 0, 0])
    np.testing.assert_array_equal(png[..., 3] > 0, find_boundaries(lab, mode="inner"))
    assert tuple(png[png[..., 3] > 0][0][:3]) == (0, 255, 255)


def test_cell_at_finds_the_cell_of_a_pixel(b, browse_ws):
    from hts.store.ngff import PlateStore

    m = b.field(PLATE, "B05", 0)
    lab = np.asarray(PlateStore(m.store_uri).read_labels(m.path, "nuclei")[0, 0, 0])
    ys, xs = np.nonzero(lab)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    hit = b.cell_at(PLATE, "B05", 0, x + 0.5, y + 0.5, label="nuclei")
    assert hit["value"] == lab[y, x] and hit["cell"]["nucleus_id"] == lab[y, x]
    assert hit["cell"]["well"] == "B05" and "Nuclei_AreaShape_Area" in hit["cell"]
    by, bx = np.argwhere(lab == 0)[0]
    assert b.cell_at(PLATE, "B05", 0, float(bx), float(by), label="nuclei") is None
    assert b.cell_at(PLATE, "B05", 0, -5, 10) is None  # outside the field


def test_cells_filter_equals_sql(b, browse_ws):
    table, total = b.cells(PLATE, "B05", where="Nuclei_AreaShape_Area > 300")
    n = browse_ws.catalog.query("SELECT count(*) AS n FROM cells WHERE well = 'B05' AND Nuclei_AreaShape_Area > 300")[
        0
    ]["n"]
    assert total == n == table.num_rows > 0
    assert min(table.column("Nuclei_AreaShape_Area").to_pylist()) > 300
    _, everything = b.cells(PLATE, "B05")
    assert everything > total
    small, _ = b.cells(PLATE, "B05", limit=3)
    assert small.num_rows == 3


@pytest.mark.parametrize(
    "where, message",
    [
        ("Nope > 3", "Nope"),
        ("1=1); DROP TABLE cells; --", "one statement|syntax"),
        ("1=1 AND (SELECT count(*) FROM read_text('/etc/passwd')) > 0", "disabled|external|read_text|Permission"),
    ],
)
def test_cells_filter_errors_are_one_line_and_read_only(b, browse_ws, where, message):
    with pytest.raises(CatalogError, match=message) as e:
        b.cells(PLATE, "B05", where=where)
    assert "\n" not in str(e.value)
    assert browse_ws.catalog.query("SELECT count(*) AS n FROM cells")[0]["n"] > 0


def test_query_cancelled_after_timeout(browse_ws):
    slow = Browser(browse_ws, timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(CatalogError, match="longer than 0.3 s and was cancelled"):
        slow.query("SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b")
    assert time.monotonic() - t0 < 20


def test_deleted_store_is_a_clear_error(copied_ws):
    import shutil

    b = Browser(copied_ws)
    rec = copied_ws.catalog.find_plate(PLATE)
    shutil.rmtree(rec.store_uri)
    with pytest.raises(StoreError, match="store .* is missing"):
        b.tile(PLATE, "B05", 0, 0, 0, 0)
    assert b.plate(PLATE)["wells"]  # the catalog pages still work


def test_tiles_of_a_large_field_cover_it(tmp_path):
    """A 1100² field at tile 512: 3x3 tiles at level 0 (the last ones partial), 2x2 at level 1."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    synth = make_plate(tmp_path / "raw", format="nd2", wells="B02", fields=1, shape=(1100, 1100))
    ws = Workspace.at(tmp_path / "ws", scheduler="sync")
    hts.ingest(synth.source, ws)
    b = Browser(ws)
    m = b.field(PLATE, "B02", 0)
    assert m.levels >= 2
    assert _image(b.tile(PLATE, "B02", 0, 0, 2, 2)).shape == (1100 - 2 * TILE, 1100 - 2 * TILE, 3)
    assert _image(b.tile(PLATE, "B02", 0, 1, 1, 1)).shape == (550 - TILE, 550 - TILE, 3)
    with pytest.raises(NotFound):
        b.tile(PLATE, "B02", 0, 0, 3, 0)
    assert b.plate(PLATE)["run"] is None  # not segmented: the plate page still draws
    assert b.field(PLATE, "B02", 0).labels == []


def test_catalog_stays_readable_during_a_run(copied_ws):
    """A segment run in another process writes the catalog while the browser reads it: every read succeeds,
    the run finishes, and the progress seen grows through intermediate states to the end."""
    db = str(copied_ws.db)
    cmd = [sys.executable, "-m", "hts.cli.main", "segment", "--engine", "classic", "-p", "smoothing_um=1.3"]
    cmd += ["--label-suffix", "b", "--db", db]
    env = dict(os.environ, HTS_SCHEDULER="sync", HTS_PLATES_DIR=str(copied_ws.plates_dir))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = Browser(copied_ws)
    before = {r["run_id"] for r in b.progress(PLATE)["runs"]}
    seen = []
    try:
        while proc.poll() is None:
            new = [r for r in b.progress(PLATE)["runs"] if r["run_id"] not in before]
            if new:
                seen.append(new[0]["fields_done"])
            b.plate(PLATE)  # the heatmap's queries too
            time.sleep(0.2)
    finally:
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    final = b.progress(PLATE)
    assert not final["active"] and len(final["runs"]) == 2
    assert {"nuclei_b", "cells_b"} <= set(b.field(PLATE, "B05", 0).labels)
    assert seen == sorted(seen) and any(0 < s < 96 for s in seen), seen


def test_384_without_outer_wells_and_1536_geometry(formats_ws):
    b = Browser(formats_ws)
    d = b.plate("P384")
    assert (d["plate_type"], len(d["rows"]), len(d["columns"])) == (384, 16, 24)
    assert len(d["wells"]) == 14 * 22 and d["run"] is None
    pos = {w["well"]: (w["row_index"], w["column_index"]) for w in d["wells"]}
    assert pos["B02"] == (1, 1) and pos["O23"] == (14, 22) and "A01" not in pos and "P24" not in pos
    e = b.plate("P1536")
    assert (len(e["rows"]), len(e["columns"])) == (32, 48) and e["rows"][-1] == "AF"
    pos = {w["well"]: (w["row_index"], w["column_index"]) for w in e["wells"]}
    assert pos["AC40"] == (28, 39) and pos["AF48"] == (31, 47) and len(pos) == 4 * 9


def test_plate_carries_the_activity_of_its_run(copied_ws):
    """After `hts profile` + `hts activity`, the plate page's data lists the hits with this plate's wells."""
    import hts

    assert Browser(copied_ws).plate(PLATE)["activity"] is None  # no profiles yet
    hts.profile(workspace=copied_ws)
    act = hts.activity(copied_ws, null_size=1000)
    a = Browser(copied_ws).plate(PLATE)["activity"]
    assert a["profile_set_id"] == act.profile_set_id and a["n_hits"] == act.n_hits > 0
    assert a["n_treatments"] == len(act.treatments)
    top = a["treatments"][0]
    assert top["hit"] and top["q"] < 0.05
    wells = {r["well"] for r in hts.query(
        f"SELECT well FROM platemap WHERE compound = '{top['compound']}' AND concentration = {top['concentration']}",
        copied_ws).iter_rows(named=True)}  # fmt: skip
    assert set(top["wells"]) == wells and len(wells) >= 4
    assert [t["hit"] for t in a["treatments"]] == sorted((t["hit"] for t in a["treatments"]), reverse=True)
