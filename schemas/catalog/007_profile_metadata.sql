-- hts catalog, migration 007: identifiers and coordinates of `cell_profiles` named as metadata.
-- pycytominer infers features from the compartment prefixes (Cells_, Nuclei_, Cytoplasm_), so
-- `Nuclei_ObjectNumber` was taken for a feature and survived feature selection. The object
-- numbers and the centroid are now `Metadata_ObjectNumber`, `Metadata_Nuclei_ObjectNumber`,
-- `Metadata_Location_Center_X` / `_Y`, as CellProfiler-based profiling pipelines name them.

CREATE OR REPLACE VIEW cell_profiles AS
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
    c.object_id AS Metadata_ObjectNumber,
    c.nucleus_id AS Metadata_Nuclei_ObjectNumber,
    c.Location_Center_X AS Metadata_Location_Center_X,
    c.Location_Center_Y AS Metadata_Location_Center_Y,
    c.* EXCLUDE (plate_id, run_id, well, field_index, t, object_id, nucleus_id, Location_Center_X, Location_Center_Y)
FROM cells c
JOIN plates p ON p.plate_id = c.plate_id
JOIN runs r ON r.run_id = c.run_id
LEFT JOIN platemap m ON m.plate_id = c.plate_id AND m.well = c.well;
