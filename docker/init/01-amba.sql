-- Amba experiments: database setup for the PostgREST deployment (docker-compose.yml).
--
-- Run by the official postgres image's entrypoint on the first start, with psql, as the
-- superuser, in database $POSTGRES_DB. Idempotent: it can be run again on an existing
-- database (psql -v ON_ERROR_STOP=1 -f 01-amba.sql), e.g. to change the password.
--
-- Needs the environment variable AUTHENTICATOR_PASSWORD (psql 15's \getenv).

\getenv authenticator_password AUTHENTICATOR_PASSWORD
\if :{?authenticator_password}
\else
    \echo 'AUTHENTICATOR_PASSWORD is not set: PostgREST could not log in.'
    DO $$ BEGIN RAISE EXCEPTION 'AUTHENTICATOR_PASSWORD must be set'; END $$;
\endif

-- The extension: schema amba (data), the amba_* functions, the roles amba_admin,
-- amba_analyst and amba_client, row-level security, and the HTTP schema amba_api.
CREATE EXTENSION IF NOT EXISTS amba;

-- PostgREST's roles:
--   authenticator  the role PostgREST logs in as (PGRST_DB_URI). NOINHERIT: on its own it
--                  can do nothing; per request PostgREST switches to the JWT's role.
--   amba_anon      the role of requests without a JWT (PGRST_DB_ANON_ROLE): no privileges
--                  at all; amba_api.pre_request answers them 401/403.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_anon') THEN
        CREATE ROLE amba_anon NOLOGIN;
    END IF;
END
$roles$;

ALTER ROLE authenticator WITH LOGIN NOINHERIT PASSWORD :'authenticator_password';
ALTER ROLE amba_anon WITH NOLOGIN;

-- The roles a JWT may name (its "role" claim): amba_client for end users, amba_admin for
-- admin calls (with an admin API key). amba_analyst is for direct SQL, not for HTTP.
GRANT amba_admin, amba_client, amba_anon TO authenticator;

-- Make PostgREST reload its schema cache (harmless when it is not running yet).
NOTIFY pgrst, 'reload schema';
