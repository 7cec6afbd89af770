-- Assignment is sticky and deterministic; exposure records that the user saw it.
\pset null '(null)'

SELECT amba_create_experiment('onboarding', '[{"key": "control", "weight": 1}, {"key": "checklist", "weight": 1}]') IS NOT NULL AS created;

-- The bucket is a pure function of key and user: xxh3_64(key || 0x00 || user) >> 11, / 2^53.
SELECT amba_bucket('onboarding', 'alice') AS alice_bucket, amba_bucket('onboarding', 'bob') AS bob_bucket;

-- With weights 1:1 a bucket below 0.5 gets the control.
SELECT user_id, amba_bucket('onboarding', user_id) < 0.5 AS control_by_bucket,
       amba_assign('onboarding', user_id) AS variant
  FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave']) AS user_id;

-- The same answer every time, whatever happens to the weights or the status.
SELECT amba_update_experiment('onboarding', variants => '[{"key": "control", "weight": 0}, {"key": "checklist", "weight": 1}]') IS NOT NULL AS reweighted;
SELECT amba_update_experiment('onboarding', status => 'paused') IS NOT NULL AS paused;
SELECT user_id, amba_assign('onboarding', user_id) AS still
  FROM unnest(ARRAY['alice', 'bob', 'carol', 'dave']) AS user_id;

-- A paused experiment serves its users but takes no new ones.
SELECT amba_assign('onboarding', 'erin');
SELECT amba_update_experiment('onboarding', status => 'active') IS NOT NULL AS active;
-- New users now follow the new weights: all to "checklist".
SELECT amba_assign('onboarding', 'erin') AS erin, amba_assign('onboarding', 'frank') AS frank;

-- Exposure returns the variant and keeps the first exposure time.
SELECT amba_expose('onboarding', 'alice') AS exposed_variant;
SELECT amba_expose('onboarding', 'alice') AS again;
SELECT count(*) AS exposure_rows FROM amba.exposures;
-- No assignment, no exposure.
SELECT amba_expose('onboarding', 'zoe');

-- A user's own view over HTTP lists assignments and exposure times (here as SQL).
SELECT user_id, variant, weight_version FROM amba.assignments ORDER BY user_id;
