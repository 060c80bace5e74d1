-- hts catalog, migration 005: plate locks.
-- A command that writes a plate's labels or cells (segment, measure) holds its plate's lock
-- for the whole run; another such command on the same plate is refused with the holder's
-- command, host, pid and start time. A lock whose process is gone (same host), or whose
-- heartbeat is older than the stale limit (another host), is taken over.

CREATE TABLE plate_locks (
    plate_id            VARCHAR PRIMARY KEY,
    token               VARCHAR NOT NULL,             -- uuid4 of the holding command invocation
    command             VARCHAR NOT NULL,             -- e.g. "segment --engine classic"
    host                VARCHAR NOT NULL,
    pid                 INTEGER NOT NULL,
    pid_started         DOUBLE,                       -- the holder's process start time (epoch s): guards against pid reuse
    started_at          TIMESTAMP NOT NULL,
    heartbeat           DOUBLE NOT NULL               -- epoch seconds of the holder's last sign of life
);
