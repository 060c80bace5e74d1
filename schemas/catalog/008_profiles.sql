-- hts catalog, migration 008: phenotype profiles (`hts profile`), activity (`hts activity`).
--
-- A profile set is one build of per-well profiles from chosen runs with one recipe
-- (aggregation, normalisation, feature selection); its id is a hash of the recipe and of
-- the runs' ids and measurements, so building the same set again is a no-op. Profiles keep
-- their values as arrays aligned with `profile_features.ordinal` (1-based, DuckDB's list
-- index): `aggregated` (the cells' median or mean per well) and `normalized` (against the
-- plate's negative controls); `profile_features.selected` says which features feature
-- selection kept, `reason` why the others were dropped. The view `profile_values` unnests
-- the selected features for SQL.

CREATE TABLE profile_sets (
    profile_set_id  VARCHAR PRIMARY KEY,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    current_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,  -- last built or asked for: the latest is the current set
    hts_version     VARCHAR NOT NULL,
    recipe          JSON NOT NULL,        -- ProfileRecipe: aggregation, normalisation, selection and their options
    plates          JSON NOT NULL,        -- [{plate, plate_id, run_id, engine, reference, n_wells}]
    n_wells         INTEGER NOT NULL,
    n_features      INTEGER NOT NULL,
    n_selected      INTEGER NOT NULL,
    n_treatments    INTEGER NOT NULL,     -- distinct (compound, concentration, unit) that are not negative controls
    warnings        JSON NOT NULL         -- one line each (a plate without controls ...)
);

CREATE TABLE profile_features (
    profile_set_id  VARCHAR NOT NULL,
    ordinal         INTEGER NOT NULL,     -- position in the profile arrays, 1-based
    feature         VARCHAR NOT NULL,
    selected        BOOLEAN NOT NULL,
    reason          VARCHAR,              -- NULL where selected; else the operation that dropped it
    PRIMARY KEY (profile_set_id, ordinal)
);

CREATE TABLE profiles (
    profile_set_id  VARCHAR NOT NULL,
    plate_id        VARCHAR NOT NULL,
    plate           VARCHAR NOT NULL,
    run_id          VARCHAR NOT NULL,
    well            VARCHAR NOT NULL,
    role            VARCHAR,
    compound        VARCHAR,
    concentration   DOUBLE,
    unit            VARCHAR,
    n_cells         BIGINT NOT NULL,
    aggregated      DOUBLE[] NOT NULL,
    normalized      DOUBLE[] NOT NULL,
    PRIMARY KEY (profile_set_id, plate_id, well)
);

-- Replicate wells of one treatment (compound, concentration, unit) across plates, median of
-- their normalised profiles.
CREATE TABLE consensus (
    profile_set_id  VARCHAR NOT NULL,
    compound        VARCHAR NOT NULL,
    concentration   DOUBLE NOT NULL,
    unit            VARCHAR NOT NULL,
    role            VARCHAR NOT NULL,
    n_wells         INTEGER NOT NULL,
    n_plates        INTEGER NOT NULL,
    normalized      DOUBLE[] NOT NULL
);

-- Phenotypic activity of each treatment: mean average precision of its replicate wells
-- against the negative controls, permutation p-value and Benjamini-Hochberg q-value.
CREATE TABLE activity (
    profile_set_id          VARCHAR NOT NULL,
    compound                VARCHAR NOT NULL,
    concentration           DOUBLE NOT NULL,
    unit                    VARCHAR NOT NULL,
    n_wells                 INTEGER NOT NULL,
    mean_average_precision  DOUBLE NOT NULL,
    p_value                 DOUBLE NOT NULL,
    q_value                 DOUBLE NOT NULL,
    hit                     BOOLEAN NOT NULL,
    metric                  VARCHAR NOT NULL,
    null_size               INTEGER NOT NULL,
    seed                    BIGINT NOT NULL,
    q_threshold             DOUBLE NOT NULL,
    created_at              TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE VIEW profile_values AS
SELECT p.profile_set_id, p.plate, p.well, p.role, p.compound, p.concentration, p.unit,
       f.feature, p.normalized[f.ordinal] AS value, p.aggregated[f.ordinal] AS aggregated
FROM profiles p
JOIN profile_features f ON f.profile_set_id = p.profile_set_id AND f.selected;
