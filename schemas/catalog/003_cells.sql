-- hts catalog, migration 003: per-cell features, field focus, and the views scientists query.
--
-- One row of `cells` per primary object (the cell, or the nucleus for nucleus-only
-- engines) of one run, field and time point. The key columns are fixed here; the
-- feature columns (DOUBLE, NULL where undefined) are added by the loader as feature
-- sets first appear, named as CellProfiler / pycytominer name them:
-- `Nuclei_AreaShape_Area`, `Cells_Intensity_MeanIntensity_DAPI`,
-- `Cytoplasm_Intensity_MedianIntensity_GFP`, `Cells_Children_Foci_Count` ...
-- (see docs/features.md). Rows come in bulk from Arrow / Parquet batches the workers
-- write, one transaction per batch of fields, together with the fields' completion.

ALTER TABLE runs ADD COLUMN features JSON;                 -- MeasureOptions of the last complete measurement
ALTER TABLE run_fields ADD COLUMN measured_key VARCHAR;    -- MeasureOptions.key() the field's cells were measured with
ALTER TABLE run_fields ADD COLUMN n_cells INTEGER;         -- rows in `cells` for the field (all time points)
ALTER TABLE field_channel_stats ADD COLUMN focus_score DOUBLE;  -- var(Laplacian) / mean^2 (scale-free)

CREATE TABLE cells (
    plate_id            VARCHAR NOT NULL,
    run_id              VARCHAR NOT NULL,
    well                VARCHAR NOT NULL,
    field_index         INTEGER NOT NULL,
    t                   INTEGER NOT NULL,
    object_id           BIGINT NOT NULL,              -- label of the primary object in the run's first label image
    nucleus_id          BIGINT,                       -- label of its nucleus (NULL: none)
    Location_Center_X   DOUBLE,                       -- primary object centroid, pixels
    Location_Center_Y   DOUBLE
);

-- Per-well statistics of every feature, one row per (plate, run, well) that the run
-- covered (wells without cells included, with cell_count 0), with the platemap.
CREATE VIEW well_stats AS
WITH agg AS (
    SELECT
        plate_id, run_id, well,
        count(*) AS cell_count,
        avg(COLUMNS('^(Location|Nuclei|Cells|Cytoplasm)_')) AS "\0_mean",
        median(COLUMNS('^(Location|Nuclei|Cells|Cytoplasm)_')) AS "\0_median",
        stddev_samp(COLUMNS('^(Location|Nuclei|Cells|Cytoplasm)_')) AS "\0_std"
    FROM cells
    GROUP BY plate_id, run_id, well
), covered AS (
    SELECT f.run_id, r.plate_id, f.well, count(*) AS n_fields,
           count(*) FILTER (WHERE f.status = 'complete') AS n_fields_done
    FROM run_fields f JOIN runs r USING (run_id)
    WHERE r.status != 'replaced'
    GROUP BY f.run_id, r.plate_id, f.well
)
SELECT
    c.plate_id, p.name AS plate, c.run_id, r.engine, c.well,
    w.row_name, w.column_name, w.row_index, w.column_index,
    m.compound, m.concentration, m.unit, m.role,
    c.n_fields,
    coalesce(a.cell_count, 0) AS cell_count,
    coalesce(a.cell_count, 0) / c.n_fields AS cells_per_field,
    a.* EXCLUDE (plate_id, run_id, well, cell_count)
FROM covered c
JOIN plates p ON p.plate_id = c.plate_id
JOIN runs r ON r.run_id = c.run_id
JOIN wells w ON w.plate_id = c.plate_id AND w.well = c.well
LEFT JOIN platemap m ON m.plate_id = c.plate_id AND m.well = c.well
LEFT JOIN agg a ON a.plate_id = c.plate_id AND a.run_id = c.run_id AND a.well = c.well;

-- Per plate and run: coverage, cell counts and their spread across wells.
CREATE VIEW plate_stats AS
SELECT
    plate_id, plate, run_id, engine,
    count(*) AS n_wells,
    sum(n_fields) AS n_fields,
    sum(cell_count) AS cell_count,
    avg(cell_count) AS cells_per_well_mean,
    median(cell_count) AS cells_per_well_median,
    stddev_samp(cell_count) / nullif(avg(cell_count), 0) AS cells_per_well_cv,
    count(*) FILTER (WHERE role = 'negative_control') AS n_negative_control,
    count(*) FILTER (WHERE role = 'positive_control') AS n_positive_control,
    avg(cell_count) FILTER (WHERE role = 'negative_control') AS cells_per_well_negative,
    avg(cell_count) FILTER (WHERE role = 'positive_control') AS cells_per_well_positive
FROM well_stats
GROUP BY plate_id, plate, run_id, engine;

-- Per field and run: image QC from ingest (focus, saturation over channels) and the
-- segmentation's cell count, each with a robust z-score against the plate
-- ((x - median) / (1.4826 * MAD)); `flags` names what is off.
CREATE VIEW field_qc AS
WITH img AS (
    SELECT plate_id, well, field_index,
           min(focus_score) AS focus_score_min,
           max(saturated_fraction) AS saturated_fraction_max,
           arg_max(channel_index, saturated_fraction) AS most_saturated_channel
    FROM field_channel_stats
    GROUP BY plate_id, well, field_index
), focus AS (
    -- focus per channel against the same channel over the plate, worst channel kept
    SELECT s.plate_id, s.well, s.field_index,
           min((ln(s.focus_score) - b.med) / nullif(1.4826 * b.mad, 0)) AS focus_z
    FROM field_channel_stats s
    JOIN (SELECT plate_id, channel_index, median(ln(focus_score)) AS med, mad(ln(focus_score)) AS mad
          FROM field_channel_stats WHERE focus_score > 0 GROUP BY plate_id, channel_index) b
      ON b.plate_id = s.plate_id AND b.channel_index = s.channel_index
    WHERE s.focus_score > 0
    GROUP BY s.plate_id, s.well, s.field_index
), counts AS (
    SELECT r.plate_id, f.run_id, r.engine, f.well, f.field_index, f.status, f.n_cells
    FROM run_fields f JOIN runs r USING (run_id)
    WHERE r.status != 'replaced'
), scored AS (
    SELECT c.*,
           (c.n_cells - median(c.n_cells) OVER w) / nullif(1.4826 * mad(c.n_cells) OVER w, 0) AS cell_count_z
    FROM counts c
    WINDOW w AS (PARTITION BY c.run_id)
)
SELECT
    s.plate_id, p.name AS plate, s.run_id, s.engine, s.well, s.field_index,
    m.role, m.compound, m.concentration,
    s.n_cells AS cell_count, s.cell_count_z,
    i.focus_score_min, fz.focus_z,
    i.saturated_fraction_max, i.most_saturated_channel,
    list_filter([
        CASE WHEN fz.focus_z < -3 THEN 'out_of_focus' END,
        CASE WHEN i.saturated_fraction_max > 0.01 THEN 'saturated' END,
        CASE WHEN abs(s.cell_count_z) > 3.5 THEN 'cell_count_outlier' END,
        CASE WHEN s.n_cells = 0 AND coalesce(m.role, 'sample') != 'empty' THEN 'no_cells' END
    ], lambda x: x IS NOT NULL) AS flags
FROM scored s
JOIN plates p ON p.plate_id = s.plate_id
LEFT JOIN img i ON i.plate_id = s.plate_id AND i.well = s.well AND i.field_index = s.field_index
LEFT JOIN focus fz ON fz.plate_id = s.plate_id AND fz.well = s.well AND fz.field_index = s.field_index
LEFT JOIN platemap m ON m.plate_id = s.plate_id AND m.well = s.well;

-- Per-cell profiles with pycytominer's metadata columns: what `hts export` writes.
CREATE VIEW cell_profiles AS
SELECT
    p.name AS Metadata_Plate,
    c.well AS Metadata_Well,
    c.field_index AS Metadata_Site,
    c.t AS Metadata_Timepoint,
    c.run_id AS Metadata_Run,
    r.engine AS Metadata_Engine,
    m.compound AS Metadata_Compound,
    m.concentration AS Metadata_Concentration,
    m.unit AS Metadata_Unit,
    m.role AS Metadata_Role,
    c.plate_id AS Metadata_PlateID,
    c.object_id AS ObjectNumber,
    c.nucleus_id AS Nuclei_ObjectNumber,
    c.* EXCLUDE (plate_id, run_id, well, field_index, t, object_id, nucleus_id)
FROM cells c
JOIN plates p ON p.plate_id = c.plate_id
JOIN runs r ON r.run_id = c.run_id
LEFT JOIN platemap m ON m.plate_id = c.plate_id AND m.well = c.well;
