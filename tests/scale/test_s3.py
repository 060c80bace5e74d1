"""Plates in object storage (a local moto S3 server), a multi-process Dask cluster
that cannot see the client's files, a worker killed mid-run, GPU resource routing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from conftest import here
from servers import free_port, moto_endpoint, wait_port  # noqa: F401 (a fixture)

from hts.api import segment  # noqa: E402
from hts.catalog import Catalog  # noqa: E402
from hts.store import PlateStore  # noqa: E402
from hts.store.location import filesystem  # noqa: E402
from hts.synth import make_plate  # noqa: E402
from hts.tasks.export import export  # noqa: E402
from hts.tasks.ingest import ingest  # noqa: E402
from hts.tasks.query import run_query  # noqa: E402

pytestmark = pytest.mark.s3
BIN = Path(sys.executable).parent


@pytest.fixture
def bucket(moto_endpoint, monkeypatch) -> str:  # noqa: F811 (the imported fixture)
    """A fresh bucket; fake credentials and the endpoint in the environment (inherited by workers)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    name = f"hts-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{name}")
    fs.mkdir(name)
    return name


@pytest.fixture
def source(tmp_path):
    return make_plate(tmp_path / "raw", format="nd2", wells="A01:B03", fields=2, shape=(192, 192)).source


@contextmanager
def cluster(tmp_path: Path, n: int = 2, resources: list[str | None] | None = None):
    """`dask scheduler` + n `dask worker` processes (no nanny: a killed worker stays dead), each in its
    own empty folder. Yields (address, {name: Popen})."""
    dask = str(BIN / "dask")
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    sched = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: dict[str, subprocess.Popen] = {}
    try:
        wait_port(port)
        for i in range(n):
            wdir = tmp_path / f"worker{i}"
            wdir.mkdir()
            cmd = [
                dask,
                "worker",
                f"tcp://127.0.0.1:{port}",
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--local-directory",
                str(wdir),
                "--name",
                f"w{i}",
            ]
            if resources and resources[i]:
                cmd += ["--resources", resources[i]]
            workers[f"w{i}"] = subprocess.Popen(
                cmd, cwd=wdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout="20s") as c:
            c.wait_for_workers(n, timeout=60)
        yield f"tcp://127.0.0.1:{port}", workers
    finally:
        for p in [*workers.values(), sched]:
            if p.poll() is None:
                p.terminate()
        for p in [*workers.values(), sched]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _labels(store: PlateStore, fields: list[str], name: str) -> dict[str, np.ndarray]:
    return {f: store.read_labels(f, name)[:] for f in fields}


def _cells(db: str, run_id: str):
    return run_query(
        f"SELECT * EXCLUDE (plate_id, run_id) FROM cells WHERE run_id = '{run_id}' "
        "ORDER BY well, field_index, t, object_id",
        workspace=here(db=db),
    )


def test_plate_on_s3_matches_local_disk(bucket, source, tmp_path, monkeypatch):
    """ingest -> segment (with features) -> query -> export on s3://, equal to the same plate on disk."""
    ingest(source, out=tmp_path / "local" / "P.zarr", workspace=here(db="local.duckdb"))
    (loc,) = segment(engine="classic", workspace=here(db="local.duckdb"))
    monkeypatch.setenv("HTS_PLATES_DIR", f"s3://{bucket}/plates")
    rep = ingest(source, workspace=here(db="s3.duckdb"))
    assert rep.store == f"s3://{bucket}/plates/DEMO-PLATE.zarr"
    (s3,) = segment(engine="classic", workspace=here(db="s3.duckdb"))
    assert s3.objects == loc.objects and s3.cells == loc.cells > 50
    # the plate is readable where it is named by URL, the catalog finds it by URL
    assert Catalog("s3.duckdb").find_plate(rep.store).name == "DEMO-PLATE"
    fields = [r["path"] for r in Catalog("s3.duckdb").query("SELECT path FROM fields ORDER BY path")]
    a = _labels(PlateStore(tmp_path / "local" / "P.zarr"), fields, "nuclei")
    b = _labels(PlateStore(rep.store), fields, "nuclei")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert PlateStore(rep.store).read_field(fields[0].rsplit("/", 1)[0], 0)[:].sum() > 0
    # the parts are in the bucket, one per field
    fs, _ = filesystem(f"s3://{bucket}")
    parts = fs.ls(f"{bucket}/plates/DEMO-PLATE.zarr/tables/cells/{s3.run_id}")
    assert len(parts) == 12 and all(p.endswith(".parquet") for p in parts)
    assert _cells("local.duckdb", loc.run_id).equals(_cells("s3.duckdb", s3.run_id))
    ws = "SELECT * EXCLUDE (plate_id, run_id) FROM well_stats ORDER BY well"
    assert run_query(ws, workspace=here(db="local.duckdb")).equals(run_query(ws, workspace=here(db="s3.duckdb")))
    e1 = export(tmp_path / "e1", workspace=here(db="local.duckdb"))
    e2 = export(tmp_path / "e2", workspace=here(db="s3.duckdb"))
    assert (e1.cells, e1.wells, e1.files) == (e2.cells, e2.wells, e2.files)
    drop = ["Metadata_PlateID", "Metadata_Run"]
    w1, w2 = (pq.read_table(Path(e) / "wells" / "wells.parquet") for e in (e1.out, e2.out))
    keep = [c for c in w1.column_names if c not in drop and not c.endswith("_id")]
    assert w1.select(keep).equals(w2.select(keep))


def test_s3_interrupted_segment_resumes(bucket, tmp_path, monkeypatch, interrupt_field_task):
    src = make_plate(tmp_path / "raw", format="nd2", wells="A01:A02", fields=2, shape=(128, 128)).source
    monkeypatch.setenv("HTS_PLATES_DIR", f"s3://{bucket}/plates")
    ingest(src, workspace=here())
    restore = interrupt_field_task(3)
    with pytest.raises(KeyboardInterrupt):
        segment(engine="classic", workspace=here())
    restore()
    (rep,) = segment(engine="classic", workspace=here())
    assert rep.status == "resumed" and rep.fields_segmented == 2 and rep.fields_total == 4
    per_field = Catalog("hts.duckdb").query(
        "SELECT rf.n_cells, (SELECT count(*) FROM cells c WHERE c.run_id = rf.run_id AND c.well = rf.well "
        "AND c.field_index = rf.field_index) AS rows FROM run_fields rf"
    )
    assert len(per_field) == 4 and all(r["n_cells"] == r["rows"] for r in per_field)


@pytest.mark.cluster
def test_cluster_on_s3_survives_a_killed_worker(bucket, tmp_path, monkeypatch):
    """Two worker processes that see only the bucket; one is SIGKILLed mid-run; results equal an undisturbed run."""
    source = make_plate(tmp_path / "raw", format="nd2", wells="A01:A04", fields=2, shape=(160, 160)).source
    monkeypatch.setenv("HTS_PLATES_DIR", f"s3://{bucket}/plates")
    t0 = time.monotonic()
    rep = ingest(source, workspace=here())
    print(f"ingest {time.monotonic() - t0:.1f}s")
    with cluster(tmp_path / "cl") as (address, workers):
        t0 = time.monotonic()
        (ref,) = segment(engine="classic", label_suffix="ref", workspace=here(scheduler=address))
        print(f"cluster up + ref run {time.monotonic() - t0:.1f}s")
        assert ref.fields_segmented == 8
        cat = Catalog("hts.duckdb")
        assert len(cat.query("SELECT DISTINCT worker FROM run_fields WHERE run_id = ?", [ref.run_id])) == 2
        victim = workers["w1"]

        def kill_midway(done, total, msg):
            if done == 2 and victim.poll() is None:
                victim.send_signal(signal.SIGKILL)

        t0 = time.monotonic()
        (run,) = segment(engine="classic", progress=kill_midway, workspace=here(scheduler=address))
        print(f"killed run {time.monotonic() - t0:.1f}s")
        assert victim.poll() == -signal.SIGKILL
    assert run.status == "segmented" and run.fields_segmented == 8
    store = PlateStore(rep.store)
    fields = [r["path"] for r in cat.query("SELECT path FROM fields ORDER BY path")]
    a, b = _labels(store, fields, "nuclei_ref"), _labels(store, fields, "nuclei")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert _cells("hts.duckdb", ref.run_id).equals(_cells("hts.duckdb", run.run_id))
    # each field stored once and whole: one part per field, one complete run_fields row, rows = objects
    fs, _ = filesystem(rep.store)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/plates/DEMO-PLATE.zarr/tables/cells/{run.run_id}"))
    assert names == sorted(f"{f.split('/')[0]}{f.split('/')[1]}_{f.split('/')[2]}.parquet" for f in fields)
    rows = cat.query(
        "SELECT rf.well, rf.field_index, rf.status, rf.n_cells, oc.n_objects, "
        "(SELECT count(*) FROM cells c WHERE c.run_id = rf.run_id AND c.well = rf.well AND c.field_index = rf.field_index) AS n_rows "
        "FROM run_fields rf JOIN run_object_counts oc ON oc.run_id = rf.run_id AND oc.well = rf.well "
        "AND oc.field_index = rf.field_index AND oc.output = 'cells' WHERE rf.run_id = ?",
        [run.run_id],
    )
    assert len(rows) == 8 and len({(r["well"], r["field_index"]) for r in rows}) == 8
    assert all(r["status"] == "complete" and r["n_cells"] == r["n_objects"] == r["n_rows"] for r in rows)


@pytest.mark.cluster
def test_gpu_tasks_run_only_on_gpu_tagged_workers(tmp_path):
    from distributed import Client

    from hts.orchestrate.dask import gpu_resources, map_fields, worker_name

    with cluster(tmp_path / "cl", resources=["GPU=1", None]) as (address, _), Client(address) as client:
        assert gpu_resources(client, address, gpu=False) is None
        assert gpu_resources(client, "local", gpu=True) is None
        res = gpu_resources(client, address, gpu=True)
        assert res == {"GPU": 1}
        where = [w for _, w in map_fields(worker_name, range(10), client=client, resources=res)]
        assert where == ["w0"] * 10
        anywhere = {w for _, w in map_fields(worker_name, range(10), client=client)}
        assert anywhere <= {"w0", "w1"}
    # a cluster without GPU-tagged workers: no resource request (tasks would wait forever)
    with cluster(tmp_path / "cl2", n=1) as (address, _), Client(address) as client:
        assert gpu_resources(client, address, gpu=True) is None


def test_watch_writes_the_growing_plate_to_object_storage(tmp_path, bucket):
    """`hts watch` with the plates in S3: the store grows there field by field and ends as the batch path's."""
    import threading

    import hts
    from hts.config import Workspace
    from hts.synth.acquire import acquire
    from hts.tasks.watch import WatchOptions, watch

    src = make_plate(tmp_path / "src", format="imagexpress", wells="A01:B02", fields=2, shape=(128, 128))
    live = tmp_path / "live"
    live.mkdir()
    writer = threading.Thread(target=acquire, args=(src.source, live), kwargs={"fields_per_second": 6})
    writer.start()
    ws = Workspace(db=tmp_path / "w" / "hts.duckdb", plates_dir=f"s3://{bucket}/watched", scheduler="sync")
    rep = watch(live, workspace=ws, options=WatchOptions(platemap=src.platemap, poll_s=0.2, idle_minutes=1))
    writer.join()
    assert rep.ended == "complete" and rep.fields_segmented == 8
    wb = Workspace(db=tmp_path / "b" / "hts.duckdb", plates_dir=f"s3://{bucket}/batch", scheduler="sync")
    plate = hts.ingest(live, wb)
    plate.annotate(src.platemap)
    hts.segment(plate, engine="classic")
    q = "SELECT * EXCLUDE (plate_id, run_id) FROM cells ORDER BY well, field_index, object_id"
    assert hts.query(q, ws).equals(hts.query(q, wb))
    sa = PlateStore(hts.query("SELECT store_uri FROM plates", ws).item())
    sb = PlateStore(hts.query("SELECT store_uri FROM plates", wb).item())
    assert sa.uri.startswith("s3://") and dict(sa.group().attrs)["ome"] == dict(sb.group().attrs)["ome"]
    for (path,) in hts.query("SELECT path FROM fields", ws).iter_rows():
        np.testing.assert_array_equal(sa.read_labels(path, "nuclei")[:], sb.read_labels(path, "nuclei")[:])
