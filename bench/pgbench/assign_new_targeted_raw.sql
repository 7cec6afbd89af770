-- Baseline of assign_new_targeted: the same call on `bench_t0`, an identical experiment
-- without targeting (same variants, same overrides), with the same attributes.
\set u random(1, 2000000000)
SELECT amba_assign('bench_t0', :p::text || :u::text,
    '{"country": "DE", "platform": "ios", "version": "17.2.0", "logged_in": true, "age": 30}'::jsonb);
