-- Per compound and concentration: wells, cell count (mean, sd) and the median cell /
-- nucleus area and nuclear/cytoplasmic ratios, averaged over the replicate wells.
SELECT plate, engine, compound, concentration, unit, any_value(role) AS role,
       count(*) AS wells,
       round(avg(cell_count), 1) AS cell_count_mean,
       round(stddev_samp(cell_count), 1) AS cell_count_sd,
       round(avg(COLUMNS('(_AreaShape_Area_median|_Intensity_NucCytoRatio_.*_median|^cells_per_field)$')), 4)
FROM well_stats
WHERE role IS NULL OR role != 'empty'
GROUP BY plate, engine, compound, concentration, unit
ORDER BY plate, engine, compound, concentration
