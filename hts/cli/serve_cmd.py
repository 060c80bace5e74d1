"""``hts serve``: the plate browser (a library call: :func:`hts.web.serve`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hts.cli.common import DbOpt, err, errors, out, workspace

__all__ = ["register", "serve"]


def serve(
    db: DbOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. The default answers only this machine; 0.0.0.0 (every interface) "
            "makes the browser reachable from others and requires a token (generated and printed).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token",
            help="Require this token on every request (default: none on 127.0.0.1, a generated one otherwise).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Browse plates in the web browser: heatmap -> well -> field with outlines -> cells.

    Starts a local web app over the catalog and its plate stores and prints the URL.
    Pages: every plate with its QC verdict; a plate's heatmap of any per-well metric
    (hover for the platemap, Z' and SSMD of the controls, flagged wells outlined); a
    well's fields, numbers and dose-response; a pan-and-zoom field viewer with channel
    toggles and label outlines (click a cell for its features); the well's cells
    filtered by a SQL condition, downloadable as CSV or Parquet; a read-only SQL box.
    Runs in progress show on the plate page as they go. Ctrl-C stops the server.

    Examples:
      hts serve                       # http://127.0.0.1:8000/
      hts serve --port 8765 --db screen/hts.duckdb
      hts serve --host 0.0.0.0        # reachable from the lab network, with a token
    """
    from hts.web import is_loopback
    from hts.web import serve as run_server

    def ready(url: str) -> None:
        out.print(f"hts serve: open [bold]{url}[/] (Ctrl-C stops)", soft_wrap=True)
        if not is_loopback(host):
            err.print(
                f"[yellow]note:[/] listening on {host}: anyone who can reach this machine and has the token "
                "can read this catalog and its images",
                soft_wrap=True,
            )

    with errors(on_interrupt="server stopped"):
        try:
            run_server(workspace(db), host=host, port=port, token=token, on_ready=ready)
        except KeyboardInterrupt:
            out.print("server stopped")


def register(app: typer.Typer) -> None:
    app.command()(serve)
