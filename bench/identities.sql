-- Identities present while the throughput cases run (CONTRACT 3d: the hot path must not
-- slow down for them): :aliases anonymous ids aliased to other users, and :overrides
-- overrides on the benchmark experiment itself (so every call there consults them).
\set ON_ERROR_STOP 1
INSERT INTO amba.aliases (anonymous_id, user_id)
SELECT 'anon' || g, 'member' || g FROM generate_series(1, :aliases) g;
INSERT INTO amba.overrides (experiment_id, user_id, variant)
SELECT e.id, 'qa' || g, 'treatment' FROM amba.experiments e, generate_series(1, :overrides) g
 WHERE e.key = 'bench';
UPDATE amba.experiments SET revision = revision + 1 WHERE key = 'bench';
VACUUM ANALYZE amba.aliases;
VACUUM ANALYZE amba.overrides;
