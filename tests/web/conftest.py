"""A segmented, annotated 96-well plate shared by the browser tests, and a live server on it."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest


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
    from hts.config import Workspace

    root = tmp_path / "copy"
    shutil.copytree(Path(browse_ws.db).parent, root)
    return Workspace.at(root, scheduler="sync")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the browser app on a free local port, in a thread; stopped by :meth:`stop`."""

    def __init__(self, ws, **kw):
        import uvicorn

        from hts.web import create_app
        from hts.web.app import LOOPBACK_HOSTS

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(ws, allowed_hosts=LOOPBACK_HOSTS, **kw)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(browse_ws):
    server = LiveServer(browse_ws)
    yield server
    server.stop()
