-- Floor for an exposure: look the assignment up, insert the exposure on conflict do
-- nothing, return the variant; one statement, the experiment id known.
\set n :n + 1
\set i :client_id * :expose_pool + permute(:n % :expose_pool, :expose_pool)
WITH assigned AS (
    SELECT variant FROM amba.assignments WHERE experiment_id = :eid AND user_id = :p::text || :i::text),
exposed AS (
    INSERT INTO amba.exposures (experiment_id, user_id)
    SELECT :eid, :p::text || :i::text FROM assigned
    ON CONFLICT (experiment_id, user_id) DO NOTHING)
SELECT variant FROM assigned;
