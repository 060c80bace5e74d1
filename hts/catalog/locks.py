"""Plate locks: one writing command (segment, measure) per plate at a time, across processes and hosts.

The catalog is the one place every client of a plate shares, and DuckDB lets one
process write it at a time, so taking a lock is a read-check-insert in one
transaction. A lock names its holder (command, host, pid, start time) so the
refusal says who is busy; it is taken over when it is stale:

- on the same host, when the holder's process is gone (pid and process start
  time, so a reused pid does not count);
- from another host, when its heartbeat is older than :data:`STALE_AFTER_S`
  (the holder refreshes it while it works, :func:`heartbeat`).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime

import duckdb
import psutil

from hts.catalog.db import Catalog
from hts.errors import CatalogError

__all__ = ["PlateBusyError", "plate_locks", "heartbeat", "STALE_AFTER_S", "HEARTBEAT_EVERY_S"]

STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 30.0


class PlateBusyError(CatalogError):
    """Another command holds the plate's lock."""


def _process_start(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _stale(row: dict, now: float) -> bool:
    if row["host"] == socket.gethostname():
        started = _process_start(int(row["pid"]))
        return started is None or (row["pid_started"] is not None and abs(started - float(row["pid_started"])) > 1.0)
    return now - float(row["heartbeat"]) > STALE_AFTER_S


@contextmanager
def plate_locks(catalog: Catalog, plates: Sequence[tuple[str, str]], *, command: str) -> Iterator[str]:
    """Hold the locks of ``plates`` (``(plate_id, name)`` pairs) for the block; yields the lock token.

    All or nothing: when any plate is held by a live command, :class:`PlateBusyError`
    names it and no lock is taken. Stale locks are taken over.
    """
    token = uuid.uuid4().hex
    me = psutil.Process()
    table = catalog.locks_table
    for attempt in range(_CLAIM_TRIES):
        now = time.time()
        try:
            _claim(catalog, table, plates, token, command, me, now)
            break
        except duckdb.Error as e:
            # on the DuckLake catalog the locks are PostgreSQL rows with a key: another command claimed
            # the plate between our read and our insert; read again (it is now the holder, or gone)
            if attempt + 1 == _CLAIM_TRIES or not _lost_race(e):
                raise CatalogError(
                    f"{catalog.name}: could not take the plate lock ({str(e).splitlines()[0]})"
                ) from None
            time.sleep(0.05 * (attempt + 1))
    try:
        yield token
    finally:
        with catalog.connect() as con:
            con.execute(f"DELETE FROM {table} WHERE token = ?", [token])


_CLAIM_TRIES = 8


def _lost_race(e: BaseException) -> bool:
    msg = str(e)
    return "duplicate key" in msg or "could not serialize" in msg or "Transaction conflict" in msg


def _claim(catalog: Catalog, table: str, plates, token: str, command: str, me, now: float) -> None:
    """Read-check-insert of every plate's lock in one transaction (PlateBusyError when one is held)."""
    with catalog.connect() as con:
        con.execute("BEGIN")
        try:
            for plate_id, name in plates:
                cur = con.execute(f"SELECT * FROM {table} WHERE plate_id = ?", [plate_id])
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
                if rows:
                    held = dict(zip(cols, rows[0]))
                    if not _stale(held, now):
                        raise PlateBusyError(
                            f"plate {name} is busy: `hts {held['command']}` started {held['started_at']:%Y-%m-%d %H:%M:%S} "
                            f"on {held['host']} (pid {held['pid']}); wait for it to finish, or stop it "
                            f"(a lock whose process is gone is taken over)"
                        )
                    con.execute(f"DELETE FROM {table} WHERE plate_id = ?", [plate_id])
                con.execute(
                    f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [plate_id, token, command, socket.gethostname(), me.pid, me.create_time(), datetime.now(), now],
                )
            con.execute("COMMIT")
        except BaseException:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise


def heartbeat(catalog: Catalog, token: str) -> None:
    """Tell other hosts the holder of ``token`` is still working."""
    with catalog.connect() as con:
        con.execute(f"UPDATE {catalog.locks_table} SET heartbeat = ? WHERE token = ?", [time.time(), token])
