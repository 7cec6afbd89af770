-- Amba experiments: access control (grants, row-level security) and the PostgREST
-- surface, schema amba_api. Runs last in the extension script (finalize).

----------------------------------------------------------------------------------------
-- Grants. Nothing is reachable by PUBLIC; each role gets what CONTRACT section 4 says.
----------------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA amba FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA amba FROM PUBLIC;
GRANT USAGE ON SCHEMA amba TO amba_admin, amba_analyst, amba_client;
-- Calling anything in the extension's schema needs USAGE on it (CREATE EXTENSION amba SCHEMA s).
GRANT USAGE ON SCHEMA @extschema@ TO amba_admin, amba_analyst;

-- The public SQL API: no PUBLIC access; admins get all of it.
DO $api_grants$
DECLARE
    signature text;
BEGIN
    FOREACH signature IN ARRAY ARRAY[
        'amba_create_experiment(text, jsonb, text, text, text)',
        'amba_update_experiment(text, jsonb, text, text, text)',
        'amba_delete_experiment(text)', 'amba_get_experiment(text)', 'amba_list_experiments()',
        'amba_assign(text, text)', 'amba_expose(text, text)',
        'amba_track(text, text, jsonb, timestamptz)',
        'amba_results(text, text, double precision)', 'amba_bucket(text, text)',
        'amba_experiment_history(text)', 'amba_create_api_key(text, text)',
        'amba_revoke_api_key(text)']
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %I.%s FROM PUBLIC', '@extschema@', signature);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%s TO amba_admin', '@extschema@', signature);
    END LOOP;
END
$api_grants$;

-- Admins: everything.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA amba TO amba_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA amba TO amba_admin;

-- Analysts: read experiments and results, never write; API keys stay hidden.
GRANT SELECT ON amba.experiments, amba.weight_versions, amba.assignments, amba.exposures,
                amba.events, amba.experiment_history TO amba_analyst;
GRANT EXECUTE ON FUNCTION
    @extschema@.amba_get_experiment(text),
    @extschema@.amba_list_experiments(),
    @extschema@.amba_results(text, text, double precision),
    @extschema@.amba_bucket(text, text),
    @extschema@.amba_experiment_history(text),
    amba._check_experiment_key(text),
    amba._experiment_json(amba.experiments),
    amba._raise(text, text)
TO amba_analyst;

-- Clients: their own assignments and exposures, read-only; everything else goes through
-- the amba_api functions below.
GRANT SELECT ON amba.assignments, amba.exposures TO amba_client;

----------------------------------------------------------------------------------------
-- Row-level security on every table: a role that reaches a table sees only what it may.
----------------------------------------------------------------------------------------
-- The end user of an HTTP request (JWT `sub`); NULL elsewhere.
CREATE FUNCTION amba._request_user_id() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._jwt_sub()
$fn$;
GRANT EXECUTE ON FUNCTION amba._request_user_id(), amba._jwt_sub() TO amba_client;

DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['experiments', 'weight_versions', 'assignments', 'exposures',
                             'events', 'experiment_history', 'api_keys']
    LOOP
        EXECUTE format('ALTER TABLE amba.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY admin_all ON amba.%I TO amba_admin USING (true) WITH CHECK (true)', t);
        IF t <> 'api_keys' THEN
            EXECUTE format('CREATE POLICY analyst_read ON amba.%I FOR SELECT TO amba_analyst USING (true)', t);
        END IF;
    END LOOP;
END
$rls$;
CREATE POLICY client_own ON amba.assignments FOR SELECT TO amba_client
    USING (user_id = amba._request_user_id());
CREATE POLICY client_own ON amba.exposures FOR SELECT TO amba_client
    USING (user_id = amba._request_user_id());

----------------------------------------------------------------------------------------
-- The PostgREST surface: schema amba_api (PGRST_DB_SCHEMAS=amba_api).
----------------------------------------------------------------------------------------
CREATE SCHEMA amba_api;
COMMENT ON SCHEMA amba_api IS
'Amba experiments HTTP API. Every request carries X-Api-Key; client calls also carry the end user''s JWT (sub = user id, role = amba_client).';
GRANT USAGE ON SCHEMA amba_api TO PUBLIC;

-- Raises the error PostgREST turns into HTTP `status` with body {"code", "message"}; the
-- message begins with the code, as every contract error's does.
CREATE FUNCTION amba._http_error(status integer, code text, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF left(message, length(code) + 1) <> code || ':' THEN
        message := code || ': ' || message;
    END IF;
    RAISE SQLSTATE 'PGRST' USING
        message = json_build_object('code', code, 'message', message)::text,
        detail = json_build_object('status', status, 'headers', json_build_object())::text;
END
$fn$;

-- Re-raises a caught error: contract errors with their HTTP status, others unchanged
-- (PostgREST maps those SQLSTATEs itself).
CREATE FUNCTION amba._http_rethrow(state text, message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    code text := substring(message FROM '^([A-Z_]+):');
    status integer := CASE code
        WHEN 'EXPERIMENT_INACTIVE' THEN 409
        WHEN 'EXPERIMENT_EXISTS' THEN 409
        WHEN 'API_KEY_EXISTS' THEN 409
        WHEN 'ASSIGNMENT_REQUIRED' THEN 404
        WHEN 'EXPERIMENT_NOT_FOUND' THEN 404
        WHEN 'INVALID_ARGUMENT' THEN 400
    END;
BEGIN
    IF status IS NOT NULL THEN
        PERFORM amba._http_error(status, code, message);
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
END
$fn$;

-- The user id of a client call: always the JWT's `sub`, never a parameter.
CREATE FUNCTION amba._client_user_id() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    sub text := amba._jwt_sub();
BEGIN
    IF sub IS NULL OR sub = '' THEN
        PERFORM amba._http_error(403, 'FORBIDDEN', 'client calls need an end-user session token with a sub claim');
    END IF;
    RETURN sub;
END
$fn$;

CREATE FUNCTION amba_api.pre_request() RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    headers jsonb := coalesce(nullif(current_setting('request.headers', true), '')::jsonb, '{}'::jsonb);
    api_key text := headers ->> 'x-api-key';
    -- request.path is the raw path, while PostgREST routes on the percent-decoded one
    -- (/rpc/experiments%5Fcreate calls experiments_create): match on the decoded path.
    path text := coalesce((
        SELECT convert_from(string_agg(CASE WHEN m[1] IS NULL THEN convert_to(m[2], 'UTF8')
                                            ELSE decode(substr(m[1], 2), 'hex') END,
                                       ''::bytea ORDER BY n), 'UTF8')
          FROM regexp_matches(current_setting('request.path', true),
                              '(%[0-9A-Fa-f]{2})|([^%]+|%)', 'g') WITH ORDINALITY AS t(m, n)), '');
    request_role text := current_setting('role');
    key_row amba.api_keys;
BEGIN
    IF api_key IS NULL OR api_key = '' THEN
        PERFORM amba._http_error(401, 'API_KEY_REQUIRED', 'the X-Api-Key header is required');
    END IF;
    SELECT * INTO key_row FROM amba.api_keys k WHERE k.key_hash = sha256(convert_to(api_key, 'UTF8'));
    IF key_row.name IS NULL OR key_row.revoked_at IS NOT NULL THEN
        PERFORM amba._http_error(401, 'API_KEY_INVALID', 'the API key is unknown or revoked');
    END IF;

    IF path ~ '^/rpc/experiments_' THEN
        IF key_row.kind <> 'admin' OR request_role <> 'amba_admin' THEN
            PERFORM amba._http_error(403, 'FORBIDDEN',
                'admin endpoints need an admin API key and the amba_admin role');
        END IF;
    END IF;
    -- The admin role acts only with an admin key, whatever the path.
    IF request_role = 'amba_admin' AND key_row.kind <> 'admin' THEN
        PERFORM amba._http_error(403, 'FORBIDDEN', 'the amba_admin role needs an admin API key');
    END IF;
    IF path IN ('/rpc/assign', '/rpc/expose', '/rpc/track', '/my_assignments') THEN
        IF request_role <> 'amba_client' THEN
            PERFORM amba._http_error(403, 'FORBIDDEN',
                'client endpoints need an end-user session token (role amba_client)');
        END IF;
    END IF;
    -- Attributes changes in the experiment history to this key.
    PERFORM set_config('amba.api_key_name', key_row.name, true);
END
$fn$;
COMMENT ON FUNCTION amba_api.pre_request() IS
'PostgREST pre-request hook (PGRST_DB_PRE_REQUEST=amba_api.pre_request): rejects a missing (401 API_KEY_REQUIRED), unknown or revoked (401 API_KEY_INVALID) X-Api-Key, and a client key or role on an admin endpoint (403 FORBIDDEN).';
GRANT EXECUTE ON FUNCTION amba_api.pre_request() TO PUBLIC;

-- Client endpoints ----------------------------------------------------------------------

CREATE FUNCTION amba_api.assign(experiment_key text) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    RETURN json_build_object('experiment_key', experiment_key,
                             'variant', @extschema@.amba_assign(experiment_key, user_id));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.assign(text) IS
'Returns the session user''s sticky variant, assigning one on the first call. 404 EXPERIMENT_NOT_FOUND; 409 EXPERIMENT_INACTIVE for a new user when the experiment is not active.';

CREATE FUNCTION amba_api.expose(experiment_key text) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    RETURN json_build_object('experiment_key', experiment_key,
                             'variant', @extschema@.amba_expose(experiment_key, user_id));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.expose(text) IS
'Records that the session user saw their variant (the first time is kept) and returns it. 404 ASSIGNMENT_REQUIRED before assign.';

CREATE FUNCTION amba_api.track(event text, properties jsonb DEFAULT NULL) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    RETURN json_build_object('event', event,
                             'occurred_at', @extschema@.amba_track(user_id, event, properties, NULL));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.track(text, jsonb) IS
'Records an event (a conversion) for the session user, now. properties: a JSON object of at most 64 KiB, or null.';

CREATE VIEW amba_api.my_assignments WITH (security_barrier) AS
    SELECT e.key AS experiment_key, a.variant, a.assigned_at, x.exposed_at
      FROM amba.assignments a
      JOIN amba.experiments e ON e.id = a.experiment_id
      LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
     WHERE a.user_id = amba._request_user_id();
COMMENT ON VIEW amba_api.my_assignments IS
'The session user''s assignments: experiment_key, variant, assigned_at, exposed_at (null until exposed).';
GRANT SELECT ON amba_api.my_assignments TO amba_client;

GRANT EXECUTE ON FUNCTION amba_api.assign(text), amba_api.expose(text), amba_api.track(text, jsonb)
    TO amba_client;

-- Admin endpoints (security invoker: they run with amba_admin's own rights) --------------

CREATE FUNCTION amba_api.experiments_create(
    experiment_key text, variants jsonb, name text DEFAULT NULL,
    description text DEFAULT NULL, status text DEFAULT 'active') RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN @extschema@.amba_create_experiment(experiment_key, variants, name, description, status);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_create(text, jsonb, text, text, text) IS
'Creates an experiment. variants: [{"key":"control","weight":50},{"key":"treatment","weight":50}], control first. 409 EXPERIMENT_EXISTS, 400 INVALID_ARGUMENT.';

CREATE FUNCTION amba_api.experiments_list() RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM @extschema@.amba_list_experiments();
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_list() IS 'Lists all experiments, oldest first.';

CREATE FUNCTION amba_api.experiments_get(experiment_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    found jsonb;
BEGIN
    BEGIN
        found := @extschema@.amba_get_experiment(experiment_key);
    EXCEPTION WHEN OTHERS THEN
        PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
    END;
    IF found IS NULL THEN
        PERFORM amba._http_error(404, 'EXPERIMENT_NOT_FOUND',
            format('EXPERIMENT_NOT_FOUND: experiment %s does not exist', to_json(experiment_key)));
    END IF;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_get(text) IS 'One experiment. 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_update(
    experiment_key text, variants jsonb DEFAULT NULL, status text DEFAULT NULL,
    name text DEFAULT NULL, description text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN @extschema@.amba_update_experiment(experiment_key, variants, status, name, description);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_update(text, jsonb, text, text, text) IS
'Re-weights, adds variants, changes status (draft, active, paused, ended) or renames. Existing assignments never change; a variant with assignments cannot be removed. 404 EXPERIMENT_NOT_FOUND, 400 INVALID_ARGUMENT.';

CREATE FUNCTION amba_api.experiments_delete(experiment_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    deleted boolean;
BEGIN
    BEGIN
        deleted := @extschema@.amba_delete_experiment(experiment_key);
    EXCEPTION WHEN OTHERS THEN
        PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
    END;
    IF NOT deleted THEN
        PERFORM amba._http_error(404, 'EXPERIMENT_NOT_FOUND',
            format('EXPERIMENT_NOT_FOUND: experiment %s does not exist', to_json(experiment_key)));
    END IF;
    RETURN true;
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_delete(text) IS
'Deletes an experiment with its assignments and exposures (events stay). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_results(
    experiment_key text, conversion_event text, alpha double precision DEFAULT 0.05)
RETURNS TABLE (variant text, is_control boolean, assigned_count bigint, exposed_count bigint,
               converted_count bigint, conversion_rate double precision, z_score double precision,
               p_value double precision, lift double precision, lift_ci_low double precision,
               lift_ci_high double precision, chance_to_win double precision,
               p_value_holm double precision, sequential_p_value double precision,
               srm_p_value double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM @extschema@.amba_results(experiment_key, conversion_event, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_results(text, text, double precision) IS
'Per-variant results for a conversion event, control first: counts, conversion_rate, z_score and two-sided p_value against the control, relative lift with its (1 - alpha) interval, chance_to_win, Holm-adjusted p-value, always-valid sequential p-value, and the sample-ratio-mismatch p-value (below 0.001: do not trust the results). 404 EXPERIMENT_NOT_FOUND.';

GRANT EXECUTE ON FUNCTION
    amba_api.experiments_create(text, jsonb, text, text, text),
    amba_api.experiments_list(),
    amba_api.experiments_get(text),
    amba_api.experiments_update(text, jsonb, text, text, text),
    amba_api.experiments_delete(text),
    amba_api.experiments_results(text, text, double precision)
TO amba_admin;
REVOKE EXECUTE ON FUNCTION amba_api.assign(text), amba_api.expose(text), amba_api.track(text, jsonb),
    amba_api.experiments_create(text, jsonb, text, text, text), amba_api.experiments_list(),
    amba_api.experiments_get(text), amba_api.experiments_update(text, jsonb, text, text, text),
    amba_api.experiments_delete(text), amba_api.experiments_results(text, text, double precision)
FROM PUBLIC;

-- Helpers created after the blanket grants above.
REVOKE ALL ON FUNCTION amba._request_user_id(), amba._http_error(integer, text, text),
    amba._http_rethrow(text, text), amba._client_user_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION amba._request_user_id(), amba._jwt_sub() TO amba_client, amba_admin, amba_analyst;
GRANT EXECUTE ON FUNCTION amba._http_error(integer, text, text), amba._http_rethrow(text, text)
    TO amba_admin;
