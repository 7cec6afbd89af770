-- Amba experiments: the PostgREST surface, schema amba_api (PGRST_DB_SCHEMAS=amba_api).
-- Functions here only translate: they call amba's internals (schema `amba`, which only the
-- extension controls) with exactly typed arguments, and turn contract errors into
-- PostgREST's HTTP errors. Grants are in access.sql.

CREATE SCHEMA amba_api;
COMMENT ON SCHEMA amba_api IS
'Amba experiments HTTP API. Every request carries X-Api-Key; client calls also carry the end user''s JWT (sub = user id, role = amba_client).';

-- The end user of an HTTP request (JWT `sub`); NULL elsewhere.
CREATE FUNCTION amba._request_user_id() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._jwt_sub()
$fn$;

-- Raises the error PostgREST turns into HTTP `status` with body {"code", "message"}; the
-- message begins with the code, as every contract error's does.
CREATE FUNCTION amba._http_error(status integer, code text, message text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF left(message, length(code) + 1) <> code || ':' THEN
        message := code || ': ' || message;
    END IF;
    RAISE SQLSTATE 'PGRST' USING
        message = json_build_object('code', code, 'message', message)::text,
        detail = json_build_object('status', status, 'headers', json_build_object())::text;
END
$fn$;

-- Re-raises a caught error: contract errors with their HTTP status (the core's error
-- table, through amba._http_status), others unchanged (PostgREST maps those SQLSTATEs).
CREATE FUNCTION amba._http_rethrow(state text, message text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    status integer := amba._http_status(message);
BEGIN
    IF status IS NOT NULL THEN
        PERFORM amba._http_error(status, substring(message FROM '^([A-Z_]+):'), message);
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
END
$fn$;

CREATE FUNCTION amba._http_not_found(experiment_key text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._http_error(404, 'EXPERIMENT_NOT_FOUND'::text,
                            format('experiment %s does not exist', to_json($1)))
$fn$;

-- The user id of a client call: always the JWT's `sub`, never a parameter.
CREATE FUNCTION amba._client_user_id() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    sub text := amba._jwt_sub();
BEGIN
    IF sub IS NULL OR sub = '' THEN
        PERFORM amba._http_error(403, 'FORBIDDEN'::text,
            'client calls need an end-user session token with a sub claim'::text);
    END IF;
    RETURN sub;
END
$fn$;

-- request.path is the raw path, while PostgREST routes on the percent-decoded one
-- (/rpc/experiments%5Fcreate calls experiments_create): match on the decoded path.
CREATE FUNCTION amba._decoded_request_path() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce((
        SELECT convert_from(string_agg(CASE WHEN m[1] IS NULL THEN convert_to(m[2], 'UTF8')
                                            ELSE decode(substr(m[1], 2), 'hex') END,
                                       ''::bytea ORDER BY n), 'UTF8')
          FROM regexp_matches(current_setting('request.path', true),
                              '(%[0-9A-Fa-f]{2})|([^%]+|%)', 'g') WITH ORDINALITY AS t(m, n)), '')
$fn$;

-- On Citus (SPEC §9) workers evaluate the row-level security of the rows they hold, and
-- read the JWT claims there. PostgREST sets them with set_config, which stays on the
-- coordinator; Citus passes SET LOCAL commands on to the workers of the transaction.
CREATE FUNCTION amba._propagate_request_settings() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    SET LOCAL citus.propagate_set_commands = 'local';
    EXECUTE pg_catalog.format('SET LOCAL request.jwt.claims = %L',
                              coalesce(current_setting('request.jwt.claims', true), ''));
END
$fn$;

CREATE FUNCTION amba_api.pre_request() RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    headers jsonb := coalesce(nullif(pg_catalog.current_setting('request.headers'::text, true), ''::text)::jsonb,
                              '{}'::jsonb);
    api_key text := headers ->> 'x-api-key'::text;
    path text := amba._decoded_request_path();
    request_role text := pg_catalog.current_setting('role'::text);
    key_row amba.api_keys;
BEGIN
    IF api_key IS NULL OR api_key = ''::text THEN
        PERFORM amba._http_error(401, 'API_KEY_REQUIRED'::text, 'the X-Api-Key header is required'::text);
    END IF;
    SELECT * INTO key_row FROM amba.api_keys k WHERE k.key_hash = pg_catalog.sha256(pg_catalog.convert_to(api_key, 'UTF8'::name));
    IF key_row.name IS NULL OR key_row.revoked_at IS NOT NULL THEN
        PERFORM amba._http_error(401, 'API_KEY_INVALID'::text, 'the API key is unknown or revoked'::text);
    END IF;

    IF path ~ '^/rpc/(experiments|overrides|users)_'::text THEN
        IF key_row.kind <> 'admin'::text OR request_role <> 'amba_admin'::text THEN
            PERFORM amba._http_error(403, 'FORBIDDEN'::text,
                'admin endpoints need an admin API key and the amba_admin role'::text);
        END IF;
    END IF;
    -- The admin role acts only with an admin key, whatever the path.
    IF request_role = 'amba_admin'::text AND key_row.kind <> 'admin'::text THEN
        PERFORM amba._http_error(403, 'FORBIDDEN'::text, 'the amba_admin role needs an admin API key'::text);
    END IF;
    IF path IN ('/rpc/assign'::text, '/rpc/expose'::text, '/rpc/track'::text, '/rpc/peek'::text,
                '/my_assignments'::text) THEN
        IF request_role <> 'amba_client'::text THEN
            PERFORM amba._http_error(403, 'FORBIDDEN'::text,
                'client endpoints need an end-user session token (role amba_client)'::text);
        END IF;
    END IF;
    -- Attributes changes in the experiment history to this key.
    PERFORM pg_catalog.set_config('amba.api_key_name'::text, key_row.name, true);
    IF pg_catalog.current_setting('citus.propagate_set_commands'::text, true) IS NOT NULL THEN
        PERFORM amba._propagate_request_settings();
    END IF;
END
$fn$;
COMMENT ON FUNCTION amba_api.pre_request() IS
'PostgREST pre-request hook (PGRST_DB_PRE_REQUEST=amba_api.pre_request): rejects a missing (401 API_KEY_REQUIRED), unknown or revoked (401 API_KEY_INVALID) X-Api-Key, and a client key or role on an admin endpoint (403 FORBIDDEN).';

-- Client endpoints (SECURITY DEFINER, owned by amba_owner: the user id comes from the
-- token, so the client role itself never gets rights on the tables) ---------------------

CREATE FUNCTION amba_api.assign(experiment_key text, attributes jsonb DEFAULT NULL) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    RETURN pg_catalog.json_build_object('experiment_key'::text, experiment_key,
                                        'variant'::text, amba._assign(experiment_key, user_id, attributes));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.assign(text, jsonb) IS
'Returns the session user''s sticky variant, assigning one on the first call. attributes: an optional JSON object the experiment''s targeting is checked against; "variant": null when the user is not enrolled (targeting or coverage). 404 EXPERIMENT_NOT_FOUND; 409 EXPERIMENT_INACTIVE for a new user when the experiment is not active.';

CREATE FUNCTION amba_api.expose(experiment_key text) RETURNS json
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    RETURN pg_catalog.json_build_object('experiment_key'::text, experiment_key,
                                        'variant'::text, amba._expose(experiment_key, user_id));
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
    RETURN pg_catalog.json_build_object('event'::text, event,
                                        'occurred_at'::text, amba._track(user_id, event, properties, NULL::timestamptz));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.track(text, jsonb) IS
'Records an event (a conversion) for the session user, now. properties: a JSON object of at most 64 KiB, or null.';

CREATE FUNCTION amba_api.peek(experiment_key text, attributes jsonb DEFAULT NULL) RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    user_id text := amba._client_user_id();
BEGIN
    -- GET /rpc/peek?attributes=...: PostgREST passes every query parameter as a JSON string
    -- (v12 Plan/CallPlan.hs jsonRpcParams, then json_to_record), so the object arrives as a
    -- jsonb string holding its JSON text. Read it; text that is not JSON stays a string,
    -- which amba._peek rejects (INVALID_ARGUMENT).
    IF pg_catalog.jsonb_typeof(attributes) = 'string'::text THEN
        BEGIN
            attributes := (attributes #>> '{}'::text[])::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            NULL;
        END;
    END IF;
    RETURN pg_catalog.json_build_object('experiment_key'::text, experiment_key,
                                        'variant'::text, amba._peek(experiment_key, user_id, attributes));
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.peek(text, jsonb) IS
'The session user''s variant without enrolling them: their override or assignment, else the variant they would get now (active experiments, if targeting and coverage enrol them with these attributes), else null. Writes nothing. 404 EXPERIMENT_NOT_FOUND.';

-- The view reads through a SECURITY DEFINER function that takes the user from the token
-- itself: on Citus (SPEC §9) the workers run a query's parts as the role that runs it,
-- so a view that joined the tables directly would reach them as amba_client.
CREATE FUNCTION amba._my_assignments()
RETURNS TABLE (experiment_key text, variant text, assigned_at timestamptz, exposed_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT e.key, a.variant, a.assigned_at, x.exposed_at
      FROM amba.assignments a
      JOIN amba.experiments e ON e.id = a.experiment_id
      LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
     WHERE a.user_id = amba._request_user_id()
$fn$;

CREATE VIEW amba_api.my_assignments WITH (security_barrier) AS
    SELECT m.experiment_key, m.variant, m.assigned_at, m.exposed_at FROM amba._my_assignments() m;
COMMENT ON VIEW amba_api.my_assignments IS
'The session user''s assignments: experiment_key, variant, assigned_at, exposed_at (null until exposed).';

-- Admin endpoints (security invoker: they run with amba_admin's own rights) --------------

CREATE FUNCTION amba_api.experiments_create(
    experiment_key text, variants jsonb, name text DEFAULT NULL,
    description text DEFAULT NULL, status text DEFAULT 'active',
    targeting jsonb DEFAULT NULL, coverage double precision DEFAULT NULL,
    layer text DEFAULT NULL, layer_share double precision DEFAULT NULL,
    holdout text DEFAULT NULL, guardrails jsonb DEFAULT NULL,
    dimensions text[] DEFAULT NULL, bandit jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._create_experiment(experiment_key, variants, name, description, status,
                                   targeting, coverage, layer, layer_share, holdout, guardrails,
                                   dimensions, bandit);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_create(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb) IS
'Creates an experiment. variants: [{"key":"control","weight":50},{"key":"treatment","weight":50}], control first. targeting: a GrowthBook condition on user attributes (null: everyone); coverage: the share of eligible users enrolled, 0 to 1 (default 1). layer, layer_share: a layer of mutually exclusive experiments and this one''s share of it (placed by amba). holdout: the key of a holdout experiment users pass through first. guardrails: [{"event","value_property","kind":"conversion"|"mean","bad":"decrease"|"increase","tolerance","alpha"}], checked by experiments_check_guardrails, which pauses the experiment when one trips. dimensions: up to 5 attribute paths stored with each first assignment, for experiments_results_by. bandit: {"event","kind":"conversion"|"mean","value_property","min_weight","min_users"}: experiments_bandit_update moves traffic to the winner. 409 EXPERIMENT_EXISTS, 400 INVALID_ARGUMENT.';

CREATE FUNCTION amba_api.experiments_list_layers()
RETURNS TABLE (layer text, experiment_key text, status text,
               range_start double precision, range_end double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._list_layers();
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_list_layers() IS
'Every layer''s ranges in order: the experiments that are not ended, each [range_start, range_end), and the free gaps (experiment_key null).';

-- The check with contract errors turned into HTTP ones (404 EXPERIMENT_NOT_FOUND, 400
-- INVALID_ARGUMENT; P0002 would otherwise be a 500). PL/pgSQL, so it can catch them; its
-- argument is named apart from the output column, which PL/pgSQL refuses to share.
CREATE FUNCTION amba._http_check_guardrails(key text)
RETURNS TABLE (experiment_key text, guardrail integer, variant text, lift double precision,
               cs_low double precision, cs_high double precision, tripped boolean,
               paused boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._check_guardrails(key);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;

CREATE FUNCTION amba_api.experiments_check_guardrails(experiment_key text DEFAULT NULL)
RETURNS TABLE (experiment_key text, guardrail integer, variant text, lift double precision,
               cs_low double precision, cs_high double precision, tripped boolean,
               paused boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._http_check_guardrails($1) $fn$;
COMMENT ON FUNCTION amba_api.experiments_check_guardrails(text) IS
'Judges the guardrails of every active experiment (or of experiment_key) with an always-valid interval of the relative lift, and pauses an experiment a guardrail trips (audit action auto_pause; NOTIFY amba). Rows: experiment_key, guardrail (index), variant, lift, cs_low, cs_high, tripped, paused (this call paused it). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_bandit_update(experiment_key text, seed bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._bandit_update(experiment_key, seed);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_bandit_update(text, bigint) IS
'Sets a bandit experiment''s new weights (top-two Thompson sampling on period-weighted estimates, with the floor min_weight) as a new weight version: nobody assigned moves. {"updated": false, "reason": ...} until every arm has min_users exposed users. 404 EXPERIMENT_NOT_FOUND, 400 INVALID_ARGUMENT when the experiment is not a bandit.';

CREATE FUNCTION amba_api.experiments_bandit_results(experiment_key text)
RETURNS TABLE (variant text, is_control boolean, exposed_count bigint, mean double precision,
               ci_low double precision, ci_high double precision,
               best_arm_probability double precision, weight double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._bandit_results(experiment_key);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_bandit_results(text) IS
'A bandit''s arms: exposed users, the period-weighted mean with its 95% posterior interval, the probability of being best, and the weight in force now (its share). 404 EXPERIMENT_NOT_FOUND, 400 INVALID_ARGUMENT when the experiment is not a bandit.';

CREATE FUNCTION amba_api.experiments_list() RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._list_experiments();
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_list() IS 'Lists all experiments, oldest first.';

CREATE FUNCTION amba_api.experiments_get(experiment_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    found jsonb;
BEGIN
    BEGIN
        found := amba._get_experiment(experiment_key);
    EXCEPTION WHEN OTHERS THEN
        PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
    END;
    IF found IS NULL THEN
        PERFORM amba._http_not_found(experiment_key);
    END IF;
    RETURN found;
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_get(text) IS 'One experiment. 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_update(
    experiment_key text, variants jsonb DEFAULT NULL, status text DEFAULT NULL,
    name text DEFAULT NULL, description text DEFAULT NULL,
    targeting jsonb DEFAULT NULL, coverage double precision DEFAULT NULL,
    layer text DEFAULT NULL, layer_share double precision DEFAULT NULL,
    holdout text DEFAULT NULL, guardrails jsonb DEFAULT NULL,
    dimensions text[] DEFAULT NULL, bandit jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._update_experiment(experiment_key, variants, status, name, description,
                                   targeting, coverage, layer, layer_share, holdout, guardrails,
                                   dimensions, bandit);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_update(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb) IS
'Re-weights, adds variants, changes status (draft, active, paused, ended), targeting ({} removes it) or coverage, or renames. Existing assignments never change; a variant with assignments cannot be removed. 404 EXPERIMENT_NOT_FOUND, 400 INVALID_ARGUMENT.';

CREATE FUNCTION amba_api.experiments_delete(experiment_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    deleted boolean;
BEGIN
    BEGIN
        deleted := amba._delete_experiment(experiment_key);
    EXCEPTION WHEN OTHERS THEN
        PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
    END;
    IF NOT deleted THEN
        PERFORM amba._http_not_found(experiment_key);
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
    RETURN QUERY SELECT * FROM amba._results(experiment_key, conversion_event, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_results(text, text, double precision) IS
'Per-variant results for a conversion event, control first: counts, conversion_rate, z_score and two-sided p_value against the control, relative lift with its (1 - alpha) interval, chance_to_win, Holm-adjusted p-value, always-valid sequential p-value, and the sample-ratio-mismatch p-value (below 0.001: do not trust the results). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_ratio_results(
    experiment_key text, numerator_event text, numerator_property text DEFAULT NULL,
    denominator_event text DEFAULT NULL, denominator_property text DEFAULT NULL,
    alpha double precision DEFAULT 0.05)
RETURNS TABLE (variant text, is_control boolean, exposed_count bigint,
               numerator_sum double precision, denominator_sum double precision,
               ratio double precision, delta double precision, delta_ci_low double precision,
               delta_ci_high double precision, p_value double precision,
               p_value_holm double precision, lift double precision,
               lift_ci_low double precision, lift_ci_high double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._ratio_results(experiment_key, numerator_event,
        numerator_property, denominator_event, denominator_property, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_ratio_results(text, text, text, text, text, double precision) IS
'A ratio metric per variant (sum of the numerator over the sum of the denominator per exposed user: a count of the event, or the sum of its property), against the control by the delta method: delta with its interval, p_value, Holm, relative lift with its interval. 400 INVALID_ARGUMENT, 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_quantile_results(
    experiment_key text, event text, value_property text, quantile double precision,
    alpha double precision DEFAULT 0.05)
RETURNS TABLE (variant text, is_control boolean, exposed_count bigint, event_count bigint,
               quantile_value double precision, delta double precision,
               delta_ci_low double precision, delta_ci_high double precision,
               p_value double precision, p_value_holm double precision, lift double precision,
               lift_ci_low double precision, lift_ci_high double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._quantile_results(experiment_key, event, value_property,
        quantile, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_quantile_results(text, text, text, double precision, double precision) IS
'A quantile (0 < quantile < 1, e.g. 0.9) of the event''s value_property per variant, against the control (gbstats'' clustered quantile test): delta with its interval, p_value, Holm, relative lift with its interval. 400 INVALID_ARGUMENT, 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_results_by(
    experiment_key text, conversion_event text, dimension text, alpha double precision DEFAULT 0.05)
RETURNS TABLE (dimension_value text, variant text, is_control boolean, assigned_count bigint,
               exposed_count bigint, converted_count bigint, conversion_rate double precision,
               z_score double precision, p_value double precision, lift double precision,
               lift_ci_low double precision, lift_ci_high double precision,
               chance_to_win double precision, p_value_holm double precision,
               sequential_p_value double precision, srm_p_value double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._results_by(experiment_key, conversion_event, dimension, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_results_by(text, text, text, double precision) IS
'experiments_results per value of one of the experiment''s dimensions (values ascending, users without the attribute last as null), every variant on each value; p_value_holm is adjusted over every comparison of the call. 400 INVALID_ARGUMENT for a dimension the experiment does not have; 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_metric_results(
    experiment_key text, event text, value_property text DEFAULT NULL,
    alpha double precision DEFAULT 0.05, cap double precision DEFAULT NULL,
    cap_percentile double precision DEFAULT NULL, cuped_days integer DEFAULT NULL)
RETURNS TABLE (variant text, is_control boolean, exposed_count bigint, mean double precision,
               stddev double precision, delta double precision, delta_ci_low double precision,
               delta_ci_high double precision, p_value double precision,
               p_value_holm double precision, lift double precision,
               lift_ci_low double precision, lift_ci_high double precision,
               cuped_theta double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._metric_results(experiment_key, event, value_property, alpha,
                                                    cap, cap_percentile, cuped_days);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_metric_results(text, text, text, double precision, double precision, double precision, integer) IS
'Per-variant mean metric (event count, or the sum of a numeric property) per exposed user: mean, stddev, absolute delta and relative lift vs the control with Welch intervals and p-values, Holm, optional capping (cap or cap_percentile) and CUPED (cuped_days). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.experiments_results_daily(
    experiment_key text, conversion_event text, alpha double precision DEFAULT 0.05)
RETURNS TABLE (day date, variant text, is_control boolean, exposed_count bigint,
               converted_count bigint, conversion_rate double precision, lift double precision,
               lift_ci_low double precision, lift_ci_high double precision,
               p_value double precision, sequential_p_value double precision,
               lift_cs_low double precision, lift_cs_high double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._results_daily(experiment_key, conversion_event, alpha);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.experiments_results_daily(text, text, double precision) IS
'The results as they stood at the end of each UTC day (cumulative), with the always-valid interval of the lift (lift_cs_low/high). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.overrides_set(experiment_key text, user_id text, variant text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._set_override(experiment_key, user_id, variant);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.overrides_set(text, text, text) IS
'Forces a user''s variant (QA, demos): nothing is recorded for them and results leave them out. 404 EXPERIMENT_NOT_FOUND, 400 INVALID_ARGUMENT.';

CREATE FUNCTION amba_api.overrides_clear(experiment_key text, user_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._clear_override(experiment_key, user_id);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.overrides_clear(text, text) IS
'Removes a user''s override (true if there was one). 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.overrides_list(experiment_key text)
RETURNS TABLE (user_id text, variant text, set_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN QUERY SELECT * FROM amba._list_overrides(experiment_key);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.overrides_list(text) IS 'The experiment''s overrides. 404 EXPERIMENT_NOT_FOUND.';

CREATE FUNCTION amba_api.users_alias(anonymous_id text, user_id text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN amba._alias(anonymous_id, user_id);
EXCEPTION WHEN OTHERS THEN
    PERFORM amba._http_rethrow(SQLSTATE, SQLERRM);
END
$fn$;
COMMENT ON FUNCTION amba_api.users_alias(text, text) IS
'Makes user_id the identity of the visitor known as anonymous_id (e.g. at login): assignments, exposures and events move; where both have an assignment the earlier one is kept. 400 INVALID_ARGUMENT.';
