-- Amba demo: a checkout-button experiment with three variants and 6,000 simulated users.
\pset null '·'
\pset footer off
\set QUIET on
SELECT setseed(0.42);

\echo
\echo '1. Create the experiment: control first, then two challengers (weights 50/25/25).'
SELECT amba_create_experiment('checkout-button',
    '[{"key":"control","weight":50},{"key":"green","weight":25},{"key":"red","weight":25}]',
    name => 'Checkout button colour', description => 'Does a green or red button sell more?')
    - 'created_at' - 'updated_at' AS experiment;

\echo '2. 3,000 users arrive and are assigned (sticky: the same user always gets the same variant).'
CREATE TEMP TABLE sim AS
SELECT 'user-' || g AS user_id, amba_assign('checkout-button', 'user-' || g) AS variant,
       random() AS r_seen, random() AS r_buy
  FROM generate_series(1, 3000) g;

\echo '3. Re-weight to 40/30/30: users already assigned keep their variant; new users follow the new weights.'
SELECT amba_update_experiment('checkout-button',
    variants => '[{"key":"control","weight":40},{"key":"green","weight":30},{"key":"red","weight":30}]') -> 'variants' AS variants;
INSERT INTO sim
SELECT 'user-' || g, amba_assign('checkout-button', 'user-' || g), random(), random()
  FROM generate_series(3001, 6000) g;
SELECT count(*) FILTER (WHERE amba_assign('checkout-button', user_id) <> variant) AS users_who_moved FROM sim;

\echo '4. 80% of users reach the checkout page and are exposed. A planted bug: the red'
\echo '   button''s client drops 30% of its exposure calls (watch the SRM column).'
SELECT count(amba_expose('checkout-button', user_id)) AS exposures
  FROM sim WHERE r_seen < 0.8 AND NOT (variant = 'red' AND r_seen < 0.8 * 0.30);

\echo '5. Purchases: 10% for control, 12.5% for green, 10% for red (after assignment).'
SELECT count(amba_track(user_id, 'purchase', jsonb_build_object('amount', 42), now() + interval '5 minutes')) AS purchases
  FROM sim
 WHERE r_seen < 0.8
   AND r_buy < CASE variant WHEN 'control' THEN 0.10 WHEN 'green' THEN 0.125 ELSE 0.10 END;

\echo
\echo '6. Results for the conversion event "purchase":'
\x on
SELECT * FROM amba_results('checkout-button', 'purchase');
\x off
\echo 'How to read this: conversion_rate = converted / exposed. For each challenger, p_value is'
\echo 'the two-sided z-test against the control, lift the relative change with its 95% interval,'
\echo 'chance_to_win the probability it beats the control, p_value_holm the p-value corrected for'
\echo 'testing two challengers, sequential_p_value the one that stays valid however often you look.'
\echo 'srm_p_value < 0.001 raises the sample-ratio alarm: exposures are being lost in one variant'
\echo '(here: the planted red bug), so none of these numbers should be trusted until it is fixed.'
