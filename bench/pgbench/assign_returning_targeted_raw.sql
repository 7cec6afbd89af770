-- Baseline of assign_returning_targeted: the same call on `bench_t0`, an identical
-- experiment without targeting, whose returning users are assigned likewise.
\set u random(1, :returning)
SELECT amba_assign('bench_t0', 'r' || :u::text,
    '{"country": "DE", "platform": "ios", "version": "17.2.0", "logged_in": true, "age": 30}'::jsonb);
