"""`segment` end to end on ingested synthetic plates: labels in the store, runs in the catalog,
skip/resume, channel and label errors, a real Dask scheduler and workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import here
from ome_zarr_models.v05 import HCS, Image

from hts.api import segment
from hts.catalog import Catalog
from hts.compute.segment.engines import EngineError, engine_class
from hts.errors import ClusterError
from hts.store import PlateStore
from hts.synth import make_plate
from hts.tasks import plan as seg_mod
from hts.tasks.ingest import ingest


@pytest.fixture
def plate(tmp_path):
    p = make_plate(tmp_path / "raw", format="nd2", wells="A01:B03", fields=2, shape=(192, 192), masks=True)
    ingest(p.source, workspace=here())
    return p


def _labels(store: PlateStore, name: str) -> dict[str, np.ndarray]:
    root = zarr.open_group(store.path, mode="r")
    out = {}
    for w in root.attrs["ome"]["plate"]["wells"]:
        for im in root[w["path"]].attrs["ome"]["well"]["images"]:
            path = f"{w['path']}/{im['path']}"
            out[path] = store.read_labels(path, name)[:]
    return out


def test_segment_writes_valid_labels_and_records_the_run(plate):
    (rep,) = segment(engine="classic", workspace=here())
    assert rep.status == "segmented" and rep.fields_total == 12 and rep.fields_segmented == 12
    assert rep.objects["nuclei"] == rep.objects["cells"] > 100
    store = PlateStore(Path("plates/DEMO-PLATE.zarr"))
    root = zarr.open_group(store.path, mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HCS.from_zarr(root)
        img = Image.from_zarr(root["B/02/1"])
    assert img.labels is not None
    nuc = store.read_labels("B/02/1", "nuclei")[:]
    assert nuc.shape == (1, 1, 1, 192, 192) and nuc.dtype == np.int32
    assert store.read_labels("B/02/1", "nuclei", level=0)[:].max() > 3
    # counts in the catalog are the objects in the stored labels
    cat = Catalog("hts.duckdb")
    counts = cat.query(
        "SELECT well, field_index, n_objects FROM run_object_counts WHERE output = 'nuclei' ORDER BY ALL"
    )
    stored = _labels(store, "nuclei")
    for c in counts:
        lab = stored[f"{c['well'][0]}/{c['well'][1:]}/{c['field_index']}"]
        assert c["n_objects"] == len(np.unique(lab)) - 1
    run = cat.query("SELECT * FROM runs")[0]
    assert run["status"] == "complete" and run["engine"] == "classic" and run["backend"] == "numpy"
    assert '"nucleus": "DAPI"' in run["channels"] and '"cytoplasm": "GFP"' in run["channels"]
    # against the synthetic truth: nuclei found
    import tifffile

    truth = tifffile.imread(plate.truth_dir / "B02_f1_nuclei.tif")
    assert abs(len(np.unique(nuc)) - len(np.unique(truth))) <= 3


def test_same_run_is_skipped_and_different_labels_are_protected(plate):
    segment(engine="classic", workspace=here())
    (again,) = segment(engine="classic", workspace=here())
    assert again.status == "unchanged" and again.fields_segmented == 0
    with pytest.raises(EngineError, match=r"already has labels 'nuclei' from run .* --overwrite .* --label-suffix"):
        segment(engine="classic", params={"nucleus_diameter_um": 14.0}, workspace=here())
    (side,) = segment(engine="classic", params={"nucleus_diameter_um": 14.0}, label_suffix="big", workspace=here())
    assert side.labels == {"nuclei": "nuclei_big", "cells": "cells_big"} and side.status == "segmented"
    (rep,) = segment(engine="classic", params={"nucleus_diameter_um": 14.0}, overwrite=True, workspace=here())
    assert rep.status == "segmented"
    runs = Catalog("hts.duckdb").query("SELECT status FROM runs ORDER BY created_at")
    assert [r["status"] for r in runs] == ["replaced", "complete", "complete"]


def test_interrupted_segment_resumes_to_identical_labels(plate, interrupt_field_task):
    segment(engine="classic", label_suffix="ref", workspace=here())
    store = PlateStore(Path("plates/DEMO-PLATE.zarr"))
    ref = _labels(store, "nuclei_ref")

    restore = interrupt_field_task(5)
    with pytest.raises(KeyboardInterrupt):
        segment(engine="classic", workspace=here())
    cat = Catalog("hts.duckdb")
    assert (
        cat.query(
            "SELECT count(*) AS n FROM run_fields rf JOIN runs r USING (run_id) WHERE r.status = 'running' AND rf.status = 'complete'"
        )[0]["n"]
        == 4
    )
    restore()
    (rep,) = segment(engine="classic", workspace=here())
    assert rep.status == "resumed" and rep.fields_segmented == 8
    got = _labels(store, "nuclei")
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


def test_wells_selection_and_channel_errors(plate):
    (rep,) = segment(engine="classic", wells="A01:A02", workspace=here())
    assert rep.fields_total == 4
    with pytest.raises(
        EngineError, match=r"plate DEMO-PLATE has no channel 'Hoechst'; its channels are: DAPI, GFP, Brightfield"
    ):
        segment(engine="classic", channels={"nucleus": "Hoechst"}, label_suffix="x", workspace=here())
    with pytest.raises(
        EngineError,
        match=r"engine foci needs a foci channel .* has channels: DAPI, GFP, Brightfield; pass --channels foci=NAME",
    ):
        segment(engine="foci", workspace=here())
    with pytest.raises(EngineError, match="no channel role 'dna'"):
        segment(engine="classic", channels={"dna": "DAPI"}, workspace=here())
    with pytest.raises(EngineError, match="parameter h_um"):
        segment(engine="classic", params={"h_um": "deep"}, workspace=here())


def test_no_plates_and_missing_pixel_size(tmp_path):
    from hts.errors import CatalogError

    with pytest.raises(CatalogError):
        segment(engine="classic", workspace=here())
    ingest(Path(__file__).parents[1] / "data" / "cellomics_cp_example", workspace=here())
    # no pixel size in the metadata: estimated from the field
    (est,) = segment(engine="classic", channels={"nucleus": "d0", "cytoplasm": "d2"}, workspace=here())
    assert est.pixel_size_source == "estimated" and est.objects["nuclei"] > 50
    (rep,) = segment(
        engine="classic",
        channels={"nucleus": "d0", "cytoplasm": "d2"},
        pixel_size_um=0.65,
        overwrite=True,
        workspace=here(),
    )
    assert rep.objects["nuclei"] > 50  # the real CellProfiler ExampleHuman field holds ~80 nuclei
    # nothing to estimate from (a blank field): refused, naming the option
    import tifffile

    blank = tmp_path / "blank"
    blank.mkdir()
    tifffile.imwrite(blank / "A01_s1_DAPI.tif", np.full((128, 128), 50, np.uint16))
    ingest(blank, pattern="{well}_s{field}_{channel}.tif", workspace=here())
    with pytest.raises(EngineError, match="no pixel size .* none could be estimated .* --pixel-size"):
        segment(["blank"], engine="classic", workspace=here())


def _workers(suffix: str) -> list[str]:
    rows = Catalog("hts.duckdb").query(
        f"SELECT DISTINCT worker FROM run_fields rf JOIN runs r USING (run_id) WHERE r.labels LIKE '%nuclei_{suffix}%'"
    )
    return [r["worker"] for r in rows]


def test_local_cluster_matches_in_process(plate):
    """Worker processes and threads of this process write the same labels as the tasks run in order here.

    'local' runs this small classic plate (12 fields of 192², ~0.2 CPU-s estimated) in threads of this
    process; 'processes' always starts worker processes."""
    segment(engine="classic", label_suffix="sync", workspace=here())
    segment(engine="classic", label_suffix="dask", workers=2, workspace=here(scheduler="processes"))
    segment(engine="classic", label_suffix="local", workers=2, workspace=here(scheduler="local"))
    store = PlateStore(Path("plates/DEMO-PLATE.zarr"))
    a, b, c = (_labels(store, f"nuclei_{k}") for k in ("sync", "dask", "local"))
    assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]) for k in a)
    workers = _workers("dask")
    assert len(workers) == 2 and all(not w.endswith(f":{os.getpid()}") for w in workers)
    assert _workers("local") == [f"{socket.gethostname()}:{os.getpid()}"]


def test_the_work_estimate_picks_threads_only_for_small_classic_runs(plate, monkeypatch):
    """The CPU-seconds estimate execute_plans gives dask_client: classic's per-megapixel cost times the
    fields' megapixels; no estimate (worker processes) for deep engines, texture or measure-only runs."""
    from hts.compute.segment.engines.classic import ClassicEngine

    seen = []
    real = seg_mod.dask_client

    def spy(*a, **k):
        seen.append((k.get("work_s"), k.get("small_s")))
        return real(*a, **k)

    monkeypatch.setattr(seg_mod, "dask_client", spy)
    segment(engine="classic", label_suffix="a", workspace=here(scheduler="threads"))
    per_mp = ClassicEngine.cpu_seconds_per_megapixel({"nucleus": "DAPI", "cytoplasm": "GFP"})
    assert per_mp == 1.0 and ClassicEngine.cpu_seconds_per_megapixel({"nucleus": "DAPI"}) == 0.5
    # a subclass (foci, a plug-in) was not measured: no estimate, worker processes
    assert engine_class("foci").cpu_seconds_per_megapixel({"nucleus": "DAPI"}) is None
    assert seen[-1] == (pytest.approx(per_mp * 12 * 192 * 192 / 1e6), seg_mod.SMALL_COMPUTE_S)
    segment(
        engine="classic", label_suffix="b", features={"texture": True}, wells="B02", workspace=here(scheduler="threads")
    )
    assert seen[-1][0] is None
    segment(engine="nuclei", label_suffix="c", wells="B02", workspace=here(scheduler="threads"))
    assert seen[-1][0] is None
    assert seg_mod.work_estimate([]) == 0.0


def test_unreachable_scheduler_is_one_line(plate):
    with pytest.raises(ClusterError, match="cannot reach Dask scheduler at tcp://127.0.0.1:9"):
        segment(engine="classic", workspace=here(scheduler="tcp://127.0.0.1:9"))


@pytest.mark.cluster
def test_external_dask_scheduler_and_workers(plate, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on localhost."""
    dask = shutil.which("dask", path=str(Path(sys.executable).parent))
    port = 18786 + os.getpid() % 1000
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(2.0)
        for i in range(2):
            wdir = tmp_path / f"worker{i}"
            wdir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        f"tcp://127.0.0.1:{port}",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--local-directory",
                        str(wdir),
                        "--name",
                        f"w{i}",
                    ],
                    cwd=wdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout="20s") as c:
            c.wait_for_workers(2, timeout=60)
        (rep,) = segment(engine="classic", workspace=here(scheduler=f"tcp://127.0.0.1:{port}"))
        assert rep.fields_segmented == 12
        workers = Catalog("hts.duckdb").query("SELECT DISTINCT worker FROM run_fields")
        assert len(workers) == 2
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_engine_is_built_once_per_worker_process(plate, monkeypatch):
    from hts.compute.segment.engines.classic import ClassicEngine

    built = []
    real_init = ClassicEngine.__init__

    def counting_init(self, *a, **k):
        built.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(ClassicEngine, "__init__", counting_init)
    monkeypatch.setattr(seg_mod, "_engines", {})
    (rep,) = segment(engine="classic", workspace=here())
    assert rep.fields_segmented == 12
    assert len(built) == 2  # one probe on the client (validates the model before any work), one for this worker process


def test_corrupt_weights_are_a_clear_error_before_any_work(plate, tmp_path, monkeypatch):
    from hts.compute.segment.engines.nuclei import NucleiEngine

    bad = tmp_path / "nuclei-model"
    shutil.copytree(NucleiEngine.model_path(), bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(NucleiEngine, "model_path", classmethod(lambda cls: bad))
    with pytest.raises(EngineError, match=r"model.safetensors.*corrupt"):
        segment(engine="nuclei", backend="torch", workspace=here())
    assert Catalog("hts.duckdb").query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_deep_engine_run_through_segment(plate):
    (rep,) = segment(engine="nuclei", backend="torch", wells="A01", workspace=here())
    assert rep.backend == "torch" and rep.device == "cpu" and rep.objects["nuclei"] > 10
    run = Catalog("hts.duckdb").query("SELECT model_sha256 FROM runs")[0]
    from hts.compute.segment.backends import ModelSpec
    from hts.compute.segment.engines.nuclei import NucleiEngine

    assert run["model_sha256"] == ModelSpec.from_dir(NucleiEngine.model_path()).sha256


# ---------------------------------------------------------------------------------------- scale and sanity


@pytest.fixture
def no_pixel_size_plate(tmp_path):
    """A TIFF folder plate of the real DSB2018 nuclei (no pixel size anywhere), two wells."""
    import tifffile

    src = tmp_path / "tiffs"
    src.mkdir()
    img = tifffile.imread(Path(__file__).parents[1] / "data/nuclei_gt/dsb2018_img2d.tif")
    for w in ("A01", "A02"):
        tifffile.imwrite(src / f"{w}_s1_DAPI.tif", img)
    ingest(src, pattern="{well}_s{field}_{channel}.tif", workspace=here())
    return src


def test_a_plate_without_pixel_size_is_segmented_at_an_estimated_one(no_pixel_size_plate):
    (rep,) = segment(engine="classic", workers=1, workspace=here())
    assert rep.pixel_size_source == "estimated" and 0.35 < rep.pixel_size_um < 0.55  # the nuclei measure ~23 px, 10 µm
    assert rep.notes == [
        f"pixel size unknown: nuclei measure ~{10 / rep.pixel_size_um:.0f} px, segmenting as if "
        f"{rep.pixel_size_um:.3g} µm/px; pass --pixel-size to fix it"
    ]  # DAPI: no doubt, no note
    assert rep.objects["nuclei"] > 150
    (run,) = Catalog("hts.duckdb").query("SELECT pixel_size_um, pixel_size_source FROM runs")
    assert run == {"pixel_size_um": rep.pixel_size_um, "pixel_size_source": "estimated"}
    # run again: the recorded estimate is reused, so the same run is found complete
    (again,) = segment(engine="classic", workers=1, workspace=here())
    assert again.status == "unchanged" and again.run_id == rep.run_id
    # --pixel-size wins
    (given,) = segment(engine="classic", workers=1, pixel_size_um=0.3, label_suffix="given", workspace=here())
    assert given.pixel_size_source == "option" and given.pixel_size_um == 0.3 and given.notes == []


def test_fields_failing_sanity_checks_are_recorded_and_listed_by_qc(tmp_path):
    from hts.tasks.qc import plate_qc

    ingest(Path(__file__).parents[1] / "data/nd2/example-pbmc.nd2", workspace=here())
    (rep,) = segment(engine="classic", workers=1, channels={"nucleus": "DAPI"}, workspace=here())
    kinds = {c["check"]: c for c in rep.checks}
    assert "dark_objects" in kinds and kinds["dark_objects"]["channel"] == "DAPI"
    assert kinds["dark_objects"]["fields"] == 1 and kinds["dark_objects"]["of"] == 1
    (row,) = Catalog("hts.duckdb").query("SELECT flags FROM field_qc")
    assert "dark_objects" in row["flags"]
    (report,) = plate_qc(workspace=here())
    assert len(report.flagged_fields) == 1 and "dark_objects" in report.flagged_fields[0]["flags"]


def test_a_single_channel_plate_fills_the_engines_one_role_and_says_so(tmp_path):
    import tifffile

    src = tmp_path / "one"
    src.mkdir()
    img = tifffile.imread(Path(__file__).parents[1] / "data/nuclei_gt/dsb2018_img2d.tif")
    tifffile.imwrite(src / "A01_s1_w1.tif", img)
    ingest(src, pattern="{well}_s{field}_{channel}.tif", workspace=here())
    (rep,) = segment(engine="classic", pixel_size_um=0.45, workers=1, workspace=here())
    assert rep.objects["nuclei"] > 80
    assert rep.notes == [
        "plate one has one channel, w1: used as the nucleus channel of classic (pass --channels nucleus=NAME to say so)"
    ]


def test_nuclei_only_plates_measure_nuclei_only(tmp_path):
    """classic without a cytoplasm channel writes cells (nucleus expansions) but measures the nuclei: the
    expansions' Cells_ features would repeat them and their Cytoplasm_ ones measure background."""
    import tifffile

    from hts.catalog import Catalog

    src = tmp_path / "one"
    src.mkdir()
    img = tifffile.imread(Path(__file__).parents[1] / "data/nuclei_gt/dsb2018_img2d.tif")
    tifffile.imwrite(src / "A01_s1_w1.tif", img)
    ingest(src, pattern="{well}_s{field}_{channel}.tif", workspace=here())
    (rep,) = segment(engine="classic", pixel_size_um=0.45, workers=1, workspace=here())
    assert set(rep.labels) == {"nuclei", "cells"} and rep.cells == rep.objects["nuclei"]
    cols = [r["column_name"] for r in Catalog("hts.duckdb").query("DESCRIBE SELECT * FROM cells")]
    assert "Nuclei_AreaShape_Area" in cols and "Nuclei_Intensity_MeanIntensity_w1" in cols
    assert not any(c.startswith(("Cells_", "Cytoplasm_")) for c in cols), [c for c in cols if c.startswith("C")]
    row = Catalog("hts.duckdb").query("SELECT object_id, nucleus_id, Location_Center_X FROM cells LIMIT 1")[0]
    assert row["object_id"] == row["nucleus_id"] and row["Location_Center_X"] >= 0
