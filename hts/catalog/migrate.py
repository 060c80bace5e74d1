"""Move a workspace's catalog from one backend to another, verified.

``hts catalog migrate --from hts.duckdb --to ducklake:postgres://...`` (or back): every
table of the source is copied into the destination, which is brought to the same schema
first and must hold no plates; the copy is one transaction, so an interrupted migration
leaves the destination as it was. Afterwards each table's row count and an
order-independent checksum of its rows (the sum of DuckDB's ``hash`` of every row, its
columns taken by name) are compared on both sides; any difference is an error.
The plate stores are not touched: the catalog names them by path or URL.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from hts.catalog.db import Catalog, sql_ident
from hts.errors import CatalogError

__all__ = ["migrate_catalog", "MigrationReport", "table_checksums"]

#: Tables that describe the catalog itself or live only while a command runs.
_SKIP = ("schema_migrations", "plate_locks")
_BATCH_ROWS = 1_000_000


@dataclass
class MigrationReport:
    source: str
    destination: str
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (rows, checksum)

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.tables.values())


def _tables(con: Any) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_catalog = current_database() AND table_schema = 'main' ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in _SKIP]


def _columns(con: Any, table: str) -> dict[str, str]:
    return dict(con.execute(f"SELECT name, type FROM pragma_table_info({sql_ident(table)!r})").fetchall())


def table_checksums(catalog: Catalog) -> dict[str, tuple[int, int]]:
    """Per table: (rows, sum of the rows' hashes mod 2^64), the columns taken in name order."""
    out = {}
    with catalog.connect(read_only=True) as con:
        for t in _tables(con):
            cols = sorted(_columns(con, t))
            row = "struct_pack(" + ", ".join(f"{sql_ident(c)} := {sql_ident(c)}" for c in cols) + ")"
            n, h = con.execute(
                f"SELECT count(*), coalesce(sum(hash({row})::HUGEINT) % 18446744073709551616, 0)::UBIGINT FROM {t}"
            ).fetchall()[0]
            out[t] = (int(n), int(h))
    return out


def migrate_catalog(
    source: Catalog, destination: Catalog, *, progress: Callable[[int, int, str], None] | None = None
) -> MigrationReport:
    """Copy ``source`` into ``destination`` (same schema, no plates yet) and verify the copy."""
    if not source.exists():
        raise CatalogError(f"{source.name}: no catalog to migrate")
    if source.name == destination.name:
        raise CatalogError(f"{source.name}: the source and the destination are the same catalog")
    # the source brought up to this hts's schema (read-only connect), the destination created or migrated
    with source.connect(read_only=True) as scon, destination.connect() as dcon:
        n_plates = dcon.execute("SELECT count(*) FROM plates").fetchall()[0][0]
        if n_plates:
            raise CatalogError(f"{destination.name}: already holds {n_plates} plate(s); migrate into an empty catalog")
        tables = _tables(scon)
        columns = {t: _columns(scon, t) for t in tables}
        total = sum(scon.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables)
        done = 0
        dcon.execute("BEGIN")
        try:
            for t in tables:
                have = _columns(dcon, t)
                for c, typ in columns[t].items():  # feature columns of cells are added as they appear
                    if c not in have:
                        dcon.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {sql_ident(c)} {typ}")
                dcon.execute(f"DELETE FROM {t}")  # tables an empty catalog may still have rows in (none today)
                reader = scon.execute(f"SELECT * FROM {t}").fetch_record_batch(_BATCH_ROWS)
                for batch in reader:
                    data = pa.Table.from_batches([batch])
                    dcon.register("_migrating", data)
                    dcon.execute(f"INSERT INTO {t} BY NAME SELECT * FROM _migrating")
                    dcon.unregister("_migrating")
                    done += data.num_rows
                    if progress:
                        progress(done, total, t)
            dcon.execute("COMMIT")
        except (duckdb.Error, CatalogError) as e:
            with suppress(duckdb.Error):
                dcon.execute("ROLLBACK")
            raise CatalogError(
                f"{destination.name}: migration failed, destination unchanged ({str(e).splitlines()[0]})"
            ) from None
    report = MigrationReport(source.name, destination.name)
    before, after = table_checksums(source), table_checksums(destination)
    for t in tables:
        if before.get(t) != after.get(t):
            raise CatalogError(
                f"{destination.name}: table {t} differs after the copy (rows, checksum: source {before.get(t)}, "
                f"destination {after.get(t)}); the source is untouched"
            )
        report.tables[t] = before[t]
    return report
