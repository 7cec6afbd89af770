//! A database at an earlier release keeps working, unchanged, with the current package
//! installed, until its `ALTER EXTENSION amba UPDATE` (README: Upgrades).
//!
//! For every release whose install script is frozen (`sql/amba--<v>.sql`), two databases:
//! - `field`: `CREATE EXTENSION amba VERSION '<v>'`, exactly a database installed at `<v>`
//!   in the field: its C functions bound to `amba`, which is now the loader, forwarding
//!   each call to `$libdir/amba-<v>`;
//! - `own`: the same, with its C functions bound to `amba-<v>` itself, as `<v>` ran
//!   when its own package was installed (the library built from `<v>`'s commit,
//!   scripts/releases.sh; for the version this tree builds, this tree's library).
//!
//! Both are used alike (experiments, assign, expose, track, results, errors, HTTP requests
//! through the PostgREST pre-request hook) and every answer must be the same. Then `field`
//! is updated by another session while the session that used it stays open, both are used
//! alike again, and what an update keeps must not change: every stored user's variant,
//! new users' variants, exposures, events, result counts and statistics, HTTP outcomes.
//! Once 0.3.0 exists, 0.2.0 (frozen at its release) goes through the same, with no change here.

use amba_integration_tests::Db;
use postgres::{Client, SimpleQueryMessage};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Releases with a frozen install script, oldest first.
fn frozen_versions() -> Vec<String> {
    let mut versions: Vec<String> = std::fs::read_dir(root().join("sql"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let v = name.strip_prefix("amba--")?.strip_suffix(".sql")?;
            (!v.contains("--")).then(|| v.to_string())
        })
        .collect();
    versions.sort_by_key(|v| version_key(v));
    versions
}

/// The version this tree builds (the package's default_version).
fn current_version() -> String {
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("version in Cargo.toml")
        .to_string()
}

/// A statement's rows (columns joined by `|`, NULL as `∅`), or its error.
fn outcome(c: &mut Client, sql: &str) -> String {
    match c.simple_query(sql) {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("∅"))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => match e.as_db_error() {
            Some(db) => format!(
                "ERROR {} {} detail={} hint={}",
                db.code().code(),
                db.message(),
                db.detail().unwrap_or(""),
                db.hint().unwrap_or("")
            ),
            None => panic!("{sql}: {e}"),
        },
    }
}

fn one(c: &mut Client, sql: &str) -> String {
    let out = outcome(c, sql);
    assert!(!out.starts_with("ERROR"), "{sql}: {out}");
    out
}

const TWO: &str = r#"[{"key":"control","weight":1},{"key":"treatment","weight":1}]"#;
const REWEIGHTED: &str = r#"[{"key":"control","weight":3},{"key":"treatment","weight":1}]"#;
const THREE: &str = r#"[{"key":"a","weight":2},{"key":"b","weight":1},{"key":"c","weight":1}]"#;
/// Events are dated after every assignment the test makes (results count only those).
const LATER: &str = "'2099-01-02 10:00+00'::timestamptz";

/// Everything 0.1.0 offers, used the way an application and an analyst use it: each step
/// with its answer (or error).
fn use_it(
    c: &mut Client,
    http: &mut dyn FnMut(&mut Client) -> Vec<(String, String)>,
) -> Vec<(String, String)> {
    let steps: Vec<String> = vec![
        format!("SELECT amba_create_experiment('checkout', '{TWO}', 'Checkout', 'One-page checkout') - 'created_at' - 'updated_at'"),
        format!("SELECT amba_create_experiment('three', '{THREE}') - 'created_at' - 'updated_at'"),
        format!("SELECT amba_create_experiment('paused-one', '{TWO}', status => 'paused') - 'created_at' - 'updated_at'"),
        format!("SELECT amba_create_experiment('checkout', '{TWO}')"),
        format!("SELECT amba_create_experiment('bad key!', '{TWO}')"),
        "SELECT i, amba_assign('checkout', 'u' || i) FROM generate_series(1, 60) i ORDER BY i".into(),
        format!("SELECT amba_update_experiment('checkout', '{REWEIGHTED}') - 'created_at' - 'updated_at'"),
        "SELECT i, amba_assign('checkout', 'u' || i) FROM generate_series(1, 150) i ORDER BY i".into(),
        "SELECT i, amba_assign('three', 'u' || i) FROM generate_series(1, 90) i ORDER BY i".into(),
        "SELECT i, amba_bucket('checkout', 'u' || i), amba_bucket('three', 'u' || i) FROM generate_series(1, 20) i ORDER BY i".into(),
        "SELECT i, amba_expose('checkout', 'u' || i) FROM generate_series(1, 150) i WHERE i % 7 <> 0 ORDER BY i".into(),
        "SELECT i, amba_expose('checkout', 'u' || i) FROM generate_series(1, 30) i WHERE i % 7 <> 0 ORDER BY i".into(),
        "SELECT i, amba_expose('three', 'u' || i) FROM generate_series(1, 90) i WHERE i % 5 <> 0 ORDER BY i".into(),
        format!("SELECT i, amba_track('u' || i, 'purchase', jsonb_build_object('amount', i), {LATER} + i * interval '1 minute') FROM generate_series(1, 150) i WHERE i % 3 = 0 ORDER BY i"),
        format!("SELECT amba_track('u4', 'purchase', NULL, {LATER})"),
        "SELECT amba_track('u5', 'visit') IS NOT NULL".into(),
        "SELECT amba_expose('checkout', 'nobody')".into(),
        "SELECT amba_assign('paused-one', 'someone')".into(),
        "SELECT amba_assign('no-such', 'someone')".into(),
        "SELECT amba_assign('bad key!', 'someone')".into(),
        "SELECT amba_assign('checkout', '')".into(),
        "SELECT amba_track('u1', 'purchase', '[1]')".into(),
        "SELECT amba_track('u1', 'purchase', NULL, 'infinity')".into(),
        "SELECT * FROM amba_results('checkout', 'purchase')".into(),
        "SELECT * FROM amba_results('three', 'purchase', 0.1)".into(),
        "SELECT * FROM amba_results('checkout', 'never-happened')".into(),
        "SELECT * FROM amba_results('no-such', 'purchase')".into(),
    ];
    let mut out: Vec<(String, String)> = steps
        .into_iter()
        .map(|s| {
            let o = outcome(c, &s);
            (s, o)
        })
        .collect();
    out.extend(http(c));
    for s in [
        "SELECT action, changed_by, api_key_name, before - 'created_at' - 'updated_at', after - 'created_at' - 'updated_at' FROM amba_experiment_history('three') ORDER BY changed_at",
        "SELECT e.key, a.user_id, a.variant, a.weight_version FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id ORDER BY 1, 2",
        "SELECT e.key, count(*) FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id GROUP BY 1 ORDER BY 1",
        "SELECT user_id, event, occurred_at, properties FROM amba.events WHERE occurred_at > '2090-01-01' ORDER BY 1, 2, 3",
        "SELECT event, count(*) FROM amba.events GROUP BY 1 ORDER BY 1",
    ] {
        out.push((s.to_string(), outcome(c, s)));
    }
    out
}

/// Which API key an HTTP request carries.
#[derive(Clone, Copy)]
enum ApiKey {
    Missing,
    Unknown,
    Client,
    Admin,
}

/// One HTTP request as PostgREST runs it (tests/integration/tests/http_contract.rs has the
/// full replay): a transaction with the request's settings and role, the pre-request hook,
/// then the call. The answer, or the error PostgREST would turn into the response.
fn request(
    c: &mut Client,
    keys: &(String, String),
    role: &str,
    sub: Option<&str>,
    path: &str,
    key: ApiKey,
    call: &str,
) -> String {
    let key = match key {
        ApiKey::Missing => None,
        ApiKey::Unknown => Some("amba_not_a_key".to_string()),
        ApiKey::Client => Some(keys.0.clone()),
        ApiKey::Admin => Some(keys.1.clone()),
    };
    let mut headers = serde_json::Map::new();
    if let Some(k) = key {
        headers.insert("x-api-key".into(), k.into());
    }
    let mut claims = serde_json::Map::new();
    claims.insert("role".into(), role.into());
    if let Some(s) = sub {
        claims.insert("sub".into(), s.into());
    }
    c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .unwrap();
    c.execute(
        "SELECT set_config('search_path', 'amba_api, public', true), set_config('role', $1, true), \
         set_config('request.jwt.claims', $2, true), set_config('request.method', 'POST', true), \
         set_config('request.path', $3, true), set_config('request.headers', $4, true)",
        &[
            &role,
            &serde_json::Value::Object(claims).to_string(),
            &path,
            &serde_json::Value::Object(headers).to_string(),
        ],
    )
    .unwrap();
    let pre = outcome(c, "SELECT amba_api.pre_request()");
    let answer = if pre.starts_with("ERROR") {
        pre
    } else {
        outcome(c, call)
    };
    let end = if answer.starts_with("ERROR") {
        "ROLLBACK"
    } else {
        "COMMIT"
    };
    c.batch_execute(end).unwrap();
    answer
}

/// The HTTP requests of `use_it`.
fn http_requests(c: &mut Client, keys: &(String, String), new_sub: &str) -> Vec<(String, String)> {
    use ApiKey as K;
    let cases: Vec<(&str, Option<&str>, &str, ApiKey, String)> = vec![
        ("amba_client", Some("u1"), "/rpc/assign", K::Client, "SELECT amba_api.assign('checkout')".into()),
        ("amba_client", Some("u1"), "/rpc/expose", K::Client, "SELECT amba_api.expose('checkout')".into()),
        ("amba_client", Some(new_sub), "/rpc/assign", K::Client, "SELECT amba_api.assign('checkout')".into()),
        ("amba_client", Some(new_sub), "/rpc/expose", K::Client, "SELECT amba_api.expose('checkout')".into()),
        ("amba_client", Some(new_sub), "/rpc/track", K::Client,
         "SELECT amba_api.track('signup', '{\"plan\": \"pro\"}')::jsonb - 'occurred_at'".into()),
        ("amba_client", Some(new_sub), "/rpc/expose", K::Client, "SELECT amba_api.expose('paused-one')".into()),
        ("amba_client", Some(new_sub), "/rpc/assign", K::Client, "SELECT amba_api.assign('paused-one')".into()),
        ("amba_client", Some(new_sub), "/my_assignments", K::Client,
         "SELECT experiment_key, variant FROM amba_api.my_assignments ORDER BY 1".into()),
        ("amba_client", None, "/rpc/assign", K::Client, "SELECT amba_api.assign('checkout')".into()),
        ("amba_client", Some("u1"), "/rpc/assign", K::Missing, "SELECT amba_api.assign('checkout')".into()),
        ("amba_client", Some("u1"), "/rpc/assign", K::Unknown, "SELECT amba_api.assign('checkout')".into()),
        ("amba_client", Some("u1"), "/rpc/experiments_list", K::Client, "SELECT count(*) FROM amba_api.experiments_list()".into()),
        ("amba_admin", None, "/rpc/experiments_list", K::Client, "SELECT count(*) FROM amba_api.experiments_list()".into()),
        ("amba_admin", None, "/rpc/experiments_results", K::Admin,
         "SELECT variant, assigned_count, exposed_count, converted_count FROM amba_api.experiments_results('checkout', 'purchase')".into()),
        ("amba_admin", None, "/rpc/experiments_update", K::Admin,
         "SELECT amba_api.experiments_update('three', status => 'paused') - 'created_at' - 'updated_at'".into()),
        ("amba_admin", None, "/rpc/experiments_get", K::Admin, "SELECT amba_api.experiments_get('no-such')".into()),
    ];
    cases
        .into_iter()
        .map(|(role, sub, path, key, call)| {
            let answer = request(c, keys, role, sub, path, key, &call);
            (format!("HTTP {role} sub={sub:?} {path}: {call}"), answer)
        })
        .collect()
}

fn api_keys(c: &mut Client) -> (String, String) {
    let client = one(c, "SELECT amba_create_api_key('web')");
    let admin = one(c, "SELECT amba_create_api_key('ops', 'admin')");
    assert!(client.starts_with("amba_") && admin.starts_with("amba_"));
    (client, admin)
}

/// The C functions of the extension: (library, symbol).
fn c_functions(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT DISTINCT p.probin, p.prosrc FROM pg_proc p
           JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
           JOIN pg_extension x ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = x.oid AND x.extname = 'amba'
          WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c') ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Every symbol the database's schema names exists in `library` with its V1 info record
/// (CREATE FUNCTION ... LANGUAGE c checks both), so no call can miss its function.
fn assert_library_serves(c: &mut Client, library: &str) {
    let functions = c_functions(c);
    assert!(functions.len() >= 5, "{functions:?}");
    for (_, symbol) in functions {
        c.batch_execute("BEGIN").unwrap();
        let created = c.batch_execute(&format!(
            "CREATE FUNCTION pg_temp.amba_probe() RETURNS void AS '{library}', '{symbol}' LANGUAGE c"
        ));
        c.batch_execute("ROLLBACK").unwrap();
        if let Err(e) = created {
            panic!("{library} does not serve {symbol}: {e}");
        }
    }
}

fn assert_same(what: &str, field: &[(String, String)], own: &[(String, String)]) {
    assert_eq!(field.len(), own.len());
    for ((step, a), (_, b)) in field.iter().zip(own) {
        assert_eq!(a, b, "{what}: answers differ for\n  {step}\n--- field (through the loader):\n{a}\n--- own library:\n{b}");
    }
}

/// Parses a number the way PostgreSQL prints a double.
fn close(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => false,
    }
}

/// An error's SQLSTATE and contract code (or, for PostgREST's errors, its status and code).
fn error_kind(answer: &str) -> String {
    let Some(rest) = answer.strip_prefix("ERROR ") else {
        return answer.to_string();
    };
    let (state, message) = rest.split_once(' ').unwrap();
    if state == "PGRST" {
        let body: serde_json::Value =
            serde_json::from_str(message.split(" detail=").next().unwrap()).unwrap();
        let detail = rest
            .split(" detail=")
            .nth(1)
            .unwrap()
            .split(" hint=")
            .next()
            .unwrap();
        let detail: serde_json::Value = serde_json::from_str(detail).unwrap();
        return format!("HTTP {} {}", detail["status"], body["code"]);
    }
    format!("{state} {}", message.split(':').next().unwrap())
}

fn use_it_again(c: &mut Client, keys: &(String, String)) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        // Stored users keep their variant; new users get the one the bucketing gives.
        "SELECT i, amba_assign('checkout', 'u' || i) FROM generate_series(1, 220) i ORDER BY i".to_string(),
        "SELECT i, amba_assign('three', 'u' || i) FROM generate_series(1, 40) i ORDER BY i".into(),
        "SELECT i, amba_expose('checkout', 'u' || i) FROM generate_series(1, 220) i WHERE i % 7 <> 1 ORDER BY i".into(),
        format!("SELECT i, amba_track('u' || i, 'purchase', jsonb_build_object('amount', i), {LATER} + i * interval '1 hour') FROM generate_series(151, 220) i WHERE i % 4 = 0 ORDER BY i"),
        "SELECT amba_bucket('checkout', 'u77')".into(),
        "SELECT amba_expose('checkout', 'nobody')".into(),
        "SELECT amba_assign('paused-one', 'someone')".into(),
        "SELECT amba_assign('no-such', 'someone')".into(),
        "SELECT amba_track('u1', 'purchase', '[1]')".into(),
        "SELECT * FROM amba_results('checkout', 'purchase')".into(),
        "SELECT * FROM amba_results('three', 'purchase', 0.1)".into(),
        "SELECT * FROM amba_results('no-such', 'purchase')".into(),
    ]
    .into_iter()
    .map(|s| {
        let o = outcome(c, &s);
        (s, o)
    })
    .collect();
    out.extend(http_requests(c, keys, "web-user-2"));
    for s in [
        "SELECT e.key, a.user_id, a.variant, a.weight_version FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id ORDER BY 1, 2",
        "SELECT e.key, x.user_id FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id ORDER BY 1, 2",
        "SELECT user_id, event, occurred_at, properties FROM amba.events WHERE occurred_at > '2090-01-01' ORDER BY 1, 2, 3",
    ] {
        out.push((s.to_string(), outcome(c, s)));
    }
    out
}

/// After the update, what the update must keep: rows equal, numbers equal to 1e-9
/// relative (later releases compute p-values more precisely), errors of the same SQLSTATE
/// and contract code (or HTTP status and code); JSON answers equal on 0.1.0's keys.
fn assert_kept(updated: &[(String, String)], old: &[(String, String)]) {
    assert_eq!(updated.len(), old.len());
    for ((step, a), (_, b)) in updated.iter().zip(old) {
        let same = if a.starts_with("ERROR") || b.starts_with("ERROR") {
            error_kind(a) == error_kind(b)
        } else if a.lines().count() == b.lines().count() {
            a.lines().zip(b.lines()).all(|(la, lb)| {
                let (fa, fb): (Vec<&str>, Vec<&str>) =
                    (la.split('|').collect(), lb.split('|').collect());
                fa.len() == fb.len()
                    && fa
                        .iter()
                        .zip(&fb)
                        .all(|(x, y)| close(x, y) || json_keeps(x, y))
            })
        } else {
            false
        };
        assert!(same, "the update changed the answer to\n  {step}\n--- after the update:\n{a}\n--- before, and on the release's own library:\n{b}");
    }
}

/// `new` has every key of the JSON object `old`, with the same value.
fn json_keeps(new: &str, old: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(new),
        serde_json::from_str::<serde_json::Value>(old),
    ) {
        (Ok(serde_json::Value::Object(n)), Ok(serde_json::Value::Object(o))) => {
            o.iter().all(|(k, v)| n.get(k) == Some(v))
        }
        _ => false,
    }
}

fn extversion(c: &mut Client) -> String {
    one(
        c,
        "SELECT extversion FROM pg_extension WHERE extname = 'amba'",
    )
}

fn check_release(version: &str, current: &str) {
    let field_db = Db::new("amba_versions_field");
    let own_db = Db::new("amba_versions_own");
    let mut field = field_db.client();
    let mut own = own_db.client();
    let own_library = format!("amba-{version}");
    for c in [&mut field, &mut own] {
        c.batch_execute(&format!("CREATE EXTENSION amba VERSION '{version}'"))
            .unwrap();
        assert_eq!(extversion(c), version);
    }
    // As every database installed at 0.1.0 or 0.2.0: bound to the library named amba (the
    // loader). Later releases bind to their own library, amba-<version>, themselves.
    let bound: Vec<String> = c_functions(&mut field)
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    let expected = if version_key(version) <= version_key("0.2.0") {
        "amba"
    } else {
        own_library.as_str()
    };
    assert!(bound.iter().all(|l| l == expected), "{bound:?}");
    own.batch_execute(&format!(
        "UPDATE pg_catalog.pg_proc SET probin = '{own_library}' WHERE probin = 'amba'"
    ))
    .unwrap();
    assert!(c_functions(&mut own).iter().all(|(l, _)| *l == own_library));
    assert_library_serves(&mut own, &own_library);

    let field_keys = api_keys(&mut field);
    let own_keys = api_keys(&mut own);
    let before = use_it(&mut field, &mut |c| {
        http_requests(c, &field_keys, "web-user-1")
    });
    let reference = use_it(&mut own, &mut |c| http_requests(c, &own_keys, "web-user-1"));
    assert_same(
        &format!("amba {version} with the {current} package installed"),
        &before,
        &reference,
    );
    // Not vacuous: answers, and errors where errors are due.
    let answer = |step: &str| {
        reference
            .iter()
            .find(|(s, _)| s.contains(step))
            .unwrap()
            .1
            .clone()
    };
    assert!(
        answer("FROM generate_series(1, 150) i ORDER BY i")
            .lines()
            .count()
            == 150
    );
    assert!(answer("amba_expose('checkout', 'nobody')").contains("ASSIGNMENT_REQUIRED:"));
    assert!(
        answer("FROM amba_results('checkout', 'purchase')")
            .lines()
            .count()
            == 2
    );
    let http_ok = reference
        .iter()
        .filter(|(s, a)| s.starts_with("HTTP") && !a.starts_with("ERROR"))
        .count();
    let http_refused = reference
        .iter()
        .filter(|(s, a)| s.starts_with("HTTP") && a.starts_with("ERROR PGRST"))
        .count();
    assert!(
        http_ok >= 6 && http_refused >= 5,
        "{http_ok} {http_refused}: {reference:#?}"
    );

    if version == current {
        return; // nothing to update to yet
    }
    // Another session updates `field` while the one that used it stays open.
    let mut admin = field_db.client();
    admin.batch_execute("ALTER EXTENSION amba UPDATE").unwrap();
    assert_eq!(extversion(&mut admin), current);
    let after = use_it_again(&mut field, &field_keys);
    let old = use_it_again(&mut own, &own_keys);
    assert_kept(&after, &old);
    // The open session is served by the new version's library: it honours an override
    // set by another session (0.1.0 had none), where 0.1.0 would have bucketed the user.
    assert_library_serves(&mut admin, &format!("amba-{current}"));
    let bucketed = one(&mut own, "SELECT amba_assign('checkout', 'qa-1')");
    let other = if bucketed == "control" {
        "treatment"
    } else {
        "control"
    };
    admin
        .batch_execute(&format!(
            "SELECT amba_set_override('checkout', 'qa-1', '{other}')"
        ))
        .unwrap();
    assert_eq!(
        one(&mut field, "SELECT amba_assign('checkout', 'qa-1')"),
        other
    );
    assert_eq!(
        one(
            &mut field_db.client(),
            "SELECT amba_assign('checkout', 'qa-1')"
        ),
        other
    );
}

#[test]
fn every_release_keeps_working_with_the_current_package_until_updated() {
    let current = current_version();
    let versions = frozen_versions();
    assert!(
        versions.contains(&"0.1.0".to_string()) && versions.contains(&"0.2.0".to_string()),
        "{versions:?}"
    );
    for version in versions
        .iter()
        .filter(|v| version_key(v) <= version_key(&current))
    {
        check_release(version, &current);
    }
}
