-- Amba experiments: the SQL API that is not on the hot path (experiments CRUD, audit
-- trail, events, API keys), as plpgsql over the Rust validators in schema amba.
-- Hot-path functions (amba_assign, amba_expose, amba_track, amba_results, amba_bucket) are Rust.

-- Every change to amba.experiments tells all backends to drop their cached definitions.
CREATE FUNCTION amba._experiments_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM amba._invalidate_relcache(TG_RELID);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER invalidate_experiment_cache
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON amba.experiments
    FOR EACH STATEMENT EXECUTE FUNCTION amba._experiments_changed();

-- The experiment as the API returns it.
CREATE FUNCTION amba._experiment_json(e amba.experiments) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT jsonb_build_object(
        'key', e.key,
        'name', e.name,
        'description', e.description,
        'status', e.status,
        'variants', (SELECT jsonb_agg(jsonb_build_object('key', k, 'weight', w) ORDER BY i)
                     FROM unnest(e.variant_keys, e.weights) WITH ORDINALITY AS v(k, w, i)),
        'weight_version', e.weight_version,
        'created_at', e.created_at,
        'updated_at', e.updated_at)
$fn$;

-- The end user behind an HTTP request: the JWT's `sub`, NULL outside PostgREST.
CREATE FUNCTION amba._jwt_sub() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT nullif(nullif(current_setting('request.jwt.claims', true), ''), 'null')::jsonb ->> 'sub'
$fn$;

-- Who made a change: the login role, the role it acts as, and the end user (JWT sub).
CREATE FUNCTION amba._actor() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT session_user::text
        || CASE WHEN current_setting('role') NOT IN ('none', '')
                 AND current_setting('role') <> session_user::text
                THEN ' as ' || current_setting('role') ELSE '' END
        || coalesce(' (sub ' || amba._jwt_sub() || ')', '')
$fn$;

CREATE FUNCTION amba._audit(experiment_key text, action text, before jsonb, after jsonb) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
    INSERT INTO amba.experiment_history
        (experiment_key, changed_by, api_key_name, jwt_sub, action, before, after)
    VALUES ($1, amba._actor(), nullif(current_setting('amba.api_key_name', true), ''),
            amba._jwt_sub(), $2, $3, $4)
$fn$;

CREATE FUNCTION amba._check_text(what text, value text, max_length integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF value IS NOT NULL AND char_length(value) > max_length THEN
        PERFORM amba._raise('INVALID_ARGUMENT',
            format('%s is %s characters long; at most %s are allowed', what, char_length(value), max_length));
    END IF;
END
$fn$;

-- Validates a variants array (Rust, core::validate) and splits it into keys and weights.
CREATE FUNCTION amba._variant_arrays(variants jsonb, OUT keys text[], OUT weights double precision[])
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT array_agg(v ->> 'key' ORDER BY i), array_agg((v ->> 'weight')::double precision ORDER BY i)
      FROM jsonb_array_elements(amba._normalize_variants(variants::text)) WITH ORDINALITY AS t(v, i)
$fn$;

CREATE FUNCTION @extschema@.amba_create_experiment(
    experiment_key text,
    variants jsonb,
    name text DEFAULT NULL,
    description text DEFAULT NULL,
    status text DEFAULT 'active'
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    new_keys text[];
    new_weights double precision[];
    created amba.experiments;
    result jsonb;
BEGIN
    PERFORM amba._check_experiment_key(amba_create_experiment.experiment_key);
    SELECT * INTO new_keys, new_weights FROM amba._variant_arrays(amba_create_experiment.variants);
    PERFORM amba._check_status(amba_create_experiment.status);
    PERFORM amba._check_text('name', amba_create_experiment.name, 256);
    PERFORM amba._check_text('description', amba_create_experiment.description, 10000);

    INSERT INTO amba.experiments AS e (key, name, description, status, variant_keys, weights)
    VALUES (amba_create_experiment.experiment_key, amba_create_experiment.name,
            amba_create_experiment.description, amba_create_experiment.status, new_keys, new_weights)
    ON CONFLICT (key) DO NOTHING
    RETURNING e.* INTO created;
    IF created.id IS NULL THEN
        PERFORM amba._raise('EXPERIMENT_EXISTS',
            format('experiment %s already exists', to_json(amba_create_experiment.experiment_key)));
    END IF;
    INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights)
    VALUES (created.id, created.weight_version, new_keys, new_weights);

    result := amba._experiment_json(created);
    PERFORM amba._audit(created.key, 'create', NULL, result);
    RETURN result;
END
$fn$;

CREATE FUNCTION @extschema@.amba_update_experiment(
    experiment_key text,
    variants jsonb DEFAULT NULL,
    status text DEFAULT NULL,
    name text DEFAULT NULL,
    description text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    new_keys text[];
    new_weights double precision[];
    current_row amba.experiments;
    updated amba.experiments;
    assigned_removed text[];
    new_version integer;
    before jsonb;
    after jsonb;
BEGIN
    PERFORM amba._check_experiment_key(amba_update_experiment.experiment_key);
    IF amba_update_experiment.status IS NOT NULL THEN
        PERFORM amba._check_status(amba_update_experiment.status);
    END IF;
    PERFORM amba._check_text('name', amba_update_experiment.name, 256);
    PERFORM amba._check_text('description', amba_update_experiment.description, 10000);
    IF amba_update_experiment.variants IS NOT NULL THEN
        SELECT * INTO new_keys, new_weights FROM amba._variant_arrays(amba_update_experiment.variants);
    END IF;

    -- FOR UPDATE conflicts with the KEY SHARE lock a first assignment takes, so a variant
    -- removal and a first assignment to that variant are serialized.
    SELECT * INTO current_row FROM amba.experiments e
     WHERE e.key = amba_update_experiment.experiment_key FOR UPDATE;
    IF current_row.id IS NULL THEN
        PERFORM amba._raise('EXPERIMENT_NOT_FOUND',
            format('experiment %s does not exist', to_json(amba_update_experiment.experiment_key)));
    END IF;
    before := amba._experiment_json(current_row);
    new_version := current_row.weight_version;

    IF new_keys IS NOT NULL THEN
        assigned_removed := ARRAY(
            SELECT k FROM unnest(current_row.variant_keys) AS k
             WHERE k <> ALL (new_keys)
               AND EXISTS (SELECT 1 FROM amba.assignments a
                            WHERE a.experiment_id = current_row.id AND a.variant = k));
        PERFORM amba._check_variant_update(current_row.variant_keys, new_keys, assigned_removed);
        IF new_keys IS DISTINCT FROM current_row.variant_keys
           OR new_weights IS DISTINCT FROM current_row.weights THEN
            new_version := current_row.weight_version + 1;
            INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights)
            VALUES (current_row.id, new_version, new_keys, new_weights);
        END IF;
    END IF;

    UPDATE amba.experiments e SET
        status = coalesce(amba_update_experiment.status, e.status),
        name = coalesce(amba_update_experiment.name, e.name),
        description = coalesce(amba_update_experiment.description, e.description),
        variant_keys = coalesce(new_keys, e.variant_keys),
        weights = coalesce(new_weights, e.weights),
        weight_version = new_version,
        revision = e.revision + 1,
        updated_at = now()
     WHERE e.id = current_row.id
    RETURNING e.* INTO updated;

    after := amba._experiment_json(updated);
    PERFORM amba._audit(updated.key, 'update', before, after);
    RETURN after;
END
$fn$;

CREATE FUNCTION @extschema@.amba_delete_experiment(experiment_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    current_row amba.experiments;
BEGIN
    PERFORM amba._check_experiment_key(amba_delete_experiment.experiment_key);
    SELECT * INTO current_row FROM amba.experiments e
     WHERE e.key = amba_delete_experiment.experiment_key FOR UPDATE;
    IF current_row.id IS NULL THEN
        RETURN false;
    END IF;
    -- Assignments, exposures and weight versions go with it (ON DELETE CASCADE).
    DELETE FROM amba.experiments e WHERE e.id = current_row.id;
    PERFORM amba._audit(current_row.key, 'delete', amba._experiment_json(current_row), NULL);
    RETURN true;
END
$fn$;

CREATE FUNCTION @extschema@.amba_get_experiment(experiment_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM amba._check_experiment_key(amba_get_experiment.experiment_key);
    RETURN (SELECT amba._experiment_json(e) FROM amba.experiments e
             WHERE e.key = amba_get_experiment.experiment_key);
END
$fn$;

CREATE FUNCTION @extschema@.amba_list_experiments() RETURNS SETOF jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._experiment_json(e) FROM amba.experiments e ORDER BY e.id
$fn$;

CREATE FUNCTION @extschema@.amba_experiment_history(experiment_key text)
RETURNS TABLE (changed_at timestamptz, changed_by text, api_key_name text,
               action text, before jsonb, after jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM amba._check_experiment_key(amba_experiment_history.experiment_key);
    RETURN QUERY
        SELECT h.changed_at, h.changed_by, h.api_key_name, h.action, h.before, h.after
          FROM amba.experiment_history h
         WHERE h.experiment_key = amba_experiment_history.experiment_key
         ORDER BY h.history_id;
END
$fn$;

-- amba_track(user_id, event, properties, occurred_at) is on the hot path: it is Rust
-- (src/assign.rs), one prepared insert with the validation done in Rust.

CREATE FUNCTION @extschema@.amba_create_api_key(name text, kind text DEFAULT 'client') RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    plaintext text;
BEGIN
    IF amba_create_api_key.name IS NULL OR amba_create_api_key.name = ''
       OR char_length(amba_create_api_key.name) > 128
       OR amba_create_api_key.name ~ '[[:cntrl:]]' THEN
        PERFORM amba._raise('INVALID_ARGUMENT',
            'an API key name must be 1 to 128 characters without control characters');
    END IF;
    IF amba_create_api_key.kind IS NULL OR amba_create_api_key.kind NOT IN ('client', 'admin') THEN
        PERFORM amba._raise('INVALID_ARGUMENT',
            format('API key kind must be client or admin, not %s', coalesce(to_json(amba_create_api_key.kind)::text, 'NULL')));
    END IF;
    -- 256 random bits, URL-safe base64 without padding: amba_ + 43 characters.
    plaintext := 'amba_' || rtrim(translate(encode(amba._random_bytes(32), 'base64'), E'+/\n', '-_'), '=');
    INSERT INTO amba.api_keys (name, kind, key_hash)
    VALUES (amba_create_api_key.name, amba_create_api_key.kind, sha256(convert_to(plaintext, 'UTF8')))
    ON CONFLICT ON CONSTRAINT api_keys_pkey DO NOTHING;
    IF NOT FOUND THEN
        PERFORM amba._raise('API_KEY_EXISTS',
            format('an API key named %s exists already (revoked names stay taken)', to_json(amba_create_api_key.name)));
    END IF;
    RETURN plaintext;
END
$fn$;

CREATE FUNCTION @extschema@.amba_revoke_api_key(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF amba_revoke_api_key.name IS NULL THEN
        PERFORM amba._raise('INVALID_ARGUMENT', 'name must not be NULL');
    END IF;
    UPDATE amba.api_keys k SET revoked_at = now()
     WHERE k.name = amba_revoke_api_key.name AND k.revoked_at IS NULL;
    RETURN FOUND;
END
$fn$;
