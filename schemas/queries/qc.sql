-- Plate QC per run: Z'-factor and SSMD of the cell count between positive and negative
-- control wells (Z' > 0.5: an excellent assay window; |SSMD| >= 2: a strong effect),
-- and how many fields the field_qc view flags, by reason.
WITH ctl AS (
    SELECT plate, engine, run_id,
           avg(cell_count) FILTER (WHERE role = 'positive_control') AS mu_p,
           stddev_samp(cell_count) FILTER (WHERE role = 'positive_control') AS sd_p,
           avg(cell_count) FILTER (WHERE role = 'negative_control') AS mu_n,
           stddev_samp(cell_count) FILTER (WHERE role = 'negative_control') AS sd_n
    FROM well_stats GROUP BY ALL
), flags AS (
    SELECT run_id, count(*) AS fields,
           count(*) FILTER (WHERE len(flags) > 0) AS flagged,
           count(*) FILTER (WHERE list_contains(flags, 'out_of_focus')) AS out_of_focus,
           count(*) FILTER (WHERE list_contains(flags, 'saturated')) AS saturated,
           count(*) FILTER (WHERE list_contains(flags, 'cell_count_outlier')) AS count_outliers,
           count(*) FILTER (WHERE list_contains(flags, 'no_cells')) AS no_cells
    FROM field_qc GROUP BY run_id
)
SELECT c.plate, c.engine,
       round(1 - 3 * (c.sd_p + c.sd_n) / nullif(abs(c.mu_p - c.mu_n), 0), 3) AS z_prime_cell_count,
       round((c.mu_p - c.mu_n) / nullif(sqrt(c.sd_p ^ 2 + c.sd_n ^ 2), 0), 2) AS ssmd_cell_count,
       f.fields, f.flagged, f.out_of_focus, f.saturated, f.count_outliers, f.no_cells
FROM ctl c JOIN flags f USING (run_id)
ORDER BY c.plate, c.engine
