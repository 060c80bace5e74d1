"""Real servers for the scale tests, started on free local ports and stopped by themselves:
the local S3 server (moto) and a PostgreSQL cluster (Debian's ``postgresql``, a fresh ``initdb``).

Import the fixtures into a test module (``from servers import postgres  # noqa: F401``).
Without the server's programs the tests that need it skip and say why.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from benchmarks._util import create_database, postgres_server

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("moto")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Postgres:
    """A running PostgreSQL cluster; :meth:`new_db` gives the DuckLake URL of a fresh database."""

    def __init__(self, port: int):
        self.port = port

    def new_db(self) -> str:
        return create_database(self.port, f"hts_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on a free port for the session (:func:`benchmarks._util.postgres_server`) and the
    DuckLake extensions; skips with the reason when either is missing."""
    pytest.importorskip("duckdb_extension_ducklake", reason="the 'lake' extra is not installed")
    try:
        server = postgres_server()
        port = server.__enter__()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no PostgreSQL server: {e}")
    try:
        yield Postgres(port)
    finally:
        server.__exit__(None, None, None)
