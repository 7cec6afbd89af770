-- SPEC §9: scale-out on Citus. amba_distribute() turns an installed amba into a
-- distributed one: the per-user tables sharded by user_id (colocated, so a user's
-- assignments, exposures and events sit on one worker and results join shard by shard),
-- the small tables replicated as reference tables, and amba_assign / amba_expose /
-- amba_track delegated to the worker that owns the user.
--
-- Citus does not recreate extension-owned tables on workers (the extension, installed on
-- every node, does), so each change made to the tables themselves runs on every node. The
-- workers' part runs first, in transactions of its own (run_command_on_workers; later in
-- the call, Citus's own connections hold locks on those tables): it is idempotent, and
-- harmless should the rest fail (the workers' own tables hold no rows), so calling
-- amba_distribute() again completes the job.

-- A marker: a worker's amba tables hold no rows once distributed (the shards do), and the
-- fast paths that read tables directly must know. They look for a trigger (amba's own
-- tables have none; Citus gives the coordinator's a truncate trigger).
CREATE FUNCTION amba._distributed_marker() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;

-- The statements that change the tables' shape for Citus, run on every node: a distributed
-- table's unique keys must include the distribution column (events), and the foreign keys
-- among amba's tables are dropped while the tables are converted one by one (Citus would
-- otherwise convert each table's neighbours on its own, recreating them on the workers,
-- where the extension made them already). The coordinator re-adds them after, and Citus
-- puts them on the shards.
CREATE FUNCTION amba._distribute_shape_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'ALTER TABLE amba.experiments DROP CONSTRAINT IF EXISTS experiments_holdout_id_fkey; '
        || 'ALTER TABLE amba.assignment_dimensions DROP CONSTRAINT IF EXISTS assignment_dimensions_experiment_id_user_id_fkey; '
        || 'ALTER TABLE amba.exposures DROP CONSTRAINT IF EXISTS exposures_experiment_id_user_id_fkey; '
        || 'ALTER TABLE amba.weight_versions DROP CONSTRAINT IF EXISTS weight_versions_experiment_id_fkey; '
        || 'ALTER TABLE amba.overrides DROP CONSTRAINT IF EXISTS overrides_experiment_id_fkey; '
        || 'ALTER TABLE amba.events DROP CONSTRAINT IF EXISTS events_pkey; '
        || 'ALTER TABLE amba.events ADD CONSTRAINT events_pkey PRIMARY KEY (user_id, event_id)'
$$;

-- The workers' marker (see amba._distributed_marker). Not on the coordinator: Citus
-- refuses to distribute tables with triggers of their own, and puts its own truncate
-- trigger there.
CREATE FUNCTION amba._distribute_marker_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(pg_catalog.format(
               'CREATE OR REPLACE TRIGGER amba_distributed BEFORE TRUNCATE ON amba.%I '
               'FOR EACH STATEMENT EXECUTE FUNCTION amba._distributed_marker()', t), '; ')
      FROM unnest(ARRAY['experiments', 'assignments', 'exposures', 'events', 'aliases']) t
$$;

-- On Citus the experiment's advisory lock is per node, and first assignments run on the
-- workers. A variant removal or delete therefore also locks the experiment's row on every
-- placement of the reference table (an UPDATE goes to all of them; a SELECT FOR UPDATE to
-- one) before it looks for assignments; a first assignment share-locks the row in its own
-- node's placement (src/assign.rs), so the two never both commit. Nothing on one node.
CREATE FUNCTION amba._lock_experiment_placements(experiment_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF amba._distributed() THEN
        PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
        UPDATE amba.experiments e SET revision = e.revision WHERE e.id = experiment_id;
    END IF;
END
$$;

-- On Citus a user's lock is per node too: amba_alias takes the two ids' locks on the
-- coordinator, and a delegated amba_assign / amba_expose / amba_track takes the caller's
-- on the worker that owns the caller's id. The alias row goes to every placement of the
-- reference table before any row moves. This trigger on each worker's placement takes the
-- same two locks there, held to the end of the distributed transaction. A delegated call
-- for either id then waits for the alias to commit and sees it. A call already in flight
-- makes the alias wait until it has committed, so the alias then moves what it wrote.
CREATE FUNCTION amba._alias_locks_users() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM amba._lock_users(NEW.anonymous_id, NEW.user_id);
    RETURN NULL;
END
$$;

-- The statement that puts that trigger on one placement (%s: the placement).
CREATE FUNCTION amba._alias_placement_trigger_sql() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'CREATE OR REPLACE TRIGGER amba_alias_locks_users AFTER INSERT ON %s '
        || 'FOR EACH ROW EXECUTE FUNCTION amba._alias_locks_users()'
$$;

-- Citus refuses triggers on reference tables, and creates a worker's placement of
-- amba.aliases (amba.aliases_<shard id>) inside the distributing transaction, where no
-- other connection can reach it. So each worker gets this event trigger first: it adds
-- the trigger above to a placement as Citus creates it. A worker added later gets both
-- when amba_distribute() is called again.
CREATE FUNCTION amba._alias_placement_locks() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    placement regclass;
BEGIN
    FOR placement IN
        SELECT r.oid::regclass FROM pg_event_trigger_ddl_commands() c JOIN pg_class r ON r.oid = c.objid
         WHERE c.command_tag = 'CREATE TABLE' AND c.classid = 'pg_class'::regclass
           AND r.relnamespace = 'amba'::regnamespace AND r.relname ~ '^aliases_[0-9]+$'
    LOOP
        EXECUTE format(amba._alias_placement_trigger_sql(), placement);
    END LOOP;
END
$$;

-- Run on each worker (by amba_distribute): the event trigger, a member of the extension so
-- that it goes with it.
CREATE FUNCTION amba._install_alias_placement_locks() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'amba_alias_placement_locks') THEN
        CREATE EVENT TRIGGER amba_alias_placement_locks ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
            EXECUTE FUNCTION amba._alias_placement_locks();
        ALTER EXTENSION amba ADD EVENT TRIGGER amba_alias_placement_locks;
    END IF;
END
$$;

-- A first assignment share-locks the experiment's row (amba._lock_experiment_placements):
-- the HTTP functions' owner may lock it, never change it. Row locks under row-level
-- security need an UPDATE policy: without it the lock would silently take nothing.
CREATE FUNCTION amba._owner_may_lock_experiments() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    GRANT UPDATE (revision) ON amba.experiments TO amba_owner;
    IF NOT EXISTS (SELECT 1 FROM pg_policies
                    WHERE schemaname = 'amba' AND tablename = 'experiments' AND policyname = 'owner_lock') THEN
        CREATE POLICY owner_lock ON amba.experiments FOR UPDATE TO amba_owner USING (true) WITH CHECK (false);
    END IF;
END
$$;

-- The hot path runs on the worker that owns the user (called by amba_distribute; again after
-- an update, which drops and creates again the functions whose arguments changed, and with
-- them their delegation).
CREATE FUNCTION amba._delegate_hot_path() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('@extschema@.amba_assign(text, text, jsonb)', '$2'),
        ('@extschema@.amba_expose(text, text)', '$2'),
        ('@extschema@.amba_track(text, text, jsonb, timestamptz)', '$1'),
        ('@extschema@.amba_peek(text, text, jsonb)', '$2')) AS v(fn, arg)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_dist_object o
                        WHERE o.classid = 'pg_proc'::regclass AND o.objid = f.fn::regprocedure
                          AND o.distribution_argument_index IS NOT NULL) THEN
            PERFORM create_distributed_function(f.fn::regprocedure, f.arg, colocate_with => 'amba.assignments');
        END IF;
    END LOOP;
END
$$;

-- A cluster distributed by an earlier amba, then updated: the per-user tables the update
-- created are local on every node until they are distributed here, like the first ones.
CREATE FUNCTION amba._distribute_new_tables() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failed text;
    grant_row record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'amba.assignment_dimensions'::regclass) THEN
        RETURN;
    END IF;
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    SELECT string_agg(r.nodename || ':' || r.nodeport || ' ' || r.result, '; ') INTO failed
      FROM run_command_on_workers('BEGIN; SET LOCAL citus.enable_ddl_propagation = off; '
                                  || 'ALTER TABLE amba.assignment_dimensions DROP CONSTRAINT IF EXISTS '
                                  || 'assignment_dimensions_experiment_id_user_id_fkey; COMMIT') r
     WHERE NOT r.success;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'amba_distribute: reshaping amba.assignment_dimensions on the workers failed: %', failed;
    END IF;
    ALTER TABLE amba.assignment_dimensions DROP CONSTRAINT IF EXISTS assignment_dimensions_experiment_id_user_id_fkey;
    PERFORM create_distributed_table('amba.assignment_dimensions', 'user_id', colocate_with => 'amba.assignments');
    ALTER TABLE amba.assignment_dimensions ADD CONSTRAINT assignment_dimensions_experiment_id_user_id_fkey
        FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
        ON DELETE CASCADE;
    FOR grant_row IN
        SELECT a.privilege_type, a.grantee::regrole::text AS grantee
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = 'amba.assignment_dimensions'::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON amba.assignment_dimensions TO %s',
                                  grant_row.privilege_type, grant_row.grantee);
    END LOOP;
END
$$;

CREATE FUNCTION amba_distribute() RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    failed text;
    grant_row record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'INVALID_ARGUMENT: amba_distribute needs Citus, and the citus extension is not '
                   || 'installed in this database (on a Citus coordinator: CREATE EXTENSION citus, '
                   || 'add the workers, install amba, then call amba_distribute())';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'INVALID_ARGUMENT: amba_distribute runs on the Citus coordinator, and this node '
                   || 'is not it';
    END IF;
    -- One call at a time (a second waits, then finds the job done).
    PERFORM pg_advisory_xact_lock(1634560612, 0);   -- 'amdd': amba_distribute's own lock
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'amba.assignments'::regclass) THEN
        -- Workers added since get the alias locks (see amba._alias_locks_users).
        SELECT string_agg(r.nodename || ':' || r.nodeport || ' ' || r.result, '; ') INTO failed
          FROM (SELECT w.nodename, w.nodeport, w.success, w.result
                  FROM run_command_on_workers('SELECT amba._install_alias_placement_locks()') w
                UNION ALL
                SELECT p.nodename, p.nodeport, p.success, p.result
                  FROM run_command_on_placements('amba.aliases', amba._alias_placement_trigger_sql()) p) r
         WHERE NOT r.success;
        IF failed IS NOT NULL THEN
            RAISE EXCEPTION 'amba_distribute: adding the alias locks to the workers failed: %', failed;
        END IF;
        -- After an update: the tables and functions of the new version, and the lock
        -- policy (an update creates the policies of one node again).
        PERFORM amba._distribute_new_tables();
        PERFORM amba._owner_may_lock_experiments();
        PERFORM amba._delegate_hot_path();
        RETURN 'amba is already distributed';
    END IF;
    IF EXISTS (SELECT 1 FROM citus_get_active_worker_nodes() w
                WHERE NOT EXISTS (SELECT 1 FROM run_command_on_workers(
                    'SELECT extversion FROM pg_extension WHERE extname = ''amba''') r
                    WHERE r.nodename = w.node_name AND r.nodeport = w.node_port
                      AND r.success AND r.result = (SELECT extversion FROM pg_extension WHERE extname = 'amba'))) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'INVALID_ARGUMENT: amba must be installed, at this version, on every worker first';
    END IF;

    -- Foreign keys to reference tables: Citus needs one connection per node for the rest.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    SELECT string_agg(r.nodename || ':' || r.nodeport || ' ' || r.result, '; ') INTO failed
      FROM run_command_on_workers('BEGIN; SET LOCAL citus.enable_ddl_propagation = off; '
                                  || 'ALTER ROLE amba_owner LOGIN; ALTER ROLE amba_admin LOGIN; '
                                  || 'ALTER ROLE amba_analyst LOGIN; ALTER ROLE amba_client LOGIN; '
                                  || amba._distribute_shape_sql() || '; '
                                  || amba._distribute_marker_sql() || '; '
                                  || 'SELECT amba._install_alias_placement_locks(); COMMIT') r
     WHERE NOT r.success;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'amba_distribute: reshaping the tables on the workers failed: %', failed;
    END IF;
    -- Citus runs each query's part on a worker as the role that runs it (citus#7719): the
    -- roles amba's functions and policies run as must be able to log in there (with no
    -- password: pg_hba decides who may; docs/SCALE-OUT.md).
    ALTER ROLE amba_owner LOGIN;
    ALTER ROLE amba_admin LOGIN;
    ALTER ROLE amba_analyst LOGIN;
    ALTER ROLE amba_client LOGIN;
    EXECUTE amba._distribute_shape_sql();

    -- The small tables, read by every call: a copy on every node.
    PERFORM create_reference_table('amba.experiments');
    PERFORM create_reference_table('amba.weight_versions');
    PERFORM create_reference_table('amba.experiment_history');
    PERFORM create_reference_table('amba.overrides');
    PERFORM create_reference_table('amba.aliases');
    PERFORM create_reference_table('amba.api_keys');
    -- The per-user tables, by user, colocated.
    PERFORM create_distributed_table('amba.assignments', 'user_id');
    PERFORM create_distributed_table('amba.exposures', 'user_id', colocate_with => 'amba.assignments');
    PERFORM create_distributed_table('amba.events', 'user_id', colocate_with => 'amba.assignments');
    PERFORM create_distributed_table('amba.assignment_dimensions', 'user_id', colocate_with => 'amba.assignments');
    ALTER TABLE amba.experiments ADD CONSTRAINT experiments_holdout_id_fkey
        FOREIGN KEY (holdout_id) REFERENCES amba.experiments (id);
    ALTER TABLE amba.weight_versions ADD CONSTRAINT weight_versions_experiment_id_fkey
        FOREIGN KEY (experiment_id) REFERENCES amba.experiments (id) ON DELETE CASCADE;
    ALTER TABLE amba.overrides ADD CONSTRAINT overrides_experiment_id_fkey
        FOREIGN KEY (experiment_id) REFERENCES amba.experiments (id) ON DELETE CASCADE;
    -- Without ON UPDATE CASCADE: Citus never updates a distribution column (user_id).
    ALTER TABLE amba.exposures ADD CONSTRAINT exposures_experiment_id_user_id_fkey
        FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
        ON DELETE CASCADE;
    ALTER TABLE amba.assignment_dimensions ADD CONSTRAINT assignment_dimensions_experiment_id_user_id_fkey
        FOREIGN KEY (experiment_id, user_id) REFERENCES amba.assignments (experiment_id, user_id)
        ON DELETE CASCADE;

    PERFORM amba._owner_may_lock_experiments();

    -- The shards get the tables' privileges (Citus passes GRANTs on to them).
    FOR grant_row IN
        SELECT c.relname, a.privilege_type, a.grantee::regrole::text AS grantee
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.relnamespace = 'amba'::regnamespace AND c.relkind = 'r'
           AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON amba.%I TO %s',
                                  grant_row.privilege_type, grant_row.relname, grant_row.grantee);
    END LOOP;

    PERFORM amba._delegate_hot_path();
    RETURN 'amba is distributed: assignments, exposures and events by user_id over '
        || (SELECT count(*) FROM citus_get_active_worker_nodes()) || ' workers';
END
$$;
REVOKE ALL ON FUNCTION amba_distribute() FROM PUBLIC;
