-- New user on a layered experiment behind a holdout: amba_assign on `bench_l`, which owns
-- the whole of layer `bench_layer` (share 1) and names the holdout `bench_lh` (5% held
-- out; see bench/run.sh, setup_layered). Every call checks the layer bucket, then assigns
-- and exposes the user in the holdout, then (95%) assigns them in `bench_l`; held-out
-- users get NULL.
\set u random(1, 2000000000)
SELECT amba_assign('bench_l', :p::text || :u::text);
