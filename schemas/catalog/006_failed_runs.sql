-- hts catalog, migration 006: runs that failed.
-- A run whose work stopped on an error keeps status 'running' (running it again resumes it)
-- and records why in `error` (NULL while it works or once it completes); `hts report`,
-- `export` and `qc` use complete runs unless a run is named.

ALTER TABLE runs ADD COLUMN error VARCHAR;
ALTER TABLE runs ADD COLUMN failed_at TIMESTAMP;
