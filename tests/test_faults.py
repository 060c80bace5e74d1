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
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".wal")
    }


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

    from hts.catalog import Catalog

    dst = tmp_path / "w"
    shutil.copytree(measured_workspace, dst)
    monkeypatch.chdir(dst)
    with Catalog("hts.duckdb").connect() as con:  # the copy's catalog names the copy's stores
        con.execute("UPDATE plates SET store_uri = replace(store_uri, ?, ?)", [str(measured_workspace), str(dst)])
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
    assert marker["kind"] == "export" and "wells/wells.parquet" in marker["files"]
    assert run("export", "--out", "profiles", "--overwrite", "--format", "csv").exit_code == 0
    assert (ws / "profiles/wells/wells.csv").is_file() and not (ws / "profiles/wells/wells.parquet").exists()
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
    assert (
        run("query", "SELECT count(*) AS n FROM plates", "--format", "json").exit_code == 0
    )  # the catalog still opens


def test_report_out_never_writes_into_a_plate_store(ws: Path):
    before = _digest(ws)
    r = run("report", "DEMO-PLATE", "--out", "plates/DEMO-PLATE.zarr/report")
    assert r.exit_code == 1 and "choose another path" in r.output
    assert _digest(ws) == before
    # a plate store outside the plates folder
    from hts.catalog import Catalog

    store = ws / "stores/DEMO-PLATE.zarr"
    store.parent.mkdir()
    (ws / "plates/DEMO-PLATE.zarr").rename(store)
    with Catalog("hts.duckdb").connect() as con:
        con.execute("UPDATE plates SET store_uri = ?", [str(store)])
    original = _digest(store)
    for args in (("report", "DEMO-PLATE", "--out", str(store / "B")), ("export", "--out", str(store), "--overwrite")):
        r = run(*args)
        assert r.exit_code == 1 and "plate store DEMO-PLATE" in r.output, r.output
    assert _digest(store) == original


# ---------------------------------------------------------------------------------------- the query path


@pytest.mark.parametrize(
    "sql, refused",
    [
        ("SELECT 1; SELECT 2", "one statement at a time"),
        ("COPY (SELECT * FROM plates) TO 'leak.csv'", "type COPY"),
        ("ATTACH 'other.duckdb' AS o (READ_WRITE)", "type ATTACH"),
        ("SET enable_external_access = true", "type SET"),
        ("PRAGMA database_list", "type PRAGMA"),
        ("DROP TABLE cells", "type DROP"),
        ("INSERT INTO platemap SELECT * FROM platemap", "type INSERT"),
        ("SELECT * FROM read_text('/etc/hostname')", "file system operations are disabled"),
        ("SELECT * FROM glob('/root/**')", "file system operations are disabled"),
        ("SELECT * FROM read_csv('raw/platemap.csv')", "file system operations are disabled"),
    ],
)
def test_query_is_one_read_only_statement_that_touches_no_file(ws: Path, sql: str, refused: str):
    before = _digest(ws)
    r = run("query", sql)
    assert r.exit_code == 1 and refused in r.output and "Traceback" not in r.output, r.output
    assert _digest(ws) == before and not (ws / "leak.csv").exists() and not (ws / "other.duckdb").exists()


def test_allow_read_opens_one_folder_for_reading_only(ws: Path):
    r = run(
        "query", "SELECT count(*) AS n FROM read_csv('raw/platemap.csv')", "--allow-read", "raw", "--format", "json"
    )
    assert r.exit_code == 0 and json.loads(r.output)[0]["n"] == 6, r.output
    r = run("query", "COPY (SELECT 1) TO 'raw/x.csv'", "--allow-read", "raw")
    assert r.exit_code == 1 and not (ws / "raw/x.csv").exists()
    (ws / "secret.txt").write_text("not for queries")
    r = run("query", "SELECT * FROM read_text('secret.txt')", "--allow-read", "raw")
    assert r.exit_code == 1 and "disabled" in r.output


def test_report_sql_runs_through_the_same_guard(ws: Path):
    r = run("report", "DEMO-PLATE", "--sql", "COPY (SELECT 1) TO 'leak.csv'", "--out", "rep")
    assert r.exit_code == 1 and "type COPY" in r.output and not (ws / "leak.csv").exists()


def test_query_keeps_duckdbs_hints(ws: Path):
    r = run("query", "SELECT nme FROM plates")
    assert r.exit_code == 1 and "Candidate bindings" in r.output and '"name"' in r.output
    r = run("query", "SELECT * FROM plate")
    assert r.exit_code == 1 and 'Did you mean "plates"' in r.output


# ---------------------------------------------------------------------------------------- one bad field


@pytest.fixture
def plate_with_blank_wells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TIFF plate: two wells of real DSB2018 nuclei, and empty wells that are all 0, all 1000 and all 65535."""
    import numpy as np
    import tifffile

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "tiffs"
    src.mkdir()
    img = tifffile.imread(Path(__file__).parent / "data/nuclei_gt/dsb2018_img2d.tif")
    for w, a in (
        ("A01", img),
        ("A02", img),
        ("B01", np.zeros_like(img)),
        ("B02", np.full_like(img, 1000)),
        ("B03", np.full_like(img, 65535)),
    ):
        tifffile.imwrite(src / f"{w}_s1_DAPI.tif", a)
    assert run("ingest", str(src), "--pattern", "{well}_s{field}_{channel}.tif").exit_code == 0
    return src


def test_blank_and_constant_fields_never_fail_the_plate(plate_with_blank_wells):
    from hts.catalog import Catalog

    r = run("segment", "--engine", "classic", "--pixel-size", "0.45", "--workers", "1", "--json")
    assert r.exit_code == 0, r.output
    (rep,) = json.loads(r.output)
    assert rep["fields_segmented"] == 5 and rep["objects"]["nuclei"] > 150
    cat = Catalog("hts.duckdb")
    assert [x["status"] for x in cat.query("SELECT status FROM runs")] == ["complete"]
    flags = {x["well"]: x["flags"] for x in cat.query("SELECT well, flags FROM field_qc")}
    assert all("no_cells" in flags[w] for w in ("B01", "B02", "B03")) and "no_cells" not in flags["A01"]


def test_an_engine_failing_on_one_field_is_recorded_and_the_run_completes(plate_with_blank_wells, monkeypatch):
    from hts.catalog import Catalog
    from hts.compute.segment.engines.classic import ClassicEngine

    real = ClassicEngine.segment_tile

    def fragile(self, images, maps, ctx):
        if images["nucleus"].max() == 65535:
            raise MemoryError("cannot allocate 23.9 TiB")
        return real(self, images, maps, ctx)

    monkeypatch.setattr(ClassicEngine, "segment_tile", fragile)
    r = run("segment", "--engine", "classic", "--pixel-size", "0.45", "--workers", "1", "--scheduler", "sync")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps at the terminal width
    assert "1 of 5 fields" in text and "classic failed on this field (MemoryError: cannot allocate 23.9 TiB)" in text
    cat = Catalog("hts.duckdb")
    assert [x["status"] for x in cat.query("SELECT status FROM runs")] == ["complete"]
    (row,) = cat.query("SELECT well, flags FROM field_qc WHERE list_contains(flags, 'engine_failed')")
    assert row["well"] == "B03"


# ---------------------------------------------------------------------------------------- one writer per plate


def test_a_plate_being_segmented_is_refused_to_a_second_segment_or_measure(ws: Path):
    import socket

    from hts.catalog import Catalog
    from hts.catalog.locks import plate_locks

    cat = Catalog("hts.duckdb")
    rec = cat.find_plate("DEMO-PLATE")
    runs_before = cat.query("SELECT run_id, status FROM runs ORDER BY run_id")
    with plate_locks(cat, [(rec.plate_id, rec.name)], command="segment --engine nuclei"):
        for args in (("segment", "--engine", "classic", "-p", "h_um=2", "--overwrite"), ("measure", "--texture")):
            r = run(*args)
            text = " ".join(r.output.split())
            assert r.exit_code == 1 and "plate DEMO-PLATE is busy: `hts segment --engine nuclei` started" in text, text
            assert f"on {socket.gethostname()} (pid " in text and "Traceback" not in text
    assert cat.query("SELECT run_id, status FROM runs ORDER BY run_id") == runs_before
    assert cat.query("SELECT * FROM plate_locks") == []  # released
    # free again
    assert run("segment", "--engine", "classic", "-p", "h_um=2", "--label-suffix", "b").exit_code == 0


def test_a_lock_left_by_a_killed_process_is_taken_over(ws: Path):
    import subprocess
    import sys
    import time as _time
    from datetime import datetime

    from hts.catalog import Catalog

    cat = Catalog("hts.duckdb")
    rec = cat.find_plate("DEMO-PLATE")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with cat.connect() as con:  # as a SIGKILLed segment leaves it: its process is gone
        con.execute(
            "INSERT INTO plate_locks VALUES (?, 'x', 'segment --engine classic', ?, ?, 0, ?, ?)",
            [rec.plate_id, __import__("socket").gethostname(), dead.pid, datetime.now(), _time.time()],
        )
    r = run("segment", "--engine", "classic", "-p", "h_um=2", "--label-suffix", "c")
    assert r.exit_code == 0, r.output
    # another host's lock: live while its heartbeat is fresh, taken over once it is older than the stale limit
    from hts.catalog.locks import STALE_AFTER_S

    with cat.connect() as con:
        con.execute(
            "INSERT INTO plate_locks VALUES (?, 'y', 'measure', 'node-7', 4242, 0, ?, ?)",
            [rec.plate_id, datetime.now(), _time.time()],
        )
    r = run("measure", "--texture")
    assert r.exit_code == 1 and "busy" in r.output and "node-7" in r.output
    with cat.connect() as con:
        con.execute("UPDATE plate_locks SET heartbeat = ?", [_time.time() - STALE_AFTER_S - 5])
    assert run("measure").exit_code == 0


# ---------------------------------------------------------------------------------------- destructive steps in order


def _catalog_rows(cat) -> dict[str, int]:
    return {
        t: cat.query(f"SELECT count(*) AS n FROM {t}")[0]["n"]
        for t in ("plates", "fields", "platemap", "runs", "run_fields", "cells", "plate_labels")
    }


def test_ingest_overwrite_that_cannot_remove_the_old_store_changes_nothing(ws: Path, monkeypatch: pytest.MonkeyPatch):
    import errno

    from hts.catalog import Catalog

    cat = Catalog("hts.duckdb")
    store = Path(cat.find_plate("DEMO-PLATE").store_uri)
    assert ws in store.parents
    before_rows = _catalog_rows(cat)
    real_rename = Path.rename

    def read_only(self, target):
        if self == store:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", read_only)
    digest = _digest(store)
    r = run("ingest", "raw/DEMO-PLATE.nd2", "--out", str(store), "--overwrite")
    assert r.exit_code == 1 and "Read-only file system" in r.output and "nothing was changed" in r.output, r.output
    assert _catalog_rows(cat) == before_rows and _digest(store) == digest
    monkeypatch.setattr(Path, "rename", real_rename)
    # when it can: the plate is replaced, and the old plate's runs, labels and cells go with it (no orphans)
    r = run("ingest", "raw/DEMO-PLATE.nd2", "--out", str(store), "--overwrite")
    assert r.exit_code == 0, r.output
    after = _catalog_rows(cat)
    assert after["plates"] == 1 and after["runs"] == after["run_fields"] == after["cells"] == after["plate_labels"] == 0
    assert after["platemap"] == 0 and after["fields"] == before_rows["fields"]


# ---------------------------------------------------------------------------------------- failed runs


def test_a_failed_run_is_recorded_and_ignored_by_report_export_and_qc(ws: Path, monkeypatch: pytest.MonkeyPatch):
    from hts.catalog import Catalog
    from hts.tasks import plan as seg_mod

    real = seg_mod.process_field
    calls = {"n": 0}

    def crashing(item, spec):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost its disk")
        return real(item, spec)

    monkeypatch.setattr(seg_mod, "process_field", crashing)
    r = run("segment", "--engine", "classic", "-p", "h_um=2", "--label-suffix", "b", "--scheduler", "sync")
    assert r.exit_code == 1 and "worker lost its disk" in r.output and "Traceback" not in r.output
    cat = Catalog("hts.duckdb")
    failed = cat.query("SELECT run_id, status, error FROM runs WHERE error IS NOT NULL")
    assert (
        len(failed) == 1
        and failed[0]["status"] == "running"
        and "RuntimeError: worker lost its disk" in failed[0]["error"]
    )
    complete = cat.query("SELECT run_id FROM runs WHERE status = 'complete'")[0]["run_id"]
    # report, qc and export use the complete run, not the failed (newer) one
    r = run("report", "DEMO-PLATE", "--out", "rep", "--overlays", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["run_id"] == complete, r.output
    r = run("qc", "--json")
    assert r.exit_code in (0, 3) and [q["run_id"] for q in json.loads(r.output)] == [
        complete
    ]  # 3: Z' < 0 on this toy plate
    r = run("export", "--out", "prof", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["wells"] == 6, r.output
    # the same command again resumes the failed run, completes it and clears the error
    monkeypatch.setattr(seg_mod, "process_field", real)
    r = run("segment", "--engine", "classic", "-p", "h_um=2", "--label-suffix", "b", "--scheduler", "sync", "--json")
    assert r.exit_code == 0 and json.loads(r.output)[0]["status"] == "resumed"
    assert cat.query("SELECT count(*) AS n FROM runs WHERE error IS NOT NULL OR status != 'complete'")[0]["n"] == 0


def test_report_and_qc_explain_a_plate_whose_only_run_failed(plate_with_blank_wells, monkeypatch: pytest.MonkeyPatch):
    from hts.tasks import plan as seg_mod

    def crashing(item, spec):
        raise RuntimeError("scheduler went away")

    monkeypatch.setattr(seg_mod, "process_field", crashing)
    assert run("segment", "--engine", "classic", "--pixel-size", "0.45", "--scheduler", "sync").exit_code == 1
    for args in (("report", "tiffs"), ("qc",)):
        r = run(*args)
        text = " ".join(r.output.split())
        assert r.exit_code == 1 and "failed: RuntimeError: scheduler went away" in text and "hts segment" in text, text


# ---------------------------------------------------------------------------------------- options checked up front


@pytest.mark.parametrize(
    "args, says",
    [
        (("--pixel-size", "nan"), "--pixel-size nan: must be a positive number"),
        (("--pixel-size", "-1"), "--pixel-size -1.0: must be a positive number"),
        (("-p", "nucleus_diameter_um=inf"), "parameter nucleus_diameter_um"),
        (("--label-suffix", "../../evil"), "--label-suffix '../../evil': use 1-64 letters"),
        (("--workers", "64"), "--workers 64: this machine has"),
    ],
)
def test_bad_options_are_refused_before_any_work(ws: Path, args: tuple, says: str):
    from hts.catalog import Catalog

    cat = Catalog("hts.duckdb")
    runs = cat.query("SELECT run_id, status FROM runs")
    before = _digest(ws / "plates")
    r = (
        run("segment", "--engine", "classic", "--label-suffix", "x", *args)
        if "--label-suffix" not in args
        else run("segment", "--engine", "classic", *args)
    )
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and says in text and "Traceback" not in text, text
    assert cat.query("SELECT run_id, status FROM runs") == runs and _digest(ws / "plates") == before
    assert not list((ws / "plates").rglob("evil*"))


# ---------------------------------------------------------------------------------------- CSV injection


def test_platemap_text_that_spreadsheets_run_as_formulas_is_defused_in_csv(ws: Path):
    import csv

    rows = list(csv.DictReader(open("raw/platemap.csv")))
    rows[0]["compound"] = "=cmd|' /C calc'!A0"
    rows[1]["compound"] = "@SUM(1+1)"
    with open("evil.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert run("annotate", "DEMO-PLATE", "--platemap", "evil.csv").exit_code == 0
    assert run("export", "--out", "csvout", "--format", "csv").exit_code == 0
    text = (ws / "csvout/wells/wells.csv").read_text() + "".join(
        p.read_text() for p in (ws / "csvout/cells").rglob("*.csv")
    )
    assert "'=cmd|' /C calc'!A0" in text and "'@SUM(1+1)" in text
    assert ",=cmd" not in text and "\n=cmd" not in text and ",@SUM" not in text
    r = run("query", "SELECT compound FROM platemap ORDER BY compound", "--format", "csv")
    assert "'=cmd|" in r.output and "'@SUM(1+1)" in r.output
    assert run("query", "SELECT compound FROM platemap", "--format", "csv", "--out", "q.csv").exit_code == 0
    assert "'@SUM(1+1)" in (ws / "q.csv").read_text()
    # Parquet keeps the values exactly
    assert run("export", "--out", "pq").exit_code == 0
    import polars as pl

    assert "=cmd|' /C calc'!A0" in pl.read_parquet(ws / "pq/wells/wells.parquet")["Metadata_Compound"].to_list()


# ---------------------------------------------------------------------------------------- read-only catalog


def test_a_catalog_on_a_read_only_file_system_can_be_read(ws: Path, monkeypatch: pytest.MonkeyPatch):
    import duckdb

    import hts.catalog.db as db_mod

    real = duckdb.connect

    def read_only_fs(database=":memory:", read_only=False, **kw):
        if str(database).endswith("hts.duckdb") and not read_only:
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": Read-only file system')
        return real(database, read_only=read_only, **kw)

    monkeypatch.setattr(db_mod.duckdb, "connect", read_only_fs)
    for args in (
        ("plates", "--json"),
        ("info", "DEMO-PLATE"),
        ("query", "SELECT count(*) AS n FROM cells", "--format", "json"),
        ("qc", "--json"),
    ):
        r = run(*args)
        assert r.exit_code in (0, 3), (args, r.output)  # qc: 3 = Z' < 0 on this toy plate
    r = run("query", "SELECT count(*) AS n FROM cells", "--format", "json")
    assert json.loads(r.output)[0]["n"] > 0
    # writing commands say why they cannot
    r = run("annotate", "DEMO-PLATE", "--platemap", "raw/platemap.csv")
    assert r.exit_code == 1 and "Read-only file system" in r.output and "Traceback" not in r.output


def test_an_old_catalog_on_a_read_only_file_system_says_it_needs_an_update(ws: Path, monkeypatch: pytest.MonkeyPatch):
    import duckdb

    import hts.catalog.db as db_mod

    with duckdb.connect("hts.duckdb") as con:  # as written by an hts before migration 006
        con.execute("DELETE FROM schema_migrations WHERE version >= 6")
    real = duckdb.connect
    monkeypatch.setattr(
        db_mod.duckdb,
        "connect",
        lambda database=":memory:", read_only=False, **kw: (
            (_ for _ in ()).throw(duckdb.IOException("IO Error: Read-only file system"))
            if str(database).endswith("hts.duckdb") and not read_only
            else real(database, read_only=read_only, **kw)
        ),
    )
    r = run("plates")
    text = " ".join(r.output.split())
    latest = db_mod.migrations()[-1][0]
    assert (
        r.exit_code == 1
        and "needs a schema update" in text
        and f"v5 -> v{latest}" in text
        and "Read-only file system" in text
    ), text


# ---------------------------------------------------------------------------------------- options that were ignored


def test_ingest_name_and_channel_names_of_a_tiff_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import numpy as np
    import tifffile

    monkeypatch.chdir(tmp_path)
    for folder in ("run1", "run2"):
        (tmp_path / folder).mkdir()
        for c in ("w1", "w2"):
            tifffile.imwrite(
                tmp_path / folder / f"PLATE7_A01_s1_{c}.tif", np.full((64, 64), 5 + len(folder), np.uint16)
            )
    r = run("ingest", "run1", "--name", "first", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["name"] == "first", r.output
    r = run("ingest", "run2", "--name", "second", "--json")  # same file prefix, another plate: not "already ingested"
    assert r.exit_code == 0 and json.loads(r.output)["name"] == "second", r.output
    r = run("ingest", "run2", "--name", "third", "--channel-names", "DAPI,DAPI")
    assert r.exit_code == 1 and "given twice: DAPI" in r.output


def test_backend_and_device_options_are_not_silently_ignored(ws: Path):
    r = run("segment", "--engine", "classic", "--backend", "foo")
    assert r.exit_code == 1 and "runs with numpy on the CPU; --backend foo is for the deep engines" in " ".join(
        r.output.split()
    )
    r = run("segment", "--engine", "classic", "--device", "cuda")
    assert r.exit_code == 1 and "--device cuda is for the deep engines" in " ".join(r.output.split())


@pytest.mark.parametrize(
    "args, says",
    [
        (("demo", "d", "--plate-type", "7"), "--plate-type: plate_type 7: not a standard plate"),
        (("demo", "d", "--wells", "Z99"), "--wells: well Z99 is not on a 96-well plate"),
        (("demo", "d", "--size", "100000000"), "--size: shape (100000000, 100000000) is too large"),
        (
            ("ingest", str(Path(__file__).parent / "data/nd2/example-pbmc.nd2"), "--plate-type", "7"),
            "--plate-type 7: not a plate hts fits wells on",
        ),
    ],
)
def test_bad_demo_and_ingest_options_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args, says):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and says in text and "Traceback" not in text, text
    assert not (tmp_path / "d").exists() and not (tmp_path / "hts.duckdb").exists()


@pytest.mark.parametrize(
    "cell, says",
    [
        (900, "compound is 900 characters long (at most 200)"),
        (20_000, "the compound cell has 20000 characters"),
        (140_000, "unreadable CSV"),
    ],
)
def test_a_huge_platemap_cell_is_a_one_line_error_naming_the_line(ws: Path, cell: int, says: str):
    import csv

    from hts.catalog import Catalog

    with open("big.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["well", "compound", "concentration", "unit", "role"])
        w.writerow(["A01", "x" * cell, "1", "uM", "sample"])
    before = Catalog("hts.duckdb").query("SELECT * FROM platemap ORDER BY well")
    r = run("annotate", "DEMO-PLATE", "--platemap", "big.csv")
    assert r.exit_code == 1 and "big.csv line 2" in r.output and says in r.output, r.output
    assert len(r.output) < 400  # the value itself is not echoed
    assert Catalog("hts.duckdb").query("SELECT * FROM platemap ORDER BY well") == before


def test_a_full_disk_under_the_catalog_is_one_line_and_loses_nothing(ws: Path, monkeypatch: pytest.MonkeyPatch):
    """DuckDB's own I/O errors (here: the commit of an annotate on a full disk) end as one line."""
    import duckdb

    import hts.catalog.db as db_mod
    from hts.catalog import Catalog

    before = Catalog("hts.duckdb").query("SELECT * FROM platemap ORDER BY well")
    real = duckdb.connect

    class FullDisk:
        def __init__(self, con):
            self._con = con

        def execute(self, sql, *a, **k):
            if sql.strip().upper() == "COMMIT":
                raise duckdb.IOException(
                    "TransactionContext Error: Failed to commit: Could not write file "
                    '"hts.duckdb.wal": No space left on device'
                )
            return self._con.execute(sql, *a, **k)

        def __getattr__(self, name):
            return getattr(self._con, name)

    with monkeypatch.context() as m:
        m.setattr(db_mod.duckdb, "connect", lambda *a, **k: FullDisk(real(*a, **k)))
        r = run("annotate", "DEMO-PLATE", "--platemap", "raw/platemap.csv")
    assert r.exit_code == 1 and "No space left on device" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2
    assert Catalog("hts.duckdb").query("SELECT * FROM platemap ORDER BY well") == before


# ---------------------------------------------------------------------------------------- first contact


def test_info_lists_runs_as_the_run_option_says(ws: Path):
    r = run("info", "DEMO-PLATE", "--json")
    assert r.exit_code == 0
    (only,) = json.loads(r.output)["runs"]
    assert (
        only["engine"] == "classic" and only["state"] == "complete" and only["fields_complete"] == only["fields"] == 6
    )
    assert only["run_id"][:8] in " ".join(run("info", "DEMO-PLATE").output.split())


def test_query_json_flag_and_whole_preset_descriptions(ws: Path):
    r = run("query", "SELECT count(*) AS n FROM plates", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == [{"n": 1}]
    r = run("query", "--preset", "list", "--json")
    descriptions = json.loads(r.output)
    assert descriptions["qc"].endswith("by reason.") and descriptions["dose-response"].endswith("replicate wells.")


def test_one_plate_without_a_usable_pixel_size_does_not_hold_up_the_others(plate_with_blank_wells, tmp_path: Path):
    import numpy as np
    import tifffile

    blank = tmp_path / "blank"
    blank.mkdir()
    tifffile.imwrite(blank / "A01_s1_DAPI.tif", np.full((128, 128), 50, np.uint16))
    assert run("ingest", str(blank), "--pattern", "{well}_s{field}_{channel}.tif").exit_code == 0
    r = run("segment", "--engine", "classic", "--workers", "1", "--json")
    assert r.exit_code == 0, r.output
    by = {x["plate"]: x for x in json.loads(r.output)}
    assert by["tiffs"]["status"] == "segmented" and by["tiffs"]["objects"]["nuclei"] > 150  # estimated pixel size
    assert by["blank"]["status"] == "skipped" and "--pixel-size" in by["blank"]["notes"][0]
    r = run("segment", "--engine", "classic", "--workers", "1")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "skipped plate blank" in text and "none could be estimated" in text


def test_report_leads_with_the_assay_metric_and_shows_what_the_engine_read(ws: Path, monkeypatch: pytest.MonkeyPatch):
    import re

    import hts.reports as reports_mod

    captions = []
    real_sheet = reports_mod.contact_sheet
    monkeypatch.setattr(
        reports_mod, "contact_sheet", lambda tiles, **k: captions.extend(c for c, _ in tiles) or real_sheet(tiles, **k)
    )
    r = run(
        "report",
        "DEMO-PLATE",
        "-v",
        "cell_count",
        "-v",
        "Nuclei_AreaShape_Area",
        "--metric",
        "Nuclei_AreaShape_Area",
        "--out",
        "rep",
        "--overlays",
        "2",
    )
    assert r.exit_code == 0, r.output
    html = (ws / "rep/report.html").read_text()
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">", html[html.index("<th>metric</th>") :])
    assert rows[:2] == ["Nuclei_AreaShape_Area (assay metric)", "cell_count"]
    assert captions and all(c == "" for c in captions)  # each overlay carries its title once
    assert "on DAPI, GFP" in html  # classic read DAPI + GFP: the fluorescence composite
    r = run("segment", "--engine", "brightfield-unet", "--label-suffix", "bf", "--workers", "1", "--json")
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.output)[0]["run_id"]
    r = run("report", "DEMO-PLATE", "--run", run_id[:8], "--out", "rep_bf", "--overlays", "1")
    assert r.exit_code == 0, r.output
    assert "on Brightfield" in (ws / "rep_bf/report.html").read_text()  # a brightfield-unet run is shown on its channel


def test_engines_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch):
    from rich.console import Console

    from hts.cli.render import render_engines
    from hts.tasks.engines import describe_engines

    console = Console(width=80, record=True)
    render_engines(console, [e.to_dict() for e in describe_engines()], full=False)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "brightfield-unet │" in text  # engine names never wrap
    assert "classic, foci: numpy" in text


def test_a_read_only_plate_store_is_one_line_before_any_task(ws: Path, monkeypatch: pytest.MonkeyPatch):
    import errno

    from hts.catalog import Catalog

    store = Path(Catalog("hts.duckdb").find_plate("DEMO-PLATE").store_uri)
    real = Path.write_bytes

    def read_only(self, data):
        if store in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    runs = Catalog("hts.duckdb").query("SELECT run_id, status FROM runs")
    r = run("segment", "--engine", "classic", "-p", "h_um=2", "--label-suffix", "ro", "--workers", "1")
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "cannot write into the plate store (Read-only file system); nothing was changed" in text
    assert "Task exception" not in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3
    assert Catalog("hts.duckdb").query("SELECT run_id, status FROM runs") == runs
    # a finished run on a read-only store is still "already segmented", not an error
    r = run("segment", "--engine", "classic", "--workers", "1", "--json")
    assert r.exit_code == 0 and json.loads(r.output)[0]["status"] == "unchanged"


def test_local_clusters_never_fight_over_the_dashboard_port(capfd):
    import socket
    import warnings

    from hts.orchestrate.dask import dask_client

    with socket.socket() as busy, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # another hts command's cluster would hold Dask's default dashboard port
            busy.bind(("127.0.0.1", 8787))
            busy.listen()
        except OSError:
            pass
        with dask_client("local", workers=1) as client:
            assert client.submit(lambda: 41 + 1).result() == 42
            # none, or one on a free port Dask picked: never the fixed 8787 another command may hold
            assert client.scheduler_info().get("services", {}).get("dashboard") != 8787
    assert "8787" not in capfd.readouterr().err
    assert not [w for w in caught if "8787" in str(w.message)]
