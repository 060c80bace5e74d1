"""measure / qc / query presets / export from the command line, on one small annotated plate."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hts.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def segmented(tmp_path):
    assert run("demo", str(tmp_path / "raw"), "--wells", "A01:C04", "--fields", "1", "--size", "160").exit_code == 0
    assert run("ingest", str(tmp_path / "raw" / "DEMO-PLATE.nd2")).exit_code == 0
    assert run("annotate", "DEMO-PLATE", "--platemap", str(tmp_path / "raw" / "platemap.csv")).exit_code == 0
    r = run("segment", "--engine", "classic", "--no-features", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)[0]


def test_measure_qc_presets_and_export(segmented, tmp_path):
    assert segmented["cells"] == 0
    r = run("measure", "--json")
    assert r.exit_code == 0, r.output
    (m,) = json.loads(r.output)
    assert m["status"] == "measured" and m["fields_measured"] == 12 and m["cells"] == segmented["objects"]["cells"]

    r = run("qc", "--metric", "Cells_Intensity_NucCytoRatio_GFP", "--json")
    assert r.exit_code == 0, r.output
    (q,) = json.loads(r.output)
    assert q["positive"]["wells"] == 3 and q["negative"]["wells"] == 3
    assert q["z_prime"] > 0.3 and q["ssmd"] > 3  # the synthetic compound moves GFP into the nucleus
    r = run("qc", "--metric", "nope")
    assert r.exit_code == 1 and "no per-well metric 'nope'" in r.output

    r = run("query", "--preset", "cell-count", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 12 and sum(x["cell_count"] for x in rows) == m["cells"]
    assert {x["role"] for x in rows} == {"negative_control", "sample", "positive_control"}
    for preset in ("dose-response", "qc"):
        r = run("query", "--preset", preset, "--format", "csv")
        assert r.exit_code == 0 and r.output.count("\n") >= 2, r.output
    assert "cell-count" in run("query", "--preset", "list").output
    r = run("query", "--preset", "nope")
    assert r.exit_code == 1 and "unknown preset 'nope'" in r.output
    r = run("query")
    assert r.exit_code == 1 and "either a SQL query or --preset" in r.output

    out = tmp_path / "profiles"
    r = run("export", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["cells"] == m["cells"] and rep["wells"] == 12 and rep["plates"] == ["DEMO-PLATE"]
    cells = pl.scan_parquet(str(out / "cells" / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert cells.height == m["cells"] and cells["Metadata_Well"].n_unique() == 12
    assert {
        "Metadata_Plate",
        "Metadata_Site",
        "Metadata_Compound",
        "Metadata_ObjectNumber",
        "Nuclei_AreaShape_Area",
    } <= set(cells.columns)
    # identifiers and coordinates are metadata, not features (pycytominer infers features from the prefixes)
    assert {"Metadata_Nuclei_ObjectNumber", "Metadata_Location_Center_X"} <= set(cells.columns)
    assert not {"ObjectNumber", "Nuclei_ObjectNumber", "Location_Center_X"} & set(cells.columns)
    one = next((out / "cells").rglob("*.parquet"))
    assert "Metadata_Well" in pq.read_schema(one).names  # a single file still knows its well
    assert ds.dataset(str(out / "cells"), format="parquet", partitioning="hive").count_rows() == m["cells"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".hts-output.json",
        "cells",
        "fields_qc",
        "wells",
    ]  # a folder per table
    wells = pl.read_parquet(out / "wells" / "wells.parquet")
    assert wells.height == 12 and "Cells_AreaShape_Area_median" in wells.columns
    assert pl.read_parquet(out / "fields_qc" / "fields_qc.parquet").height == 12
    r = run("export", "--out", str(out))
    assert r.exit_code == 1 and "--overwrite" in r.output

    r = run("report", "DEMO-PLATE", "--out", str(tmp_path / "rep"), "--overlays", "2", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["html"].endswith("report.html") and sum("overlay_" in p for p in rep["images"]) == 2
    assert run("export", "--out", str(out), "--overwrite", "--format", "csv").exit_code == 0
    assert (out / "wells" / "wells.csv").is_file() and not (out / "wells" / "wells.parquet").exists()


def test_export_without_cells_is_a_clear_error(segmented, tmp_path):
    r = run("export", "--out", str(tmp_path / "x"))
    assert r.exit_code == 1 and "no measured cells" in r.output
    assert not (tmp_path / "x").exists()
