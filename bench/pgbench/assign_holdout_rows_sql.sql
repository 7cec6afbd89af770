-- The table work a layered first assignment adds, done by PostgreSQL's executor: a plain
-- amba_assign on `bench_l0` (the baseline of assign_new_layered) plus the holdout's
-- assignment and exposure of the same user, inserted in the same statement (ON CONFLICT
-- DO NOTHING, as amba inserts a first assignment: random ids meet now and then; the exposure's
-- foreign key is checked at its end, by PostgreSQL's RI trigger). It measures what the rows
-- a holdout requires cost through the executor, beside the plain call; amba's layered call
-- inserts them without the executor's per-statement set-up, and also reads the holdout
-- first (see bench/run.sh, holdout_rows_sql, and BENCHMARKS.md).
\set u random(1, 2000000000)
WITH holdout_assignment AS (
    INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
    VALUES (:holdout_id, :p::text || :u::text, 'general', 1)
    ON CONFLICT DO NOTHING
    RETURNING experiment_id, user_id),
  holdout_exposure AS (
    INSERT INTO amba.exposures (experiment_id, user_id)
    SELECT experiment_id, user_id FROM holdout_assignment)
SELECT amba_assign('bench_l0', :p::text || :u::text);
