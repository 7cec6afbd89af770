-- Amba experiments: data schema. Everything the extension stores lives in schema `amba`
-- (owned by the extension); public functions are created in the extension's schema.

CREATE SCHEMA amba;
COMMENT ON SCHEMA amba IS 'Amba experiments: data (experiments, assignments, exposures, events, audit, API keys)';

-- The three roles of the contract, and amba_owner, the owner of the SECURITY DEFINER
-- functions (not a superuser: they run with no more than amba's tables need). An existing
-- role is reused; one that can log in is reused with a warning (anyone who logs in as it
-- acts with its amba rights).
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['amba_admin', 'amba_analyst', 'amba_client', 'amba_owner'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        ELSIF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r AND (rolcanlogin OR rolsuper)) THEN
            RAISE WARNING 'amba: the existing role % can log in (or is a superuser); it is reused as is', r
                USING HINT = pg_catalog.format('ALTER ROLE %I NOLOGIN NOSUPERUSER unless that is intended.', r);
        END IF;
    END LOOP;
END
$roles$;

CREATE TABLE amba.experiments (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key            text NOT NULL UNIQUE CHECK (key ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    name           text,
    description    text,
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('draft', 'active', 'paused', 'ended')),
    -- Variants in order, control first; weights parallel to the keys.
    variant_keys   text[] NOT NULL,
    weights        double precision[] NOT NULL,
    -- Bumped whenever the variants or weights change (see amba.weight_versions).
    weight_version integer NOT NULL DEFAULT 1,
    -- Bumped by every update (and by setting or clearing an override).
    revision       bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- The bucketing rule users are assigned with (amba_core::bucket::BUCKETING_VERSION).
    bucketing_version smallint NOT NULL DEFAULT 1,
    CHECK (cardinality(variant_keys) >= 2 AND cardinality(variant_keys) = cardinality(weights)),
    -- Who may be enrolled (SPEC §10): a GrowthBook condition on the attributes the app
    -- passes (NULL: everyone), and the share of eligible users enrolled.
    targeting      jsonb CHECK (jsonb_typeof(targeting) = 'object' AND targeting <> '{}'),
    coverage       double precision NOT NULL DEFAULT 1 CHECK (coverage >= 0 AND coverage <= 1),
    -- Layers (SPEC §11): experiments of one layer own disjoint ranges [start, start + share)
    -- of the layer's unit interval; the start is placed by amba, NULL while ended.
    layer          text CHECK (layer ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    layer_share    double precision CHECK (layer_share > 0 AND layer_share <= 1),
    layer_start    double precision CHECK (layer_start >= 0 AND layer_start < 1),
    CONSTRAINT experiments_layer_share_with_layer CHECK ((layer IS NULL) = (layer_share IS NULL)),
    -- The holdout this experiment's users pass through first (SPEC §11).
    holdout_id     bigint REFERENCES amba.experiments (id),
    CONSTRAINT experiments_not_own_holdout CHECK (holdout_id <> id),
    -- Guardrails (SPEC §12): checked, with their defaults written out; NULL: none.
    guardrails     jsonb CHECK (jsonb_typeof(guardrails) = 'array'),
    -- Segments (SPEC §13): attribute paths whose values are stored with each first
    -- assignment made while they are set (amba.assignment_dimensions); NULL: none.
    dimensions     text[] CHECK (cardinality(dimensions) BETWEEN 1 AND 5),
    -- A bandit (SPEC §14): the metric that steers the weights, and its floor and minimum.
    bandit         jsonb CHECK (jsonb_typeof(bandit) = 'object')
);
CREATE INDEX experiments_layer ON amba.experiments (layer) WHERE layer IS NOT NULL;
CREATE INDEX experiments_holdout ON amba.experiments (holdout_id) WHERE holdout_id IS NOT NULL;

-- Every set of weights an experiment has had, so the sample-ratio test can compare each
-- user with the weights in force when they were assigned.
CREATE TABLE amba.weight_versions (
    experiment_id bigint NOT NULL REFERENCES amba.experiments (id) ON DELETE CASCADE,
    version       integer NOT NULL,
    variant_keys  text[] NOT NULL,
    weights       double precision[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, version)
);

-- User ids are opaque: they are compared with the "C" collation (bytewise), so sorting
-- and merging them for results, and every index lookup on the hot path, cost a memcmp
-- rather than a locale-aware comparison. Equality is the same under any deterministic
-- collation, so no answer changes.
-- No foreign key to amba.experiments: its check would lock the experiment's row for every
-- first assignment. Deletes take assignments with them explicitly, under the experiment's
-- advisory lock (see src/locks.rs).
CREATE TABLE amba.assignments (
    experiment_id  bigint NOT NULL,
    user_id        text COLLATE "C" NOT NULL,
    variant        text NOT NULL,
    weight_version integer NOT NULL,
    assigned_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, user_id)
);

CREATE TABLE amba.exposures (
    experiment_id bigint NOT NULL,
    user_id       text COLLATE "C" NOT NULL,
    exposed_at    timestamptz NOT NULL DEFAULT now(),   -- the first exposure
    PRIMARY KEY (experiment_id, user_id),
    FOREIGN KEY (experiment_id, user_id)
        REFERENCES amba.assignments (experiment_id, user_id) ON DELETE CASCADE ON UPDATE CASCADE
);

-- The segment values of an assignment (SPEC §13): the experiment's dimensions at the
-- user's first amba_assign, from the attributes given, as text ({"country": "DE"}; an
-- absent attribute is absent). Written once, never changed; only experiments with
-- dimensions have rows here, so the others' assignments stay as they are. They follow the
-- assignment (aliasing moves it; deleting it deletes them).
CREATE TABLE amba.assignment_dimensions (
    experiment_id    bigint NOT NULL,
    user_id          text COLLATE "C" NOT NULL,
    dimension_values jsonb NOT NULL CHECK (jsonb_typeof(dimension_values) = 'object'),
    PRIMARY KEY (experiment_id, user_id),
    FOREIGN KEY (experiment_id, user_id)
        REFERENCES amba.assignments (experiment_id, user_id) ON DELETE CASCADE ON UPDATE CASCADE
);

-- Events are not tied to experiments: one conversion can count in many experiments.
CREATE TABLE amba.events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text COLLATE "C" NOT NULL,
    event       text NOT NULL,
    occurred_at timestamptz NOT NULL,
    properties  jsonb CHECK (properties IS NULL OR jsonb_typeof(properties) = 'object')
);
-- amba_results reads each user's latest occurrence of one event: an index-only scan.
CREATE INDEX events_event_user_time ON amba.events (event, user_id, occurred_at);

CREATE TABLE amba.experiment_history (
    history_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_key text NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    changed_by     text NOT NULL,
    api_key_name   text,
    jwt_sub        text,
    action         text NOT NULL
                   CHECK (action IN ('create', 'update', 'delete', 'override_set', 'override_clear',
                                     'auto_pause', 'bandit_update')),
    before         jsonb,
    after          jsonb
);
CREATE INDEX experiment_history_key ON amba.experiment_history (experiment_key, history_id);

-- Overrides (SPEC §3d): the variant a user gets whatever the status; nothing is
-- written for them and results leave them out while the override exists.
CREATE TABLE amba.overrides (
    experiment_id bigint NOT NULL REFERENCES amba.experiments (id) ON DELETE CASCADE,
    user_id       text COLLATE "C" NOT NULL,
    variant       text NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, user_id)
);

-- Identities (SPEC §3d): anonymous_id now acts as user_id.
CREATE TABLE amba.aliases (
    anonymous_id text COLLATE "C" PRIMARY KEY,
    user_id      text COLLATE "C" NOT NULL,
    aliased_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (anonymous_id <> user_id)
);
CREATE INDEX aliases_user_id ON amba.aliases (user_id);

-- API keys for the HTTP surface: only a SHA-256 of the plaintext is stored.
CREATE TABLE amba.api_keys (
    name       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('client', 'admin')),
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- pg_dump skips extension tables unless told: mark them (and their identity sequences) as
-- configuration, so a dump/restore keeps every experiment, assignment and event.
DO $config_dump$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['experiments', 'weight_versions', 'assignments', 'exposures',
                             'events', 'experiment_history', 'api_keys', 'overrides', 'aliases',
                             'assignment_dimensions']
    LOOP
        PERFORM pg_catalog.pg_extension_config_dump(pg_catalog.format('amba.%I', t)::regclass, '');
    END LOOP;
    FOREACH t IN ARRAY ARRAY['experiments.id', 'events.event_id', 'experiment_history.history_id']
    LOOP
        PERFORM pg_catalog.pg_extension_config_dump(
            pg_get_serial_sequence('amba.' || split_part(t, '.', 1), split_part(t, '.', 2))::regclass, '');
    END LOOP;
END
$config_dump$;
