-- hts catalog, migration 002: segmentation runs.
-- A run is one engine with one set of parameters over (a selection of) one plate's fields.
-- Its identity (run_key) is a hash of everything that determines the labels, so running
-- the same command again resumes or skips it, and a different one never mixes with it.

CREATE TABLE runs (
    run_id              VARCHAR PRIMARY KEY,          -- uuid4
    plate_id            VARCHAR NOT NULL,
    run_key             VARCHAR NOT NULL,             -- sha256 of engine, version, params, channels, model, tile, halo, wells
    engine              VARCHAR NOT NULL,
    engine_version      VARCHAR NOT NULL,
    backend             VARCHAR NOT NULL,             -- numpy, torch, onnxruntime, tensorrt
    device              VARCHAR NOT NULL,             -- cpu, cuda
    params              JSON NOT NULL,                -- the engine's validated parameters (µm units)
    channels            JSON NOT NULL,                -- role -> channel name
    model_sha256        VARCHAR,                      -- weights checksum (deep engines)
    labels              JSON NOT NULL,                -- output -> label image name in the store
    wells               VARCHAR,                      -- selection, NULL = all
    tile_size           INTEGER NOT NULL,
    halo                INTEGER NOT NULL,
    pixel_size_um       DOUBLE NOT NULL,
    status              VARCHAR NOT NULL CHECK (status IN ('running', 'complete', 'replaced')),
    hts_version         VARCHAR NOT NULL,
    created_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    completed_at        TIMESTAMP
);

CREATE TABLE run_fields (
    run_id              VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    field_index         INTEGER NOT NULL,
    status              VARCHAR NOT NULL CHECK (status IN ('pending', 'complete')),
    seconds             DOUBLE,                       -- wall time of the field task on its worker
    worker              VARCHAR,
    finished_at         TIMESTAMP,
    PRIMARY KEY (run_id, well, field_index)
);

CREATE TABLE run_object_counts (
    run_id              VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    field_index         INTEGER NOT NULL,
    output              VARCHAR NOT NULL,             -- nuclei, cells, foci ...
    n_objects           INTEGER NOT NULL,             -- summed over time points
    PRIMARY KEY (run_id, well, field_index, output)
);

-- Which run wrote each label image of a plate now (one writer per label name).
CREATE TABLE plate_labels (
    plate_id            VARCHAR NOT NULL,
    label_name          VARCHAR NOT NULL,
    run_id              VARCHAR NOT NULL,
    PRIMARY KEY (plate_id, label_name)
);
