-- Features of the latest profile set that follow the dose: per compound with 3 or more
-- concentrations, the Spearman rank correlation of each selected feature's consensus value
-- (robust z against the negative controls) with concentration, and how far the value moves
-- (z range); monotone, large changes first.
WITH latest AS (
    SELECT profile_set_id FROM profile_sets ORDER BY current_at DESC LIMIT 1
), v AS (
    SELECT c.compound, c.concentration, f.feature, c.normalized[f.ordinal] AS value
    FROM consensus c
    JOIN profile_features f ON f.profile_set_id = c.profile_set_id AND f.selected
    WHERE c.profile_set_id = (SELECT profile_set_id FROM latest)
      AND c.role != 'negative_control' AND c.concentration > 0 AND NOT isnan(c.normalized[f.ordinal])
), r AS (
    SELECT *, rank() OVER (PARTITION BY compound, feature ORDER BY concentration) AS rank_dose,
              rank() OVER (PARTITION BY compound, feature ORDER BY value) AS rank_value
    FROM v
)
SELECT compound, feature, count(*) AS concentrations,
       round(corr(rank_dose, rank_value), 3) AS spearman_dose,
       round(max(value) - min(value), 2) AS z_range
FROM r
GROUP BY compound, feature
HAVING count(*) >= 3 AND corr(rank_dose, rank_value) IS NOT NULL
ORDER BY round(abs(corr(rank_dose, rank_value)), 1) DESC, max(value) - min(value) DESC
LIMIT 50
