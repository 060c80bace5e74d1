-- hts catalog, migration 004: where a run's pixel size came from, and per-field sanity checks.
-- pixel_size_source: 'option' (--pixel-size), 'metadata' (the plate's), 'estimated' (from the data,
-- hts.compute.scale). checks: JSON list of the sanity checks a field failed (hts.compute.sanity),
-- NULL when it passed them all.

ALTER TABLE runs ADD COLUMN pixel_size_source VARCHAR;
ALTER TABLE run_fields ADD COLUMN checks JSON;

-- field_qc as in 003, its flags extended with the segmentation's sanity checks (dark_objects,
-- objects_fill_field, object_size) and the checks' details in a column of their own.
CREATE OR REPLACE VIEW field_qc AS
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
    SELECT r.plate_id, f.run_id, r.engine, f.well, f.field_index, f.status, f.n_cells, f.checks
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
    list_concat(list_filter([
        CASE WHEN fz.focus_z < -3 THEN 'out_of_focus' END,
        CASE WHEN i.saturated_fraction_max > 0.01 THEN 'saturated' END,
        CASE WHEN abs(s.cell_count_z) > 3.5 THEN 'cell_count_outlier' END,
        CASE WHEN s.n_cells = 0 AND coalesce(m.role, 'sample') != 'empty' THEN 'no_cells' END
    ], lambda x: x IS NOT NULL), coalesce(json_extract_string(s.checks, '$[*].check'), [])) AS flags,
    s.checks
FROM scored s
JOIN plates p ON p.plate_id = s.plate_id
LEFT JOIN img i ON i.plate_id = s.plate_id AND i.well = s.well AND i.field_index = s.field_index
LEFT JOIN focus fz ON fz.plate_id = s.plate_id AND fz.well = s.well AND fz.field_index = s.field_index
LEFT JOIN platemap m ON m.plate_id = s.plate_id AND m.well = s.well;
