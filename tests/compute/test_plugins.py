"""Engines and plate readers as plug-ins (entry points ``hts.engines`` / ``hts.readers``), EngineRef, the cellpose engine.

The example third-party package (``examples/hts-engine-example``) is really
installed (pip, offline, into a temporary folder) and found through its
metadata, in a subprocess running ``hts engines`` and in this process, where it
segments a real nuclei image. Broken plug-ins are real ``.dist-info`` folders
whose entry points cannot be registered. The cellpose engine runs a stand-in
``cellpose.models`` module; the real Cellpose only with its package and a
weights file given by ``HTS_CELLPOSE_MODEL``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

import hts.compute.segment.engines as E
import hts.formats as F
from hts.compute.analysis.metrics import match_instances
from hts.compute.segment.engines import (
    EngineError,
    EngineRef,
    engine_class,
    engine_package,
    engines,
    plugin_errors,
    segment_field,
)
from hts.compute.train.training import median_diameter_px
from hts.errors import SourceError

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"
EXAMPLE = ROOT / "examples" / "hts-engine-example"
DSB_IMG = DATA / "nuclei_gt" / "dsb2018_img2d.tif"
DSB_MASK = DATA / "nuclei_gt" / "dsb2018_mask2d.tif"
HTS = Path(sys.executable).parent / "hts"
BUILTIN = {"brightfield-unet", "cellpose", "classic", "cytoplasm", "foci", "fpf", "nuclei"}
# local-threshold on DSB2018 (125 nuclei, median 12 µm): F1@0.5 0.86 and 121 objects measured; floors well below
LOCAL_THRESHOLD_F1_FLOOR = 0.75

BROKEN_ENTRY_POINTS = """\
[hts.engines]
missing = no_such_module_for_hts_tests:Engine
notengine = json:JSONDecoder
misnamed = hts_engine_example.engine:LocalThresholdEngine
classic = hts_engine_example.engine:LocalThresholdEngine

[hts.readers]
brokenfmt = no_such_reader_module_for_hts_tests:Reader
"""

READER_MODULE = """\
from pathlib import Path

import numpy as np

from hts.formats.base import PlateReader


class MyReader(PlateReader):
    format = "myfmt"

    @classmethod
    def sniff(cls, path):
        return Path(path).suffix == ".myfmt"

    def describe(self):
        raise NotImplementedError

    def read_field(self, field, description):
        return np.zeros((1, 1, 1, 2, 2), np.uint16)
"""


def _dist_info(folder: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution: what ``importlib.metadata`` reads of a real install."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in package installed by pip (offline, from a copy: the build writes into its source folder)."""
    base = tmp_path_factory.mktemp("plugin")
    src, site = base / "src", base / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return site


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed distributions whose entry points cannot be registered, and one working reader plug-in."""
    site = tmp_path_factory.mktemp("broken")
    _dist_info(site, "broken-plugins", BROKEN_ENTRY_POINTS)
    (site / "myfmt_reader.py").write_text(READER_MODULE)
    _dist_info(site, "myfmt-plugin", "[hts.readers]\nmyfmt = myfmt_reader:MyReader\n")
    return site


def _forget_plugins() -> None:
    E.reload_plugins()
    F._registry.cache_clear()
    for mod in [m for m in sys.modules if m.split(".")[0] in ("hts_engine_example", "myfmt_reader")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


@pytest.fixture
def plugins_on_path(monkeypatch: pytest.MonkeyPatch):
    """Put plug-in folders on sys.path and reload the registries; restored afterwards."""

    def add(*folders: Path) -> None:
        for folder in folders:
            monkeypatch.syspath_prepend(str(folder))
        _forget_plugins()

    yield add
    _forget_plugins()


# ---------------------------------------------------------------------------- registration of the built-ins


def test_builtins_are_declared_in_pyproject_as_in_code():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["hts.engines"] == E.BUILTIN_ENGINES
    assert project["entry-points"]["hts.readers"] == F.BUILTIN_READERS
    assert project["optional-dependencies"]["cellpose"] == ["cellpose>=3"]
    assert set(E.BUILTIN_ENGINES) == BUILTIN


def test_installed_metadata_registers_the_builtins():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("hts")
    except PackageNotFoundError:
        pytest.skip("hts is not installed (run from a source tree): the built-ins come from the list in code")
    groups = {ep.group for ep in dist.entry_points}
    if "hts.engines" not in groups:
        pytest.skip("the installed hts metadata predates the entry points: pip install -e . (the code list is used)")
    assert {ep.name: ep.value for ep in dist.entry_points if ep.group == "hts.engines"} == E.BUILTIN_ENGINES
    assert {ep.name: ep.value for ep in dist.entry_points if ep.group == "hts.readers"} == F.BUILTIN_READERS
    assert all(engine_package(n) == "hts" for n in BUILTIN)


def test_without_metadata_the_builtins_come_from_code(monkeypatch: pytest.MonkeyPatch, plugins_on_path):
    import hts.plugins

    monkeypatch.setattr(hts.plugins.md, "entry_points", lambda **kw: [])
    plugins_on_path()
    assert list(engines()) == sorted(BUILTIN) and plugin_errors() == []
    assert F.FORMATS == ("nd2", "imagexpress", "opera", "cellomics", "pattern")
    assert engine_class("classic").name == "classic" and engine_package("nuclei") == "hts"


# ---------------------------------------------------------------------------- the example plug-in package


def test_hts_engines_lists_the_example_plugin_and_reports_broken_ones(
    example_site: Path, broken_site: Path, tmp_path: Path
):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_site), str(broken_site)])}
    p = subprocess.run(
        [str(HTS), "engines", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert BUILTIN | {"local-threshold"} == set(rows)
    lt = rows["local-threshold"]
    assert lt["package"] == "hts-engine-example" and lt["available"] is True
    assert lt["outputs"] == ["nuclei"] and "nucleus_diameter_um" in lt["parameters"]
    assert rows["classic"]["package"] == "hts" and rows["classic"]["summary"].startswith("threshold + seeded watershed")
    problems = [line for line in p.stderr.splitlines() if line.startswith("not loaded:")]
    assert len(problems) == 4, p.stderr  # the reader group is not the engines' business
    assert any(
        "'missing' from broken-plugins: cannot load no_such_module_for_hts_tests:Engine (ModuleNotFoundError" in x
        for x in problems
    )
    assert any(
        "'notengine'" in x and "is not a subclass of hts.compute.segment.engines.base.Engine" in x for x in problems
    )
    assert any(
        "'misnamed'" in x and "has name 'local-threshold'; it must equal the entry point name" in x for x in problems
    )
    assert any("'classic'" in x and "the name is taken by a built-in" in x for x in problems)

    p = subprocess.run(
        [str(HTS), "engines"], capture_output=True, text=True, env={**env, "COLUMNS": "80"}, cwd=tmp_path, timeout=120
    )
    assert p.returncode == 0, p.stderr
    table = p.stdout.split("\nnot loaded:")[0]
    assert "│ local-threshold  │ hts-engine-example │" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    lines = p.stdout.splitlines()
    assert sum(line.startswith("not loaded: hts.engines plug-in") for line in lines) == 4  # one line each


def test_example_engine_segments_real_nuclei(example_site: Path, plugins_on_path):
    plugins_on_path(example_site)
    assert "local-threshold" in engines() and plugin_errors() == []
    assert engine_package("local-threshold") == "hts-engine-example"
    cls = engine_class("local-threshold")
    assert (
        cls.__module__ == "hts_engine_example.engine" and str(EngineRef.parse("local-threshold")) == "local-threshold"
    )
    img, gt = tifffile.imread(DSB_IMG), tifffile.imread(DSB_MASK)
    px = 12.0 / median_diameter_px(gt)  # the size the defaults are written for (its median nucleus is 12 µm)
    res = segment_field(cls(), {"nucleus": img}, pixel_size_um=px)
    m = match_instances(gt, res.labels["nuclei"], (0.5,))
    n_true = len(np.unique(gt)) - 1
    assert m["0.5"]["f1"] > LOCAL_THRESHOLD_F1_FLOOR, m
    assert 0.8 * n_true < res.counts()["nuclei"] < 1.2 * n_true
    # the same through tiles smaller than the field: the engine's field-level statistics keep tiles consistent
    tiled = segment_field(cls(), {"nucleus": img}, pixel_size_um=px, tile=256)
    assert match_instances(res.labels["nuclei"], tiled.labels["nuclei"], (0.5,))["0.5"]["f1"] > 0.95


def test_broken_plugins_leave_hts_working(example_site: Path, broken_site: Path, plugins_on_path):
    plugins_on_path(example_site, broken_site)
    assert BUILTIN | {"local-threshold"} == set(engines())
    assert (
        engines()["classic"].__module__ == "hts.compute.segment.engines.classic"
    )  # a plug-in cannot take a built-in's name
    errs = {e.name: e for e in plugin_errors()}
    assert set(errs) == {"missing", "notengine", "misnamed", "classic"}
    assert errs["missing"].package == "broken-plugins" and "\n" not in str(errs["missing"])
    with pytest.raises(EngineError, match=r"unknown engine 'missing' \(it did not load: cannot load no_such_module"):
        engine_class("missing")
    from hts.tasks.engines import describe_engines

    rows = [e.to_dict() for e in describe_engines()]
    assert [r["name"] for r in rows][-1] == "local-threshold" and len(rows) == len(BUILTIN) + 1


def test_engines_table_with_plugins_fits_80_columns(example_site: Path, broken_site: Path, plugins_on_path):
    from rich.console import Console

    from hts.cli.render import render_engines
    from hts.tasks.engines import describe_engines

    plugins_on_path(example_site, broken_site)
    console = Console(width=80, record=True)
    render_engines(console, [e.to_dict() for e in describe_engines()], full=False, errors=plugin_errors())
    text = console.export_text()
    table, _, tail = text.partition("\nnot loaded:")
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "local-threshold  │ hts-engine-example │" in table and "brightfield-unet │ hts" in table
    assert len(("not loaded:" + tail).strip().splitlines()) == 4


# ---------------------------------------------------------------------------- reader plug-ins


def test_reader_plugins(broken_site: Path, plugins_on_path, tmp_path: Path):
    plugins_on_path(broken_site)
    assert F.FORMATS == ("nd2", "imagexpress", "opera", "cellomics", "pattern", "myfmt")
    assert F.reader_package("myfmt") == "myfmt-plugin" and F.reader_package("nd2") == "hts"
    assert [e.name for e in F.plugin_errors()] == ["brokenfmt"]
    src = tmp_path / "run.myfmt"
    src.write_bytes(b"x")
    reader = F.open_plate(src)  # claimed by the plug-in's sniff
    assert type(reader).__name__ == "MyReader" and reader.source == src
    assert type(F.open_plate(tmp_path, format="myfmt")).__name__ == "MyReader"
    # the built-in detection still decides what no plug-in claims
    assert type(F.open_plate(DATA / "cellomics_cp_example")).__name__ == "CellomicsReader"
    with pytest.raises(SourceError, match=r"unknown format 'brokenfmt' \(its plug-in did not load: cannot load"):
        F.open_plate(src, format="brokenfmt")
    with pytest.raises(
        SourceError, match="unknown format 'nope'; choose one of nd2, imagexpress, opera, cellomics, pattern, myfmt"
    ):
        F.open_plate(src, format="nope")


# ---------------------------------------------------------------------------- EngineRef


def test_engine_ref_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ref = EngineRef.parse("classic")
    assert ref == EngineRef(name="classic") and not ref.is_folder and str(ref) == "classic"
    assert ref.resolve() is engines()["classic"] and EngineRef.parse(ref) is ref

    shipped = E.engines()["nuclei"].model_path()  # a real engine folder: config.json + weights + card
    folder = EngineRef.parse(str(shipped))
    assert folder.is_folder and folder.folder == shipped.resolve() and str(folder) == str(shipped.resolve())
    assert EngineRef.parse(shipped) == folder == EngineRef.parse(str(folder))  # what a worker parses back
    cls = folder.resolve()
    assert cls.name == str(shipped.resolve()) and cls.base_engine == "nuclei" and engine_class(cls.name) is cls
    assert engine_package(shipped) == "hts"

    # relative folders are made absolute; a registered name wins over a folder of that name, ./name is the folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "classic").mkdir()
    assert EngineRef.parse("classic") == EngineRef(name="classic")
    assert EngineRef.parse("./classic") == EngineRef(folder=(tmp_path / "classic").resolve())
    with pytest.raises(EngineError, match=r"not an engine folder \(no config.json\)"):
        engine_class("./classic")

    with pytest.raises(EngineError, match=r"^\./missing: no such engine folder"):
        EngineRef.parse("./missing")
    with pytest.raises(EngineError, match="no such engine folder"):
        EngineRef.parse(tmp_path / "missing")
    with pytest.raises(
        EngineError, match=r"^unknown engine 'nosuch'; engines: brightfield-unet, cellpose, classic, .*engine folder\)$"
    ):
        EngineRef.parse("nosuch")
    with pytest.raises(EngineError, match="exactly one"):
        EngineRef(name="classic", folder=tmp_path)
    with pytest.raises(EngineError, match="exactly one"):
        EngineRef()
    with pytest.raises(EngineError, match="not 3"):
        EngineRef.parse(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the cellpose engine


class _FakeCellposeModel:
    """Stand-in for ``cellpose.models.CellposeModel``: masks are the connected components above a fixed level."""

    level = 60.0
    instances: list[_FakeCellposeModel] = []

    def __init__(self, pretrained_model: str | None = None, gpu: bool = False, **kwargs):
        self.pretrained_model, self.gpu, self.calls = pretrained_model, gpu, []
        _FakeCellposeModel.instances.append(self)

    def eval(self, img, diameter=None, channels=None, flow_threshold=0.4, cellprob_threshold=0.0, **kwargs):
        self.calls.append(
            {
                "shape": img.shape,
                "diameter": diameter,
                "channels": channels,
                "flow_threshold": flow_threshold,
                "cellprob_threshold": cellprob_threshold,
                **kwargs,
            }
        )
        plane = img[..., 0] if img.ndim == 3 else img  # (cytoplasm, nucleus): the cytoplasm plane
        masks, _ = ndi.label(plane > self.level)
        return masks.astype(np.uint16), [np.zeros((2, *plane.shape), np.float32)], np.zeros(256, np.float32)


@pytest.fixture
def fake_cellpose(monkeypatch: pytest.MonkeyPatch) -> type[_FakeCellposeModel]:
    pkg, models = types.ModuleType("cellpose"), types.ModuleType("cellpose.models")
    models.CellposeModel = _FakeCellposeModel
    pkg.models = models
    monkeypatch.setitem(sys.modules, "cellpose", pkg)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)
    _FakeCellposeModel.instances = []
    return _FakeCellposeModel


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "cellpose_nuclei_weights"
    path.write_bytes(b"not real weights: the stand-in model never reads them")
    return path


def test_cellpose_without_the_package_is_listed_unavailable(monkeypatch: pytest.MonkeyPatch, weights: Path):
    from hts.compute.segment.engines.cellpose import INSTALL_HINT
    from hts.tasks.engines import describe_engines

    monkeypatch.setitem(sys.modules, "cellpose", None)  # not importable, whatever is installed
    assert "cellpose" in engines() and engine_package("cellpose") == "hts"
    (row,) = [e.to_dict() for e in describe_engines("cellpose")]
    assert (
        row["available"] is False
        and row["unavailable"] == INSTALL_HINT == "cellpose is not installed: pip install 'hts[cellpose]'"
    )
    assert {"model", "diameter_um", "flow_threshold", "cellprob_threshold"} <= set(row["parameters"])
    with pytest.raises(EngineError, match=r"^cellpose is not installed: pip install 'hts\[cellpose\]'$"):
        engine_class("cellpose")({"model": str(weights)})
    assert all(r.available for r in describe_engines() if r.name != "cellpose")


def test_cellpose_adapter_with_a_stand_in_model(fake_cellpose, weights: Path):
    cls = engine_class("cellpose")
    assert cls.unavailable() is None
    with pytest.raises(EngineError, match=r"-p model=PATH is required"):
        cls()
    with pytest.raises(EngineError, match="no Cellpose weights file at"):
        cls({"model": str(weights.parent / "absent")})
    with pytest.raises(EngineError, match="--backend onnxruntime"):
        cls({"model": str(weights)}, backend="onnxruntime")

    eng = cls(
        {"model": str(weights), "diameter_um": 12.0, "flow_threshold": 0.6, "cellprob_threshold": -1.0}, device="cpu"
    )
    (model,) = fake_cellpose.instances
    assert model.pretrained_model == str(weights.resolve()) and model.gpu is False
    assert eng.model_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

    img = tifffile.imread(DSB_IMG)
    px = 0.4
    res = segment_field(eng, {"nucleus": img}, pixel_size_um=px)
    (call,) = model.calls
    assert call["diameter"] == pytest.approx(12.0 / 0.4) == eng.diameter_px(px)  # µm at this pixel size -> pixels
    assert call["channels"] == [0, 0] and call["flow_threshold"] == 0.6 and call["cellprob_threshold"] == -1.0
    want, n = ndi.label(img > fake_cellpose.level)
    assert n > 50 and res.counts() == {"nuclei": n, "cells": n}
    assert match_instances(want, res.labels["nuclei"], (0.99,))["0.99"]["f1"] == 1.0  # the model's labels, renumbered
    np.testing.assert_array_equal(res.labels["cells"], res.labels["nuclei"])  # no expansion by default

    grown = segment_field(
        cls({"model": str(weights), "cell_expansion_um": 2.0}, device="cpu"), {"nucleus": img}, pixel_size_um=px
    )
    assert (grown.labels["cells"] > 0).sum() > (grown.labels["nuclei"] > 0).sum()
    inside = grown.labels["nuclei"] > 0
    np.testing.assert_array_equal(
        grown.labels["cells"][inside], grown.labels["nuclei"][inside]
    )  # a cell keeps its nucleus id


def test_cellpose_with_a_cytoplasm_channel(fake_cellpose, weights: Path):
    img = tifffile.imread(DSB_IMG).astype(np.float32)
    cyto = ndi.grey_dilation(img, size=7)  # cell bodies around the nuclei
    eng = engine_class("cellpose")({"model": str(weights), "diameter_um": 20.0}, device="cpu")
    res = segment_field(eng, {"nucleus": img, "cytoplasm": cyto}, pixel_size_um=0.5)
    (call,) = fake_cellpose.instances[0].calls
    assert call["shape"] == (*img.shape, 2) and call["channels"] == [1, 2] and call["channel_axis"] == -1
    assert call["diameter"] == pytest.approx(40.0)
    cells, nuclei = res.labels["cells"], res.labels["nuclei"]
    assert res.counts()["cells"] == ndi.label(cyto > fake_cellpose.level)[1]
    assert (nuclei > 0).sum() < (cells > 0).sum() and np.all(cells[nuclei > 0] == nuclei[nuclei > 0])


def test_real_cellpose_when_installed_with_weights():
    try:
        import cellpose  # noqa: F401
    except ImportError:
        pytest.skip(
            "cellpose is not installed (pip install 'hts[cellpose]'); the adapter is tested with a stand-in model"
        )
    weights = os.environ.get("HTS_CELLPOSE_MODEL")
    if not weights or not Path(weights).is_file():
        pytest.skip("no Cellpose weights: set HTS_CELLPOSE_MODEL to a local nuclei model file (nothing is downloaded)")
    img, gt = tifffile.imread(DSB_IMG), tifffile.imread(DSB_MASK)
    px = 12.0 / median_diameter_px(gt)
    eng = engine_class("cellpose")({"model": weights, "diameter_um": 12.0}, device="cpu")
    labels = segment_field(eng, {"nucleus": img}, pixel_size_um=px).labels["nuclei"]
    assert match_instances(gt, labels, (0.5,))["0.5"]["f1"] > 0.7
