-- Amba experiments: access control (SPEC §4 and §8). Runs last in the extension script
-- (finalize), once every table and function exists. Nothing is reachable by PUBLIC; each
-- role gets what the contract says, and row-level security on every table lets a role
-- that reaches a table directly see only what it may.

REVOKE ALL ON ALL TABLES IN SCHEMA amba FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA amba FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA amba_api FROM PUBLIC;
GRANT USAGE ON SCHEMA amba TO amba_admin, amba_analyst, amba_client, amba_owner;
GRANT USAGE ON SCHEMA amba_api TO PUBLIC;
-- Calling anything in the extension's schema needs USAGE on it (CREATE EXTENSION amba SCHEMA s).
GRANT USAGE ON SCHEMA @extschema@ TO amba_admin, amba_analyst;

----------------------------------------------------------------------------------------
-- The public SQL API. @extschema@ is substituted already quoted ("App-1"), so it is
-- spliced with %s, never %I.
----------------------------------------------------------------------------------------
DO $api_grants$
DECLARE
    signature text;
    analyst_signatures text[] := ARRAY[
        'amba_get_experiment(text)', 'amba_list_experiments()',
        'amba_results(text, text, double precision)',
        'amba_metric_results(text, text, text, double precision, double precision, double precision, integer)',
        'amba_results_daily(text, text, double precision)', 'amba_report(text, text)',
        'amba_bucket(text, text)', 'amba_experiment_history(text)',
        'amba_layer_bucket(text, text)', 'amba_list_layers()', 'amba_eval_condition(jsonb, jsonb)',
        'amba_results_by(text, text, text, double precision)', 'amba_bandit_results(text)',
        'amba_ratio_results(text, text, text, text, text, double precision)',
        'amba_quantile_results(text, text, text, double precision, double precision)'];
BEGIN
    FOREACH signature IN ARRAY analyst_signatures || ARRAY[
        'amba_create_experiment(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb)',
        'amba_update_experiment(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb)',
        'amba_delete_experiment(text)',
        'amba_assign(text, text, jsonb)', 'amba_expose(text, text)', 'amba_peek(text, text, jsonb)',
        'amba_track(text, text, jsonb, timestamptz)',
        'amba_set_override(text, text, text)', 'amba_clear_override(text, text)',
        'amba_list_overrides(text)', 'amba_alias(text, text)',
        'amba_create_api_key(text, text)', 'amba_revoke_api_key(text)',
        'amba_check_guardrails(text)', 'amba_bandit_update(text, bigint)']
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s.%s FROM PUBLIC', '@extschema@', signature);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.%s TO amba_admin', '@extschema@', signature);
    END LOOP;
    FOREACH signature IN ARRAY analyst_signatures LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.%s TO amba_analyst', '@extschema@', signature);
    END LOOP;
END
$api_grants$;

----------------------------------------------------------------------------------------
-- Table and function privileges
----------------------------------------------------------------------------------------
-- Admins: everything, except that the audit trail is append-only (SPEC §8).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA amba TO amba_admin;
REVOKE UPDATE, DELETE, TRUNCATE ON amba.experiment_history FROM amba_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA amba TO amba_admin;

-- Analysts: read experiments and results, never write; API keys stay hidden.
GRANT SELECT ON amba.experiments, amba.weight_versions, amba.assignments, amba.exposures,
                amba.events, amba.experiment_history, amba.overrides, amba.aliases,
                amba.assignment_dimensions TO amba_analyst;
GRANT EXECUTE ON FUNCTION
    amba._get_experiment(text), amba._list_experiments(), amba._experiment_history(text),
    amba._results(text, text, double precision),
    amba._metric_results(text, text, text, double precision, double precision, double precision, integer),
    amba._results_daily(text, text, double precision), amba._report(text, text),
    amba._check_experiment_key(text), amba._experiment_json(amba.experiments),
    amba._raise(text, text), amba._not_found(text), amba._list_layers(),
    amba._results_by(text, text, text, double precision), amba._bandit_results(text),
    amba._ratio_results(text, text, text, text, text, double precision),
    amba._quantile_results(text, text, text, double precision, double precision),
    amba._guardrail_status(text)
TO amba_analyst;

-- Clients: their own assignments and exposures, read-only; everything else goes through
-- the amba_api functions.
GRANT SELECT ON amba.assignments, amba.exposures TO amba_client;
GRANT EXECUTE ON FUNCTION amba._request_user_id(), amba._jwt_sub() TO amba_client, amba_analyst;

-- amba_owner owns the SECURITY DEFINER functions: it gets only what they do.
GRANT SELECT ON amba.experiments, amba.weight_versions, amba.overrides, amba.aliases, amba.api_keys
    TO amba_owner;
GRANT SELECT, INSERT ON amba.assignments, amba.exposures, amba.assignment_dimensions TO amba_owner;
GRANT INSERT ON amba.events TO amba_owner;
GRANT EXECUTE ON FUNCTION
    amba._assign(text, text, jsonb), amba._expose(text, text), amba._peek(text, text, jsonb),
    amba._track(text, text, jsonb, timestamptz),
    amba._client_user_id(), amba._jwt_sub(), amba._request_user_id(), amba._decoded_request_path(),
    amba._http_error(integer, text, text), amba._http_rethrow(text, text), amba._http_status(text),
    amba._propagate_request_settings()
TO amba_owner;
ALTER FUNCTION amba_api.pre_request() OWNER TO amba_owner;
ALTER FUNCTION amba_api.assign(text, jsonb) OWNER TO amba_owner;
ALTER FUNCTION amba_api.expose(text) OWNER TO amba_owner;
ALTER FUNCTION amba_api.track(text, jsonb) OWNER TO amba_owner;
ALTER FUNCTION amba_api.peek(text, jsonb) OWNER TO amba_owner;

----------------------------------------------------------------------------------------
-- The PostgREST surface
----------------------------------------------------------------------------------------
GRANT EXECUTE ON FUNCTION amba_api.pre_request() TO PUBLIC;
GRANT EXECUTE ON FUNCTION amba_api.assign(text, jsonb), amba_api.expose(text), amba_api.track(text, jsonb),
    amba_api.peek(text, jsonb)
TO amba_client;
GRANT SELECT ON amba_api.my_assignments TO amba_client;
ALTER FUNCTION amba._my_assignments() OWNER TO amba_owner;
GRANT EXECUTE ON FUNCTION amba._my_assignments() TO amba_client;
GRANT EXECUTE ON FUNCTION
    amba_api.experiments_create(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb),
    amba_api.experiments_list(),
    amba_api.experiments_list_layers(),
    amba_api.experiments_get(text),
    amba_api.experiments_update(text, jsonb, text, text, text, jsonb, double precision, text, double precision, text, jsonb, text[], jsonb),
    amba_api.experiments_check_guardrails(text),
    amba_api.experiments_bandit_update(text, bigint),
    amba_api.experiments_bandit_results(text),
    amba_api.experiments_delete(text),
    amba_api.experiments_results(text, text, double precision),
    amba_api.experiments_results_by(text, text, text, double precision),
    amba_api.experiments_ratio_results(text, text, text, text, text, double precision),
    amba_api.experiments_quantile_results(text, text, text, double precision, double precision),
    amba_api.experiments_metric_results(text, text, text, double precision, double precision, double precision, integer),
    amba_api.experiments_results_daily(text, text, double precision),
    amba_api.experiments_report(text, text),
    amba_api.overrides_set(text, text, text),
    amba_api.overrides_clear(text, text),
    amba_api.overrides_list(text),
    amba_api.users_alias(text, text)
TO amba_admin;

----------------------------------------------------------------------------------------
-- Row-level security on every table.
----------------------------------------------------------------------------------------
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['experiments', 'weight_versions', 'assignments', 'exposures',
                             'events', 'experiment_history', 'api_keys', 'overrides', 'aliases',
                             'assignment_dimensions']
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE amba.%I ENABLE ROW LEVEL SECURITY', t);
        IF t = 'experiment_history' THEN
            -- Append-only: read and add, never change (no UPDATE/DELETE policy or grant).
            EXECUTE 'CREATE POLICY admin_read ON amba.experiment_history FOR SELECT TO amba_admin USING (true)';
            EXECUTE 'CREATE POLICY admin_append ON amba.experiment_history FOR INSERT TO amba_admin WITH CHECK (true)';
        ELSE
            EXECUTE pg_catalog.format('CREATE POLICY admin_all ON amba.%I TO amba_admin USING (true) WITH CHECK (true)', t);
        END IF;
        IF t <> 'api_keys' THEN
            EXECUTE pg_catalog.format('CREATE POLICY analyst_read ON amba.%I FOR SELECT TO amba_analyst USING (true)', t);
        END IF;
        IF t IN ('experiments', 'weight_versions', 'assignments', 'exposures', 'overrides', 'aliases', 'api_keys',
                 'assignment_dimensions') THEN
            EXECUTE pg_catalog.format('CREATE POLICY owner_read ON amba.%I FOR SELECT TO amba_owner USING (true)', t);
        END IF;
        IF t IN ('assignments', 'exposures', 'events', 'assignment_dimensions') THEN
            EXECUTE pg_catalog.format('CREATE POLICY owner_insert ON amba.%I FOR INSERT TO amba_owner WITH CHECK (true)', t);
        END IF;
    END LOOP;
END
$rls$;
CREATE POLICY client_own ON amba.assignments FOR SELECT TO amba_client
    USING (user_id = amba._request_user_id());
CREATE POLICY client_own ON amba.exposures FOR SELECT TO amba_client
    USING (user_id = amba._request_user_id());
