-- Results: per-variant counts, conversion rates and the tests against the control.
\pset null '(null)'

SELECT amba_create_experiment('signup-copy', '[{"key": "control", "weight": 1}, {"key": "short", "weight": 1}, {"key": "long", "weight": 1}]') IS NOT NULL AS created;

-- 3,000 users are assigned; 2,400 see their variant; some sign up afterwards.
SELECT count(*) AS assigned FROM (SELECT amba_assign('signup-copy', 'user-' || g) FROM generate_series(1, 3000) g) s;
SELECT count(*) AS exposed FROM (SELECT amba_expose('signup-copy', 'user-' || g) FROM generate_series(1, 2400) g) s;
SELECT count(*) AS events FROM (
    SELECT amba_track('user-' || g, 'signup', '{"plan": "free"}', now() + interval '1 minute')
      FROM generate_series(1, 2400) g
     WHERE g % 10 < CASE amba_assign('signup-copy', 'user-' || g) WHEN 'control' THEN 2 WHEN 'short' THEN 3 ELSE 2 END
) s;
-- An event before the assignment does not count as a conversion.
SELECT amba_track('user-1', 'signup', NULL, '2000-01-01') AS backdated;

SELECT variant, is_control, assigned_count, exposed_count, converted_count,
       round(conversion_rate::numeric, 4) AS rate,
       round(z_score::numeric, 4) AS z, round(p_value::numeric, 6) AS p
  FROM amba_results('signup-copy', 'signup');

-- Section 3b: lift with its 95% interval, chance to win, Holm, sequential and SRM.
SELECT variant, round(lift::numeric, 4) AS lift,
       round(lift_ci_low::numeric, 4) AS ci_low, round(lift_ci_high::numeric, 4) AS ci_high,
       round(chance_to_win::numeric, 4) AS chance_to_win,
       round(p_value_holm::numeric, 6) AS p_holm,
       round(sequential_p_value::numeric, 6) AS p_sequential,
       round(srm_p_value::numeric, 4) AS srm
  FROM amba_results('signup-copy', 'signup');

-- A wider interval at alpha = 0.1 is narrower: (1 - alpha) = 90%.
SELECT variant, round(lift_ci_low::numeric, 4) AS ci_low_90, round(lift_ci_high::numeric, 4) AS ci_high_90
  FROM amba_results('signup-copy', 'signup', 0.1) WHERE NOT is_control;

-- Nothing to compare yet: rates and tests are NULL, never NaN.
SELECT amba_create_experiment('empty', '[{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]') IS NOT NULL AS created;
SELECT * FROM amba_results('empty', 'signup');

-- Every column at full precision (float8 as psql prints it: the shortest exact form), so
-- that scripts/fixtures/regress_reference.py can hold each number of this file against
-- statsmodels, scipy and gbstats to 1e-9 relative, not only to the rounding above.
SELECT variant, conversion_rate, z_score, p_value, lift, lift_ci_low, lift_ci_high
  FROM amba_results('signup-copy', 'signup');
SELECT variant, chance_to_win, p_value_holm, sequential_p_value, srm_p_value
  FROM amba_results('signup-copy', 'signup');
SELECT variant, lift_ci_low, lift_ci_high
  FROM amba_results('signup-copy', 'signup', 0.1) WHERE NOT is_control;
