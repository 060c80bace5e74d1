"""A live browser server for tests: uvicorn on a free local port, in a thread, stopped by the test."""

from __future__ import annotations

import socket
import threading
import time


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
