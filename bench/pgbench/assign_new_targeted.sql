-- New user on a targeted experiment: amba_assign on `bench_t5`, whose targeting is a
-- condition of five clauses (see bench/run.sh, setup_targeted) that these attributes
-- satisfy, so every call evaluates it and enrols the user.
-- (No colon directly before a name in the JSON: pgbench would take it for a variable.)
\set u random(1, 2000000000)
SELECT amba_assign('bench_t5', :p::text || :u::text,
    '{"country": "DE", "platform": "ios", "version": "17.2.0", "logged_in": true, "age": 30}'::jsonb);
