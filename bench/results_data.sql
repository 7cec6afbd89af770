-- Data for amba_results at scale, generated in bulk. psql variable n: assigned users.
--   experiment `results`, two variants; the first n/2 users assigned under 50/50
--   (weight version 1), the rest after a re-weight to 40/60 (version 2)
--   n/2 users exposed (every even user), a minute after their assignment
--   5n events of three kinds (10% `purchase`, the conversion, with an `amount`), from 1.2n
--   users (so some are not in the experiment), spread over :days days (default 45) from the
--   start of the experiment's assignments, which take the first two thirds of them (so
--   some events come before their user's assignment), in time order
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
\if :{?days}
\else
\set days 45
\endif
TRUNCATE amba.exposures, amba.assignments, amba.events;
SELECT amba_delete_experiment('results') IS NOT NULL AS deleted \gset
SELECT amba_create_experiment('results',
    '[{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}]') IS NOT NULL AS created \gset
SELECT id AS rid FROM amba.experiments WHERE key = 'results' \gset

INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT :rid, u, CASE WHEN amba_bucket('results', u) < 0.5 THEN 'control' ELSE 'treatment' END, 1,
       timestamptz '2026-01-01 00:00+00' + g * (interval '1 day' * (:days * 2 / 3) / :n)
  FROM (SELECT g, 'u' || g AS u FROM generate_series(1, :n / 2) g) s;
SELECT amba_update_experiment('results',
    '[{"key": "control", "weight": 40}, {"key": "treatment", "weight": 60}]') IS NOT NULL AS updated \gset
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT :rid, u, CASE WHEN amba_bucket('results', u) < 0.4 THEN 'control' ELSE 'treatment' END, 2,
       timestamptz '2026-01-01 00:00+00' + g * (interval '1 day' * (:days * 2 / 3) / :n)
  FROM (SELECT g, 'u' || g AS u FROM generate_series(:n / 2 + 1, :n) g) s;

INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT experiment_id, user_id, assigned_at + interval '1 minute'
  FROM amba.assignments
 WHERE experiment_id = :rid AND substr(user_id, 2)::bigint % 2 = 0;

SELECT setseed(0.42);
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT 'u' || (1 + floor(random() * (:n * 1.2)))::bigint,
       CASE WHEN r < 0.1 THEN 'purchase' WHEN r < 0.3 THEN 'add_to_cart' ELSE 'page_view' END,
       t,
       CASE WHEN r < 0.1 THEN jsonb_build_object('amount', (r * 1000)::int) END
  FROM (SELECT random() AS r,
               timestamptz '2026-01-01 00:00+00' + random() * interval '1 day' * :days AS t
          FROM generate_series(1, 5 * :n)) s
 ORDER BY t;

VACUUM ANALYZE amba.experiments;
VACUUM ANALYZE amba.weight_versions;
VACUUM ANALYZE amba.assignments;
VACUUM ANALYZE amba.exposures;
VACUUM ANALYZE amba.events;
CHECKPOINT;
