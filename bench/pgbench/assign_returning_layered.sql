-- Returning user on a layered experiment behind a holdout: amba_assign on `bench_l` of a
-- user who has been through it already (setup_layered assigns r1 .. r<returning> with
-- amba_assign itself): released users (95%) find their stored variant; held-out users
-- (5%) have none there and are held out again by their stored holdout assignment.
\set u random(1, :returning)
SELECT amba_assign('bench_l', 'r' || :u::text);
