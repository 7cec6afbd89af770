-- Data for amba_check_guardrails at scale (CONTRACT 12), generated in bulk.
-- psql variables: experiments (default 100), users (per experiment, default 10000).
--   experiments guard-001 .. guard-100, active, control/treatment 50/50, made by
--   amba_create_experiment with three guardrails each: two `conversion` (purchase must not
--   decrease, error must not increase) and one `mean` (the sum of the purchases' `amount`
--   must not decrease)
--   users g1 .. g(experiments * users): each in one experiment, assigned (the variant
--   amba_assign would pick) and exposed a minute later: 1M exposed users in total
--   events: per user a purchase with an `amount` (30% of the users; 20% in the treatment of
--   every tenth experiment, the harmful ones, whose guardrails trip), an error (5%), two
--   page views (not measured), and a purchase the day before the assignment (10%, must not
--   count): about 2.4M events
-- Rows are inserted directly (as bench/results_data.sql does), before the indexes are built
-- again from the catalog's own definitions (amba.assignment_dimensions, which refers to
-- amba.assignments, stays empty). Nothing about the tables changes.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
\if :{?experiments}
\else
\set experiments 100
\endif
\if :{?users}
\else
\set users 10000
\endif
TRUNCATE amba.assignment_dimensions, amba.exposures, amba.assignments, amba.events;
SELECT count(amba_delete_experiment(key)) AS deleted FROM amba.experiments WHERE key LIKE 'guard-%' \gset
SET maintenance_work_mem = '1GB';
SET max_parallel_maintenance_workers = 2;
CREATE TEMP TABLE bulk_load_ddl AS
SELECT 1 AS step, c.conrelid::regclass::text AS tab, c.conname::text AS name,
       pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
                         pg_catalog.pg_get_constraintdef(c.oid)) AS ddl,
       CASE c.contype WHEN 'f' THEN 2 ELSE 1 END AS rank
  FROM pg_catalog.pg_constraint c
 WHERE c.conrelid IN ('amba.assignments'::regclass, 'amba.exposures'::regclass, 'amba.events'::regclass,
                      'amba.assignment_dimensions'::regclass)
   AND c.contype IN ('p', 'u', 'f')
UNION ALL
SELECT 2, i.indrelid::regclass::text, ci.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), 3
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ci ON ci.oid = i.indexrelid
 WHERE i.indrelid IN ('amba.assignments'::regclass, 'amba.exposures'::regclass, 'amba.events'::regclass,
                      'amba.assignment_dimensions'::regclass)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid
                      AND c.conrelid = i.indrelid);
DO $$
DECLARE d record;
BEGIN
    -- foreign keys first, then the keys they rest on, then plain indexes
    FOR d IN SELECT * FROM bulk_load_ddl ORDER BY rank DESC LOOP
        IF d.step = 1 THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', d.tab, d.name);
        ELSE
            EXECUTE pg_catalog.format('DROP INDEX amba.%I', d.name);
        END IF;
    END LOOP;
END $$;

SELECT count(amba_create_experiment('guard-' || lpad(e::text, 3, '0'),
    '[{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}]',
    guardrails => '[{"event": "purchase", "kind": "conversion", "bad": "decrease", "tolerance": 0.01},
                    {"event": "error", "kind": "conversion", "bad": "increase", "alpha": 0.1},
                    {"event": "purchase", "value_property": "amount", "kind": "mean", "bad": "decrease",
                     "tolerance": 0.02}]')) AS created
  FROM generate_series(1, :experiments) e \gset

INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
SELECT x.id, s.u, CASE WHEN amba_bucket(x.key, s.u) < 0.5 THEN 'control' ELSE 'treatment' END, 1,
       timestamptz '2026-01-01 00:00+00' + s.g * interval '1 second'
  FROM (SELECT g, 'g' || g AS u, (g - 1) / :users + 1 AS e
          FROM generate_series(1, :experiments * :users) g) s
  JOIN amba.experiments x ON x.key = 'guard-' || lpad(s.e::text, 3, '0');

INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
SELECT experiment_id, user_id, assigned_at + interval '1 minute' FROM amba.assignments;

SELECT setseed(0.12);
-- purchases after the assignment; the treatment of every tenth experiment buys less
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT a.user_id, 'purchase', a.assigned_at + random() * interval '30 days',
       jsonb_build_object('amount', round((5 + random() * 95)::numeric, 2))
  FROM amba.assignments a JOIN amba.experiments x ON x.id = a.experiment_id
 WHERE random() < CASE WHEN a.variant = 'treatment' AND right(x.key, 1) = '0' THEN 0.2 ELSE 0.3 END;
-- errors, page views (other names) and purchases before the assignment (not counted)
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT a.user_id, 'error', a.assigned_at + random() * interval '30 days', NULL
  FROM amba.assignments a WHERE random() < 0.05;
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT a.user_id, 'page_view', a.assigned_at + random() * interval '30 days', '{"path": "/"}'
  FROM amba.assignments a, generate_series(1, 2);
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT a.user_id, 'purchase', a.assigned_at - interval '1 day', '{"amount": 50}'
  FROM amba.assignments a WHERE random() < 0.1;

DO $$
DECLARE d record;
BEGIN
    FOR d IN SELECT * FROM bulk_load_ddl ORDER BY rank LOOP
        EXECUTE d.ddl;
    END LOOP;
END $$;

VACUUM ANALYZE amba.experiments;
VACUUM ANALYZE amba.weight_versions;
VACUUM ANALYZE amba.assignments;
VACUUM ANALYZE amba.exposures;
VACUUM ANALYZE amba.events;
CHECKPOINT;
SELECT count(*) AS experiments, sum(n) AS exposed FROM (
    SELECT x.key, count(*) AS n FROM amba.exposures p JOIN amba.experiments x ON x.id = p.experiment_id
     WHERE x.key LIKE 'guard-%' AND x.status = 'active' AND x.guardrails IS NOT NULL GROUP BY x.key) s;
SELECT count(*) AS events FROM amba.events;
