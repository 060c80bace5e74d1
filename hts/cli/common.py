"""Shared CLI plumbing: consoles, common options, one-line errors, progress bars, JSON output.

Every command module imports from here, so each command is only its options
and one library call.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hts.errors import HtsError

__all__ = [
    "err", "out", "DbOpt", "JsonOpt", "SchedulerOpt", "WorkersOpt",
    "errors", "progress_bar", "print_json", "pairs", "param_values", "workspace",
]  # fmt: skip


def workspace(db: str | Path | None = None, scheduler: str | None = None, plates_dir: str | Path | None = None):
    """The workspace of this command: options, then HTS_* variables, ./hts.toml, defaults.

    The one place the command line looks at the environment; everything below it
    gets the resolved :class:`~hts.config.Workspace` as an argument.
    """
    from hts.config import load_workspace

    return load_workspace(db=db, scheduler=scheduler, plates_dir=plates_dir)


err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

DbOpt = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        help="Catalog: a DuckDB file (default: workspace ./hts.duckdb) or ducklake:postgres://USER@HOST/DB "
        "(data files in HTS_DATA_PATH).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--scheduler",
        help="Where to run: 'local' (default: a process per core; small runs in threads of this process), 'processes' (always a process per core), 'threads', 'sync', or a Dask scheduler address tcp://host:port.",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", min=1, help="Local workers (default: one per core).", show_default=False)
]
# optional feature families, shared by `hts segment` and `hts measure`
TextureOpt = Annotated[
    bool, typer.Option("--texture", help="Also Haralick texture of nuclei and cells in every channel (slower).")
]
GranularityOpt = Annotated[
    bool, typer.Option("--granularity", help="Also the granularity spectrum of nuclei and cells (slower).")
]
RodOpt = Annotated[
    bool,
    typer.Option(
        "--rod", help="Also rod-cell (bacteria) length, width, curvature, volume and axial intensity profiles."
    ),
]


@contextmanager
def errors(on_interrupt: str = "completed work is saved; run the same command again to resume"):
    """Turn library errors into one line on stderr and a non-zero exit (``HTS_DEBUG=1``: the traceback)."""
    debug = os.environ.get("HTS_DEBUG", "") not in ("", "0")
    try:
        yield
    except HtsError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except BrokenPipeError:  # the reader of our output went away (`hts query ... | head`): stop quietly
        with suppress(Exception):  # so that flushing stdout at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as e:  # the file system or network said no: a path that cannot be made, permissions, a full disk
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(os_error_line(e))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]: {on_interrupt}")
        raise typer.Exit(130) from None
    except Exception as e:  # DuckDB's own errors that reached here (a full disk under the catalog, I/O errors)
        import duckdb

        if debug or not isinstance(e, duckdb.Error):
            raise
        err.print(f"[bold red]error:[/] catalog: {escape(str(e).strip().splitlines()[0])}", soft_wrap=True)
        raise typer.Exit(1) from None


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path(s) and the system's reason; else its message; else its type."""
    if e.filename is not None:
        where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
        reason = f"{where}: {e.strerror or str(e) or type(e).__name__}"
    else:  # the message, which says more than the bare reason (aiohttp: which host could not be reached)
        reason = str(e) or e.strerror or type(e).__name__
    return reason.splitlines()[0] if reason.strip() else type(e).__name__


@contextmanager
def progress_bar(label: str, enabled: bool):
    """A rich progress bar on stderr; yields a ``progress(done, total, message)`` callback."""
    if not enabled or not err.is_terminal and os.environ.get("HTS_PROGRESS") != "1":
        yield None
        return
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message)

        yield update


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def pairs(text: str | None, what: str) -> dict[str, str]:
    """'a=1,b=2' -> {'a': '1', 'b': '2'}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise typer.BadParameter(f"{what} takes NAME=VALUE pairs separated by commas, got {part.strip()!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def param_values(pairs: dict[str, str]) -> dict[str, Any]:
    """Parameter values from text: JSON literals where they parse (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for k, v in pairs.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
