-- Exposure of an assigned, not yet exposed user: amba_expose. Each client walks its own
-- block of the run's pool in a pseudo-random order (n counts this client's transactions).
\set n :n + 1
\set i :client_id * :expose_pool + permute(:n % :expose_pool, :expose_pool)
SELECT amba_expose('bench', :p::text || :i::text);
