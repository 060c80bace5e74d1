"""The plate browser's HTTP layer: routes over :class:`hts.tasks.browse.Browser`, nothing else.

An ASGI app (Starlette): JSON for the page's data, JPEG / PNG tiles drawn on the server,
CSV / Parquet downloads, and one static page (``static/``: HTML, CSS, a small script; no
build step, nothing fetched from elsewhere). Every answer to a bad request is JSON
``{"error": "<one line>"}`` with 404 (not in the catalog or store) or 400 (bad SQL, bad
parameter); an unexpected failure is a 500 with one line, logged on the server.

Security (see :func:`create_app`): the app trusts only its own host names when bound to
loopback (so a web page elsewhere cannot reach it through DNS rebinding), and asks for a
token when one is set (``hts serve --host 0.0.0.0`` sets one). User SQL runs read-only
(:meth:`hts.catalog.Catalog.user_connection`).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hts.config import Workspace
from hts.errors import HtsError
from hts.tasks.browse import Browser, NotFound

__all__ = ["create_app", "LOOPBACK_HOSTS"]

STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
TOKEN_COOKIE = "hts_token"
log = logging.getLogger("hts.web")


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become null, anything unknown its string."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(_clean(data), separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def _table_json(table: pa.Table) -> dict[str, Any]:
    cols = table.column_names
    return {"columns": cols, "rows": [[row[c] for c in cols] for row in table.to_pylist()]}


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None or text == "":
        return None if text is None else []
    try:
        return [int(x) for x in text.split(",") if x != ""]
    except ValueError:
        raise HtsError(f"{what} must be comma-separated integers, got {text!r}") from None


def _windows(text: str | None) -> dict[int, tuple[float, float]] | None:
    """``"0:100:4000,1:50:900"`` -> {0: (100, 4000), 1: (50, 900)}."""
    if not text:
        return None
    out = {}
    try:
        for part in text.split(","):
            c, lo, hi = part.split(":")
            out[int(c)] = (float(lo), float(hi))
    except ValueError:
        raise HtsError(f"win must be channel:low:high,..., got {text!r}") from None
    return out


def _int(request: Request, name: str, default: int | None = None) -> int:
    raw = request.path_params.get(name, request.query_params.get(name))
    if raw is None:
        if default is None:
            raise HtsError(f"missing parameter {name}")
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise HtsError(f"{name} must be an integer, got {raw!r}") from None


def _float(request: Request, name: str) -> float:
    raw = request.query_params.get(name)
    try:
        v = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HtsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise HtsError(f"{name} must be finite")
    return v


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in ("csv", "parquet"):
        raise NotFound(f"downloads are .csv or .parquet, not .{fmt}")


def _download(table: pa.Table, fmt: str, name: str) -> Response:
    from hts.tasks.outputs import spreadsheet_safe_table

    buf = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(spreadsheet_safe_table(table), buf)
        media = "text/csv"
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, buf)
        media = "application/vnd.apache.parquet"
    return Response(
        buf.getvalue(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'},
    )


def _safe_name(*parts: str) -> str:
    return "_".join("".join(ch if ch.isalnum() or ch in "-." else "-" for ch in p) for p in parts)


class _Routes:
    """The handlers, bound to one :class:`Browser`."""

    def __init__(self, browser: Browser):
        self.b = browser

    def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def plates(self, request: Request) -> Response:
        return _json({"catalog": self.b.catalog.name, "plates": self.b.plates()})

    def plate(self, request: Request) -> Response:
        q = request.query_params
        return _json(
            self.b.plate(request.path_params["plate"], metric=q.get("metric") or "cell_count", run=q.get("run"))
        )

    def metrics(self, request: Request) -> Response:
        return _json({"metrics": self.b.metrics(request.path_params["plate"], request.query_params.get("run"))})

    def progress(self, request: Request) -> Response:
        return _json(self.b.progress(request.path_params["plate"]))

    def well(self, request: Request) -> Response:
        p, q = request.path_params, request.query_params
        return _json(self.b.well(p["plate"], p["well"], metric=q.get("metric") or "cell_count", run=q.get("run")))

    def cells(self, request: Request) -> Response:
        p, q = request.path_params, request.query_params
        fmt = p.get("fmt")
        _check_format(fmt)
        limit = None if fmt else min(_int(request, "limit", 500), 5000)
        table, total = self.b.cells(p["plate"], p["well"], where=q.get("where", ""), run=q.get("run"), limit=limit)
        if fmt:
            return _download(table, fmt, _safe_name(p["plate"], p["well"], "cells"))
        return _json({"total": total, **_table_json(table)})

    def field(self, request: Request) -> Response:
        p = request.path_params
        return _json(self.b.field(p["plate"], p["well"], _int(request, "field")).to_dict())

    def tile(self, request: Request) -> Response:
        p, q = request.path_params, request.query_params
        body = self.b.tile(
            p["plate"],
            p["well"],
            _int(request, "field"),
            _int(request, "level"),
            _int(request, "row"),
            _int(request, "col"),
            channels=_ints(q.get("c"), "c"),
            windows=_windows(q.get("win")),
            t=_int(request, "t", 0),
        )
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    def outline(self, request: Request) -> Response:
        p = request.path_params
        body = self.b.outline_tile(
            p["plate"],
            p["well"],
            _int(request, "field"),
            p["label"],
            _int(request, "level"),
            _int(request, "row"),
            _int(request, "col"),
            t=_int(request, "t", 0),
        )
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    def thumb(self, request: Request) -> Response:
        p = request.path_params
        body = self.b.thumbnail(
            p["plate"], p["well"], _int(request, "field"), channels=_ints(request.query_params.get("c"), "c")
        )
        return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    def cell_at(self, request: Request) -> Response:
        p, q = request.path_params, request.query_params
        hit = self.b.cell_at(
            p["plate"],
            p["well"],
            _int(request, "field"),
            _float(request, "x"),
            _float(request, "y"),
            label=q.get("label") or None,
            t=_int(request, "t", 0),
        )
        return _json({"hit": hit})

    async def query(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        if request.method == "POST":  # a form (application/x-www-form-urlencoded): SQL too long for a URL
            from urllib.parse import parse_qs

            body = await request.body()
            if len(body) > 1_000_000:
                raise HtsError("the query is over 1 MB; shorten it")
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            sql, limit_raw = form.get("sql", ""), form.get("limit")
        else:
            sql, limit_raw = request.query_params.get("sql", ""), request.query_params.get("limit")
        fmt = request.path_params.get("fmt")
        _check_format(fmt)
        if not sql.strip():
            raise HtsError("type a query (SELECT ... FROM well_stats ...)")
        try:
            limit = None if fmt else min(int(limit_raw or 1000), 10_000)
        except ValueError:
            raise HtsError(f"limit must be an integer, got {limit_raw!r}") from None
        table = await run_in_threadpool(self.b.query, sql, limit=limit)
        if fmt:
            return _download(table, fmt, "query")
        return _json(_table_json(table))

    def presets(self, request: Request) -> Response:
        from hts.tasks.query import preset_sql, presets

        return _json({"presets": [{"name": n, "about": a, "sql": preset_sql(n)} for n, a in presets().items()]})

    def columns(self, request: Request) -> Response:
        return _json({"columns": self.b.cell_columns()})


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFound):
        return _error(str(exc), 404)
    if isinstance(exc, HtsError):
        return _error(str(exc), 400)
    log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error(f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})", 500)


class _TokenGate:
    """ASGI middleware: every request carries the token (``?token=``, the cookie it sets, or a Bearer header)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        cookie = request.cookies.get(TOKEN_COOKIE)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        ok = any(x and hmac.compare_digest(x, self.token) for x in (given, cookie, bearer))
        if not ok:
            response = PlainTextResponse(
                "This hts server needs its token: open the URL `hts serve` printed (it ends in ?token=...).",
                status_code=403,
            )
            await response(scope, receive, send)
            return
        if given and cookie != self.token:

            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie_value = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    message.setdefault("headers", []).append((b"set-cookie", cookie_value.encode()))
                await send(message)

            await self.app(scope, receive, send_with_cookie)
            return
        await self.app(scope, receive, send)


def create_app(
    workspace: Workspace,
    *,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    timeout_s: float = 30.0,
) -> Starlette:
    """The browser app over ``workspace``.

    ``token``: required on every request when set. ``allowed_hosts``: the ``Host`` header
    values accepted (``LOOPBACK_HOSTS`` for a server on 127.0.0.1; None accepts any,
    for a server reachable from other machines, which then needs ``token``).
    ``timeout_s``: a user's query is cancelled after this long.
    """
    r = _Routes(Browser(workspace, timeout_s=timeout_s))
    P = "/api/plates/{plate}"
    W = P + "/wells/{well}"
    F = W + "/fields/{field:int}"
    routes = [
        Route("/", r.index),
        Route("/api/plates", r.plates),
        Route("/api/presets", r.presets),
        Route("/api/columns", r.columns),
        Route("/api/query", r.query, methods=["GET", "POST"]),
        Route("/api/query.{fmt:str}", r.query, methods=["GET", "POST"]),
        Route(P, r.plate),
        Route(P + "/metrics", r.metrics),
        Route(P + "/progress", r.progress),
        Route(W, r.well),
        Route(W + "/cells", r.cells),
        Route(W + "/cells.{fmt:str}", r.cells),
        Route(F, r.field),
        Route(F + "/thumb.jpg", r.thumb),
        Route(F + "/cell", r.cell_at),
        Route(F + "/tiles/{level:int}/{row:int}/{col:int}.jpg", r.tile),
        Route(F + "/labels/{label}/{level:int}/{row:int}/{col:int}.png", r.outline),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if token:
        middleware.append(Middleware(_TokenGate, token=token))
    handlers = {HtsError: _on_error, Exception: _on_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.browser = r.b
    return app
