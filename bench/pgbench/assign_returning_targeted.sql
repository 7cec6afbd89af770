-- Returning user on a targeted experiment: amba_assign on `bench_t5` of a user assigned
-- already (the stored variant wins before the condition is looked at).
\set u random(1, :returning)
SELECT amba_assign('bench_t5', 'r' || :u::text,
    '{"country": "DE", "platform": "ios", "version": "17.2.0", "logged_in": true, "age": 30}'::jsonb);
