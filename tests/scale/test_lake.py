"""The DuckLake catalog (metadata in a real PostgreSQL server, Parquet on disk or the local S3
server) against the single DuckDB file: same results from every command, several writers at once
with a reader querying throughout, a writer killed mid-run, same-plate conflicts, time travel,
migration both ways."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from servers import moto_endpoint, postgres  # noqa: F401 (fixtures)

from hts.catalog.lake import lake_ddl
from hts.config import Workspace
from hts.errors import CatalogError

BIN = Path(sys.executable).parent


def test_lake_ddl_drops_the_constraints_ducklake_lacks_and_keeps_the_rest():
    sql = """
    -- PRIMARY KEY and CHECK in a comment stay harmless
    CREATE TABLE t (
        id VARCHAR PRIMARY KEY,        -- uuid4
        uri VARCHAR NOT NULL UNIQUE,
        status VARCHAR NOT NULL CHECK (status IN ('a', 'b (c)')),
        n INTEGER NOT NULL DEFAULT 0,
        made TIMESTAMP NOT NULL DEFAULT current_timestamp,
        note VARCHAR DEFAULT 'PRIMARY KEY -- not a comment',
        PRIMARY KEY (id, n)
    );
    """
    out = lake_ddl(sql)
    assert "PRIMARY KEY" not in out.replace("'PRIMARY KEY -- not a comment'", "")
    assert "UNIQUE" not in out and "CHECK" not in out and "uuid4" not in out
    assert "uri VARCHAR NOT NULL," in out and "status VARCHAR NOT NULL," in out
    assert "DEFAULT current_timestamp" in out and "DEFAULT 'PRIMARY KEY -- not a comment'" in out
    assert out.rstrip().endswith(");")
    import duckdb

    duckdb.connect().execute(out)  # still valid SQL


def test_a_lake_url_without_postgres_is_refused_in_one_line():
    ws = Workspace(db="ducklake:/tmp/x.db", plates_dir="plates")
    with pytest.raises(CatalogError, match="keeps its metadata in PostgreSQL"):
        ws.catalog  # noqa: B018


# --------------------------------------------------------------------------- helpers
def _env(ws_dir: Path, db: str, data: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTS_")}
    env.update(HTS_DB=db, HTS_DATA_PATH=data, HTS_SCHEDULER="sync", HTS_PLATES_DIR=str(ws_dir / "plates"), **extra)
    return env


def _hts(*args: str, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "hts"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"hts {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def _plate(root: Path, name: str, seed: int, wells: str = "A01:B06", fields: int = 2, shape=(160, 160)) -> Path:
    from hts.synth import make_plate

    p = make_plate(root / name, format="nd2", wells=wells, fields=fields, shape=shape, seed=seed, name=name)
    return Path(p.source)


def _assert_same(a, b, path: str = "") -> None:
    """``a == b``, floats within 1e-9 relative: aggregates summed in another row order differ in the last
    bits (rounding both to N digits still differs when a value sits on a rounding boundary)."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), (path, list(a), list(b))
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _canonical(ws: Workspace) -> dict:
    """What a run produced, without ids or times: per plate, every well's stats and every field's state."""
    from hts.tasks.query import run_query

    def q(sql: str) -> list[dict]:
        return run_query(sql, workspace=ws).to_pylist()

    return {
        "plates": q("SELECT name, status, size_c, size_y, size_x FROM plates ORDER BY name"),
        "fields": q(
            "SELECT p.name, f.well, f.field_index, f.status, f.checksum FROM fields f JOIN plates p USING (plate_id) "
            "ORDER BY ALL"
        ),
        "wells": q(
            "SELECT p.name, s.* EXCLUDE (plate_id, run_id) FROM well_stats s JOIN plates p USING (plate_id) ORDER BY ALL"
        ),
        "cells": q(
            "SELECT p.name, c.well, count(*) AS n, round(sum(c.Nuclei_AreaShape_Area), 6) AS area "
            "FROM cells c JOIN plates p USING (plate_id) JOIN runs r USING (run_id) WHERE r.status = 'complete' "
            "GROUP BY ALL ORDER BY ALL"
        ),
        "runs": q(
            "SELECT p.name, r.engine, r.status, (SELECT count(*) FROM run_fields f WHERE f.run_id = r.run_id "
            "AND f.status = 'complete') AS done FROM runs r JOIN plates p USING (plate_id) ORDER BY ALL"
        ),
    }


# --------------------------------------------------------------------------- every command, both backends
def _pipeline(ws: Workspace, source: Path, out: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hts import api
    from hts.tasks.browse import Browser

    plate = api.ingest(source, ws)
    plate.annotate(source.parent / "platemap.csv")
    api.segment(plate.name, engine="classic", workspace=ws, features=False)
    measured = api.measure(plate.name, workspace=ws, features={"texture": True})[0]
    qc = api.qc(plate.name, workspace=ws)[0]
    api.export(out / "export", plate.name, workspace=ws)
    parts = [
        pq.read_table(f, columns=["Nuclei_AreaShape_Area"])
        for f in sorted((out / "export" / "cells").rglob("*.parquet"))
    ]
    prof = api.profile(plate.name, workspace=ws)
    act = api.activity(ws, null_size=200)
    rep = api.report(plate.name, workspace=ws, out=out / "report")
    browser = Browser(ws)
    page = browser.plate(plate.name)
    return {
        **_canonical(ws),
        "qc": (round(qc.z_prime, 9), round(qc.ssmd, 9), sorted(w["well"] for w in qc.flagged_wells)),
        "measure": (measured.status, measured.fields_measured, measured.cells),
        "export": (sum(t.num_rows for t in parts), round(sum(float(pc.sum(t[0]).as_py()) for t in parts), 6)),
        "profile": (prof.n_wells, prof.n_features, prof.n_selected, prof.n_treatments),
        "activity": sorted(
            (str(t["compound"]), str(t["concentration"]), round(t["mean_average_precision"], 9), t["hit"])
            for t in act.treatments
        ),
        "report": sorted(Path(p).name for p in rep.images),
        "browser": (page["plate"], [(w["well"], w["value"]) for w in page["wells"]]),
    }


def test_every_command_gives_the_same_results_on_both_backends(postgres, tmp_path, monkeypatch):  # noqa: F811
    source = _plate(tmp_path / "raw", "P1", seed=3, wells="A01:C08", fields=1)
    file_ws = Workspace(db=tmp_path / "f" / "hts.duckdb", plates_dir=tmp_path / "f" / "plates", scheduler="sync")
    lake_ws = Workspace(
        db=postgres.new_db(), plates_dir=tmp_path / "l" / "plates", scheduler="sync", data_path=str(tmp_path / "lake")
    )
    on_file = _pipeline(file_ws, source, tmp_path / "f")
    on_lake = _pipeline(lake_ws, source, tmp_path / "l")
    assert on_file["cells"] and on_file["wells"] and on_file["profile"][0] > 0
    _assert_same(on_lake, on_file)
    assert any((tmp_path / "lake").rglob("*.parquet"))  # the tables are Parquet files under the data path


# --------------------------------------------------------------------------- writers at once
def test_two_writers_on_different_plates_and_a_reader_give_the_sequential_catalog(postgres, tmp_path):  # noqa: F811
    from hts.tasks.query import run_query

    sources = [_plate(tmp_path / "raw", f"P{i}", seed=10 + i, wells="A01:B08") for i in (1, 2)]
    work = tmp_path / "w"
    work.mkdir()
    db, data = postgres.new_db(), str(tmp_path / "lake")
    env = _env(work, db, data)
    ws = Workspace(db=db, plates_dir=work / "plates", scheduler="sync", data_path=data)
    _hts("query", "SELECT 1", env=env, cwd=work)  # creates the catalog (migrations) once

    seen, errors, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(run_query("SELECT count(*) AS n FROM cells", workspace=ws).to_pylist()[0]["n"])
            except Exception as e:  # noqa: BLE001 - any failure of a reader is the test's failure
                errors.append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=reader)
    t.start()
    try:
        procs = [
            subprocess.Popen(
                ["sh", "-c", f"'{BIN / 'hts'}' ingest '{s}' && '{BIN / 'hts'}' segment {s.stem} --engine classic"],
                env=env,
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for s in sources
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        stop.set()
        t.join()
    assert all(p.returncode == 0 for p in procs), outs
    assert not errors, errors[:3]
    assert len(seen) > 5 and seen == sorted(seen)  # every read a committed state; cells only ever added
    concurrent = _canonical(ws)

    seq_work = tmp_path / "s"
    seq_work.mkdir()
    seq_db = postgres.new_db()
    seq_env = _env(seq_work, seq_db, str(tmp_path / "lake-seq"))
    for s in sources:
        _hts("ingest", str(s), env=seq_env, cwd=seq_work)
        _hts("segment", s.stem, "--engine", "classic", env=seq_env, cwd=seq_work)
    sequential = _canonical(
        Workspace(db=seq_db, plates_dir=seq_work / "plates", scheduler="sync", data_path=str(tmp_path / "lake-seq"))
    )
    _assert_same(concurrent, sequential)
    assert {p["name"] for p in concurrent["plates"]} == {"P1", "P2"} and seen[-1] == sum(
        c["n"] for c in concurrent["cells"]
    )


def test_a_writer_killed_mid_run_then_run_again_gives_the_uninterrupted_result(postgres, tmp_path):  # noqa: F811
    from hts.catalog.lake import LakeCatalog

    # a run long enough (~8 s in one process) for the client to record fields several times before it ends
    # (it records every 2 s or slower): 48 fields of 192² took under 2 s once classic got faster
    source = _plate(tmp_path / "raw", "K1", seed=7, wells="A01:H12", fields=1, shape=(384, 384))
    results = {}
    for mode in ("killed", "clean"):
        work = tmp_path / mode
        work.mkdir()
        db, data = postgres.new_db(), str(tmp_path / f"lake-{mode}")
        env = _env(work, db, data)
        _hts("ingest", str(source), env=env, cwd=work)
        if mode == "killed":
            cat = LakeCatalog(db, data_path=data)
            proc = subprocess.Popen(
                [str(BIN / "hts"), "segment", "K1", "--engine", "classic"],
                env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            done = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                done = cat.query("SELECT count(*) AS n FROM run_fields WHERE status = 'complete'")[0]["n"]
                if done >= 8:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert 8 <= done < 96, f"killed after {done} of 96 fields"
            assert cat.query("SELECT status FROM runs")[0]["status"] == "running"
            cat.close()
            r = _hts("segment", "K1", "--engine", "classic", env=env, cwd=work)  # the dead holder's lock is taken over
            assert "resum" in (r.stdout + r.stderr).lower()
        else:
            _hts("segment", "K1", "--engine", "classic", env=env, cwd=work)
        results[mode] = _canonical(Workspace(db=db, plates_dir=work / "plates", scheduler="sync", data_path=data))
    _assert_same(results["killed"], results["clean"])
    assert results["clean"]["runs"] == [{"name": "K1", "engine": "classic", "status": "complete", "done": 96}]


def test_a_second_writer_of_the_same_plate_is_refused_in_one_line(postgres, tmp_path):  # noqa: F811
    from hts.catalog.lake import LakeCatalog
    from hts.catalog.locks import PlateBusyError, plate_locks

    source = _plate(tmp_path / "raw", "C1", seed=5, wells="A01:A02", fields=1)
    work = tmp_path / "w"
    work.mkdir()
    db, data = postgres.new_db(), str(tmp_path / "lake")
    env = _env(work, db, data)
    _hts("ingest", str(source), env=env, cwd=work)
    cat = LakeCatalog(db, data_path=data)
    rec = cat.find_plate("C1")
    with plate_locks(cat, [(rec.plate_id, rec.name)], command="segment --engine classic"):
        r = _hts("segment", "C1", "--engine", "classic", env=env, cwd=work, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "plate C1 is busy: `hts segment --engine classic` started" in r.stderr.replace("\n", " ")
        r = _hts("ingest", str(source), "--overwrite", env=env, cwd=work, check=False)
        assert r.returncode != 0 or "busy" not in r.stderr  # the store's ingest lock is another key
    # two claims at the same instant from two connections: PostgreSQL's key lets exactly one win
    barrier, outcome = threading.Barrier(2), []

    def claim() -> None:
        mine = LakeCatalog(db, data_path=data)
        barrier.wait()
        try:
            with plate_locks(mine, [(rec.plate_id, rec.name)], command="measure"):
                outcome.append("held")
                time.sleep(0.5)
        except PlateBusyError:
            outcome.append("busy")
        finally:
            mine.close()

    threads = [threading.Thread(target=claim) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcome) == ["busy", "held"]
    assert cat.query(f"SELECT count(*) AS n FROM {cat.locks_table}")[0]["n"] == 0  # released


# --------------------------------------------------------------------------- time travel, migration, S3
def test_query_as_of_a_run_reads_the_catalog_as_it_was(postgres, tmp_path):  # noqa: F811
    source = _plate(tmp_path / "raw", "T1", seed=9, wells="A01:A03", fields=1)
    work = tmp_path / "w"
    work.mkdir()
    env = _env(work, postgres.new_db(), str(tmp_path / "lake"))
    _hts("ingest", str(source), env=env, cwd=work)
    _hts("segment", "T1", "--engine", "classic", env=env, cwd=work)
    _hts("segment", "T1", "--engine", "classic", "--param", "threshold_factor=1.5", "--overwrite", env=env, cwd=work)
    runs = json.loads(_hts("runs", "--json", env=env, cwd=work).stdout)
    assert [r["state"] for r in runs] == ["replaced", "complete"] and runs[0]["snapshot"] < runs[1]["snapshot"]
    sql = (
        "SELECT any_value(run_id) AS run, count(DISTINCT run_id) AS runs, count(*) AS n, "
        "sum(Nuclei_AreaShape_Area) AS area FROM cells"
    )
    now = json.loads(_hts("query", sql, "--json", env=env, cwd=work).stdout)[0]
    then = json.loads(_hts("query", sql, "--json", "--as-of", runs[0]["run_id"][:8], env=env, cwd=work).stdout)[0]
    # the replaced run's cells are gone from the catalog, and still there as of that run
    assert now["runs"] == 1 and now["run"] == runs[1]["run_id"] and now["n"] == runs[1]["cells"]
    assert then["runs"] == 1 and then["run"] == runs[0]["run_id"] and then["n"] == runs[0]["cells"] > 0
    assert then["area"] > now["area"]  # a higher threshold: smaller nuclei
    r = _hts("query", sql, "--as-of", "nope00", env=env, cwd=work, check=False)
    assert r.returncode == 1 and "no run with that id" in r.stderr
    # the user's SQL reads the catalog, never the PostgreSQL server behind it (directly or through query())
    for sneaky in (
        "SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT 1')",
        "SELECT * FROM __ducklake_metadata_lake.ducklake_snapshot",
        "SELECT * FROM query('SELECT * FROM postgres_query(''__ducklake_metadata_lake'', ''SELECT 1'')')",
    ):
        r = _hts("query", sneaky, env=env, cwd=work, check=False)
        assert r.returncode == 1 and "reaches the PostgreSQL server itself" in r.stderr.replace("\n", " "), r.stderr


def test_as_of_on_a_duckdb_file_says_what_it_needs(tmp_path):
    source = _plate(tmp_path / "raw", "F1", seed=2, wells="A01", fields=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTS_")} | {"HTS_SCHEDULER": "sync"}
    _hts("ingest", str(source), env=env, cwd=tmp_path)
    _hts("segment", "F1", "--engine", "classic", env=env, cwd=tmp_path)
    run = json.loads(_hts("runs", "--json", env=env, cwd=tmp_path).stdout)[0]
    assert "snapshot" not in run
    r = _hts("query", "SELECT 1", "--as-of", run["run_id"], env=env, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "needs a DuckLake catalog" in r.stderr and "Traceback" not in r.stderr


def test_migrate_file_to_lake_and_back_is_verified_and_equal(postgres, tmp_path):  # noqa: F811
    from hts.catalog import Catalog
    from hts.catalog.lake import LakeCatalog
    from hts.catalog.migrate import table_checksums

    source = _plate(tmp_path / "raw", "M1", seed=4, wells="A01:B04", fields=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTS_")} | {"HTS_SCHEDULER": "sync"}
    _hts("ingest", str(source), env=env, cwd=tmp_path)
    _hts("segment", "M1", "--engine", "classic", env=env, cwd=tmp_path)
    lake, data = postgres.new_db(), str(tmp_path / "lake")
    r = _hts("catalog", "migrate", "--from", "hts.duckdb", "--to", lake, "--data-path", data, env=env, cwd=tmp_path)
    assert "checksum verified" in r.stderr.replace("\n", " ")
    _hts("catalog", "migrate", "--from", lake, "--to", "back.duckdb", env=env, cwd=tmp_path)
    original, copied, back = (
        table_checksums(Catalog(tmp_path / "hts.duckdb")),
        table_checksums(LakeCatalog(lake, data_path=data)),
        table_checksums(Catalog(tmp_path / "back.duckdb")),
    )
    assert original == copied == back
    assert original["cells"][0] > 0 and original["plates"][0] == 1
    # the migrated workspace works: a query through the lake sees the same cells
    n = json.loads(
        _hts("query", "SELECT count(*) AS n FROM cells", "--json", "--db", lake, env=env, cwd=tmp_path).stdout
    )
    assert n[0]["n"] == original["cells"][0]
    # into a catalog that already holds plates: refused, nothing changed
    r = _hts("catalog", "migrate", "--from", "hts.duckdb", "--to", lake, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "already holds 1 plate" in r.stderr
    assert table_checksums(LakeCatalog(lake, data_path=data)) == copied


def test_a_lake_on_s3_object_storage(postgres, moto_endpoint, tmp_path, monkeypatch):  # noqa: F811
    from hts.store.location import filesystem

    for k, v in dict(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_endpoint,
    ).items():  # fmt: skip
        monkeypatch.setenv(k, v)
    bucket = f"hts-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    source = _plate(tmp_path / "raw", "S1", seed=6, wells="A01:A04", fields=1)
    work = tmp_path / "w"
    work.mkdir()
    env = _env(work, postgres.new_db(), f"s3://{bucket}/lake/")
    _hts("ingest", str(source), env=env, cwd=work)
    _hts("segment", "S1", "--engine", "classic", env=env, cwd=work)
    n = json.loads(_hts("query", "SELECT count(*) AS n FROM cells", "--json", env=env, cwd=work).stdout)[0]["n"]
    assert n > 0
    assert any(p.endswith(".parquet") for p in fs.find(f"{bucket}/lake"))
    # the user's SQL still reads nothing but the lake
    r = _hts("query", "SELECT * FROM read_text('/etc/hostname')", env=env, cwd=work, check=False)
    assert r.returncode == 1 and "disabled" in r.stderr


def test_a_transaction_that_conflicts_with_another_writer_is_replayed(postgres, tmp_path):  # noqa: F811
    """DuckLake refuses the second of two commits that update the same table (even different rows);
    the catalog rolls it back and replays its statements, so both writes land."""
    import duckdb

    from hts.catalog.lake import LakeCatalog

    db, data = postgres.new_db(), str(tmp_path / "lake")
    a, b = LakeCatalog(db, data_path=data), LakeCatalog(db, data_path=data)  # two connections, as two processes
    with a.connect() as con:
        con.execute("CREATE TABLE scratch (k VARCHAR, v INTEGER)")
        con.execute("INSERT INTO scratch VALUES ('a', 0), ('b', 0)")

    def race(ca, cb) -> None:
        ca.execute("BEGIN")
        cb.execute("BEGIN")
        ca.execute("UPDATE scratch SET v = v + 1 WHERE k = 'a'")
        cb.execute("UPDATE scratch SET v = v + 10 WHERE k = 'b'")
        ca.execute("COMMIT")
        cb.execute("COMMIT")

    ra, rb = a._raw(), b._raw()  # DuckDB's own connections: the second commit is refused
    with pytest.raises(duckdb.TransactionException, match="conflict"):
        race(ra, rb)  # (and rolled back)
    assert dict(ra.execute("SELECT k, v FROM scratch").fetchall()) == {"a": 1, "b": 0}
    with a.connect() as ca, b.connect() as cb:  # the catalog's: replayed, both land
        race(ca, cb)
    assert dict(ra.execute("SELECT k, v FROM scratch").fetchall()) == {"a": 2, "b": 10}


def test_watch_into_a_lake_equals_a_batch_run_into_a_file(postgres, tmp_path):  # noqa: F811
    """`hts watch` (ingest + segment round by round, watch events) on DuckLake: the finished plate's
    catalog equals the batch path's on a DuckDB file."""
    import threading

    from hts import api
    from hts.synth import make_plate
    from hts.synth.acquire import acquire
    from hts.tasks.query import run_query
    from hts.tasks.watch import WatchOptions, watch

    src = make_plate(tmp_path / "src", format="imagexpress", wells="A01:A04", fields=2, shape=(128, 128))
    live = tmp_path / "live"
    live.mkdir()
    writer = threading.Thread(target=acquire, args=(src.source, live), kwargs={"fields_per_second": 6}, daemon=True)
    writer.start()
    lake_ws = Workspace(
        db=postgres.new_db(), plates_dir=tmp_path / "l" / "plates", scheduler="sync", data_path=str(tmp_path / "lake")
    )
    rep = watch(live, workspace=lake_ws, options=WatchOptions(platemap=src.platemap, poll_s=0.2, idle_minutes=1))
    writer.join()
    assert rep.ended == "complete" and rep.fields_segmented == 8
    file_ws = Workspace(db=tmp_path / "f" / "hts.duckdb", plates_dir=tmp_path / "f" / "plates", scheduler="sync")
    plate = api.ingest(live, file_ws)
    plate.annotate(src.platemap)
    api.segment(plate.name, engine="classic", workspace=file_ws)
    _assert_same(_canonical(lake_ws), _canonical(file_ws))
    kinds = {r["kind"] for r in run_query("SELECT DISTINCT kind FROM watch_events", workspace=lake_ws).to_pylist()}
    assert {"ingested", "end"} <= kinds
