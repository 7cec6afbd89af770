//! The deployment in docker/ (SPEC §6), checked without a Docker engine:
//! docker-compose.yml parsed with serde_yaml (services and the PostgREST settings of
//! section 5), the Dockerfile's stages, the init SQL's text, and the init SQL run with psql
//! against the test database (twice: it must be idempotent).

use amba_integration_tests::{connect, database_url};
use serde_yaml::Value;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker/docker-compose.yml")).expect("docker-compose.yml is YAML")
}

/// A service's environment as (name, value), from either the map or the list form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), v)
            })
            .collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|e| {
                let e = e.as_str().unwrap();
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => vec![],
        other => panic!("unexpected environment: {other:?}"),
    }
}

fn env_var(service: &Value, name: &str) -> String {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} is not set"))
}

#[test]
fn compose_defines_db_and_postgrest() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    assert!(
        services.contains_key("db") && services.contains_key("postgrest"),
        "{services:?}"
    );

    // db: built from docker/Dockerfile with the repository root as context.
    let db = &c["services"]["db"];
    assert_eq!(db["build"]["context"].as_str(), Some(".."));
    assert_eq!(
        db["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    let compose_dir = repo_root().join("docker");
    let context = compose_dir.join(db["build"]["context"].as_str().unwrap());
    assert!(context
        .join(db["build"]["dockerfile"].as_str().unwrap())
        .is_file());
    assert!(
        context.join("Cargo.toml").is_file(),
        "the build context is the repository root"
    );
    // The init SQL is mounted into the entrypoint's init directory.
    let volumes: Vec<String> = db["volumes"]
        .as_sequence()
        .expect("db volumes")
        .iter()
        .map(|v| v.as_str().expect("short volume syntax").to_string())
        .collect();
    let init = volumes
        .iter()
        .find(|v| v.split(':').nth(1) == Some("/docker-entrypoint-initdb.d"))
        .unwrap_or_else(|| panic!("nothing mounted on /docker-entrypoint-initdb.d: {volumes:?}"));
    let host = compose_dir.join(init.split(':').next().unwrap());
    assert!(
        host.join("01-amba.sql").is_file(),
        "{} has no 01-amba.sql",
        host.display()
    );
    assert!(env_var(db, "POSTGRES_PASSWORD").contains("${POSTGRES_PASSWORD"));
    assert!(env_var(db, "AUTHENTICATOR_PASSWORD").contains("${AUTHENTICATOR_PASSWORD"));
    let database = env_var(db, "POSTGRES_DB");
    assert!(db["healthcheck"]["test"].as_sequence().is_some());

    // postgrest: the official image, configured as SPEC §5 says.
    let pg = &c["services"]["postgrest"];
    let image = pg["image"].as_str().expect("postgrest image");
    assert!(image.starts_with("postgrest/postgrest:"), "{image}");
    let tag = image.split(':').nth(1).unwrap();
    assert!(
        tag.starts_with("v12.") || tag.starts_with("v13.") || tag.starts_with("v14."),
        "PostgREST 12+: {image}"
    );
    assert_eq!(env_var(pg, "PGRST_DB_SCHEMAS"), "amba_api");
    assert_eq!(env_var(pg, "PGRST_DB_PRE_REQUEST"), "amba_api.pre_request");
    assert_eq!(env_var(pg, "PGRST_DB_ANON_ROLE"), "amba_anon");
    let secret = env_var(pg, "PGRST_JWT_SECRET");
    assert!(
        secret.starts_with("${PGRST_JWT_SECRET"),
        "the JWT secret comes from the environment: {secret}"
    );
    let uri = env_var(pg, "PGRST_DB_URI");
    assert!(
        uri.starts_with("postgres://authenticator:")
            || uri.starts_with("postgresql://authenticator:"),
        "{uri}"
    );
    assert!(uri.contains("${AUTHENTICATOR_PASSWORD}"), "{uri}");
    assert!(uri.contains("@db:5432/"), "{uri}");
    assert!(
        uri.ends_with(&format!("/{database}")),
        "PostgREST uses the database the init SQL ran in: {uri}"
    );
    // PostgREST waits for a healthy database.
    assert_eq!(
        pg["depends_on"]["db"]["condition"].as_str(),
        Some("service_healthy")
    );
}

#[test]
fn env_example_names_every_secret() {
    let env = read("docker/.env.example");
    let get = |name: &str| -> String {
        env.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{name}=")))
            .next()
            .unwrap_or_else(|| panic!(".env.example has no {name}"))
            .to_string()
    };
    assert!(!get("POSTGRES_PASSWORD").is_empty());
    assert!(!get("AUTHENTICATOR_PASSWORD").is_empty());
    assert!(
        get("PGRST_JWT_SECRET").len() >= 32,
        "PostgREST needs a JWT secret of at least 32 characters"
    );
    // Every ${VAR:?…} the compose file requires is in the example.
    let compose_text = read("docker/docker-compose.yml");
    for part in compose_text.split("${").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = &part[name.len()..];
        if rest.starts_with(":?") || rest.starts_with('}') {
            assert!(
                env.contains(&format!("{name}=")),
                ".env.example lacks {name}"
            );
        }
    }
    // The real .env stays out of images (and the target dirs out of the build context).
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"target") || lines.contains(&"/target"),
        "{ignore}"
    );
    assert!(lines.contains(&"docker/.env"), "{ignore}");
}

#[test]
fn dockerfile_builds_with_pgrx_into_the_official_postgres_15_image() {
    let dockerfile = read("docker/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let official_15 = |image: &str| {
        let image = image
            .trim_start_matches("docker.io/")
            .trim_start_matches("library/");
        let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
        name == "postgres" && (tag == "15" || tag.starts_with("15-") || tag.starts_with("15."))
    };
    let last = froms.last().unwrap();
    assert!(
        official_15(last[1]),
        "the final stage is FROM the official postgres:15 image, not {}",
        last[1]
    );
    let builder = &froms[0];
    assert!(
        builder.len() >= 4 && builder[2].eq_ignore_ascii_case("AS"),
        "the first stage is a named builder: {builder:?}"
    );
    assert!(
        official_15(builder[1]),
        "the builder uses the same PostgreSQL 15 as the final image: {}",
        builder[1]
    );

    // The builder: cargo-pgrx pinned to the pgrx the crate uses, initialised against PG 15.
    let cargo = read("Cargo.toml");
    let pgrx = cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("pgrx = \""))
        .map(|v| v.trim_end_matches('"').trim_start_matches('='))
        .expect("pgrx dependency in Cargo.toml");
    let arg = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG PGRX_VERSION="))
        .expect("ARG PGRX_VERSION");
    assert_eq!(arg, pgrx, "cargo-pgrx must match the pgrx crate version");
    assert!(dockerfile.contains("cargo install cargo-pgrx --version \"${PGRX_VERSION}\" --locked"));
    assert!(dockerfile.contains("cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config"));
    assert!(dockerfile.contains("cargo pgrx package"));
    assert!(dockerfile.contains("postgresql-server-dev-"));
    // The final stage copies the packaged files over the image's own PostgreSQL tree.
    let final_stage = dockerfile.rsplit_once("\nFROM ").unwrap().1;
    assert!(final_stage.contains("COPY --from=builder"), "{final_stage}");
    assert!(
        !final_stage.contains("cargo"),
        "no toolchain in the final image"
    );
}

#[test]
fn init_sql_creates_the_postgrest_roles() {
    let sql = read("docker/init/01-amba.sql");
    let normalized = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    assert!(normalized.contains("CREATE EXTENSION IF NOT EXISTS AMBA"));
    assert!(normalized.contains("CREATE ROLE AUTHENTICATOR LOGIN NOINHERIT"));
    assert!(normalized.contains("CREATE ROLE AMBA_ANON NOLOGIN"));
    assert!(normalized.contains("GRANT AMBA_ADMIN, AMBA_CLIENT, AMBA_ANON TO AUTHENTICATOR"));
    assert!(
        normalized.contains("PASSWORD :'AUTHENTICATOR_PASSWORD'"),
        "the password comes from the environment"
    );
    assert!(
        !normalized.contains("GRANT AMBA_ANALYST"),
        "HTTP never acts as an analyst"
    );
}

/// psql 15+: $PSQL, or PostgreSQL 15's own, or the one on the PATH. psql comes with
/// postgresql-15 (postgresql-client), which scripts/setup.sh installs: a machine without it
/// is not set up, and this test fails rather than skip the run of the init SQL.
fn psql() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var("PSQL") {
        Ok(p) => vec![PathBuf::from(p)],
        Err(_) => [
            "/usr/lib/postgresql/15/bin/psql",
            "/usr/bin/psql",
            "/usr/local/bin/psql",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("psql not found at {candidates:?} (install postgresql-client-15 or set PSQL)")
        })
        .clone()
}

fn run_init(psql: &Path, password: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(psql);
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &database_url(),
        "-f",
    ])
    .arg(repo_root().join("docker/init/01-amba.sql"));
    match password {
        Some(p) => cmd.env("AUTHENTICATOR_PASSWORD", p),
        None => cmd.env_remove("AUTHENTICATOR_PASSWORD"),
    };
    cmd.output().expect("run psql")
}

/// Runs docker/init/01-amba.sql as the entrypoint would (psql, ON_ERROR_STOP), twice.
#[test]
fn init_sql_runs_idempotently_against_postgres() {
    let psql = psql();
    let version = std::process::Command::new(&psql)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let major: u32 = version
        .split_whitespace()
        .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()))
        .unwrap_or(0);
    // The init SQL uses \getenv, new in psql 15 (the entrypoint of postgres:15 runs psql 15).
    assert!(
        major >= 15,
        "{}: {version:?}; the init SQL needs psql 15 or later",
        psql.display()
    );

    // Without the password it refuses (and changes nothing before refusing).
    let out = run_init(&psql, None);
    assert!(
        !out.status.success(),
        "must fail without AUTHENTICATOR_PASSWORD"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTHENTICATOR_PASSWORD"));

    // The password is only for PostgREST's login: on the trust-auth test cluster it is never
    // checked, so setting it does not disturb other tests.
    for _ in 0..2 {
        let out = run_init(&psql, Some("compose-test-password"));
        assert!(
            out.status.success(),
            "init SQL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut db = connect();
    let r = db
        .query_one(
            "SELECT a.rolcanlogin, a.rolinherit, a.rolpassword IS NOT NULL,
                    n.rolcanlogin,
                    pg_has_role('authenticator', 'amba_admin', 'MEMBER'),
                    pg_has_role('authenticator', 'amba_client', 'MEMBER'),
                    pg_has_role('authenticator', 'amba_anon', 'MEMBER'),
                    pg_has_role('authenticator', 'amba_analyst', 'MEMBER'),
                    -- NOINHERIT: without SET ROLE, authenticator can use none of it.
                    pg_has_role('authenticator', 'amba_admin', 'USAGE'),
                    (SELECT count(*) FROM pg_extension WHERE extname = 'amba')
               FROM pg_authid a, pg_authid n
              WHERE a.rolname = 'authenticator' AND n.rolname = 'amba_anon'",
            &[],
        )
        .unwrap();
    let got: (bool, bool, bool, bool, bool, bool, bool, bool, bool, i64) = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
        r.get(8),
        r.get(9),
    );
    assert_eq!(
        got,
        (true, false, true, false, true, true, true, false, false, 1)
    );
    // amba_anon holds no privilege on anything of the extension.
    let n: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c WHERE c.relnamespace IN ('amba'::regnamespace, 'amba_api'::regnamespace)
                        AND (has_table_privilege('amba_anon', c.oid, 'SELECT,INSERT,UPDATE,DELETE')))
                  + (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'amba'::regnamespace
                        AND has_function_privilege('amba_anon', p.oid, 'EXECUTE'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
