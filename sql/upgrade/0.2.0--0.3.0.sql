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

-- Each column and each constraint in a command of its own, the constraints named as a fresh
-- install names them: Citus refuses a column added with its constraints in one command (it
-- needs every constraint named), and amba.experiments is a reference table there.
-- Targeting and coverage (SPEC §10): who may be enrolled.
ALTER TABLE amba.experiments ADD COLUMN targeting jsonb;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_targeting_check
    CHECK (jsonb_typeof(targeting) = 'object' AND targeting <> '{}');
ALTER TABLE amba.experiments ADD COLUMN coverage double precision NOT NULL DEFAULT 1;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_coverage_check
    CHECK (coverage >= 0 AND coverage <= 1);
-- Layers and holdouts (SPEC §11).
ALTER TABLE amba.experiments ADD COLUMN layer text;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_layer_check
    CHECK (layer ~ '^[A-Za-z0-9_.:-]{1,128}$');
ALTER TABLE amba.experiments ADD COLUMN layer_share double precision;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_layer_share_check
    CHECK (layer_share > 0 AND layer_share <= 1);
ALTER TABLE amba.experiments ADD COLUMN layer_start double precision;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_layer_start_check
    CHECK (layer_start >= 0 AND layer_start < 1);
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_layer_share_with_layer
    CHECK ((layer IS NULL) = (layer_share IS NULL));
ALTER TABLE amba.experiments ADD COLUMN holdout_id bigint;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_holdout_id_fkey
    FOREIGN KEY (holdout_id) REFERENCES amba.experiments (id);
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_not_own_holdout CHECK (holdout_id <> id);
-- Guardrails (SPEC §12), and the audit actions of 0.3.0.
ALTER TABLE amba.experiments ADD COLUMN guardrails jsonb;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_guardrails_check
    CHECK (jsonb_typeof(guardrails) = 'array');
ALTER TABLE amba.experiment_history DROP CONSTRAINT experiment_history_action_check;
ALTER TABLE amba.experiment_history ADD CONSTRAINT experiment_history_action_check
    CHECK (action IN ('create', 'update', 'delete', 'override_set', 'override_clear',
                      'auto_pause', 'bandit_update'));
-- Segments (SPEC §13).
ALTER TABLE amba.experiments ADD COLUMN dimensions text[];
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_dimensions_check
    CHECK (cardinality(dimensions) BETWEEN 1 AND 5);
-- Bandits (SPEC §14).
ALTER TABLE amba.experiments ADD COLUMN bandit jsonb;
ALTER TABLE amba.experiments ADD CONSTRAINT experiments_bandit_check
    CHECK (jsonb_typeof(bandit) = 'object');
-- @bootstrap -- The segment values of an assignment .. -- Events are not tied to experiments
SELECT pg_catalog.pg_extension_config_dump('amba.assignment_dimensions'::regclass, '');
CREATE INDEX experiments_layer ON amba.experiments (layer) WHERE layer IS NOT NULL;
CREATE INDEX experiments_holdout ON amba.experiments (holdout_id) WHERE holdout_id IS NOT NULL;

-- Functions whose arguments change are dropped here and created again below (a new
-- argument would otherwise add an overload beside the old function).
DROP FUNCTION @extschema@.amba_assign(text, text);
DROP FUNCTION @extschema@.amba_peek(text, text);
DROP FUNCTION amba._assign(text, text);
DROP FUNCTION amba._peek(text, text);
DROP FUNCTION @extschema@.amba_create_experiment(text, jsonb, text, text, text);
DROP FUNCTION @extschema@.amba_update_experiment(text, jsonb, text, text, text);
DROP FUNCTION amba._create_experiment(text, jsonb, text, text, text);
DROP FUNCTION amba._update_experiment(text, jsonb, text, text, text);
DROP FUNCTION amba_api.assign(text);
DROP FUNCTION amba_api.peek(text);
DROP FUNCTION amba_api.experiments_create(text, jsonb, text, text, text);
DROP FUNCTION amba_api.experiments_update(text, jsonb, text, text, text);

