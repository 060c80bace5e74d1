-- hts catalog, migration 001: the plate catalog.
-- Applied in one transaction by hts.catalog; recorded in schema_migrations.
-- A plate is one acquisition ingested into one OME-Zarr HCS store.

CREATE TABLE plates (
    plate_id            VARCHAR PRIMARY KEY,          -- uuid4, also in the store's zarr.json (hts.plate_id)
    name                VARCHAR NOT NULL,
    store_uri           VARCHAR NOT NULL UNIQUE,      -- absolute path (or URL) of PLATE.zarr
    plate_type          INTEGER NOT NULL,             -- 96, 384, 1536 ...
    n_rows              INTEGER NOT NULL,
    n_columns           INTEGER NOT NULL,
    source_format       VARCHAR NOT NULL,             -- nd2, imagexpress, opera, cellomics, pattern
    source_uri          VARCHAR NOT NULL,
    source_fingerprint  VARCHAR NOT NULL,             -- names + sizes + sampled bytes of the source files
    size_t              INTEGER NOT NULL,
    size_c              INTEGER NOT NULL,
    size_z              INTEGER NOT NULL,             -- as stored (1 when max-projected)
    size_y              INTEGER NOT NULL,
    size_x              INTEGER NOT NULL,
    source_size_z       INTEGER NOT NULL,
    dtype               VARCHAR NOT NULL,
    pixel_size_x_um     DOUBLE,
    pixel_size_y_um     DOUBLE,
    pixel_size_z_um     DOUBLE,
    time_interval_s     DOUBLE,
    max_projected       BOOLEAN NOT NULL DEFAULT false,
    tile_size           INTEGER NOT NULL,
    pyramid_levels      INTEGER NOT NULL,
    status              VARCHAR NOT NULL CHECK (status IN ('ingesting', 'complete')),
    created_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    completed_at        TIMESTAMP,
    hts_version         VARCHAR NOT NULL
);

CREATE TABLE acquisitions (
    plate_id            VARCHAR NOT NULL,
    acquisition_id      INTEGER NOT NULL,             -- NGFF plate.acquisitions[].id
    source_uri          VARCHAR NOT NULL,
    source_format       VARCHAR NOT NULL,
    n_files             INTEGER NOT NULL,
    size_bytes          BIGINT NOT NULL,
    checksum            VARCHAR,                      -- sha256 of the file, or of the sorted per-file sha256 list of a folder
    objective           VARCHAR,
    magnification       DOUBLE,
    numerical_aperture  DOUBLE,
    instrument          JSON,                         -- everything else the reader found
    ingested_at         TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (plate_id, acquisition_id)
);

CREATE TABLE channels (
    plate_id            VARCHAR NOT NULL,
    channel_index       INTEGER NOT NULL,
    name                VARCHAR NOT NULL,
    emission_nm         DOUBLE,
    excitation_nm       DOUBLE,
    color               VARCHAR,                      -- RRGGBB
    PRIMARY KEY (plate_id, channel_index)
);

CREATE TABLE wells (
    plate_id            VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,             -- 'B03'
    row_index           INTEGER NOT NULL,             -- 0-based
    column_index        INTEGER NOT NULL,             -- 0-based
    row_name            VARCHAR NOT NULL,             -- 'B'
    column_name         VARCHAR NOT NULL,             -- '03'
    n_fields            INTEGER NOT NULL,
    PRIMARY KEY (plate_id, well)
);

CREATE TABLE fields (
    plate_id            VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    field_index         INTEGER NOT NULL,             -- 0-based within the well
    path                VARCHAR NOT NULL,             -- 'B/03/0' inside the store
    source_key          VARCHAR NOT NULL,             -- ND2 position index, or the field's file list (JSON)
    source_name         VARCHAR,                      -- ND2 position name / site token
    stage_x_um          DOUBLE,
    stage_y_um          DOUBLE,
    status              VARCHAR NOT NULL CHECK (status IN ('pending', 'complete')),
    checksum            VARCHAR,                      -- sha256 of the stored level-0 pixels
    written_at          TIMESTAMP,
    write_seconds       DOUBLE,
    PRIMARY KEY (plate_id, well, field_index)
);

-- Per field and channel intensity summary, written with the field (QC, display windows).
CREATE TABLE field_channel_stats (
    plate_id            VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    field_index         INTEGER NOT NULL,
    channel_index       INTEGER NOT NULL,
    min                 DOUBLE NOT NULL,
    max                 DOUBLE NOT NULL,
    mean                DOUBLE NOT NULL,
    p01                 DOUBLE NOT NULL,              -- 1st percentile
    p999                DOUBLE NOT NULL,              -- 99.9th percentile
    saturated_fraction  DOUBLE NOT NULL,              -- fraction of pixels at the dtype maximum
    PRIMARY KEY (plate_id, well, field_index, channel_index)
);

-- Per-well treatment from `hts annotate` (validated against schemas/platemap.schema.json).
CREATE TABLE platemap (
    plate_id            VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    compound            VARCHAR,
    concentration       DOUBLE,
    unit                VARCHAR,
    role                VARCHAR NOT NULL CHECK (role IN ('sample', 'negative_control', 'positive_control', 'empty')),
    extra               JSON,                         -- the platemap's free columns
    source_file         VARCHAR NOT NULL,
    PRIMARY KEY (plate_id, well)
);
