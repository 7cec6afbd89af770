-- Floor for a new user: the same table work in one statement, knowing the experiment id
-- and weight version already and picking the variant client-side:
-- insert on conflict do nothing, then read the stored variant back if it was there.
\set u random(1, 2000000000)
\set v random(1, 2)
WITH ins AS (
    INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version)
    VALUES (:eid, :p::text || :u::text, (ARRAY['control', 'treatment'])[:v::int], 1)
    ON CONFLICT (experiment_id, user_id) DO NOTHING
    RETURNING variant)
SELECT variant FROM ins
UNION ALL
SELECT variant FROM amba.assignments WHERE experiment_id = :eid AND user_id = :p::text || :u::text
LIMIT 1;
