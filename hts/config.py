"""The workspace: where the catalog and the plate stores live, and where work runs.

Library code takes a :class:`Workspace` as an argument and never looks anything up
itself; build one explicitly (``Workspace.at("screen1")``, or with its fields).
The command line resolves one with :func:`load_workspace`, which reads, first match wins:

1. explicit arguments (``--db``, ``--plates-dir`` / ``--out``);
2. environment variables ``HTS_DB``, ``HTS_PLATES_DIR``, ``HTS_SCHEDULER``, ``HTS_DATA_PATH``;
3. ``hts.toml`` in the current folder (or ``HTS_CONFIG``), e.g.::

       [workspace]
       db = "screens/hts.duckdb"
       plates_dir = "/data/plates"
       scheduler = "tcp://10.0.0.5:8786"

   relative paths there are relative to the file;
4. defaults: ``./hts.duckdb`` and ``./plates/``.

``plates_dir`` may be an fsspec URL (``s3://bucket/plates``; ``file://`` URLs become
local paths): plates are then created and read in object storage, with the
credentials described in :mod:`hts.store.location`. The catalog (``db``) is a local
DuckDB file on the client (the default: one writing process at a time), or a DuckLake
catalog that many machines write at once, ``db = "ducklake:postgres://user@host:5432/hts"``
with ``data_path = "s3://bucket/hts-lake/"`` (or a shared folder) for its Parquet files
(:mod:`hts.catalog.lake`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hts.errors import ConfigError
from hts.store.location import location

__all__ = ["Workspace", "load_workspace"]


@dataclass(frozen=True)
class Workspace:
    """A catalog file, a folder (or object-store URL) for plate stores, and a Dask scheduler.

    ``scheduler``: ``None`` or ``"local"`` (a local cluster), ``"sync"`` (in this
    process, no Dask: for debugging), or a scheduler address (``tcp://host:8786``).

    >>> ws = Workspace.at("/data/screen1")
    >>> ws.db.name, ws.plates_dir.name
    ('hts.duckdb', 'plates')
    """

    db: Path | str  # a DuckDB file, or a DuckLake catalog "ducklake:postgres://user@host:5432/dbname"
    plates_dir: Path | str  # a local Path, or a URL string (s3://bucket/plates)
    scheduler: str | None = None
    data_path: str | None = None  # a DuckLake catalog's Parquet files: a folder or s3://bucket/prefix/

    def __post_init__(self) -> None:
        if not _is_lake(self.db):
            object.__setattr__(self, "db", Path(self.db).expanduser().absolute())
        plates = self.plates_dir
        if isinstance(plates, str) and "://" in plates:
            plates = location(plates)  # s3://... stays a URL; file://... becomes a Path
        if isinstance(plates, (str, Path)) and not (isinstance(plates, str) and "://" in plates):
            plates = Path(plates).expanduser().absolute()
        object.__setattr__(self, "plates_dir", plates)

    @classmethod
    def at(cls, root: str | Path, *, scheduler: str | None = None) -> Workspace:
        """The workspace in folder ``root``: ``root/hts.duckdb`` and ``root/plates/`` (nothing is created yet)."""
        root = Path(root).expanduser()
        return cls(db=root / "hts.duckdb", plates_dir=root / "plates", scheduler=scheduler)

    @cached_property
    def catalog(self):
        """The :class:`~hts.catalog.Catalog` (one object per workspace, so its schema check is done once)."""
        from hts.catalog import Catalog

        if _is_lake(self.db):
            from hts.catalog.lake import LakeCatalog

            return LakeCatalog(str(self.db), data_path=self.data_path)
        return Catalog(self.db)


def _config_file() -> tuple[dict, Path | None]:
    path = Path(os.environ.get("HTS_CONFIG", "hts.toml"))
    if not path.is_file():
        if "HTS_CONFIG" in os.environ:
            raise ConfigError(f"HTS_CONFIG points to {path}, which does not exist")
        return {}, None
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise ConfigError(f"{path}: invalid config file ({e})") from None
    ws = data.get("workspace", {})
    unknown = set(ws) - {"db", "plates_dir", "scheduler", "data_path"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown [workspace] keys {sorted(unknown)} (known: db, plates_dir, scheduler, data_path)"
        )
    return ws, path.parent


def _is_lake(db: object) -> bool:
    return isinstance(db, str) and db.startswith("ducklake:")


def load_workspace(
    *,
    db: str | Path | None = None,
    plates_dir: str | Path | None = None,
    scheduler: str | None = None,
    data_path: str | None = None,
) -> Workspace:
    """Resolve the workspace from arguments, environment, ``hts.toml`` and defaults (what the CLI does)."""
    conf, base = _config_file()

    def pick(arg, env, key, default, urls=False):
        raw = str(arg) if arg is not None else os.environ.get(env) or (conf[key] if key in conf else None)
        if urls and raw is not None and ("://" in raw or isinstance(arg, Path)):
            loc = location(arg if isinstance(arg, Path) else raw)
            if isinstance(loc, str) or raw.startswith("file://"):
                return loc  # s3://... stays a URL; file://... becomes a Path
        if arg is not None:
            return Path(arg).expanduser()
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
        if key in conf:
            p = Path(conf[key]).expanduser()
            return p if p.is_absolute() or base is None else base / p
        return Path(default)

    plates = pick(plates_dir, "HTS_PLATES_DIR", "plates_dir", "plates", urls=True)
    raw_db = str(db) if db is not None else os.environ.get("HTS_DB") or conf.get("db")
    data_path = data_path or os.environ.get("HTS_DATA_PATH") or conf.get("data_path")
    if data_path and "://" not in str(data_path):  # a folder: absolute; a relative one in hts.toml is relative to it
        from_file = base is not None and data_path == conf.get("data_path") and not os.environ.get("HTS_DATA_PATH")
        data_path = str(((base if from_file else Path()) / Path(data_path).expanduser()).resolve())
    return Workspace(
        db=raw_db if _is_lake(raw_db) else pick(db, "HTS_DB", "db", "hts.duckdb").resolve(),
        data_path=str(data_path) if data_path else None,
        plates_dir=plates.resolve() if isinstance(plates, Path) else plates,
        scheduler=scheduler or os.environ.get("HTS_SCHEDULER") or conf.get("scheduler"),
    )
