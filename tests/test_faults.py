"""Regression tests of the fault and bad-input sweep: nothing stored is lost, overwritten or exposed.

Each test reproduces one case of the sweep (issue "Nothing lost, nothing exposed") and
checks that the workspace is whole afterwards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hts.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".wal")}


@pytest.fixture(scope="module")
def measured_workspace(tmp_path_factory) -> Path:
    """A workspace with one small measured plate, built once; each test works on a copy."""
    import os

    root = tmp_path_factory.mktemp("ws")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run("demo", "raw", "--wells", "A01:B03", "--fields", "1", "--size", "128").exit_code == 0
        assert run("ingest", "raw/DEMO-PLATE.nd2").exit_code == 0
        assert run("annotate", "DEMO-PLATE", "--platemap", "raw/platemap.csv").exit_code == 0
        r = run("segment", "--engine", "classic", "--workers", "1")
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def ws(measured_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    dst = tmp_path / "w"
    shutil.copytree(measured_workspace, dst)
    monkeypatch.chdir(dst)
    return dst


@pytest.mark.parametrize("target", [".", "plates", "plates/DEMO-PLATE.zarr", "plates/DEMO-PLATE.zarr/A"])
def test_export_overwrite_never_deletes_the_workspace_or_plates(ws: Path, target: str):
    (ws / "notes.txt").write_text("my notes")
    before = _digest(ws)
    r = run("export", "--out", target, "--overwrite")
    assert r.exit_code == 1 and "choose another path" in r.output, r.output
    assert "Traceback" not in r.output
    assert _digest(ws) == before


def test_export_overwrite_replaces_only_its_own_export(ws: Path):
    assert run("export", "--out", "profiles").exit_code == 0
    marker = json.loads((ws / "profiles/.hts-output.json").read_text())
    assert marker["kind"] == "export" and "wells.parquet" in marker["files"]
    assert run("export", "--out", "profiles", "--overwrite", "--format", "csv").exit_code == 0
    assert (ws / "profiles/wells.csv").is_file() and not (ws / "profiles/wells.parquet").exists()
    # a file of the user's inside the export: --overwrite refuses and keeps everything
    (ws / "profiles/analysis.ipynb").write_text("{}")
    before = _digest(ws / "profiles")
    r = run("export", "--out", "profiles", "--overwrite")
    assert r.exit_code == 1 and "files hts did not write (e.g. analysis.ipynb)" in r.output
    assert _digest(ws / "profiles") == before
    # a folder of the user's own files (no marker) is never replaced
    (ws / "mine").mkdir()
    (ws / "mine/data.csv").write_text("a,b\n")
    r = run("export", "--out", "mine", "--overwrite")
    assert r.exit_code == 1 and "files hts did not write" in r.output
    assert (ws / "mine/data.csv").read_text() == "a,b\n"


@pytest.mark.parametrize("target", ["hts.duckdb", "hts.duckdb.wal", "plates/DEMO-PLATE.zarr/zarr.json", "plates/x.csv"])
def test_query_out_never_writes_onto_the_catalog_or_a_plate(ws: Path, target: str):
    before = _digest(ws)
    r = run("query", "SELECT 1 AS x", "--format", "csv", "--out", target)
    assert r.exit_code == 1 and "choose another path" in r.output, r.output
    assert _digest(ws) == before
    assert run("query", "SELECT count(*) AS n FROM plates", "--format", "json").exit_code == 0  # the catalog still opens


def test_report_out_never_writes_into_a_plate_store(ws: Path, measured_workspace: Path):
    before = _digest(ws)
    r = run("report", "DEMO-PLATE", "--out", "plates/DEMO-PLATE.zarr/report")
    assert r.exit_code == 1 and "choose another path" in r.output
    assert _digest(ws) == before
    # a plate store outside the plates folder (this copy's catalog names the original workspace's store)
    from hts.catalog import Catalog

    store = Path(Catalog("hts.duckdb").find_plate("DEMO-PLATE").store_uri)
    assert ws not in store.parents
    original = _digest(store)
    for args in (("report", "DEMO-PLATE", "--out", str(store / "B")), ("export", "--out", str(store), "--overwrite")):
        r = run(*args)
        assert r.exit_code == 1 and "plate store DEMO-PLATE" in r.output, r.output
    assert _digest(store) == original
