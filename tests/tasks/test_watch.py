"""`hts watch` against an acquisition simulator: files that grow in pieces, a channel that lands
late, a corrupt file, a watch killed mid-plate; the finished plate equals the batch path."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hts.cli.main import app

runner = CliRunner()


def _plate(root: Path, wells="A01:B04", fields=2, size=128):
    from hts.synth import make_plate

    return make_plate(root / "src", format="imagexpress", wells=wells, fields=fields, shape=(size, size))


def _batch(folder: Path, platemap: Path, root: Path, pixel_size_um: float | None = None):
    import hts
    from hts.config import Workspace

    ws = Workspace.at(root, scheduler="sync")
    plate = hts.ingest(folder, ws)
    plate.annotate(platemap)
    hts.segment(plate, engine="classic", pixel_size_um=pixel_size_um)
    return ws


def _same_plate(a, b) -> None:
    """Same fields, same labels (byte for byte), same cells, same platemap, complete runs."""
    import hts
    from hts.store import PlateStore

    q = "SELECT * EXCLUDE (plate_id, run_id) FROM cells ORDER BY well, field_index, t, object_id"
    ca, cb = hts.query(q, a), hts.query(q, b)
    assert ca.height > 10 and ca.equals(cb)
    q = "SELECT well, field_index, checksum, status FROM fields ORDER BY well, field_index"
    assert hts.query(q, a).equals(hts.query(q, b))
    q = "SELECT well, compound, concentration, role FROM platemap ORDER BY well"
    assert hts.query(q, a).equals(hts.query(q, b))
    q = "SELECT n_files, size_bytes, checksum FROM acquisitions"
    assert hts.query(q, a).equals(hts.query(q, b))  # the watch's checksum is the whole acquisition's
    assert hts.query("SELECT status FROM runs", a)["status"].to_list() == ["complete"]
    assert hts.query("SELECT status FROM plates", a)["status"].to_list() == ["complete"]
    sa = PlateStore(hts.query("SELECT store_uri FROM plates", a).item())
    sb = PlateStore(hts.query("SELECT store_uri FROM plates", b).item())
    attrs_a, attrs_b = dict(sa.group().attrs), dict(sb.group().attrs)
    assert attrs_a["ome"] == attrs_b["ome"]
    for r in hts.query("SELECT path FROM fields", a).iter_rows():
        np.testing.assert_array_equal(sa.read_image(r[0])[:], sb.read_image(r[0])[:])
        assert sa._open_group(r[0], mode="r").attrs["ome"] == sb._open_group(r[0], mode="r").attrs["ome"]  # windows
        for label in ("nuclei", "cells"):
            np.testing.assert_array_equal(sa.read_labels(r[0], label)[:], sb.read_labels(r[0], label)[:])


def test_watch_equals_batch_with_growing_files_and_a_late_channel(tmp_path):
    from hts.config import Workspace
    from hts.synth.acquire import acquire
    from hts.tasks.watch import WatchOptions, watch

    src = _plate(tmp_path)
    live = tmp_path / "live"
    writer = threading.Thread(target=acquire, args=(src.source, live),
                              kwargs={"fields_per_second": 6, "late_channel": 2}, daemon=True)  # fmt: skip
    live.mkdir()
    writer.start()
    events = []
    ws = Workspace.at(tmp_path / "ws", scheduler="sync")
    rep = watch(live, workspace=ws, options=WatchOptions(platemap=src.platemap, poll_s=0.2, idle_minutes=1),
                on_event=events.append)  # fmt: skip
    writer.join()
    assert rep.ended == "complete" and rep.fields_ingested == 16 and rep.fields_segmented == 16
    assert rep.plate == "DEMO-PLATE" and not rep.skipped
    kinds = [e["kind"] for e in events]
    assert kinds.count("ingested") >= 2  # field by field as the plate was written, not all at the end
    assert kinds[-1] == "end"
    _same_plate(ws, _batch(live, src.platemap, tmp_path / "batch"))
    import hts

    stored = hts.query("SELECT kind, count(*) AS n FROM watch_events GROUP BY kind", ws)
    assert dict(stored.iter_rows())["ingested"] == kinds.count("ingested")


def test_a_corrupt_file_is_reported_once_and_its_field_skipped(tmp_path):
    from hts.config import Workspace
    from hts.synth.acquire import acquire
    from hts.tasks.watch import WatchOptions, watch

    src = _plate(tmp_path, wells="A01:A03")
    live = tmp_path / "live"
    bad = "DEMO-PLATE_A02_s1_w2.tif"
    acquire(src.source, live, fields_per_second=0, whole_files=True, corrupt=[bad])
    events = []
    ws = Workspace.at(tmp_path / "ws", scheduler="sync")
    rep = watch(live, workspace=ws, options=WatchOptions(poll_s=0.05, idle_minutes=0.1), on_event=events.append)
    assert rep.ended == "idle" and rep.skipped == [bad]
    broken = [e for e in events if e["kind"] == "broken"]
    assert len(broken) == 1 and bad in broken[0]["message"]
    import hts

    # A02's first field is skipped, and its second waits for it (field numbers follow sites); A03 goes on
    got = hts.query("SELECT well, field_index FROM fields WHERE status = 'complete' ORDER BY ALL", ws).rows()
    assert got == [("A01", 0), ("A01", 1), ("A03", 0), ("A03", 1)]
    assert hts.query("SELECT count(*) FROM run_fields WHERE status = 'complete'", ws).item() == 4


def test_killed_watch_restarts_where_it_was(tmp_path):
    """kill -9 of `hts watch` mid-plate, then the same command again: nothing lost, nothing twice."""
    from hts.synth.acquire import acquire

    src = _plate(tmp_path, wells="A01:B03")
    live = tmp_path / "live"
    live.mkdir()
    ws = tmp_path / "watched"
    ws.mkdir()
    env = dict(os.environ, HTS_SCHEDULER="sync")
    cmd = [sys.executable, "-m", "hts.cli.main", "watch", str(live), "--platemap", str(src.platemap), "--poll", "0.2",
           "--idle", "1", "--db", str(ws / "hts.duckdb")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    writer = threading.Thread(target=acquire, args=(src.source, live), kwargs={"fields_per_second": 3, "stop": stop})
    writer.start()
    seen = ""
    deadline = time.monotonic() + 120
    while "so far)" not in seen and time.monotonic() < deadline:  # killed once it has ingested something
        seen += proc.stdout.readline()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    writer.join()  # the imager finishes the plate while no watch runs
    r = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ended: complete" in " ".join(r.stdout.split())
    from hts.config import Workspace

    _same_plate(Workspace.at(ws, scheduler="sync"), _batch(live, src.platemap, tmp_path / "batch"))


def test_watch_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["watch", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such folder to watch" in r.output and "Traceback" not in r.output
    odd = tmp_path / "odd"
    odd.mkdir()
    import tifffile

    tifffile.imwrite(odd / "weird-name.tif", np.zeros((8, 8), np.uint16))
    r = runner.invoke(app, ["watch", str(odd), "--poll", "0.05", "--idle", "0.01"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "weird-name.tif" in " ".join(r.output.split())
    r = runner.invoke(app, ["watch", str(odd), "--pattern", "{well}_{field}.tif", "--poll", "0.05", "--idle", "0.01"])
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_demo_live_writes_a_plate_watch_follows(tmp_path, monkeypatch):
    """`hts demo --live` writes the plate field by field; `hts watch` on it ends complete."""
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, HTS_SCHEDULER="sync")
    demo = subprocess.Popen(
        [sys.executable, "-m", "hts.cli.main", "demo", "live", "--live", "--rate", "8", "--wells", "A01:A06",
         "--fields", "1", "--size", "96"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60  # the demo's interpreter starts and makes the folder (slow on a busy machine)
    while not (tmp_path / "live").is_dir() and demo.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    r = runner.invoke(app, ["watch", "live", "--platemap", "live/platemap.csv", "--poll", "0.2", "--idle", "0.5"])
    demo.wait(timeout=60)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "6 fields ingested, 6 segmented" in text and "ended: complete" in text
    assert "hts watch live --platemap" in demo.stdout.read()


@pytest.mark.parametrize("n", [1])
def test_acquire_writes_files_in_pieces(tmp_path, n):
    """The simulator's files grow: a listing in the middle of a write sees a partial file."""
    from hts.synth.acquire import acquire, acquisition_order

    src = _plate(tmp_path, wells="A01", fields=n, size=256)
    full = next(src.source.glob("*_w1.tif")).stat().st_size
    sizes = []
    live = tmp_path / "live"

    def spy():
        while not live.exists() or not list(live.glob("*_w1.tif")):
            time.sleep(0.001)
        f = next(live.glob("*_w1.tif"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not sizes or sizes[-1] < full):
            sizes.append(f.stat().st_size)
            time.sleep(0.002)

    t = threading.Thread(target=spy)
    t.start()
    acquire(src.source, live, fields_per_second=0.5)
    t.join()
    assert min(sizes) < full and max(sizes) == full
    assert [len(g) for g in acquisition_order(live)] == [3]


def test_a_layout_without_side_file_takes_fields_once_the_imager_moves_on(tmp_path):
    """Cellomics names no channels in a side file: a field is whole once a newer field exists, and the
    last one when the folder goes quiet; the plate then equals the batch path."""
    from hts.config import Workspace
    from hts.synth import make_plate
    from hts.synth.acquire import acquire
    from hts.tasks.watch import WatchOptions, watch

    src = make_plate(tmp_path / "src", format="cellomics", wells="A01:A04", fields=1, shape=(128, 128))
    live = tmp_path / "live"
    acquire(src.source, live, fields_per_second=0, whole_files=True)
    ws = Workspace.at(tmp_path / "w", scheduler="sync")
    opts = WatchOptions(platemap=src.platemap, poll_s=0.05, idle_minutes=0.01)
    with pytest.raises(Exception, match="its files give no pixel size; pass --pixel-size"):
        watch(live, workspace=ws, options=opts)  # Cellomics files carry none
    rep = watch(live, workspace=ws, options=dataclasses.replace(opts, pixel_size_um=0.65))
    assert rep.ended == "complete" and rep.fields_segmented == 4  # the first watch's fields were kept
    _same_plate(ws, _batch(live, src.platemap, tmp_path / "batch", pixel_size_um=0.65))


def test_time_lapse_waits_for_every_timepoint(tmp_path):
    """A time-lapse plate written time point after time point: with --timepoints the watch waits for the
    second one before taking a field, and the plate equals the batch path's."""
    import shutil

    from hts.config import Workspace
    from hts.synth import make_plate
    from hts.tasks.watch import WatchOptions, watch

    src = make_plate(tmp_path / "src", format="imagexpress", wells="A01:A02", fields=1, shape=(192, 192), n_time=2)
    live = tmp_path / "live"
    shutil.copytree(src.source / "TimePoint_1", live / "TimePoint_1")
    shutil.copy(src.source / "DEMO-PLATE.HTD", live)
    ws = Workspace.at(tmp_path / "w", scheduler="sync")
    opts = WatchOptions(platemap=src.platemap, poll_s=0.05, idle_minutes=0.01, timepoints=2)
    first = watch(live, workspace=ws, options=opts)
    assert first.ended == "idle" and first.fields_ingested == 0  # the second time point is not there yet
    shutil.copytree(src.source / "TimePoint_2", live / "TimePoint_2")
    rep = watch(live, workspace=ws, options=opts)
    assert rep.ended == "complete" and rep.fields_ingested == 2
    _same_plate(ws, _batch(live, src.platemap, tmp_path / "batch"))
