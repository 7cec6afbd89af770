-- Amba experiments: the SQL API that is not on the hot path (experiments, overrides,
-- aliases, audit trail, API keys). Each function is an internal in schema `amba`, which
-- only the extension controls, with a thin public wrapper in the extension's schema; the
-- HTTP surface calls the internals. Every call between amba's functions is schema-qualified
-- with argument types that match exactly (SPEC §8). Validation rules are Rust
-- (amba._check_*: the core's validators).
-- Hot-path functions (assign, expose, peek, track, bucket) and the results are Rust.

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
        'bucketing_version', e.bucketing_version,
        'targeting', e.targeting,
        'coverage', e.coverage,
        'layer', CASE WHEN e.layer IS NOT NULL THEN jsonb_build_object(
                     'key', e.layer, 'start', e.layer_start, 'end', e.layer_start + e.layer_share) END,
        'holdout', (SELECT h.key FROM amba.experiments h WHERE h.id = e.holdout_id),
        'guardrails', e.guardrails,
        'dimensions', to_jsonb(e.dimensions),
        'bandit', e.bandit,
        'created_at', e.created_at,
        'updated_at', e.updated_at)
$fn$;

-- The end user behind an HTTP request: the JWT's `sub`, NULL outside PostgREST.
-- Whether amba's tables are distributed by Citus (SPEC §9, sql/distribute.sql): their
-- truncate trigger (Citus's on the coordinator, amba's marker on the workers) says so, as it
-- does to the Rust fast paths (src/direct.rs).
CREATE FUNCTION amba._distributed() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = 'amba.assignments'::regclass AND t.tgtype & 32 <> 0)
$fn$;

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

-- Validates a variants array (Rust, core::validate) and splits it into keys and weights.
CREATE FUNCTION amba._variant_arrays(variants jsonb, OUT keys text[], OUT weights double precision[])
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT array_agg(v ->> 'key' ORDER BY i), array_agg((v ->> 'weight')::double precision ORDER BY i)
      FROM jsonb_array_elements(amba._normalize_variants(variants::text)) WITH ORDINALITY AS t(v, i)
$fn$;

-- Layers (SPEC §11) ----------------------------------------------------------------------
-- The start of a range of width `share` in `layer`: the lowest free gap that fits, among the
-- ranges of the layer's experiments that are not ended (other than `own_id`), read in the
-- latest snapshot under the layer's lock (held to the end of the transaction), so two
-- experiments placed at once never overlap, in any isolation level.
CREATE FUNCTION amba._place_in_layer(layer text, share double precision, own_id bigint)
RETURNS double precision
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    taken text[];
    range_text text;
    range_start double precision;
    free_from double precision := 0;
BEGIN
    -- 'ambl': the layers' advisory lock space (src/locks.rs has 'amba' and 'ambu').
    PERFORM pg_advisory_xact_lock(1634558572, hashtext(_place_in_layer.layer));
    taken := amba._select_fresh(
        'SELECT x.layer_start::text || '' '' || (x.layer_start + x.layer_share)::text
           FROM amba.experiments x
          WHERE x.layer = $1 AND x.status <> ''ended'' AND x.layer_start IS NOT NULL
            AND x.id <> $2::bigint
          ORDER BY x.layer_start'::text,
        ARRAY[_place_in_layer.layer, coalesce(_place_in_layer.own_id, 0)::text]);
    FOREACH range_text IN ARRAY taken LOOP
        range_start := split_part(range_text, ' ', 1)::double precision;
        -- A gap between two ranges fits only if the range's computed end does not pass
        -- the next start: ranges stay disjoint also in floating point.
        IF free_from + _place_in_layer.share <= range_start
           AND free_from + _place_in_layer.share > free_from THEN
            RETURN free_from;
        END IF;
        free_from := greatest(free_from, split_part(range_text, ' ', 2)::double precision);
    END LOOP;
    -- The last gap, up to 1 (rounding of the shares' sum tolerated: no user's bucket is 1).
    -- A range starts below 1 and is not empty in floating point (a share too small to
    -- move its start would hold nobody).
    IF free_from < 1 AND free_from + _place_in_layer.share > free_from
       AND free_from + _place_in_layer.share <= 1 + 1e-12 THEN
        RETURN free_from;
    END IF;
    PERFORM amba._raise('INVALID_ARGUMENT'::text,
        format('layer full: layer %s has no free range of width %s among its experiments that are not ended',
               to_json(_place_in_layer.layer), _place_in_layer.share));
    RETURN NULL;
END
$fn$;

-- A layer key is written like an experiment key; its share is in (0, 1] (default 1), and
-- only with a layer.
CREATE FUNCTION amba._check_layer(layer text, layer_share double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF _check_layer.layer IS NULL THEN
        IF _check_layer.layer_share IS NOT NULL THEN
            PERFORM amba._raise('INVALID_ARGUMENT'::text, 'layer_share needs a layer'::text);
        END IF;
        RETURN;
    END IF;
    IF _check_layer.layer !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            'layer must be 1 to 128 characters of A-Z, a-z, 0-9, _ . : -'::text);
    END IF;
    IF _check_layer.layer_share IS NOT NULL
       AND NOT (_check_layer.layer_share > 0 AND _check_layer.layer_share <= 1) THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('layer_share must be greater than 0 and at most 1, not %s', _check_layer.layer_share));
    END IF;
END
$fn$;

-- The holdout named by `holdout` for experiment `own_key` (SPEC §11): its id, after the
-- rules: it exists, is not the experiment itself, and names no holdout itself.
CREATE FUNCTION amba._holdout_id(own_key text, holdout text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    found amba.experiments;
BEGIN
    IF _holdout_id.holdout IS NULL THEN
        RETURN NULL;
    END IF;
    IF _holdout_id.holdout = _holdout_id.own_key THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text, 'an experiment cannot be its own holdout'::text);
    END IF;
    -- Share-locked, as a foreign key check locks its row: a concurrent update giving the
    -- holdout a holdout of its own, or a delete, is waited for and then seen (READ
    -- COMMITTED), or is a serialization failure (REPEATABLE READ).
    SELECT * INTO found FROM amba.experiments e WHERE e.key = _holdout_id.holdout FOR SHARE;
    IF found.id IS NULL THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('holdout %s: no such experiment', to_json(_holdout_id.holdout)));
    END IF;
    IF found.holdout_id IS NOT NULL THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('holdout %s names a holdout itself; a holdout cannot be held out', to_json(_holdout_id.holdout)));
    END IF;
    RETURN found.id;
END
$fn$;

CREATE FUNCTION amba._not_found(experiment_key text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._raise('EXPERIMENT_NOT_FOUND'::text, format('experiment %s does not exist', to_json($1)))
$fn$;

----------------------------------------------------------------------------------------
-- Experiments
----------------------------------------------------------------------------------------
CREATE FUNCTION amba._create_experiment(
    experiment_key text, variants jsonb, name text, description text, status text,
    targeting jsonb, coverage double precision, layer text, layer_share double precision,
    holdout text, guardrails jsonb, dimensions text[], bandit jsonb
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    new_keys text[];
    new_weights double precision[];
    created amba.experiments;
    result jsonb;
    share double precision := _create_experiment.layer_share;
    start_at double precision;
    new_holdout_id bigint;
BEGIN
    PERFORM amba._check_experiment_key(_create_experiment.experiment_key);
    SELECT * INTO new_keys, new_weights FROM amba._variant_arrays(_create_experiment.variants);
    PERFORM amba._check_status(_create_experiment.status);
    PERFORM amba._check_texts(_create_experiment.name, _create_experiment.description);
    PERFORM amba._check_coverage(_create_experiment.coverage);
    PERFORM amba._normalize_targeting(_create_experiment.targeting);
    PERFORM amba._normalize_guardrails(_create_experiment.guardrails::text);
    -- A two-dimensional array would reach the Rust check flattened.
    IF array_ndims(_create_experiment.dimensions) > 1 THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            'dimensions must be a one-dimensional array of attribute paths'::text);
    END IF;
    PERFORM amba._normalize_dimensions(_create_experiment.dimensions);
    PERFORM amba._normalize_bandit(_create_experiment.bandit::text, new_weights);
    PERFORM amba._check_layer(_create_experiment.layer, share);
    IF _create_experiment.layer IS NOT NULL THEN
        share := coalesce(share, 1);
    END IF;
    new_holdout_id := amba._holdout_id(_create_experiment.experiment_key, _create_experiment.holdout);
    IF _create_experiment.layer IS NOT NULL AND _create_experiment.status <> 'ended' THEN
        start_at := amba._place_in_layer(_create_experiment.layer, share, NULL::bigint);
    END IF;

    INSERT INTO amba.experiments AS e (key, name, description, status, variant_keys, weights,
                                       targeting, coverage, layer, layer_share, layer_start,
                                       holdout_id, guardrails, dimensions, bandit)
    VALUES (_create_experiment.experiment_key, _create_experiment.name,
            _create_experiment.description, _create_experiment.status, new_keys, new_weights,
            amba._normalize_targeting(_create_experiment.targeting),
            coalesce(_create_experiment.coverage, 1), _create_experiment.layer, share, start_at,
            new_holdout_id, amba._normalize_guardrails(_create_experiment.guardrails::text),
            amba._normalize_dimensions(_create_experiment.dimensions),
            amba._normalize_bandit(_create_experiment.bandit::text, new_weights))
    ON CONFLICT (key) DO NOTHING
    RETURNING e.* INTO created;
    IF created.id IS NULL THEN
        PERFORM amba._raise('EXPERIMENT_EXISTS'::text,
            format('experiment %s already exists', to_json(_create_experiment.experiment_key)));
    END IF;
    INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights)
    VALUES (created.id, created.weight_version, new_keys, new_weights);

    result := amba._experiment_json(created);
    PERFORM amba._audit(created.key, 'create'::text, NULL::jsonb, result);
    RETURN result;
END
$fn$;

CREATE FUNCTION amba._update_experiment(
    experiment_key text, variants jsonb, status text, name text, description text,
    targeting jsonb, coverage double precision, layer text, layer_share double precision,
    holdout text, guardrails jsonb, dimensions text[], bandit jsonb
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    new_keys text[];
    new_weights double precision[];
    current_row amba.experiments;
    updated amba.experiments;
    removed text[];
    removed_key text;
    in_use text[] := '{}';
    new_version integer;
    before jsonb;
    after jsonb;
    start_at double precision;
    new_holdout_id bigint;
BEGIN
    PERFORM amba._check_experiment_key(_update_experiment.experiment_key);
    IF _update_experiment.status IS NOT NULL THEN
        PERFORM amba._check_status(_update_experiment.status);
    END IF;
    PERFORM amba._check_texts(_update_experiment.name, _update_experiment.description);
    PERFORM amba._check_coverage(_update_experiment.coverage);
    -- Validated before anything is read or written; '{}' removes the condition.
    PERFORM amba._normalize_targeting(_update_experiment.targeting);
    PERFORM amba._normalize_guardrails(_update_experiment.guardrails::text);
    -- A two-dimensional array would reach the Rust check flattened.
    IF array_ndims(_update_experiment.dimensions) > 1 THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            'dimensions must be a one-dimensional array of attribute paths'::text);
    END IF;
    PERFORM amba._normalize_dimensions(_update_experiment.dimensions);
    IF _update_experiment.variants IS NOT NULL THEN
        SELECT * INTO new_keys, new_weights FROM amba._variant_arrays(_update_experiment.variants);
    END IF;

    SELECT * INTO current_row FROM amba.experiments e
     WHERE e.key = _update_experiment.experiment_key FOR UPDATE;
    IF current_row.id IS NULL THEN
        PERFORM amba._not_found(_update_experiment.experiment_key);
    END IF;
    before := amba._experiment_json(current_row);
    new_version := current_row.weight_version;
    -- A layer and its share are chosen at create (SPEC §11).
    IF (_update_experiment.layer IS NOT NULL AND _update_experiment.layer IS DISTINCT FROM current_row.layer)
       OR (_update_experiment.layer_share IS NOT NULL
           AND _update_experiment.layer_share IS DISTINCT FROM current_row.layer_share) THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            'layer and layer_share are set when the experiment is created and cannot change'::text);
    END IF;
    new_holdout_id := current_row.holdout_id;
    IF _update_experiment.holdout IS NOT NULL THEN
        -- '' removes the holdout.
        new_holdout_id := amba._holdout_id(current_row.key, nullif(_update_experiment.holdout, ''));
        IF new_holdout_id IS NOT NULL AND EXISTS (SELECT 1 FROM amba.experiments x WHERE x.holdout_id = current_row.id) THEN
            PERFORM amba._raise('INVALID_ARGUMENT'::text,
                format('experiment %s is a holdout of other experiments; a holdout cannot be held out',
                       to_json(current_row.key)));
        END IF;
    END IF;
    -- Ending frees the range; leaving 'ended' places the experiment again.
    start_at := current_row.layer_start;
    IF current_row.layer IS NOT NULL AND _update_experiment.status IS NOT NULL THEN
        IF _update_experiment.status = 'ended' THEN
            start_at := NULL;
        ELSIF current_row.status = 'ended' OR current_row.layer_start IS NULL THEN
            start_at := amba._place_in_layer(current_row.layer, current_row.layer_share, current_row.id);
        END IF;
    END IF;

    IF new_keys IS NOT NULL THEN
        removed := ARRAY(SELECT k FROM unnest(current_row.variant_keys) AS k WHERE k <> ALL (new_keys));
        IF cardinality(removed) > 0 THEN
            -- Waits for first assignments in flight and holds off new ones to the end of this
            -- transaction; then reads, in the latest snapshot (also in REPEATABLE READ), which
            -- removed variants have assignments or overrides: a removal and a first
            -- assignment to that variant never both commit.
            PERFORM amba._lock_experiment(current_row.id);
            PERFORM amba._lock_experiment_placements(current_row.id);
            -- One lookup per removed variant (no correlated subquery: Citus, SPEC §9,
            -- plans none over a set-returning function).
            FOREACH removed_key IN ARRAY removed LOOP
                IF cardinality(amba._select_fresh(
                       'SELECT 1 FROM amba.assignments a
                         WHERE a.experiment_id = $1::bigint AND a.variant = $2 LIMIT 1'::text,
                       ARRAY[current_row.id::text, removed_key])) > 0
                   OR cardinality(amba._select_fresh(
                       'SELECT 1 FROM amba.overrides o
                         WHERE o.experiment_id = $1::bigint AND o.variant = $2 LIMIT 1'::text,
                       ARRAY[current_row.id::text, removed_key])) > 0 THEN
                    in_use := in_use || removed_key;
                END IF;
            END LOOP;
        END IF;
        PERFORM amba._check_variant_update(current_row.variant_keys, new_keys, in_use);
        IF new_keys IS DISTINCT FROM current_row.variant_keys
           OR new_weights IS DISTINCT FROM current_row.weights THEN
            new_version := current_row.weight_version + 1;
            INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights)
            VALUES (current_row.id, new_version, new_keys, new_weights);
        END IF;
    END IF;

    UPDATE amba.experiments e SET
        status = coalesce(_update_experiment.status, e.status),
        name = coalesce(_update_experiment.name, e.name),
        description = coalesce(_update_experiment.description, e.description),
        variant_keys = coalesce(new_keys, e.variant_keys),
        weights = coalesce(new_weights, e.weights),
        weight_version = new_version,
        targeting = CASE WHEN _update_experiment.targeting IS NULL THEN e.targeting
                         ELSE amba._normalize_targeting(_update_experiment.targeting) END,
        coverage = coalesce(_update_experiment.coverage, e.coverage),
        layer_start = start_at,
        holdout_id = new_holdout_id,
        guardrails = CASE WHEN _update_experiment.guardrails IS NULL THEN e.guardrails
                          ELSE amba._normalize_guardrails(_update_experiment.guardrails::text) END,
        dimensions = CASE WHEN _update_experiment.dimensions IS NULL THEN e.dimensions
                          ELSE amba._normalize_dimensions(_update_experiment.dimensions) END,
        bandit = CASE WHEN _update_experiment.bandit IS NULL
                      THEN amba._normalize_bandit(e.bandit::text, coalesce(new_weights, e.weights))
                      ELSE amba._normalize_bandit(_update_experiment.bandit::text, coalesce(new_weights, e.weights)) END,
        revision = e.revision + 1,
        updated_at = now()
     WHERE e.id = current_row.id
    RETURNING e.* INTO updated;

    after := amba._experiment_json(updated);
    PERFORM amba._audit(updated.key, 'update'::text, before, after);
    RETURN after;
END
$fn$;

CREATE FUNCTION amba._delete_experiment(experiment_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    current_row amba.experiments;
BEGIN
    PERFORM amba._check_experiment_key(_delete_experiment.experiment_key);
    SELECT * INTO current_row FROM amba.experiments e
     WHERE e.key = _delete_experiment.experiment_key FOR UPDATE;
    IF current_row.id IS NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM amba.experiments x WHERE x.holdout_id = current_row.id) THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('experiment %s is the holdout of %s; remove it from them first',
                   to_json(current_row.key),
                   (SELECT string_agg(to_json(x.key)::text, ', ' ORDER BY x.key)
                      FROM amba.experiments x WHERE x.holdout_id = current_row.id)));
    END IF;
    -- After first assignments in flight (the lock waits for them), delete their rows too:
    -- in the latest snapshot, cross-checked in REPEATABLE READ (a row this transaction
    -- could not see fails it cleanly with 40001 rather than being left behind).
    PERFORM amba._lock_experiment(current_row.id);
    PERFORM amba._lock_experiment_placements(current_row.id);
    -- On Citus (SPEC §9) the experiment's row, in a reference table, may change after
    -- the shards' rows only over one connection per node.
    IF current_setting('citus.multi_shard_modify_mode', true) IS NOT NULL THEN
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    END IF;
    PERFORM amba._exec_fresh('DELETE FROM amba.exposures x WHERE x.experiment_id = $1::bigint'::text,
                             ARRAY[current_row.id::text]);
    PERFORM amba._exec_fresh('DELETE FROM amba.assignments a WHERE a.experiment_id = $1::bigint'::text,
                             ARRAY[current_row.id::text]);
    -- Weight versions and overrides go with it (ON DELETE CASCADE).
    DELETE FROM amba.experiments e WHERE e.id = current_row.id;
    PERFORM amba._audit(current_row.key, 'delete'::text, amba._experiment_json(current_row), NULL::jsonb);
    RETURN true;
END
$fn$;

-- Every layer's ranges in order, with the free gaps between them (experiment_key NULL):
-- the experiments that are not ended, each [range_start, range_end).
CREATE FUNCTION amba._list_layers()
RETURNS TABLE (layer text, experiment_key text, status text,
               range_start double precision, range_end double precision)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    WITH ranges AS (
        SELECT e.layer, e.key, e.status, e.layer_start AS s, e.layer_start + e.layer_share AS t
          FROM amba.experiments e
         WHERE e.layer IS NOT NULL AND e.layer_start IS NOT NULL AND e.status <> 'ended'),
    ordered AS (
        SELECT r.*, coalesce(max(r.t) OVER (PARTITION BY r.layer ORDER BY r.s
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS free_from
          FROM ranges r),
    gaps AS (
        SELECT o.layer, NULL::text AS key, NULL::text AS status, o.free_from AS s, o.s AS t
          FROM ordered o WHERE o.s > o.free_from
        UNION ALL
        SELECT r.layer, NULL, NULL, max(r.t), 1 FROM ranges r GROUP BY r.layer HAVING max(r.t) < 1)
    SELECT x.layer, x.key, x.status, x.s, x.t
      FROM (SELECT r.layer, r.key, r.status, r.s, r.t FROM ranges r UNION ALL SELECT * FROM gaps) x
     ORDER BY x.layer, x.s
$fn$;

-- Pauses an active experiment a guardrail tripped (SPEC §12), in the caller's transaction:
-- status paused, an `auto_pause` audit row whose `after` is the experiment with the
-- tripping rows under "tripped", and a notification on channel 'amba' per tripping row.
-- False (nothing done) when it is no longer active.
CREATE FUNCTION amba._auto_pause(experiment_key text, tripped jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    current_row amba.experiments;
    updated amba.experiments;
    tripping jsonb;
BEGIN
    SELECT * INTO current_row FROM amba.experiments e
     WHERE e.key = _auto_pause.experiment_key FOR UPDATE;
    IF current_row.id IS NULL OR current_row.status <> 'active' THEN
        RETURN false;
    END IF;
    UPDATE amba.experiments e SET status = 'paused', revision = e.revision + 1, updated_at = now()
     WHERE e.id = current_row.id
    RETURNING e.* INTO updated;
    PERFORM amba._audit(updated.key, 'auto_pause'::text, amba._experiment_json(current_row),
                        amba._experiment_json(updated) || jsonb_build_object('tripped', _auto_pause.tripped));
    FOR tripping IN SELECT t FROM jsonb_array_elements(_auto_pause.tripped) AS t LOOP
        PERFORM pg_notify('amba', (jsonb_build_object('type', 'auto_pause', 'experiment_key', updated.key)
                                   || tripping)::text);
    END LOOP;
    RETURN true;
END
$fn$;

-- A bandit's new weights (SPEC §14), as a new weight version: nobody assigned moves. The
-- caller holds the experiment's row locked (concurrent updates take one version each).
CREATE FUNCTION amba._apply_bandit_weights(experiment_id bigint, weights double precision[],
                                           result jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    current_row amba.experiments;
    updated amba.experiments;
BEGIN
    SELECT * INTO current_row FROM amba.experiments e WHERE e.id = _apply_bandit_weights.experiment_id;
    INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights)
    VALUES (current_row.id, current_row.weight_version + 1, current_row.variant_keys,
            _apply_bandit_weights.weights);
    UPDATE amba.experiments e SET weights = _apply_bandit_weights.weights,
           weight_version = e.weight_version + 1, revision = e.revision + 1, updated_at = now()
     WHERE e.id = current_row.id
    RETURNING e.* INTO updated;
    PERFORM amba._audit(updated.key, 'bandit_update'::text, amba._experiment_json(current_row),
                        amba._experiment_json(updated) || jsonb_build_object('bandit_update', _apply_bandit_weights.result));
END
$fn$;

CREATE FUNCTION amba._get_experiment(experiment_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM amba._check_experiment_key(_get_experiment.experiment_key);
    -- ROW(e.*): on Citus (SPEC §9) a whole-row reference to a reference table has its
    -- shard's row type.
    RETURN (SELECT amba._experiment_json(ROW(e.*)::amba.experiments) FROM amba.experiments e
             WHERE e.key = _get_experiment.experiment_key);
END
$fn$;

CREATE FUNCTION amba._list_experiments() RETURNS SETOF jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT amba._experiment_json(ROW(e.*)::amba.experiments) FROM amba.experiments e ORDER BY e.id
$fn$;

CREATE FUNCTION amba._experiment_history(experiment_key text)
RETURNS TABLE (changed_at timestamptz, changed_by text, api_key_name text,
               action text, before jsonb, after jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM amba._check_experiment_key(_experiment_history.experiment_key);
    RETURN QUERY
        SELECT h.changed_at, h.changed_by, h.api_key_name, h.action, h.before, h.after
          FROM amba.experiment_history h
         WHERE h.experiment_key = _experiment_history.experiment_key
         ORDER BY h.history_id;
END
$fn$;

----------------------------------------------------------------------------------------
-- Overrides (SPEC §3d). Setting or clearing one updates the experiment's row, so every
-- backend's cached definition (which holds the overrides) is replaced.
----------------------------------------------------------------------------------------
-- The experiment's row, locked against concurrent changes; EXPERIMENT_NOT_FOUND if none.
CREATE FUNCTION amba._experiment_for_update(experiment_key text) RETURNS amba.experiments
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    found amba.experiments;
BEGIN
    PERFORM amba._check_experiment_key(_experiment_for_update.experiment_key);
    SELECT * INTO found FROM amba.experiments e WHERE e.key = _experiment_for_update.experiment_key FOR UPDATE;
    IF found.id IS NULL THEN
        PERFORM amba._not_found(_experiment_for_update.experiment_key);
    END IF;
    RETURN found;
END
$fn$;

-- The identity a user id acts as (SPEC §3d): the id it was aliased to, or itself.
CREATE FUNCTION amba._identity(user_id text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce((SELECT a.user_id FROM amba.aliases a WHERE a.anonymous_id = $1), $1)
$fn$;

CREATE FUNCTION amba._override_json(experiment_key text, o amba.overrides) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT jsonb_build_object('experiment_key', $1, 'user_id', o.user_id, 'variant', o.variant,
                              'set_at', o.set_at)
$fn$;

CREATE FUNCTION amba._set_override(experiment_key text, user_id text, variant text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    exp amba.experiments;
    who text;
    previous amba.overrides;
    stored amba.overrides;
    after jsonb;
BEGIN
    PERFORM amba._check_user_id(_set_override.user_id);
    PERFORM amba._check_variant_key(_set_override.variant);
    exp := amba._experiment_for_update(_set_override.experiment_key);
    IF _set_override.variant <> ALL (exp.variant_keys) THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('experiment %s has no variant %s', to_json(exp.key), to_json(_set_override.variant)));
    END IF;
    who := amba._identity(_set_override.user_id);
    SELECT * INTO previous FROM amba.overrides o WHERE o.experiment_id = exp.id AND o.user_id = who;
    -- The time goes in as a value (Citus allows no function in DO UPDATE SET).
    INSERT INTO amba.overrides AS o (experiment_id, user_id, variant, set_at)
    VALUES (exp.id, who, _set_override.variant, now())
    ON CONFLICT ON CONSTRAINT overrides_pkey
    DO UPDATE SET variant = excluded.variant, set_at = excluded.set_at
    RETURNING o.* INTO stored;
    UPDATE amba.experiments e SET revision = e.revision + 1 WHERE e.id = exp.id;
    after := amba._override_json(exp.key, stored);
    PERFORM amba._audit(exp.key, 'override_set'::text,
                        CASE WHEN previous.user_id IS NULL THEN NULL ELSE amba._override_json(exp.key, previous) END,
                        after);
    RETURN after;
END
$fn$;

CREATE FUNCTION amba._clear_override(experiment_key text, user_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    exp amba.experiments;
    removed amba.overrides;
BEGIN
    PERFORM amba._check_user_id(_clear_override.user_id);
    exp := amba._experiment_for_update(_clear_override.experiment_key);
    DELETE FROM amba.overrides o
     WHERE o.experiment_id = exp.id AND o.user_id = amba._identity(_clear_override.user_id)
    RETURNING o.* INTO removed;
    IF removed.user_id IS NULL THEN
        RETURN false;
    END IF;
    UPDATE amba.experiments e SET revision = e.revision + 1 WHERE e.id = exp.id;
    PERFORM amba._audit(exp.key, 'override_clear'::text, amba._override_json(exp.key, removed), NULL::jsonb);
    RETURN true;
END
$fn$;

CREATE FUNCTION amba._list_overrides(experiment_key text)
RETURNS TABLE (user_id text, variant text, set_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    exp_id bigint;
BEGIN
    PERFORM amba._check_experiment_key(_list_overrides.experiment_key);
    SELECT e.id INTO exp_id FROM amba.experiments e WHERE e.key = _list_overrides.experiment_key;
    IF exp_id IS NULL THEN
        PERFORM amba._not_found(_list_overrides.experiment_key);
    END IF;
    RETURN QUERY SELECT o.user_id, o.variant, o.set_at FROM amba.overrides o
                  WHERE o.experiment_id = exp_id ORDER BY o.user_id;
END
$fn$;

----------------------------------------------------------------------------------------
-- Identities (SPEC §3d)
----------------------------------------------------------------------------------------
-- Every statement that moves rows runs in the latest snapshot after both users' locks are
-- held (assign, expose and track hold the caller's lock shared), so nothing a concurrent
-- call committed is left behind under the anonymous id.
CREATE FUNCTION amba._alias(anonymous_id text, user_id text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    anon text := _alias.anonymous_id;
    target text := _alias.user_id;
    params text[];
    existing text;
    conflicts bigint := 0;
    anon_won bigint;
    moved bigint;
    events_moved bigint;
BEGIN
    PERFORM amba._check_user_id(anon);
    PERFORM amba._check_user_id(target);
    IF anon = target THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text, 'anonymous_id and user_id must differ'::text);
    END IF;
    PERFORM amba._lock_users(anon, target);
    params := ARRAY[anon, target];

    existing := (amba._select_fresh(
        'SELECT a.user_id FROM amba.aliases a WHERE a.anonymous_id = $1'::text, params))[1];
    IF existing = target THEN
        RETURN jsonb_build_object('user_id', target, 'moved', 0, 'conflicts', 0, 'events', 0);
    ELSIF existing IS NOT NULL THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('%s is already an alias of another user id', to_json(anon)));
    END IF;
    IF cardinality(amba._select_fresh(
        'SELECT a.anonymous_id FROM amba.aliases a WHERE a.user_id = $1 LIMIT 1'::text, params)) > 0 THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('other ids are aliased to %s; it cannot become an alias itself', to_json(anon)));
    END IF;
    IF cardinality(amba._select_fresh(
        'SELECT a.user_id FROM amba.aliases a WHERE a.anonymous_id = $2'::text, params)) > 0 THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text,
            format('%s is itself an alias of another user id', to_json(target)));
    END IF;
    INSERT INTO amba.aliases (anonymous_id, user_id) VALUES (anon, target);
    IF amba._distributed() THEN
        RETURN amba._alias_distributed(anon, target);
    END IF;

    -- Where both have an assignment, the earlier (first touch) stays for the user; the
    -- other goes, with its exposure (ON DELETE CASCADE). Each experiment is one primary-key
    -- lookup per id.
    anon_won := amba._exec_fresh(
        'DELETE FROM amba.assignments t USING amba.experiments x, amba.assignments s
          WHERE t.experiment_id = x.id AND t.user_id = $2
            AND s.experiment_id = x.id AND s.user_id = $1 AND s.assigned_at < t.assigned_at'::text, params);
    conflicts := anon_won + amba._exec_fresh(
        'DELETE FROM amba.assignments s USING amba.experiments x, amba.assignments t
          WHERE s.experiment_id = x.id AND s.user_id = $1
            AND t.experiment_id = x.id AND t.user_id = $2'::text, params);
    -- The rest move unchanged; their exposures follow (ON UPDATE CASCADE). Where the
    -- anonymous assignment won a conflict it moves too, but counts as the conflict.
    moved := amba._exec_fresh(
        'UPDATE amba.assignments s SET user_id = $2 FROM amba.experiments x
          WHERE s.experiment_id = x.id AND s.user_id = $1'::text, params) - anon_won;
    -- Events: one index lookup per event name (a skip scan over the events index).
    events_moved := amba._exec_fresh(
        'WITH RECURSIVE names(event) AS (
             (SELECT e.event FROM amba.events e ORDER BY e.event LIMIT 1)
             UNION ALL
             SELECT (SELECT e.event FROM amba.events e WHERE e.event > n.event ORDER BY e.event LIMIT 1)
               FROM names n WHERE n.event IS NOT NULL)
         UPDATE amba.events e SET user_id = $2 FROM names n
          WHERE e.event = n.event AND e.user_id = $1'::text, params);
    -- Overrides of the anonymous id become the user's where the user has none; every
    -- experiment where either id has an override gets its row bumped, so cached
    -- definitions (which key overrides by user and alias ids) are read again.
    PERFORM amba._exec_fresh(
        'UPDATE amba.experiments e SET revision = e.revision + 1
          WHERE e.id IN (SELECT o.experiment_id FROM amba.overrides o WHERE o.user_id IN ($1, $2))'::text, params);
    PERFORM amba._exec_fresh(
        'UPDATE amba.overrides o SET user_id = $2 FROM amba.experiments x
          WHERE o.experiment_id = x.id AND o.user_id = $1
            AND NOT EXISTS (SELECT 1 FROM amba.overrides u WHERE u.experiment_id = x.id AND u.user_id = $2)'::text,
        params);
    PERFORM amba._exec_fresh(
        'DELETE FROM amba.overrides o USING amba.experiments x
          WHERE o.experiment_id = x.id AND o.user_id = $1'::text, params);
    RETURN jsonb_build_object('user_id', target, 'moved', moved, 'conflicts', conflicts, 'events', events_moved);
END
$fn$;

-- amba_alias on Citus (SPEC §9), after the checks and the alias row: the two ids live
-- on different shards, and Citus never updates a distribution column, so each of the
-- anonymous id's assignments is copied to the user (or dropped in a first-touch conflict it
-- loses) and deleted, one experiment at a time; events are copied and deleted.
CREATE FUNCTION amba._alias_distributed(anon text, target text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s record;
    target_at timestamptz;
    conflicts bigint := 0;
    moved bigint := 0;
    events_moved bigint;
BEGIN
    -- Reference tables change below, after shard rows: one connection per node.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    FOR s IN
        SELECT a.experiment_id, a.variant, a.weight_version, a.assigned_at, x.exposed_at,
               d.dimension_values
          FROM amba.assignments a
          LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
          LEFT JOIN amba.assignment_dimensions d
            ON d.experiment_id = a.experiment_id AND d.user_id = a.user_id
         WHERE a.user_id = anon
    LOOP
        SELECT t.assigned_at INTO target_at FROM amba.assignments t
         WHERE t.experiment_id = s.experiment_id AND t.user_id = target;
        IF FOUND THEN
            conflicts := conflicts + 1;
        END IF;
        IF NOT FOUND OR s.assigned_at < target_at THEN
            -- The anonymous assignment stays (first touch): it becomes the user's.
            DELETE FROM amba.assignments t WHERE t.experiment_id = s.experiment_id AND t.user_id = target;
            INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
            VALUES (s.experiment_id, target, s.variant, s.weight_version, s.assigned_at);
            IF s.exposed_at IS NOT NULL THEN
                INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
                VALUES (s.experiment_id, target, s.exposed_at);
            END IF;
            IF s.dimension_values IS NOT NULL THEN
                INSERT INTO amba.assignment_dimensions (experiment_id, user_id, dimension_values)
                VALUES (s.experiment_id, target, s.dimension_values);
            END IF;
            IF target_at IS NULL THEN
                moved := moved + 1;
            END IF;
        END IF;
        DELETE FROM amba.assignments a WHERE a.experiment_id = s.experiment_id AND a.user_id = anon;
        target_at := NULL;
    END LOOP;
    INSERT INTO amba.events (user_id, event, occurred_at, properties)
    SELECT target, e.event, e.occurred_at, e.properties FROM amba.events e WHERE e.user_id = anon;
    GET DIAGNOSTICS events_moved = ROW_COUNT;
    DELETE FROM amba.events e WHERE e.user_id = anon;
    UPDATE amba.experiments e SET revision = e.revision + 1
     WHERE e.id IN (SELECT o.experiment_id FROM amba.overrides o WHERE o.user_id IN (anon, target));
    UPDATE amba.overrides o SET user_id = target
     WHERE o.user_id = anon
       AND NOT EXISTS (SELECT 1 FROM amba.overrides u WHERE u.experiment_id = o.experiment_id AND u.user_id = target);
    DELETE FROM amba.overrides o WHERE o.user_id = anon;
    RETURN jsonb_build_object('user_id', target, 'moved', moved, 'conflicts', conflicts, 'events', events_moved);
END
$fn$;

----------------------------------------------------------------------------------------
-- API keys
----------------------------------------------------------------------------------------
CREATE FUNCTION amba._create_api_key(name text, kind text) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    plaintext text;
BEGIN
    PERFORM amba._check_api_key(_create_api_key.name, _create_api_key.kind);
    -- 256 random bits, URL-safe base64 without padding: amba_ + 43 characters.
    plaintext := 'amba_' || rtrim(translate(encode(amba._random_bytes(32), 'base64'), E'+/\n', '-_'), '=');
    INSERT INTO amba.api_keys (name, kind, key_hash)
    VALUES (_create_api_key.name, _create_api_key.kind, sha256(convert_to(plaintext, 'UTF8')))
    ON CONFLICT ON CONSTRAINT api_keys_pkey DO NOTHING;
    IF NOT FOUND THEN
        PERFORM amba._raise('API_KEY_EXISTS'::text,
            format('an API key named %s exists already (revoked names stay taken)', to_json(_create_api_key.name)));
    END IF;
    RETURN plaintext;
END
$fn$;

CREATE FUNCTION amba._revoke_api_key(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF _revoke_api_key.name IS NULL THEN
        PERFORM amba._raise('INVALID_ARGUMENT'::text, 'name must not be NULL'::text);
    END IF;
    UPDATE amba.api_keys k SET revoked_at = now()
     WHERE k.name = _revoke_api_key.name AND k.revoked_at IS NULL;
    RETURN FOUND;
END
$fn$;

----------------------------------------------------------------------------------------
-- The public SQL API: thin wrappers in the extension's schema.
----------------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.amba_create_experiment(
    experiment_key text, variants jsonb, name text DEFAULT NULL,
    description text DEFAULT NULL, status text DEFAULT 'active',
    targeting jsonb DEFAULT NULL, coverage double precision DEFAULT NULL,
    layer text DEFAULT NULL, layer_share double precision DEFAULT NULL,
    holdout text DEFAULT NULL, guardrails jsonb DEFAULT NULL,
    dimensions text[] DEFAULT NULL, bandit jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._create_experiment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) $fn$;

CREATE FUNCTION @extschema@.amba_update_experiment(
    experiment_key text, variants jsonb DEFAULT NULL, status text DEFAULT NULL,
    name text DEFAULT NULL, description text DEFAULT NULL,
    targeting jsonb DEFAULT NULL, coverage double precision DEFAULT NULL,
    layer text DEFAULT NULL, layer_share double precision DEFAULT NULL,
    holdout text DEFAULT NULL, guardrails jsonb DEFAULT NULL,
    dimensions text[] DEFAULT NULL, bandit jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._update_experiment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) $fn$;

-- Guardrails (SPEC §12): every active experiment's (or the named one's), judged, and the
-- ones a guardrail trips paused. SQL, not PL/pgSQL: the argument and the first output
-- column share a name.
CREATE FUNCTION @extschema@.amba_check_guardrails(experiment_key text DEFAULT NULL)
RETURNS TABLE (experiment_key text, guardrail integer, variant text, lift double precision,
               cs_low double precision, cs_high double precision, tripped boolean,
               paused boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._check_guardrails($1) $fn$;

CREATE FUNCTION @extschema@.amba_list_layers()
RETURNS TABLE (layer text, experiment_key text, status text,
               range_start double precision, range_end double precision)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._list_layers() $fn$;

CREATE FUNCTION @extschema@.amba_delete_experiment(experiment_key text) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._delete_experiment($1) $fn$;

CREATE FUNCTION @extschema@.amba_get_experiment(experiment_key text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._get_experiment($1) $fn$;

CREATE FUNCTION @extschema@.amba_list_experiments() RETURNS SETOF jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._list_experiments() $fn$;

CREATE FUNCTION @extschema@.amba_experiment_history(experiment_key text)
RETURNS TABLE (changed_at timestamptz, changed_by text, api_key_name text,
               action text, before jsonb, after jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._experiment_history($1) $fn$;

CREATE FUNCTION @extschema@.amba_set_override(experiment_key text, user_id text, variant text) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._set_override($1, $2, $3) $fn$;

CREATE FUNCTION @extschema@.amba_clear_override(experiment_key text, user_id text) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._clear_override($1, $2) $fn$;

CREATE FUNCTION @extschema@.amba_list_overrides(experiment_key text)
RETURNS TABLE (user_id text, variant text, set_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT * FROM amba._list_overrides($1) $fn$;

CREATE FUNCTION @extschema@.amba_alias(anonymous_id text, user_id text) RETURNS jsonb
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._alias($1, $2) $fn$;

CREATE FUNCTION @extschema@.amba_create_api_key(name text, kind text DEFAULT 'client') RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._create_api_key($1, $2) $fn$;

CREATE FUNCTION @extschema@.amba_revoke_api_key(name text) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT amba._revoke_api_key($1) $fn$;
