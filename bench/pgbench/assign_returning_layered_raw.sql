-- Baseline of assign_returning_layered: the same call on `bench_l0`, a plain experiment
-- whose returning users were assigned likewise.
\set u random(1, :returning)
SELECT amba_assign('bench_l0', 'r' || :u::text);
