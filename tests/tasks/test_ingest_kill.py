"""A real crash: `hts ingest` killed with SIGKILL mid-plate, then run again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import here

from hts.catalog import Catalog
from hts.tasks.ingest import ingest


@pytest.mark.slow
def test_sigkilled_ingest_resumes_to_identical_plate(nd2_plate, tmp_path):
    # enough fields that the ingest outlasts its first catalog batch (2 s) by a wide margin
    src = nd2_plate(wells="A01:H12", fields=3, shape=(384, 384), channels=("DAPI", "GFP", "BF"))
    ref = ingest(src, out=tmp_path / "ref.zarr", tile=128, workspace=here(db=tmp_path / "ref.duckdb"))
    shutil.rmtree(tmp_path / "ref.zarr")  # only its catalog is compared: 300 MB less on disk for the rest of the test
    hts = Path(sys.executable).with_name("hts")
    env = dict(os.environ, HTS_SCHEDULER="sync")
    proc = subprocess.Popen(
        [str(hts), "ingest", str(src), "--tile", "128"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    cat = Catalog("hts.duckdb")
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if cat.path.exists():
            try:
                done = cat.query("SELECT count(*) AS n FROM fields WHERE status = 'complete'")[0]["n"]
            except Exception:
                continue
            if done >= 8:
                break
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 8 <= done < 288
    assert cat.query("SELECT status FROM plates")[0]["status"] == "ingesting"

    rep = ingest(src, tile=128, workspace=here())
    assert rep.status == "resumed" and 0 < rep.fields_written <= 288 - 8
    q = "SELECT well, field_index, status, checksum FROM fields ORDER BY ALL"
    assert cat.query(q) == Catalog(tmp_path / "ref.duckdb").query(q)
    q2 = "SELECT well, channel_index, min, max, mean, p01, p999 FROM field_channel_stats ORDER BY ALL"
    assert cat.query(q2) == Catalog(tmp_path / "ref.duckdb").query(q2)
    assert cat.query("SELECT status FROM plates")[0]["status"] == "complete"
    assert ref.fields_written == 288
