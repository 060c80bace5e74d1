"""Shared fixtures: a fresh workspace per test, paths of the real test data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ND2_MULTI = DATA / "nd2" / "example-multichannel.nd2"
ND2_YEAST = DATA / "nd2" / "example-cerevisiae.nd2"
ND2_PBMC = DATA / "nd2" / "example-pbmc.nd2"
CELLOMICS = DATA / "cellomics_cp_example"


def here(db=None, scheduler=None, plates_dir=None):
    """The workspace a command run in this test's folder resolves (options, then HTS_* variables, then defaults).

    Library calls take their workspace explicitly; tests build it the way the CLI does.
    """
    from hts.config import load_workspace

    return load_workspace(db=db, scheduler=scheduler, plates_dir=plates_dir)


def _fresh_python(code: str, *, timeout: float = 180) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def fresh_python():
    """``fresh_python(code)``: what ``python -c code`` prints in a fresh interpreter (imports counted
    from a clean start); a failure shows its stderr. A fixture, not an import: ``from conftest import``
    in a test module can name another folder's conftest, and Dask workers import test modules too."""
    return _fresh_python


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in an empty folder with no workspace settings leaking in.

    Tasks run in-process ('sync') unless a test asks for Dask explicitly.
    """
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    for var in ("HTS_DB", "HTS_PLATES_DIR", "HTS_CONFIG", "HTS_DATA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTS_SCHEDULER", "sync")
    return ws


@pytest.fixture
def interrupt_field_task(monkeypatch: pytest.MonkeyPatch):
    """``arm(n)``: the segment/measure field task raises KeyboardInterrupt on its n-th call
    (as Ctrl-C in the middle of a run); ``arm`` returns a function that restores the real task."""
    from hts.tasks import plan as seg_mod

    real = seg_mod.process_field

    def arm(n: int):
        calls = {"n": 0}

        def dying(item, spec):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(item, spec)

        monkeypatch.setattr(seg_mod, "process_field", dying)
        return lambda: monkeypatch.setattr(seg_mod, "process_field", real)

    return arm


def frame_values(t: int, p: int, z: int, n_c: int, shape: tuple[int, int], dtype="uint16"):
    """Deterministic, position-unique test pixels for ND2 plates written by the test writer."""
    import numpy as np

    rng = np.random.default_rng(1_000_003 * t + 1009 * p + z)
    return rng.integers(0, 4000, size=(n_c, *shape)).astype(dtype)


@pytest.fixture
def annotated_plate(tmp_path: Path):
    """Factory: a synthetic ND2 plate (``hts.synth.make_plate``) ingested into the workspace with
    its platemap attached; returns the ``SynthPlate``."""
    from hts.catalog import Catalog
    from hts.catalog.platemap import annotate
    from hts.synth import make_plate
    from hts.tasks.ingest import ingest

    def make(*, wells: str, fields: int, shape: tuple[int, int]):
        p = make_plate(tmp_path / "raw", format="nd2", wells=wells, fields=fields, shape=shape)
        ingest(p.source, workspace=here())
        cat = Catalog("hts.duckdb")
        annotate(cat, cat.find_plate("DEMO-PLATE"), p.platemap)
        return p

    return make


@pytest.fixture
def nd2_plate(tmp_path: Path):
    """Factory: write a small multi-position ND2 plate with the hts ND2 writer; returns its path."""
    from hts.formats.base import Channel
    from hts.synth.nd2_writer import Position, write_nd2
    from hts.wells import PLATE_TYPES, parse_well_range

    def make(
        name="plate.nd2",
        wells="A01:B03",
        fields=2,
        named=True,
        plate_wells=96,
        n_z=1,
        n_time=1,
        shape=(64, 48),
        channels=("DAPI", "GFP"),
    ):
        pt = PLATE_TYPES[plate_wells]
        positions = []
        for w in parse_well_range(wells, pt):
            for f in range(fields):
                label = (w.name if f == 0 else f"{w.name}#{f + 1}") if named else None
                positions.append(
                    Position(label, 14_380.0 + w.column * pt.pitch_um + 300 * f, 11_240.0 + w.row * pt.pitch_um)
                )
        chans = [Channel(c, emission_nm=450.0 + 60 * i) for i, c in enumerate(channels)]
        path = tmp_path / name
        write_nd2(
            path,
            lambda t, p, z: frame_values(t, p, z, len(chans), shape),
            positions=positions,
            channels=chans,
            shape_yx=shape,
            n_time=n_time,
            n_z=n_z,
            pixel_size_um=0.325,
            z_step_um=2.0,
        )
        return path

    return make
