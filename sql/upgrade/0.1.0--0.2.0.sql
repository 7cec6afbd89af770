-- Schema changes of 0.2.0 (hand-written; scripts/upgrade/build.py puts them first in
-- sql/amba--0.1.0--0.2.0.sql). A line "-- @bootstrap FROM .. TO" inlines the part of
-- sql/bootstrap.sql from the line starting with FROM up to the one starting with TO, so a
-- table or block defined there is written once.
-- @bootstrap -- The three roles of the contract .. CREATE TABLE amba.experiments
-- Policies are all created again by access.sql below (and a column a policy uses cannot
-- change collation).
DO $drop_policies$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname, tablename FROM pg_catalog.pg_policies WHERE schemaname = 'amba' LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON amba.%I', p.policyname, p.tablename);
    END LOOP;
END
$drop_policies$;

-- Re-created by http.sql below (a column a view or policy uses cannot change collation).
DROP VIEW amba_api.my_assignments;

-- The definition cache checks row versions per statement now: no invalidation trigger.
DROP TRIGGER invalidate_experiment_cache ON amba.experiments;
DROP FUNCTION amba._experiments_changed();
DROP FUNCTION amba._invalidate_relcache(oid);
DROP FUNCTION amba._check_text(text, text, integer);

ALTER TABLE amba.experiments ADD COLUMN bucketing_version smallint NOT NULL DEFAULT 1;
-- First assignments no longer lock the experiment's row (no foreign key check).
ALTER TABLE amba.assignments DROP CONSTRAINT assignments_experiment_id_fkey;
-- Aliasing moves assignments to another user id: exposures follow.
ALTER TABLE amba.exposures DROP CONSTRAINT exposures_experiment_id_user_id_fkey;
-- User ids compare bytewise (COLLATE "C"): the indexes on them are rebuilt.
ALTER TABLE amba.assignments ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE amba.exposures ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE amba.events ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE amba.exposures ADD CONSTRAINT exposures_experiment_id_user_id_fkey
    FOREIGN KEY (experiment_id, user_id)
    REFERENCES amba.assignments (experiment_id, user_id) ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE amba.experiment_history DROP CONSTRAINT experiment_history_action_check;
ALTER TABLE amba.experiment_history ADD CONSTRAINT experiment_history_action_check
    CHECK (action IN ('create', 'update', 'delete', 'override_set', 'override_clear'));

-- @bootstrap -- Overrides (SPEC §3d) .. -- API keys for the HTTP surface
SELECT pg_catalog.pg_extension_config_dump('amba.overrides'::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('amba.aliases'::regclass, '');

