"""The public API (``import hts``): a whole plate from Python, the context passed in, nothing read from the environment."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

import hts


def test_import_hts_is_cheap_and_declares_the_api(fresh_python):
    code = (
        "import sys, hts; heavy = [m for m in ('torch', 'dask', 'distributed', 'duckdb', 'zarr') if m in sys.modules];"
        "print(heavy, sorted(hts.__all__))"
    )
    out = fresh_python(code)
    assert out.startswith("[] "), out
    for name in (
        "Workspace",
        "Catalog",
        "Plate",
        "ingest",
        "segment",
        "measure",
        "qc",
        "export",
        "report",
        "evaluate",
        "train",
        "engines",
        "query",
    ):
        assert f"'{name}'" in out
        assert getattr(hts, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hts.nope  # noqa: B018


def test_a_plate_from_python_without_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hts.synth import make_plate

    # whatever the environment and the current folder say is ignored by the library
    monkeypatch.setenv("HTS_DB", str(tmp_path / "elsewhere" / "wrong.duckdb"))
    monkeypatch.setenv("HTS_PLATES_DIR", str(tmp_path / "elsewhere" / "plates"))
    monkeypatch.setenv("HTS_SCHEDULER", "tcp://127.0.0.1:1")  # unreachable: used, it would fail
    Path("hts.toml").write_text("[workspace]\nnot_a_key = 1\n")  # broken: read, it would fail

    raw = make_plate(tmp_path / "raw", format="nd2", wells="B02:B04", fields=2, shape=(192, 192), seed=3)
    ws = hts.Workspace.at(tmp_path / "screen", scheduler="sync")
    plate = hts.ingest(raw.source, ws)
    assert isinstance(plate, hts.Plate) and plate.ingest_report.status == "ingested"
    assert plate.ingest_report.fields_written == 6 and Path(plate.store).parent == tmp_path / "screen" / "plates"
    assert (tmp_path / "screen" / "hts.duckdb").is_file() and not (tmp_path / "elsewhere").exists()
    assert plate.annotate(raw.platemap) == 3

    again = hts.Plate.open("DEMO-PLATE", tmp_path / "screen")  # a folder is a workspace too
    assert again.plate_id == plate.plate_id and again.store == plate.store
    image = plate.image("B03", 1)
    assert image.shape == (3, 1, 192, 192) and image.dtype.name == "uint16"

    run = hts.segment(plate, engine="classic")  # one plate in, one report out
    assert run.status == "segmented" and run.fields_segmented == 6 and run.cells > 0
    assert hts.segment(plate, engine="classic").status == "unchanged"
    labels = plate.labels("B03", 1, "nuclei")
    assert labels.shape == (192, 192) and labels.max() > 0

    cells = plate.cells()
    assert cells.height == run.cells and "Cells_AreaShape_Area" in cells.columns
    assert set(cells["Metadata_Well"].unique()) == {"B02", "B03", "B04"}
    wells = plate.well_stats()
    assert wells.height == 3 and int(wells["cell_count"].sum()) == run.cells
    assert hts.query("SELECT count(*) AS n FROM cells", ws)["n"][0] == run.cells

    (qc,) = hts.qc(plate)
    assert qc.run_id == run.run_id and qc.fields == 6
    exp = hts.export(tmp_path / "profiles", plate)
    assert exp.cells == run.cells and exp.wells == 3
    rep = hts.report(plate, out=tmp_path / "report", n_overlays=1)
    assert Path(rep.html).is_file() and any(p.endswith("overlay_B02_0.png") or "overlay_" in p for p in rep.images)
    assert [r.run_id for r in plate.runs(complete=True)] == [run.run_id]
    assert plate.info()["fields_complete"] == 6


def test_calls_without_a_workspace_say_so():
    from hts.errors import ConfigError

    with pytest.raises(ConfigError, match="no workspace: pass workspace="):
        hts.segment(engine="classic")
    with pytest.raises(ConfigError, match="no workspace"):
        hts.qc()


def test_engines_lists_the_built_ins_with_their_package():
    rows = {r.name: r for r in hts.engines()}
    assert {"classic", "nuclei", "brightfield-unet", "cytoplasm", "fpf", "foci"} <= set(rows)
    assert rows["classic"].package == "hts" and rows["classic"].available
    assert "nucleus_diameter_um" in rows["classic"].parameters and rows["nuclei"].outputs == ["nuclei"]


def test_a_classic_run_imports_no_deep_learning(fresh_python):
    """Workers resolve only the engine they run: a classic segmentation never pays for importing torch."""
    out = fresh_python(
        "import sys; from hts.compute.segment.engines import engine_class, engine_package; "
        "c = engine_class('classic'); engine_package('classic'); import hts.tasks.plan; "
        "print(c.name, 'torch' in sys.modules, 'onnxruntime' in sys.modules)"
    ).split()
    assert out == ["classic", "False", "False"], out


def test_catalog_commands_import_no_zarr(fresh_python):
    """The workspace and the catalog load without the plate store's zarr (0.3-0.5 s of every
    ``hts plates`` / ``query`` / ``qc``): hts.store's names are imported on first use; and
    without jsonschema (0.12 s), which only reading a platemap needs."""
    out = fresh_python(
        "import sys; import hts.config, hts.catalog, hts.store.location; "
        "z, j = 'zarr' in sys.modules, 'jsonschema' in sys.modules; from hts.store import PlateStore; "
        "hts.catalog.platemap._validator(); "
        "print(z, j, 'zarr' in sys.modules, PlateStore.__module__, 'jsonschema' in sys.modules)"
    ).split()
    assert out == ["False", "False", "True", "hts.store.ngff", "True"], out


def test_one_cluster_for_every_call_in_a_cluster_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``with hts.cluster(ws)``: ingest and segment share one local cluster; the results equal separate calls."""
    from hts.orchestrate import dask as orch
    from hts.synth import make_plate

    started = []
    real = orch._local_cluster
    monkeypatch.setattr(orch, "_local_cluster", lambda *a, **k: started.append(a[0]) or real(*a, **k))
    raw = make_plate(tmp_path / "raw", format="nd2", wells="B02:B03", fields=2, shape=(160, 160), seed=5)

    def run(name: str, shared: bool) -> int:
        ws = hts.Workspace.at(tmp_path / name, scheduler="threads")
        with hts.cluster(ws, workers=1) if shared else contextlib.nullcontext() as client:
            assert (client is not None) == shared
            plate = hts.ingest(raw.source, ws, workers=1)
            rep = hts.segment(plate, engine="classic", workers=1)
            # a call asking for another worker count starts its own cluster
            hts.segment(plate, engine="classic", workers=2, label_suffix="two") if shared else None
        return rep.cells

    before = len(started)
    separate = run("separate", False)
    assert len(started) - before == 2  # one cluster per call
    before = len(started)
    together = run("together", True)
    assert len(started) - before == 2  # the block's cluster + the 2-worker call's own
    assert together == separate > 0
    assert orch._SHARED.get() is None  # the block left nothing behind


def test_a_worker_kept_across_calls_reloads_retrained_weights():
    """Workers live across the calls of an ``hts.cluster`` block; their engine cache is keyed by the weights' checksum."""
    from hts.tasks.plan import EngineSpec, _worker_engine

    base = dict(name="classic", params={}, backend="auto", device="auto", channels={"nucleus": 0}, tile=1024, halo=64)
    a = _worker_engine(EngineSpec(**base, model="aaa"))
    assert _worker_engine(EngineSpec(**base, model="aaa")) is a
    assert _worker_engine(EngineSpec(**base, model="bbb")) is not a
