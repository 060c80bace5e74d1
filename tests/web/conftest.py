"""A segmented, annotated 96-well plate shared by the browser tests, and a live server on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from live import LiveServer


@pytest.fixture(scope="session")
def browse_ws(tmp_path_factory: pytest.TempPathFactory):
    """A workspace with one 96-well plate (1 field of 256² per well, DAPI/GFP/Brightfield), its dose-response
    platemap, and a complete classic run with features: what `make demo` makes, smaller."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    root = tmp_path_factory.mktemp("browse")
    synth = make_plate(root / "raw", format="nd2", fields=1, shape=(256, 256))
    ws = Workspace.at(root / "ws", scheduler="sync")
    plate = hts.ingest(synth.source, ws)
    plate.annotate(synth.platemap)
    hts.segment(plate, engine="classic")
    return ws


@pytest.fixture
def copied_ws(browse_ws, tmp_path: Path):
    """A private copy of ``browse_ws`` a test may damage (stores deleted, runs started)."""
    import duckdb

    from hts.config import Workspace

    src = Path(browse_ws.db).parent
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    con = duckdb.connect(str(root / "hts.duckdb"))  # the stores' paths are absolute: point them at the copies
    con.execute("UPDATE plates SET store_uri = replace(store_uri, ?, ?)", [str(src), str(root)])
    con.close()
    return Workspace.at(root, scheduler="sync")


@pytest.fixture(scope="session")
def live_server(browse_ws):
    server = LiveServer(browse_ws)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def formats_ws(tmp_path_factory: pytest.TempPathFactory):
    """A 384-well plate imaged without its outer ring (B02:O23) and a 1536-well plate's corner block, ingested
    (not segmented): the plate page must place every well where it is on the plate."""
    import hts
    from hts.config import Workspace
    from hts.synth import make_plate

    root = tmp_path_factory.mktemp("formats")
    ws = Workspace.at(root / "ws", scheduler="sync")
    for name, plate_type, wells in (("P384", 384, "B02:O23"), ("P1536", 1536, "AC40:AF48")):
        synth = make_plate(
            root / name, format="nd2", plate_type=plate_type, wells=wells, fields=1, shape=(32, 32), name=name
        )
        hts.ingest(synth.source, ws)
    return ws
