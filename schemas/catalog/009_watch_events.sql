-- hts catalog, migration 009: what `hts watch` said while a plate was being acquired.
-- One row per event: fields ingested and segmented, fields QC flagged, the controls' Z'
-- as control wells come in, files that stayed unreadable, the end of a watch.

CREATE TABLE watch_events (
    plate_id     VARCHAR NOT NULL,
    event_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    kind         VARCHAR NOT NULL,   -- ingested | segmented | flagged | zprime | broken | end
    well         VARCHAR,
    field_index  INTEGER,
    message      VARCHAR NOT NULL,
    data         JSON
);
