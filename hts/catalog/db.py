"""The DuckDB catalog: connections, migrations, and the plate tables.

The DDL lives in ``schemas/catalog/NNN_name.sql``; each file is one migration,
applied in order inside a transaction and recorded in ``schema_migrations``.
A catalog written by a newer hts (a migration this version does not know) is
refused rather than touched.

Connections are short-lived: a writer opens the file, writes a batch and closes
it, so another process (``hts info`` during an ingest) can read in between.
DuckDB allows one writing process per file; opening retries while another
process holds the lock, then fails with a clear message.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from hts.errors import CatalogError
from hts.resources import data_dir

__all__ = ["Catalog", "PlateRecord", "migrations", "sql_literal", "sql_ident", "check_user_sql"]

_LOCK_WAIT_S = 30.0


def sql_literal(s: str) -> str:
    """A SQL string literal (for the few places DuckDB takes no parameter: COPY targets, read_parquet lists)."""
    return "'" + s.replace("'", "''") + "'"


def sql_ident(s: str) -> str:
    """A quoted SQL identifier (feature column names come from channel names)."""
    return '"' + s.replace('"', '""') + '"'


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    out = []
    for p in sorted((data_dir("schemas") / "catalog").glob("*.sql")):
        m = re.match(r"(\d+)_(.+)\.sql$", p.name)
        if m:
            out.append((int(m[1]), m[2], p.read_text()))
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(versions) + 1)):
        raise CatalogError(f"shipped migrations are not numbered 1..N: {versions}")
    return out


@dataclass(frozen=True)
class PlateRecord:
    """One row of ``plates``."""

    plate_id: str
    name: str
    store_uri: str
    plate_type: int
    status: str
    source_format: str
    source_uri: str
    source_fingerprint: str
    shape: tuple[int, int, int, int, int]
    dtype: str
    pixel_size_um: tuple[float | None, float | None, float | None]
    max_projected: bool
    tile_size: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PlateRecord:
        return cls(
            plate_id=row["plate_id"],
            name=row["name"],
            store_uri=row["store_uri"],
            plate_type=row["plate_type"],
            status=row["status"],
            source_format=row["source_format"],
            source_uri=row["source_uri"],
            source_fingerprint=row["source_fingerprint"],
            shape=(row["size_t"], row["size_c"], row["size_z"], row["size_y"], row["size_x"]),
            dtype=row["dtype"],
            pixel_size_um=(row["pixel_size_x_um"], row["pixel_size_y_um"], row["pixel_size_z_um"]),
            max_projected=row["max_projected"],
            tile_size=row["tile_size"],
        )


_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
    "applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
)


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


class Catalog:
    """A DuckDB catalog file (``hts.duckdb``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().resolve()
        self._migrated = False
        self._checked: tuple[int, int, int, int] | None = None  # the file as this Catalog last left it
        self._local = threading.local()  # .session: this thread's held connection (see session())

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    @property
    def name(self) -> str:
        """How messages name this catalog (its file)."""
        return str(self.path)

    def exists(self) -> bool:
        """Whether the catalog has been created (commands that only read never create it)."""
        return self.path.exists()

    def state(self) -> tuple:
        """A token that changes with every commit: (device, inode, mtime, size) of the file and its write-ahead log."""
        out = []
        for p in self.files():
            try:
                st = p.stat()
                out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    #: Whether earlier states can be read (``user_connection(snapshot=...)``): a DuckDB file keeps only its present.
    keeps_snapshots = False

    @property
    def locks_table(self) -> str:
        """Where plate locks live (:mod:`hts.catalog.locks`): a table of this catalog."""
        return "plate_locks"

    def files(self) -> list[Path]:
        """The local files that hold the catalog (outputs must never be written over them)."""
        return [self.path, self.path.with_name(self.path.name + ".wal")]

    # -- connections ----------------------------------------------------------
    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[None]:
        """Hold one connection for a burst of small queries (and writes) in this thread.

        Every :meth:`connect` (and so :meth:`query`) of this thread inside the block
        reuses it instead of opening the file again (~30-50 ms each); commands use it
        around planning, not around long work, since it locks other processes out.
        ``read_only``: a reader's session (the web app's requests), which never takes the
        writer's lock and never migrates; writes inside it fail.
        """
        if getattr(self._local, "session", None) is not None or not self.exists():
            yield  # already in one, or no catalog yet (a session must not create the file)
            return
        with self.connect(read_only=read_only) as con:
            self._local.session = con
            try:
                yield
            finally:
                self._local.session = None

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; the writer's is migrated to the current schema first."""
        held = getattr(self._local, "session", None)
        if held is not None:
            yield held
            return
        if read_only and not self.exists():
            raise CatalogError(f"{self.name}: no catalog here (run `hts ingest` first, or pass --db)")
        if read_only and not self._migrated:
            self._ensure_current()
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # The version check (and migration) is skipped when the file is exactly as this Catalog
        # left it after its last checked connection (it costs more than opening the file); a
        # write by anyone else in between changes its mtime or size and brings the check back.
        unchanged = self._migrated and self._checked is not None and self._file_id() == self._checked
        con = self._when_unlocked(lambda: duckdb.connect(str(self.path), read_only=read_only))
        try:
            if not unchanged:
                self._check_version(con, migrate=not read_only)
                self._migrated = self._migrated or not read_only
            yield con
        finally:
            con.close()
            # DuckDB's file lock kept other processes out while this connection was open
            self._checked = self._file_id() if self._migrated else None

    def _when_unlocked(self, open_fn):
        """``open_fn()``, retried while another process holds the file's lock (a writer holds it for
        one batch at a time; waiting up to 30 s), else a one-line :class:`CatalogError`."""
        deadline = time.monotonic() + _LOCK_WAIT_S
        delay = 0.05
        while True:
            try:
                return open_fn()
            except duckdb.IOException as e:
                if "newer version of DuckDB" in str(e):
                    raise CatalogError(
                        f"{self.name}: written by a newer DuckDB than this hts runs (DuckDB {duckdb.__version__}); "
                        "open it with the DuckDB that wrote it and EXPORT DATABASE, or use another catalog"
                    ) from None
                if "lock" in str(e).lower() and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise CatalogError(f"{self.name}: cannot open catalog ({str(e).splitlines()[0]})") from None
            except duckdb.Error as e:
                raise CatalogError(f"{self.name}: not a DuckDB catalog ({str(e).splitlines()[0]})") from None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local", None)  # a thread's held connection stays with that thread
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _ensure_current(self) -> None:
        """Before the first read: a catalog already at this hts's schema is only read (it may sit on a
        read-only file system); an older one is brought up to date once, and when it cannot be written
        the error says that the update is what needs writing."""
        try:
            con = self._when_unlocked(lambda: duckdb.connect(str(self.path), read_only=True))
        except CatalogError as e:
            raise CatalogError(str(e).replace("not a DuckDB catalog", "cannot open catalog")) from None
        try:
            has = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations' AND table_catalog = current_database()"
            ).fetchone()[0]
            applied = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()} if has else set()
        except duckdb.Error as e:
            raise CatalogError(f"{self.name}: cannot read catalog ({str(e).splitlines()[0]})") from None
        finally:
            con.close()
        todo = [v for v, _, _ in migrations() if v not in applied]
        if not todo:
            self._migrated = True
            return
        try:
            with self.connect():
                pass
        except CatalogError as e:
            raise CatalogError(
                f"{self.name}: this catalog needs a schema update for this hts "
                f"(v{max(applied) if applied else 0} -> v{max(v for v, _, _ in migrations())}) and it cannot be written "
                f"({str(e).split('(', 1)[-1].rstrip(')') if '(' in str(e) else e}); "
                "run hts once where it is writable (or free disk space); nothing was changed"
            ) from None

    def _file_id(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _check_version(self, con: duckdb.DuckDBPyConnection, *, migrate: bool) -> None:
        known = migrations()
        has_table = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations' AND table_catalog = current_database()"
        ).fetchone()[0]
        applied = (
            {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()} if has_table else set()
        )
        newest = max((v for v, _, _ in known), default=0)
        if applied and max(applied) > newest:
            raise CatalogError(
                f"{self.name}: catalog schema v{max(applied)} is newer than this hts knows (v{newest}); upgrade hts"
            )
        todo = [m for m in known if m[0] not in applied]
        if not todo:
            return
        if not migrate:
            if not has_table:
                raise CatalogError(f"{self.name}: not an hts catalog")
            return  # a reader of an older catalog sees the tables it has
        con.execute("BEGIN")
        try:
            for stmt in self._ddl(_MIGRATIONS_TABLE):
                con.execute(stmt)
            for version, name, sql in todo:
                for stmt in self._ddl(sql):
                    con.execute(stmt)
                con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except duckdb.Error as e:
            with suppress(
                duckdb.Error
            ):  # a transaction DuckDB already aborted (e.g. a full disk) has nothing to roll back
                con.execute("ROLLBACK")
            raise CatalogError(
                f"{self.name}: schema update failed, catalog unchanged ({str(e).splitlines()[0]})"
            ) from None

    def _ddl(self, sql: str) -> list[str]:
        """The statements that apply one migration's DDL here (the DuckDB file runs it as written)."""
        return [sql]

    def schema_version(self) -> int:
        with self.connect(read_only=True) as con:
            return con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]

    # -- plates -----------------------------------------------------------------
    def plates(self) -> list[PlateRecord]:
        if not self.exists():
            return []
        with self.connect(read_only=True) as con:
            return [PlateRecord.from_row(r) for r in _rows(con.execute("SELECT * FROM plates ORDER BY name"))]

    def plate_by_store(self, store_uri: str) -> PlateRecord | None:
        if not self.exists():
            return None
        with self.connect(read_only=True) as con:
            rows = _rows(con.execute("SELECT * FROM plates WHERE store_uri = ?", [store_uri]))
        return PlateRecord.from_row(rows[0]) if rows else None

    def find_plate(self, ref: str) -> PlateRecord:
        """A plate by name, id, id prefix or store path. Raises CatalogError naming the choices."""
        plates = self.plates()
        if not plates:
            raise CatalogError(f"{self.name}: no plates in the catalog (run `hts ingest SOURCE` first)")
        from hts.store.location import location

        ref_path = str(location(ref)) if ref else ""  # a local path or a store URL (s3://...)
        hits = [p for p in plates if ref in (p.name, p.plate_id) or p.store_uri == ref_path]
        if not hits:
            hits = [p for p in plates if len(ref) >= 6 and p.plate_id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        names = ", ".join(sorted(p.name for p in plates))
        if not hits:
            raise CatalogError(f"no plate {ref!r} in {self.name}; plates: {names}")
        raise CatalogError(
            f"{ref!r} names {len(hits)} plates in {self.name}; use the plate id or store path "
            f"({', '.join(p.plate_id[:8] + ' ' + p.store_uri for p in hits)})"
        )

    def insert_plate(self, tables: dict[str, pa.Table]) -> None:
        """Insert one plate's rows into each named table, in one transaction (Arrow bulk load)."""
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                for table, data in tables.items():
                    _insert_arrow(con, table, data)
                con.execute("COMMIT")
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                raise CatalogError(f"{self.name}: could not register plate ({str(e).splitlines()[0]})") from None

    def append(self, table: str, rows: pa.Table) -> None:
        """Bulk-insert the Arrow ``rows`` into ``table`` (its columns by name)."""
        with self.connect() as con:
            _insert_arrow(con, table, rows)

    def grow_plate(
        self, plate_id: str, *, plate: dict[str, Any], acquisition: dict[str, Any], wells: pa.Table, fields: pa.Table
    ) -> None:
        """Add wells and fields (pending) to a plate still being acquired, in one transaction; the plate
        row's geometry and fingerprint, the acquisition's file count and every well's field count updated."""
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                sets = ", ".join(f"{sql_ident(k)} = ?" for k in plate)
                con.execute(
                    f"UPDATE plates SET {sets}, status = 'ingesting' WHERE plate_id = ?", [*plate.values(), plate_id]
                )
                sets = ", ".join(f"{sql_ident(k)} = ?" for k in acquisition)
                con.execute(f"UPDATE acquisitions SET {sets} WHERE plate_id = ?", [*acquisition.values(), plate_id])
                con.register("_wells", wells)
                con.execute(
                    "UPDATE wells SET n_fields = w.n_fields FROM _wells w "
                    "WHERE wells.plate_id = w.plate_id AND wells.well = w.well"
                )
                con.execute(
                    "INSERT INTO wells SELECT * FROM _wells w WHERE NOT EXISTS "
                    "(SELECT 1 FROM wells x WHERE x.plate_id = w.plate_id AND x.well = w.well)"
                )
                con.unregister("_wells")
                _insert_arrow(con, "fields", fields)
                con.execute("COMMIT")
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                raise CatalogError(
                    f"{self.name}: could not add fields to the plate ({str(e).splitlines()[0]})"
                ) from None

    def delete_plate(self, plate_id: str) -> None:
        """Every row of the plate, its runs and their cells included, in one transaction."""
        with self.connect() as con:
            con.execute("BEGIN")
            runs = "SELECT run_id FROM runs WHERE plate_id = ?"
            for table in ("run_object_counts", "run_fields"):
                con.execute(f"DELETE FROM {table} WHERE run_id IN ({runs})", [plate_id])
            for table in (
                "cells",
                "plate_labels",
                "runs",
                "field_channel_stats",
                "fields",
                "wells",
                "channels",
                "acquisitions",
                "platemap",
                "plates",
            ):
                con.execute(f"DELETE FROM {table} WHERE plate_id = ?", [plate_id])
            con.execute("COMMIT")

    def pending_fields(self, plate_id: str) -> set[tuple[str, int]]:
        with self.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT well, field_index FROM fields WHERE plate_id = ? AND status = 'pending'", [plate_id]
            ).fetchall()
        return {(w, i) for w, i in rows}

    def complete_fields(self, plate_id: str, fields: pa.Table, stats: pa.Table) -> None:
        """Mark fields complete with their checksum and timing, and store their channel stats (bulk)."""
        with self.connect() as con:
            con.execute("BEGIN")
            con.register("_done", fields)
            con.execute(
                """
                UPDATE fields SET status = 'complete', checksum = d.checksum,
                       written_at = current_timestamp, write_seconds = d.write_seconds
                FROM _done d
                WHERE fields.plate_id = ? AND fields.well = d.well AND fields.field_index = d.field_index
                """,
                [plate_id],
            )
            con.register("_stats", stats)
            con.execute(
                "DELETE FROM field_channel_stats USING _stats s WHERE field_channel_stats.plate_id = ? "
                "AND field_channel_stats.well = s.well AND field_channel_stats.field_index = s.field_index",
                [plate_id],
            )
            con.execute("INSERT INTO field_channel_stats BY NAME SELECT ? AS plate_id, s.* FROM _stats s", [plate_id])
            con.execute("COMMIT")

    def finish_plate(self, plate_id: str, *, checksum: str | None) -> None:
        with self.connect() as con:
            con.execute("BEGIN")
            con.execute(
                "UPDATE plates SET status = 'complete', completed_at = current_timestamp WHERE plate_id = ?",
                [plate_id],
            )
            con.execute("UPDATE acquisitions SET checksum = ? WHERE plate_id = ?", [checksum, plate_id])
            con.execute("COMMIT")

    # -- queries used by commands ---------------------------------------------
    def field_paths(self, plate_id: str, *, complete_only: bool = False) -> dict[tuple[str, int], str]:
        """(well, field index) -> the field's group path in the plate store, in well and field order."""
        status = " AND status = 'complete'" if complete_only else ""
        rows = self.query(
            f"SELECT well, field_index, path FROM fields WHERE plate_id = ?{status} ORDER BY well, field_index",
            [plate_id],
        )
        return {(r["well"], int(r["field_index"])): r["path"] for r in rows}

    def channel_names(self, plate_id: str) -> list[str]:
        """A plate's channel names in channel order."""
        return [
            r["name"]
            for r in self.query("SELECT name FROM channels WHERE plate_id = ? ORDER BY channel_index", [plate_id])
        ]

    @contextmanager
    def user_connection(
        self, *, allow_read: Sequence[str | Path] = (), snapshot: int | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for SQL a user typed: the catalog attached read-only, nothing else reachable.

        An in-memory DuckDB attaches the catalog ``READ_ONLY`` as its default
        database, then turns external access off (no file is read or written:
        no ``COPY ... TO``, ``ATTACH``, ``read_csv``, ``read_text``, ``glob``,
        extension installs) and locks its configuration (no ``SET`` / ``PRAGMA``
        turns it back on). ``allow_read`` names folders whose files queries may
        read (e.g. a compound table to join); :func:`check_user_sql` keeps the
        statement a single query, so nothing is ever written there either.
        ``snapshot``: an earlier state, which only a DuckLake catalog keeps.
        """
        if snapshot is not None:
            raise CatalogError(f"{self.name}: a DuckDB file keeps no earlier snapshots (time travel needs DuckLake)")
        if not self.exists():
            raise CatalogError(f"{self.name}: no catalog here (run `hts ingest` first, or pass --db)")
        if not self._migrated:
            self._ensure_current()
        con = duckdb.connect(":memory:")
        try:
            self._when_unlocked(lambda: con.execute(f"ATTACH {sql_literal(str(self.path))} AS catalog (READ_ONLY)"))
            con.execute("USE catalog")
            lock_down(con, allow_read)
            yield con
        finally:
            con.close()

    def check_user_sql(self, con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> duckdb.Statement:
        """:func:`check_user_sql` on a :meth:`user_connection` (``params``: the query's parameters)."""
        return check_user_sql(con, sql)

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query and return rows as dicts."""
        with self.connect(read_only=True) as con:
            try:
                return _rows(con.execute(sql, params or []))
            except duckdb.Error as e:
                raise CatalogError(str(e).splitlines()[0]) from None


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.register("_incoming", data)
    cols = ", ".join(f'"{c}"' for c in data.column_names)
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
    con.unregister("_incoming")


def lock_down(con: duckdb.DuckDBPyConnection, allow_read: Sequence[str | Path] = (), also: Sequence[str] = ()) -> None:
    """Turn off ``con``'s access to files (except reading under the folders ``allow_read``, checked to
    exist, and the locations ``also``), extension installs and loads, and any later change of that."""
    dirs = [str(Path(d).expanduser().resolve()) + "/" for d in allow_read]
    for d in dirs:
        if not Path(d).is_dir():
            raise CatalogError(f"--allow-read {d}: no such folder")
    dirs += [a if a.endswith("/") else a + "/" for a in also]
    if dirs:
        con.execute("SET allowed_directories = ?", [dirs])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


#: Statement types a user's SQL may be: queries only.
_QUERY_TYPES = ("SELECT", "EXPLAIN")


def check_user_sql(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    """The one statement of ``sql``; raises :class:`CatalogError` for several statements or anything but a query."""
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as e:
        raise CatalogError(_one_line(e)) from None
    if len(stmts) != 1:
        raise CatalogError(f"one statement at a time, please (got {len(stmts)}); queries only")
    kind = stmts[0].type.name
    if re.match(r"\s*PRAGMA\b", sql, re.IGNORECASE):
        kind = "PRAGMA"  # DuckDB 1.5 rewrites some pragmas into a SELECT; they are settings, not queries
    if kind not in _QUERY_TYPES:
        raise CatalogError(
            f"SQL here is read-only: one query (SELECT / WITH / FROM ...); refused: a statement of type {kind}"
        )
    return stmts[0]


def _one_line(e: BaseException) -> str:
    """DuckDB's message without its traceback, its hints kept ("Candidate bindings: ...", "Did you mean ...")."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    hints = [ln for ln in lines[1:] if not ln.startswith(("LINE ", "^")) and not set(ln) <= {"^", " "}]
    return " ".join([lines[0], *hints])
