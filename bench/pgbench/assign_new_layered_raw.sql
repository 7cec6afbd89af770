-- Baseline of assign_new_layered: the same call on `bench_l0`, a plain experiment (same
-- variants, same overrides; no layer, no holdout).
\set u random(1, 2000000000)
SELECT amba_assign('bench_l0', :p::text || :u::text);
