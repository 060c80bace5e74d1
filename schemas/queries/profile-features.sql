-- Features of the latest profile set and what feature selection did with each: kept, or the
-- operation that dropped it (variance_threshold, correlation_threshold, drop_na_columns,
-- drop_outliers, no_values).
SELECT f.feature, f.selected, f.reason
FROM profile_features f
WHERE f.profile_set_id = (SELECT profile_set_id FROM profile_sets ORDER BY current_at DESC LIMIT 1)
ORDER BY f.selected DESC, f.reason, f.ordinal
