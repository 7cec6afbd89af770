-- Fixtures for the throughput cases, loaded once into a fresh database.
--   experiment `bench`: two variants, 50/50
--   returning users r1 .. r<returning>: assigned already (with the variant amba_assign
--     would pick), so amba_assign and the floor read the same rows
-- (each exposure run gets its own fresh users from expose_pool.sql)
-- psql variable: returning
\set ON_ERROR_STOP 1
SELECT amba_create_experiment('bench',
    '[{"key": "control", "weight": 50}, {"key": "treatment", "weight": 50}]') IS NOT NULL AS created \gset
SELECT id AS eid FROM amba.experiments WHERE key = 'bench' \gset

INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
SELECT :eid, u, CASE WHEN amba_bucket('bench', u) < 0.5 THEN 'control' ELSE 'treatment' END, 1
  FROM (SELECT 'r' || g AS u FROM generate_series(1, :returning) g) s;

VACUUM ANALYZE amba.experiments;
VACUUM ANALYZE amba.weight_versions;
VACUUM ANALYZE amba.assignments;
VACUUM ANALYZE amba.exposures;
VACUUM ANALYZE amba.events;
CHECKPOINT;
