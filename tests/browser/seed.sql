-- Data for the browser test of the report page, on the real extension (tests/browser/run.sh):
--   q4-holdout         a holdout (SPEC §11): control "holdout" 5%, "general" 95%; nobody
--                      exposed, no layer, no holdout of its own
--   checkout-redesign  3 variants over 21 days, a clear winner, a hostile description;
--                      targeting (country, app version) and 80% coverage; layer "checkout"
--                      [0, 0.3), held out by q4-holdout
--   hostile.srm        hostile name, variant keys and targeting condition, 12.5% coverage,
--                      and exposures lost in one variant (a sample-ratio mismatch the page
--                      must shout about); layer "checkout" [0.3, 0.425)
--   empty-exp          nobody exposed; no targeting (everyone), full coverage; created
--                      ended in layer "checkout", so it holds no range; held out
--   guard-live         guardrails (SPEC §12): "refund" must not increase (the treatment
--                      refunds far more: tripping) and the purchase amount must not fall;
--                      active, never checked: rendering its report must not pause it
--   guard-paused       the same data, checked once here: paused by amba_check_guardrails
--                      (an auto_pause history row the page must show as a banner)
--   segmented          dimensions country and plan (SPEC §13), assigned through
--                      amba_assign with attributes; a hostile country value, and users
--                      without an attribute (the NULL group)
--   bandit-exp         a bandit (SPEC §14) updated twice: three weight versions
\set ON_ERROR_STOP 1
SELECT amba_create_experiment('q4-holdout', '[{"key":"holdout","weight":5},{"key":"general","weight":95}]',
    'Q4 launches holdout') IS NOT NULL AS created \gset
SELECT amba_create_experiment('checkout-redesign',
    '[{"key":"control","weight":1},{"key":"one-page","weight":1},{"key":"express","weight":1}]',
    'One-page checkout', 'Does a shorter checkout sell more? <b>not bold</b> & "quoted"',
    targeting => '{"country": {"$in": ["US", "CA"]}, "app.version": {"$vgte": "2.4.0"}}',
    coverage => 0.8, layer => 'checkout', layer_share => 0.3, holdout => 'q4-holdout') IS NOT NULL AS created \gset
SELECT amba_create_experiment('hostile.srm',
    '[{"key":"control","weight":1},{"key":"x-onerror_alert.1","weight":1}]',
    '<script>alert(1)</script>"><img src=x onerror=alert(2)>', '''); DROP TABLE x; --',
    targeting => '{"email": {"$regex": "</code><img src=x onerror=alert(4)>"}, "plan": "o''brien & <co>"}',
    coverage => 0.125, layer => 'checkout', layer_share => 0.125) IS NOT NULL AS created \gset
SELECT amba_create_experiment('empty-exp', '[{"key":"a","weight":1},{"key":"b","weight":1}]',
    status => 'ended', layer => 'checkout', layer_share => 0.5, holdout => 'q4-holdout') IS NOT NULL AS created \gset

-- Assignments with their bucketed variants, spread over 21 days; exposures a few minutes
-- later; purchases after exposure with a per-variant rate.
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT e.id, 'u' || g,
       e.variant_keys[1 + least(2, floor(amba_bucket(e.key, 'u' || g) * 3))::int], 1,
       timestamptz '2026-10-01 08:00+00' + (g % 21) * interval '1 day' + (g % 600) * interval '1 minute'
  FROM amba.experiments e, generate_series(1, 6000) g WHERE e.key = 'checkout-redesign';
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT e.id, 'h' || g, e.variant_keys[1 + floor(amba_bucket(e.key, 'h' || g) * 2)::int], 1,
       timestamptz '2026-10-01 08:00+00' + (g % 10) * interval '1 day'
  FROM amba.experiments e, generate_series(1, 3000) g WHERE e.key = 'hostile.srm';
INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT a.experiment_id, a.user_id, a.assigned_at + interval '3 minutes'
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key = 'checkout-redesign'
    OR (e.key = 'hostile.srm' AND (a.variant = 'control' OR hashtext(a.user_id) % 3 = 0));
SELECT count(amba_track(a.user_id, 'purchase', jsonb_build_object('amount', 20 + hashtext(a.user_id) % 50),
                        a.assigned_at + interval '1 hour' + (hashtext(a.user_id) & 3) * interval '1 day')) AS tracked
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE (hashtext(a.user_id || 'p') & 1023) < CASE a.variant WHEN 'control' THEN 100 WHEN 'one-page' THEN 135
                                                         WHEN 'express' THEN 110 ELSE 120 END \gset

-- Guardrails: two experiments with the same kind of data, one checked (and paused).
SELECT amba_create_experiment(k, '[{"key":"control","weight":1},{"key":"treatment","weight":1}]',
    'Guarded ' || k,
    guardrails => '[{"event":"refund","kind":"conversion","bad":"increase"},
                    {"event":"purchase","kind":"mean","value_property":"amount","bad":"decrease","tolerance":0.05,"alpha":0.1}]')
    IS NOT NULL AS created
  FROM unnest(ARRAY['guard-live', 'guard-paused']) k;
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT e.id, e.key || '-' || g, e.variant_keys[1 + g % 2], 1,
       timestamptz '2026-10-01 08:00+00' + (g % 7) * interval '1 day'
  FROM amba.experiments e, generate_series(1, 2000) g WHERE e.key IN ('guard-live', 'guard-paused');
INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT a.experiment_id, a.user_id, a.assigned_at + interval '1 minute'
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key IN ('guard-live', 'guard-paused');
SELECT count(amba_track(a.user_id, 'refund', NULL, a.assigned_at + interval '2 hours')) AS tracked
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key IN ('guard-live', 'guard-paused')
   AND (hashtext(a.user_id || 'r') & 1023) < CASE a.variant WHEN 'control' THEN 40 ELSE 300 END \gset
SELECT count(amba_track(a.user_id, 'purchase', jsonb_build_object('amount', 30 + hashtext(a.user_id) % 20),
                        a.assigned_at + interval '1 hour')) AS tracked
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key IN ('guard-live', 'guard-paused') AND (hashtext(a.user_id || 'p') & 1023) < 120 \gset
SELECT count(*) AS checked FROM amba_check_guardrails('guard-paused') \gset

-- Segments: assigned through amba_assign, which stores the dimensions' values.
SELECT amba_create_experiment('segmented', '[{"key":"control","weight":1},{"key":"bold","weight":1}]',
    'Segmented', dimensions => ARRAY['country', 'plan']) IS NOT NULL AS created \gset
SELECT count(amba_assign('segmented', 'sg' || g, jsonb_strip_nulls(jsonb_build_object(
           'country', (ARRAY['US', 'DE', '<script>alert(5)</script>', NULL])[1 + g % 4],
           'plan', (ARRAY['free', 'pro', NULL])[1 + g % 3])))) AS assigned
  FROM generate_series(1, 1200) g \gset
SELECT count(amba_expose('segmented', 'sg' || g)) AS exposed
  FROM generate_series(1, 1200) g WHERE g % 10 <> 0 \gset
SELECT count(amba_track('sg' || g, 'purchase', NULL, clock_timestamp() + interval '1 hour')) AS tracked
  FROM generate_series(1, 1200) g
 WHERE (hashtext('sg' || g || 'p') & 1023) < CASE WHEN amba_bucket('segmented', 'sg' || g) < 0.5 THEN 150 ELSE 220 END \gset

-- A bandit, updated twice (three weight versions).
SELECT amba_create_experiment('bandit-exp',
    '[{"key":"control","weight":1},{"key":"fast","weight":1},{"key":"slow","weight":1}]', 'Bandit',
    bandit => '{"event":"purchase","kind":"conversion","min_users":50,"min_weight":0.05}') IS NOT NULL AS created \gset
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT e.id, 'bd' || g, e.variant_keys[1 + g % 3], 1, timestamptz '2026-10-01 08:00+00' + (g % 5) * interval '1 day'
  FROM amba.experiments e, generate_series(1, 900) g WHERE e.key = 'bandit-exp';
INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT a.experiment_id, a.user_id, a.assigned_at + interval '1 minute'
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = 'bandit-exp';
SELECT count(amba_track(a.user_id, 'purchase', NULL, a.assigned_at + interval '1 hour')) AS tracked
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key = 'bandit-exp'
   AND (hashtext(a.user_id || 'p') & 1023) < CASE a.variant WHEN 'control' THEN 100 WHEN 'fast' THEN 200 ELSE 120 END \gset
SELECT amba_bandit_update('bandit-exp') ->> 'updated' AS updated \gset
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT e.id, 'bd' || g, e.variant_keys[CASE WHEN g % 10 < 6 THEN 2 WHEN g % 10 < 8 THEN 1 ELSE 3 END], 2,
       timestamptz '2026-10-06 08:00+00' + (g % 5) * interval '1 day'
  FROM amba.experiments e, generate_series(901, 1800) g WHERE e.key = 'bandit-exp';
INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT a.experiment_id, a.user_id, a.assigned_at + interval '1 minute'
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key = 'bandit-exp' AND a.weight_version = 2;
SELECT count(amba_track(a.user_id, 'purchase', NULL, a.assigned_at + interval '1 hour')) AS tracked
  FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
 WHERE e.key = 'bandit-exp' AND a.weight_version = 2
   AND (hashtext(a.user_id || 'p') & 1023) < CASE a.variant WHEN 'control' THEN 100 WHEN 'fast' THEN 200 ELSE 120 END \gset
SELECT amba_bandit_update('bandit-exp') ->> 'updated' AS updated \gset
