-- Data for amba_results at scale, generated in bulk. psql variable n: assigned users.
--   experiment `results`, two variants; the first n/2 users assigned under 50/50
--   (weight version 1), the rest after a re-weight to 40/60 (version 2)
--   n/2 users exposed (every even user), a minute after their assignment
--   5n events of three kinds (10% `purchase`, the conversion, with an `amount`), from 1.2n
--   users (so some are not in the experiment), spread over :days days (default 45) from the
--   start of the experiment's assignments, which take the first two thirds of them (so
--   some events come before their user's assignment), in time order
-- Loaded before indexing, as a bulk load should be: the three tables' indexes and
-- constraints are read from the catalog, dropped, and re-created from those same
-- definitions after the rows are in (sorted builds instead of 65n random-order btree
-- inserts: minutes instead of half an hour at n = 10M). Nothing about the tables changes.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
\if :{?days}
\else
\set days 45
\endif
TRUNCATE amba.assignment_dimensions, amba.exposures, amba.assignments, amba.events;
SELECT amba_delete_experiment('results') IS NOT NULL AS deleted \gset
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

-- One dimension (SPEC §13), `platform`, stored with every assignment as amba_assign would
-- store it: amba_results_by's data.
SELECT amba_update_experiment('results', dimensions => '{platform}') IS NOT NULL AS dims \gset
INSERT INTO amba.assignment_dimensions (experiment_id, user_id, dimension_values)
SELECT experiment_id, user_id,
       jsonb_build_object('platform', (ARRAY['ios', 'android', 'web'])[1 + substr(user_id, 2)::bigint % 3])
  FROM amba.assignments WHERE experiment_id = :rid;

-- Event times: uniform over the span and in time order, drawn as one random time inside
-- each of 5n equal slots (order statistics of a uniform sample, without sorting 5n rows).
SELECT setseed(0.42);
INSERT INTO amba.events (user_id, event, occurred_at, properties)
SELECT 'u' || (1 + floor(random() * (:n * 1.2)))::bigint,
       CASE WHEN r < 0.1 THEN 'purchase' WHEN r < 0.3 THEN 'add_to_cart' ELSE 'page_view' END,
       timestamptz '2026-01-01 00:00+00' + (g - 1 + random()) * (interval '1 day' * :days / (5 * :n)),
       CASE WHEN r < 0.1 THEN jsonb_build_object('amount', (r * 1000)::int) END
  FROM (SELECT g, random() AS r FROM generate_series(1, 5 * :n) g) s;

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
VACUUM ANALYZE amba.assignment_dimensions;
CHECKPOINT;
