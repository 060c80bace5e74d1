-- Phenotypic hits of the latest profile set (`hts profile`, then `hts activity`): treatments
-- whose replicate wells resemble each other more than the negative controls (mAP), with
-- permutation p-value and FDR q-value; most significant first.
SELECT a.compound, a.concentration, a.unit, a.n_wells,
       round(a.mean_average_precision, 3) AS mAP, a.p_value, a.q_value, a.hit
FROM activity a
WHERE a.profile_set_id = (SELECT profile_set_id FROM profile_sets ORDER BY current_at DESC LIMIT 1)
ORDER BY a.hit DESC, a.q_value, a.mean_average_precision DESC
