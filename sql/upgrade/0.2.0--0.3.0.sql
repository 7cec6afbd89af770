-- Schema changes of 0.3.0 (hand-written; scripts/upgrade/build.py puts them first in
-- sql/amba--0.2.0--0.3.0.sql, then every Rust function of 0.3.0 — created, or re-pointed to
-- the 0.3.0 library — and every hand-written function).
-- Policies are all created again by access.sql below.
DO $drop_policies$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname, tablename FROM pg_catalog.pg_policies WHERE schemaname = 'amba' LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON amba.%I', p.policyname, p.tablename);
    END LOOP;
END
$drop_policies$;

-- The new columns of amba.experiments: targeting and coverage (SPEC §10), layers and
-- holdouts (§11), guardrails (§12), segments (§13), bandits (§14); and the audit actions of
-- 0.3.0. Written for Citus as well as for one node:
-- - each DDL statement runs through EXECUTE: Citus passes a statement on a distributed or
--   reference table on to the other nodes as its query text, which for a plain statement
--   in an extension script is the whole script;
-- - each column and each constraint in a command of its own, the constraints named as a
--   fresh install names them: Citus refuses unnamed constraints added with a column;
-- - each one only if it is not there yet: Citus applies the coordinator's statements to
--   the workers' tables, and then each worker runs this script too.
DO $schema$
DECLARE
    c record;
BEGIN
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS targeting jsonb';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS coverage double precision NOT NULL DEFAULT 1';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS layer text';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS layer_share double precision';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS layer_start double precision';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS holdout_id bigint';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS guardrails jsonb';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS dimensions text[]';
    EXECUTE 'ALTER TABLE amba.experiments ADD COLUMN IF NOT EXISTS bandit jsonb';
    FOR c IN SELECT * FROM (VALUES
        (1, 'experiments_targeting_check',
            $c$CHECK (jsonb_typeof(targeting) = 'object' AND targeting <> '{}')$c$),
        (2, 'experiments_coverage_check', $c$CHECK (coverage >= 0 AND coverage <= 1)$c$),
        (3, 'experiments_layer_check', $c$CHECK (layer ~ '^[A-Za-z0-9_.:-]{1,128}$')$c$),
        (4, 'experiments_layer_share_check', $c$CHECK (layer_share > 0 AND layer_share <= 1)$c$),
        (5, 'experiments_layer_start_check', $c$CHECK (layer_start >= 0 AND layer_start < 1)$c$),
        (6, 'experiments_layer_share_with_layer',
            $c$CHECK ((layer IS NULL) = (layer_share IS NULL))$c$),
        (7, 'experiments_holdout_id_fkey',
            $c$FOREIGN KEY (holdout_id) REFERENCES amba.experiments (id)$c$),
        (8, 'experiments_not_own_holdout', $c$CHECK (holdout_id <> id)$c$),
        (9, 'experiments_guardrails_check', $c$CHECK (jsonb_typeof(guardrails) = 'array')$c$),
        (10, 'experiments_dimensions_check', $c$CHECK (cardinality(dimensions) BETWEEN 1 AND 5)$c$),
        (11, 'experiments_bandit_check', $c$CHECK (jsonb_typeof(bandit) = 'object')$c$)
    ) AS v(n, name, definition) ORDER BY n LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                        WHERE conrelid = 'amba.experiments'::regclass AND conname = c.name) THEN
            EXECUTE pg_catalog.format('ALTER TABLE amba.experiments ADD CONSTRAINT %I %s',
                                      c.name, c.definition);
        END IF;
    END LOOP;
    EXECUTE 'ALTER TABLE amba.experiment_history DROP CONSTRAINT IF EXISTS experiment_history_action_check';
    EXECUTE $c$ALTER TABLE amba.experiment_history ADD CONSTRAINT experiment_history_action_check
        CHECK (action IN ('create', 'update', 'delete', 'override_set', 'override_clear',
                          'auto_pause', 'bandit_update'))$c$;
END
$schema$;
-- @bootstrap -- The segment values of an assignment .. -- Events are not tied to experiments
SELECT pg_catalog.pg_extension_config_dump('amba.assignment_dimensions'::regclass, '');
DO $indexes$
BEGIN
    EXECUTE 'CREATE INDEX IF NOT EXISTS experiments_layer ON amba.experiments (layer) WHERE layer IS NOT NULL';
    EXECUTE 'CREATE INDEX IF NOT EXISTS experiments_holdout ON amba.experiments (holdout_id) WHERE holdout_id IS NOT NULL';
END
$indexes$;

-- Functions whose arguments change are dropped here and created again below (a new
-- argument would otherwise add an overload beside the old function). IF EXISTS: on Citus
-- the coordinator has dropped the delegated ones on the workers already.
DROP FUNCTION IF EXISTS @extschema@.amba_assign(text, text);
DROP FUNCTION IF EXISTS @extschema@.amba_peek(text, text);
DROP FUNCTION IF EXISTS amba._assign(text, text);
DROP FUNCTION IF EXISTS amba._peek(text, text);
DROP FUNCTION IF EXISTS @extschema@.amba_create_experiment(text, jsonb, text, text, text);
DROP FUNCTION IF EXISTS @extschema@.amba_update_experiment(text, jsonb, text, text, text);
DROP FUNCTION IF EXISTS amba._create_experiment(text, jsonb, text, text, text);
DROP FUNCTION IF EXISTS amba._update_experiment(text, jsonb, text, text, text);
DROP FUNCTION IF EXISTS amba_api.assign(text);
DROP FUNCTION IF EXISTS amba_api.peek(text);
DROP FUNCTION IF EXISTS amba_api.experiments_create(text, jsonb, text, text, text);
DROP FUNCTION IF EXISTS amba_api.experiments_update(text, jsonb, text, text, text);

