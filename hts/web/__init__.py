"""``hts serve``: a plate browser in the web browser, over a workspace's catalog and plate stores.

:func:`create_app` makes the ASGI app (:mod:`hts.web.app`); :func:`serve` runs it on
uvicorn. What the pages show comes from :class:`hts.tasks.browse.Browser`.

The catalog stays writable while the browser is open: every request opens the DuckDB
file read-only for the moment it needs it and closes it, so a ``segment`` run in another
process takes the writer's lock between requests (and a request waits while the writer
commits a batch). The plate page polls the run's progress and redraws when fields finish.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from collections.abc import Callable

from hts.config import Workspace
from hts.errors import ConfigError

__all__ = ["create_app", "serve", "is_loopback", "bind"]


def create_app(workspace: Workspace, **kw):
    """The ASGI app (see :func:`hts.web.app.create_app`)."""
    from hts.web.app import create_app as make

    return make(workspace, **kw)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a port in use or a host that is not this machine's is one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use (another `hts serve`?); pick another with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"port {port} on {host}: permission denied (ports below 1024 need root)") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    workspace: Workspace,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the plate browser until interrupted (Ctrl-C).

    On a loopback ``host`` only requests naming this machine (``localhost``,
    ``127.0.0.1``) are answered, and ``token`` is optional. On any other host
    (``0.0.0.0``: every interface) a token is required: ``token`` or a generated one.
    ``on_ready(url)`` is called with the URL to open (the token in it) once listening.
    """
    import uvicorn

    from hts.web.app import LOOPBACK_HOSTS

    local = is_loopback(host)
    if not local and not token:
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise ConfigError("--token: use at least 16 characters (or leave it out to have one generated)")
    sock = bind(host, port)
    port = sock.getsockname()[1]
    app = create_app(workspace, token=token, allowed_hosts=LOOPBACK_HOSTS if local else None)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/" + (f"?token={token}" if token else "")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
