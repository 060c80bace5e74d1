"""The DuckLake catalog: one catalog that many machines write at once.

``db = "ducklake:postgres://user@host:5432/hts"`` (``hts.toml``, ``HTS_DB`` or ``--db``)
selects it, with ``data_path`` (``HTS_DATA_PATH``) naming where its tables' Parquet files
go: a local or shared folder, or ``s3://bucket/prefix/`` (credentials and endpoint from the
``AWS_*`` variables, as for plate stores). The metadata (tables, snapshots, statistics)
lives in PostgreSQL; every process attaches it through DuckDB's ``ducklake`` extension, so
the same SQL, views and migrations serve both backends.

What DuckLake changes, and how hts meets it:

- **Several writers.** Each transaction is one snapshot; transactions that touch
  different rows of a table may still conflict (DuckLake detects conflicts per table), and
  the loser's commit fails. hts's writes are short transactions whose statements depend
  only on the inputs of the plate they write (a plate has one writer: its lock), so a
  conflicting transaction is rolled back and replayed, statement by statement, after a
  short random wait (:class:`_Replaying`).
- **No PRIMARY KEY / UNIQUE / CHECK.** The migrations are applied without them
  (:func:`lake_ddl`); hts's own writes keep the keys (they delete before they insert).
  Plate locks, which need a key enforced between processes, live in PostgreSQL itself
  (schema ``hts``), where two commands claiming one plate are refused by the database.
- **Time travel.** Every commit is a snapshot: :meth:`LakeCatalog.snapshot_of_run` finds
  the one at which a run completed, and queries can read the catalog as it was then.

The extensions come from PyPI packages (``pip install 'hts[lake]'``) and are loaded from
their files: nothing is downloaded at run time. They exist for one DuckDB version, which
is why hts pins DuckDB to it (pyproject.toml).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb

from hts.catalog.db import Catalog, _one_line, check_user_sql, lock_down, migrations, sql_literal
from hts.errors import CatalogError

__all__ = ["LakeCatalog", "is_lake", "lake_ddl", "load_extensions", "PG_TABLES"]

PREFIX = "ducklake:"
ALIAS = "lake"  # the DuckLake catalog's name inside every connection
PG_ALIAS = "hts_pg"  # the PostgreSQL database itself (plate locks)
PG_SCHEMA = "hts"
#: Tables that need a key enforced across processes: kept in PostgreSQL, not in the lake.
PG_TABLES = ("plate_locks",)

_EXTENSIONS = {  # DuckDB's name for the extension (its entry point) -> the PyPI package holding it
    "postgres_scanner": "duckdb_extension_postgres",
    "ducklake": "duckdb_extension_ducklake",
    "httpfs": "duckdb_extension_httpfs",
}
_RETRIES = 12
_lock = threading.Lock()
_ext_files: dict[str, Path] | None = None


def is_lake(db: object) -> bool:
    """Whether ``db`` names a DuckLake catalog (``ducklake:postgres://...``) rather than a DuckDB file."""
    return isinstance(db, str) and db.startswith(PREFIX)


def conninfo(db: str) -> str:
    """The libpq connection string of the PostgreSQL database behind ``ducklake:postgres...``."""
    rest = db[len(PREFIX) :]
    if rest.startswith(("postgres://", "postgresql://")):
        return "postgresql://" + rest.split("://", 1)[1]
    if rest.startswith("postgres:") and rest[len("postgres:") :].strip():
        return rest[len("postgres:") :]
    raise CatalogError(
        f"{db}: a DuckLake catalog keeps its metadata in PostgreSQL: "
        "ducklake:postgres://USER@HOST:5432/DBNAME (or ducklake:postgres:dbname=... host=...)"
    )


def redacted(db: str) -> str:
    """``db`` without its password (for messages and logs)."""
    info = conninfo(db)
    if "://" in info:
        u = urlsplit(info)
        if u.password:
            netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
            info = urlunsplit(u._replace(netloc=netloc))
        return PREFIX + "postgres://" + info.split("://", 1)[1]
    return PREFIX + "postgres:" + re.sub(r"password=\S+", "password=***", info)


def extension_files() -> dict[str, Path]:
    """The extension binaries shipped by the ``lake`` extra, linked under the names DuckDB loads them by."""
    global _ext_files
    with _lock:
        if _ext_files is not None:
            return _ext_files
        out = {}
        folder = Path(tempfile.gettempdir()) / f"hts-duckdb-extensions-{os.getuid()}" / duckdb.__version__
        folder.mkdir(parents=True, exist_ok=True)
        for name, module in _EXTENSIONS.items():
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                raise CatalogError(
                    f"the DuckLake catalog needs the {module.replace('_', '-')} package: pip install 'hts[lake]'"
                )
            found = sorted(
                (Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}").glob("*.duckdb_extension")
            )
            if not found:
                raise CatalogError(
                    f"{module.replace('_', '-')} holds no extension for DuckDB {duckdb.__version__}: "
                    f"install the version matching DuckDB (pip install 'hts[lake]')"
                )
            # DuckDB derives an extension's entry point from its file name (postgres ships as postgres.*)
            link = folder / f"{name}.duckdb_extension"
            if not link.exists() or link.resolve() != found[0].resolve():
                tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}"
                with suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(found[0])
                os.replace(tmp, link)
            out[name] = link
        _ext_files = out
        return out


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Load postgres, ducklake and httpfs into ``con`` from the installed packages (no download)."""
    for path in extension_files().values():
        con.execute(f"LOAD {sql_literal(str(path))}")
    _s3_secret(con)


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """S3 credentials and endpoint for a data path on object storage, from the same ``AWS_*`` variables
    the plate stores use (:mod:`hts.store.location`)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not (key and secret) and not endpoint:
        return
    parts = ["TYPE s3"]
    if key and secret:
        parts += [f"KEY_ID {sql_literal(key)}", f"SECRET {sql_literal(secret)}"]
    if os.environ.get("AWS_SESSION_TOKEN"):
        parts.append(f"SESSION_TOKEN {sql_literal(os.environ['AWS_SESSION_TOKEN'])}")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        parts.append(f"REGION {sql_literal(region)}")
    if endpoint:
        u = urlsplit(endpoint)
        parts += [f"ENDPOINT {sql_literal(u.netloc or u.path)}", "URL_STYLE 'path'"]
        parts.append(f"USE_SSL {'true' if u.scheme == 'https' else 'false'}")
    con.execute(f"CREATE OR REPLACE SECRET hts_s3 ({', '.join(parts)})")


def _strip_comments(sql: str) -> str:
    """``sql`` without ``--`` comments (string literals kept as they are)."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'":
            j = i + 1
            while j < n and not (sql[j] == "'" and (j + 1 >= n or sql[j + 1] != "'")):
                j += 2 if sql[j] == "'" else 1
            out.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _drop_parenthesised(sql: str, keyword: str) -> str:
    """``sql`` without every ``KEYWORD (...)`` (balanced parentheses)."""
    pat = re.compile(rf"\s*\b{keyword}\s*\(", re.IGNORECASE)
    while m := pat.search(sql):
        depth, j = 0, m.end() - 1
        while j < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[j], 0)
            if depth == 0:
                break
            j += 1
        sql = sql[: m.start()] + sql[j + 1 :]
    return sql


def lake_ddl(sql: str) -> str:
    """A migration as DuckLake takes it: no PRIMARY KEY, UNIQUE or CHECK constraints (DuckLake has
    NOT NULL only); everything else (types, defaults, views) as written."""
    sql = _strip_comments(sql)
    sql = re.sub(r",\s*PRIMARY\s+KEY\s*\([^)]*\)", "", sql, flags=re.IGNORECASE)  # table constraints
    sql = _drop_parenthesised(sql, "CHECK")
    sql = re.sub(r"\s+(PRIMARY\s+KEY|UNIQUE)\b", "", sql, flags=re.IGNORECASE)
    return sql


@functools.cache
def _statements(sql: str) -> tuple[str, ...]:
    """The statements of a migration file, as text."""
    con = duckdb.connect()
    try:
        return tuple(s.query for s in con.extract_statements(sql))
    finally:
        con.close()


def _conflict(e: BaseException) -> bool:
    """Whether ``e`` is DuckLake refusing a commit because another process changed the same table:
    the transaction can be replayed (PostgreSQL's own refusals, on the plate locks, are not)."""
    msg = str(e)
    return isinstance(e, duckdb.Error) and (
        "Transaction conflict" in msg or "Failed to commit DuckLake transaction" in msg
    )


class _Replaying:
    """A connection to the lake that replays a transaction another writer's commit made conflict.

    Between ``BEGIN`` and ``COMMIT`` it records each ``execute`` and ``register``; when the
    commit fails on a conflict it rolls back, waits a random moment, and runs the same
    statements again (up to 12 times). A statement outside a transaction is retried alone.
    Everything else is the DuckDB connection's own.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, name: str):
        self._con = con
        self._name = name
        self._log: list[tuple[str, tuple]] | None = None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._con, attr)

    @property
    def in_transaction(self) -> bool:
        return self._log is not None

    def register(self, name: str, obj: Any) -> Any:
        if self._log is not None:
            self._log.append(("register", (name, obj)))
        return self._con.register(name, obj)

    def unregister(self, name: str) -> Any:
        if self._log is not None:
            self._log.append(("unregister", (name,)))
        return self._con.unregister(name)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        verb = sql.lstrip().split(None, 1)[0].upper().rstrip(";") if sql.strip() else ""
        if verb in ("BEGIN", "START"):
            self._log = []
            return self._con.execute(sql)
        if verb in ("ROLLBACK", "ABORT"):
            self._log = None
            return self._con.execute(sql)
        if verb in ("COMMIT", "END"):
            return self._commit()
        if self._log is not None:
            self._log.append(("execute", (sql, params)))
            return self._con.execute(sql, params or [])
        for attempt in range(_RETRIES + 1):
            try:
                return self._con.execute(sql, params or [])
            except duckdb.Error as e:
                if not _conflict(e) or attempt == _RETRIES:
                    raise self._busy(e) if _conflict(e) else e from None
                _wait(attempt)
        raise AssertionError("unreachable")

    def _commit(self) -> duckdb.DuckDBPyConnection:
        log, self._log = self._log or [], None
        for attempt in range(_RETRIES + 1):
            try:
                return self._con.execute("COMMIT")
            except duckdb.Error as e:
                if not _conflict(e) or attempt == _RETRIES:
                    with suppress(duckdb.Error):
                        self._con.execute("ROLLBACK")
                    raise self._busy(e) if _conflict(e) else e from None
            with suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            _wait(attempt)
            self._con.execute("BEGIN")
            try:
                for kind, args in log:
                    if kind == "execute":
                        self._con.execute(args[0], args[1] or [])
                    elif kind == "register":
                        self._con.register(*args)
                    else:
                        self._con.unregister(*args)
            except duckdb.Error:
                with suppress(duckdb.Error):
                    self._con.execute("ROLLBACK")
                raise
        raise AssertionError("unreachable")

    def _busy(self, e: BaseException) -> CatalogError:
        return CatalogError(
            f"{self._name}: other writers kept changing the same tables; gave up after {_RETRIES} tries "
            f"({str(e).splitlines()[-1].strip()}); nothing was written, run the command again"
        )


def _wait(attempt: int) -> None:
    time.sleep(random.uniform(0.02, 0.05) * (1.6 ** min(attempt, 8)))


class _NoLakeYet(Exception):
    """A read-only attachment found no DuckLake catalog in the database (it cannot create one)."""


class LakeCatalog(Catalog):
    """A DuckLake catalog: metadata in PostgreSQL, tables as Parquet under ``data_path``.

    The same methods as :class:`~hts.catalog.Catalog`; connections are kept one per
    thread (attaching costs a round trip to PostgreSQL), every statement sees the latest
    committed snapshot, and writes of several processes interleave.
    """

    def __init__(self, db: str, *, data_path: str | Path | None = None):
        self.url = db
        self.conninfo = conninfo(db)
        self.data_path = _data_path(data_path)
        self.path = None  # no file: see files()
        self._migrated = False
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LakeCatalog({self.name!r})"

    @property
    def name(self) -> str:
        return redacted(self.url)

    def exists(self) -> bool:
        return self._has_schema()

    def state(self) -> tuple:
        """The latest snapshot id (changes with every commit by anyone)."""
        return (self._con().execute(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()").fetchall()[0][0],)

    def files(self) -> list[Path]:
        return [Path(self.data_path)] if self.data_path and "://" not in self.data_path else []

    # -- connections ------------------------------------------------------------
    def _attach(self, con: duckdb.DuckDBPyConnection, *, snapshot: int | None = None, read_only: bool = False) -> None:
        """Attach the lake to ``con`` as ``lake``: for writing (with the data path a new lake needs), or
        read-only (at ``snapshot`` when given)."""
        opts = ["READ_ONLY"] if read_only else [f"DATA_PATH {sql_literal(self.data_path)}"] if self.data_path else []
        if snapshot is not None:
            opts.append(f"SNAPSHOT_VERSION {int(snapshot)}")
        target = sql_literal(f"ducklake:postgres:{self.conninfo}")
        try:
            con.execute(f"ATTACH {target} AS {ALIAS}" + (f" ({', '.join(opts)})" if opts else ""))
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0]
            if read_only and "does not exist" in first:
                raise _NoLakeYet from None
            if "data path" in first.lower() or "DATA_PATH" in first:
                raise CatalogError(
                    f"{self.name}: a new DuckLake catalog needs a data path for its Parquet files: "
                    "set data_path in hts.toml or HTS_DATA_PATH (a folder or s3://bucket/prefix/)"
                ) from None
            raise CatalogError(f"{self.name}: cannot attach the DuckLake catalog ({first})") from None

    def _raw(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = duckdb.connect()
            try:
                con.execute("SET enable_progress_bar = false")  # a long load must not draw on the terminal
                load_extensions(con)
                self._attach(con)
                con.execute(f"USE {ALIAS}")
                con.execute(f"ATTACH {sql_literal(self.conninfo)} AS {PG_ALIAS} (TYPE postgres)")
            except BaseException:
                con.close()
                raise
            self._local.con = con
        return con

    def _con(self) -> _Replaying:
        return _Replaying(self._raw(), self.name)

    def _has_schema(self) -> bool:
        con = self._raw()
        return bool(
            con.execute(
                "SELECT count(*) FROM information_schema.tables "
                f"WHERE table_name = 'schema_migrations' AND table_catalog = '{ALIAS}'"
            ).fetchall()[0][0]
        )

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[None]:
        yield  # the thread's connection is already held

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[_Replaying]:
        con = self._con()
        if not self._migrated:
            if read_only and not self._has_schema():
                raise CatalogError(f"{self.name}: no catalog here (run `hts ingest` first, or pass --db)")
            self._check_version(con, migrate=True)
            self._migrated = True
        try:
            yield con
        finally:
            if con.in_transaction:  # a caller that raised between BEGIN and COMMIT
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")

    def _ensure_current(self) -> None:
        with self.connect():
            pass

    def close(self) -> None:
        """Close this thread's connection (the next call opens another)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            self._local.con = None
            con.close()

    def _current(self, con) -> bool:
        """Whether the lake holds every shipped migration (one small query; no attachment of its own)."""
        try:
            have = {r[0] for r in con.execute(f"SELECT version FROM {ALIAS}.schema_migrations").fetchall()}
        except duckdb.Error:
            return False
        return {v for v, _, _ in migrations()} <= have

    def _check_version(self, con, *, migrate: bool) -> None:
        if self._current(con):
            return super()._check_version(con, migrate=migrate)  # nothing to apply: only the newer-than-known check
        # the tables that need a key enforced between processes first, in PostgreSQL (idempotent)
        for _version, _name, sql in _migrations_with(PG_TABLES):
            for stmt in _statements(sql):
                if _creates(stmt, PG_TABLES):
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_ALIAS}.{PG_SCHEMA}")
                    con.execute(
                        re.sub(
                            r"CREATE\s+TABLE\s+(\w+)",
                            rf"CREATE TABLE IF NOT EXISTS {PG_ALIAS}.{PG_SCHEMA}.\1",
                            _strip_comments(stmt),
                            count=1,
                            flags=re.IGNORECASE,
                        )
                    )
        for attempt in range(_RETRIES):
            try:
                return super()._check_version(con, migrate=migrate)
            except CatalogError as e:
                # two processes creating a new catalog at once: one wins, the other finds it made
                if attempt + 1 == _RETRIES or "schema update failed" not in str(e):
                    raise
                _wait(attempt)

    keeps_snapshots = True

    def _ddl(self, sql: str) -> list[str]:
        return [lake_ddl(s) for s in _statements(sql) if not _creates(s, PG_TABLES)]

    @property
    def locks_table(self) -> str:
        return f"{PG_ALIAS}.{PG_SCHEMA}.plate_locks"

    # -- time travel ------------------------------------------------------------
    def snapshot_of_run(self, run_id: str) -> int:
        """The first snapshot at which run ``run_id`` was complete (a binary search over the snapshots)."""
        return self.snapshots_of_runs([run_id])[run_id]

    def snapshots_of_runs(self, run_ids: Sequence[str]) -> dict[str, int]:
        """:meth:`snapshot_of_run` of several runs, the snapshot list read once."""
        con = self._raw()
        ids = [
            r[0] for r in con.execute(f"SELECT snapshot_id FROM {ALIAS}.snapshots() ORDER BY snapshot_id").fetchall()
        ]
        return {run_id: self._first_complete(con, run_id, ids) for run_id in run_ids}

    def _first_complete(self, con: duckdb.DuckDBPyConnection, run_id: str, ids: list[int]) -> int:
        rows = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        if not rows:
            raise CatalogError(f"{self.name}: no run {run_id!r}")
        if rows[0][0] == "running":
            raise CatalogError(f"run {run_id[:8]} has not completed: there is no snapshot of it complete")

        def complete(i: int) -> bool:
            r = con.execute(
                f"SELECT status FROM runs AT (VERSION => {int(ids[i])}) WHERE run_id = ?", [run_id]
            ).fetchall()
            return bool(r) and r[0][0] != "running"

        lo, hi = 0, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                ok = complete(mid)
            except duckdb.Error:  # the runs table (or a column) did not exist yet at that snapshot
                ok = False
            lo, hi = (lo, mid) if ok else (mid + 1, hi)
        return int(ids[lo])

    @contextmanager
    def user_connection(
        self, *, allow_read: Sequence[str | Path] = (), snapshot: int | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """Like :meth:`Catalog.user_connection`: the lake attached read-only (at ``snapshot`` when
        given), its data path the only place files are read from, external access then turned off."""
        con = duckdb.connect(":memory:")
        try:
            load_extensions(con)
            try:
                self._attach(con, read_only=True, snapshot=snapshot)
            except _NoLakeYet:  # a new catalog (a read-only attachment cannot create it): made once
                self._ensure_current()
                self._attach(con, read_only=True, snapshot=snapshot)
            con.execute(f"USE {ALIAS}")
            if not self._migrated and not self._current(con) and snapshot is None:
                self._ensure_current()  # an older catalog: brought up to date once
            data = con.execute(
                "SELECT options['data_path'] FROM duckdb_databases() WHERE database_name = ?", [ALIAS]
            ).fetchall()
            lake_data = data[0][0] if data and data[0][0] else self.data_path
            lock_down(con, allow_read, also=[lake_data] if lake_data else [])  # the lake's own files only
            yield con
        finally:
            con.close()

    def check_user_sql(self, con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> duckdb.Statement:
        """One query, and one whose plan does not reach PostgreSQL itself (``postgres_query``, the metadata
        tables; also through ``query('...')``): those would run SQL with the catalog role's rights, outside
        what the read-only attachment guards."""
        stmt = check_user_sql(con, sql)
        try:
            plan = " ".join(str(r[-1]) for r in con.execute("EXPLAIN " + stmt.query, params or []).fetchall())
        except duckdb.Error as e:
            raise CatalogError(_one_line(e)) from None
        if "POSTGRES_" in plan:
            raise CatalogError(
                "SQL here reads the catalog's tables and views; refused: a query that reaches the PostgreSQL "
                "server itself (postgres_query, postgres_scan, the DuckLake metadata tables)"
            )
        return stmt


def _data_path(p: str | Path | None) -> str | None:
    if p is None or str(p) == "":
        return None
    s = str(p)
    if "://" not in s:
        s = str(Path(s).expanduser().resolve())
    return s if s.endswith("/") else s + "/"


def _creates(stmt: str, tables: Sequence[str]) -> bool:
    m = re.match(r"\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", _strip_comments(stmt), re.IGNORECASE)
    return bool(m) and m[1] in tables


def _migrations_with(tables: Sequence[str]) -> list[tuple[int, str, str]]:
    return [m for m in migrations() if any(_creates(s, tables) for s in _statements(m[2]))]
