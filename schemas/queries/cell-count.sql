-- Cells per well for every current segmentation run, with the platemap.
SELECT plate, engine, well, role, compound, concentration, unit,
       n_fields, cell_count, round(cells_per_field, 1) AS cells_per_field
FROM well_stats
ORDER BY plate, engine, row_index, column_index
