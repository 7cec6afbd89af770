-- New user: amba_assign (finds `bench` by key, buckets, inserts, returns the variant).
\set u random(1, 2000000000)
SELECT amba_assign('bench', :p::text || :u::text);
