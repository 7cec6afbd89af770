-- Every error starts with its code; each code has a fixed SQLSTATE.
\pset null '(null)'

CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || '  ' || SQLERRM;
END $$;

SELECT amba_create_experiment('errors', '[{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]') IS NOT NULL AS created;

SELECT pg_temp.try(s) AS result FROM (VALUES
    -- EXPERIMENT_NOT_FOUND (P0002)
    ($$SELECT amba_assign('nope', 'u')$$),
    ($$SELECT amba_update_experiment('nope', status => 'paused')$$),
    ($$SELECT * FROM amba_results('nope', 'signup')$$),
    -- ASSIGNMENT_REQUIRED (P0002)
    ($$SELECT amba_expose('errors', 'never-assigned')$$),
    -- EXPERIMENT_EXISTS (23505)
    ($$SELECT amba_create_experiment('errors', '[{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]')$$),
    -- INVALID_ARGUMENT (22023)
    ($$SELECT amba_assign('errors', '')$$),
    ($$SELECT amba_assign('errors', NULL)$$),
    ($$SELECT amba_assign('bad key!', 'u')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "only", "weight": 1}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": "1"}, {"key": "b", "weight": 1}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": 1e999}, {"key": "b", "weight": 1}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": -1}, {"key": "b", "weight": 1}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": 0}, {"key": "b", "weight": 0}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": 1}, {"key": "a", "weight": 1}]')$$),
    ($$SELECT amba_create_experiment('x', '[{"key": "a", "weight": 1}, {"key": "b", "weight": 1}]', status => 'live')$$),
    ($$SELECT amba_update_experiment('errors', variants => '[{"key": "b", "weight": 1}, {"key": "control", "weight": 1}]')$$),
    ($$SELECT amba_track('u', 'signup', '[1, 2]')$$),
    ($$SELECT amba_track('u', E'sign\tup')$$),
    ($$SELECT amba_track('u', 'signup', NULL, 'infinity')$$),
    ($$SELECT * FROM amba_results('errors', 'signup', 1.5)$$),
    ($$SELECT amba_create_api_key('k', 'superuser')$$)
) AS t(s);

-- Removing a variant that has assignments is refused: set its weight to 0 instead.
SELECT amba_assign('errors', 'u' || g) AS variant, count(*) FROM generate_series(1, 20) g GROUP BY 1 ORDER BY 1;
SELECT pg_temp.try($$SELECT amba_update_experiment('errors', variants => '[{"key": "control", "weight": 1}]')$$) AS too_few;
SELECT pg_temp.try($$SELECT amba_update_experiment('errors', variants => '[{"key": "control", "weight": 1}, {"key": "c", "weight": 1}]')$$) AS removes_b;
SELECT pg_temp.try($$SELECT amba_update_experiment('errors', variants => '[{"key": "control", "weight": 1}, {"key": "b", "weight": 0}, {"key": "c", "weight": 1}]')$$) AS switches_b_off;

-- A new user on an experiment that is not active: EXPERIMENT_INACTIVE (55000).
SELECT amba_update_experiment('errors', status => 'ended') ->> 'status' AS status;
SELECT pg_temp.try($$SELECT amba_assign('errors', 'newcomer')$$) AS newcomer;

-- API key names are unique, revoked ones too: API_KEY_EXISTS (23505).
SELECT length(amba_create_api_key('mobile-app')) >= 32 AS long_enough;
SELECT amba_revoke_api_key('mobile-app') AS revoked;
SELECT pg_temp.try($$SELECT amba_create_api_key('mobile-app')$$) AS reused_name;

-- Scale-out needs Citus (docs/SCALE-OUT.md): without it, INVALID_ARGUMENT (22023).
SELECT pg_temp.try($$SELECT amba_distribute()$$) AS without_citus;

-- Nothing half-written remains after an error.
SELECT count(*) AS experiments FROM amba.experiments WHERE key = 'x';
