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

\echo
\echo '7. QA: force a variant for a tester, even on a draft experiment. Nothing is recorded for'
\echo '   them and results leave them out.'
SELECT amba_create_experiment('new-pricing', '[{"key":"control","weight":1},{"key":"annual-first","weight":1}]',
                              status => 'draft') ->> 'status' AS status;
SELECT amba_set_override('new-pricing', 'qa-anna', 'annual-first') ->> 'variant' AS forced;
SELECT amba_assign('new-pricing', 'qa-anna') AS qa_sees, amba_peek('new-pricing', 'someone') AS a_visitor_would_see;

\echo
\echo '8. Login: visitor anon-7 saw a variant before signing up as member-7 (assigned later, on another device).'
\echo '   amba_alias keeps the first touch, moves the events, and anon-7 acts as member-7 from now on.'
SELECT amba_assign('checkout-button', 'anon-7') AS anon_variant;
SELECT amba_assign('checkout-button', 'member-7') AS user_variant;
SELECT amba_track('anon-7', 'add_to_cart') IS NOT NULL AS tracked;
SELECT amba_alias('anon-7', 'member-7');
SELECT amba_assign('checkout-button', 'anon-7') AS anon_now_gets;

\echo
\echo '9. Revenue per exposed user (sum of the purchase amount), capped at the 99th percentile,'
\echo '   with CUPED over the 14 days before each assignment:'
SELECT count(amba_track(user_id, 'purchase', jsonb_build_object('amount', 20 + (r_buy * 100)::int),
                        now() - interval '3 days')) AS pre_period_purchases
  FROM sim WHERE r_buy < 0.3;
\x on
SELECT * FROM amba_metric_results('checkout-button', 'purchase', 'amount',
                                  cap_percentile => 0.99, cuped_days => 14);
\x off
\echo 'mean/stddev: revenue per exposed user; delta: the difference from control with its interval'
\echo 'and Welch p-value; lift: the same, relative; cuped_theta: how much pre-period revenue explains.'

\echo
\echo '10. Results over time (cumulative, per UTC day) and the report page:'
SELECT day, variant, exposed_count, converted_count, round(lift::numeric, 4) AS lift,
       round(lift_cs_low::numeric, 4) AS always_valid_low, round(lift_cs_high::numeric, 4) AS always_valid_high
  FROM amba_results_daily('checkout-button', 'purchase');
\pset tuples_only on
\pset format unaligned
\o /tmp/amba-demo-report.html
SELECT amba_report('checkout-button', 'purchase');
\o
\pset tuples_only off
\pset format aligned
\echo 'The report page (self-contained HTML) is in /tmp/amba-demo-report.html.'
