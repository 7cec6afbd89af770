-- The users of one exposure run: x<slot>_0 .. x<slot>_<clients * pool - 1>, assigned to
-- `bench` and not exposed, so the run exposes fresh users (each client walks its own block
-- of `pool` users). psql variables: slot, clients, pool.
\set ON_ERROR_STOP 1
SELECT id AS eid FROM amba.experiments WHERE key = 'bench' \gset
INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
SELECT :eid, u, CASE WHEN amba_bucket('bench', u) < 0.5 THEN 'control' ELSE 'treatment' END, 1
  FROM (SELECT 'x' || :slot || '_' || g AS u FROM generate_series(0, :clients * :pool - 1) g) s;
VACUUM amba.assignments;
