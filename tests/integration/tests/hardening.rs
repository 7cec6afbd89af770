//! Hardening (SPEC §8, issue 10): no code injection into SECURITY DEFINER functions, an
//! extension schema whose name needs quoting, every statement sees committed definitions,
//! the REPEATABLE READ remove-variant race, a warning for login roles.
//!
//! Each test that plants objects works in its own database, so nothing leaks into the
//! other tests' database.

use amba_integration_tests::{connect, database_url, unique, Db};
use postgres::{Client, NoTls};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn db_error(e: postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

/// One PostgREST request replayed: role switch, claims, headers, path, pre-request, call.
fn http_call(
    c: &mut Client,
    role: &str,
    sub: Option<&str>,
    api_key: &str,
    path: &str,
    call: &str,
) -> Result<String, (String, String)> {
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {role}")).unwrap();
    let claims = match sub {
        Some(s) => serde_json::json!({"role": role, "sub": s}),
        None => serde_json::json!({"role": role}),
    };
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true), set_config('request.headers', $2, true), set_config('request.path', $3, true)",
        &[&claims.to_string(), &serde_json::json!({"x-api-key": api_key}).to_string(), &path],
    )
    .unwrap();
    let out = tx
        .query_one("SELECT amba_api.pre_request()", &[])
        .and_then(|_| tx.query_one(&format!("SELECT ({call})::text"), &[]))
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .map_err(db_error);
    if out.is_ok() {
        tx.commit().unwrap();
    }
    out
}

#[test]
fn look_alikes_in_the_extension_schema_never_run_and_the_schema_may_need_quoting() {
    let db = Db::new("amba_hardening_inject");
    let mut c = db.client();
    c.batch_execute(
        r#"
        CREATE SCHEMA "App-1";
        CREATE EXTENSION amba SCHEMA "App-1";
        -- What a careless or hostile database owner could place beside amba's functions:
        -- exact-name look-alikes that win overload resolution against an `unknown` NULL, and
        -- ones with one more defaulted parameter that make calls ambiguous.
        CREATE TABLE public.injected (what text);
        GRANT INSERT ON public.injected TO PUBLIC;
        CREATE FUNCTION "App-1".amba_track(text, text, jsonb, text) RETURNS timestamptz
            LANGUAGE sql AS $$ INSERT INTO public.injected VALUES ('track ' || current_user) RETURNING now() $$;
        CREATE FUNCTION "App-1".amba_assign(text, text, integer DEFAULT 0) RETURNS text
            LANGUAGE sql AS $$ INSERT INTO public.injected VALUES ('assign ' || current_user) RETURNING 'x' $$;
        CREATE FUNCTION "App-1".amba_expose(text, text, integer DEFAULT 0) RETURNS text
            LANGUAGE sql AS $$ INSERT INTO public.injected VALUES ('expose ' || current_user) RETURNING 'x' $$;
        CREATE FUNCTION "App-1".amba_create_experiment(text, jsonb, text, text, text, integer DEFAULT 0) RETURNS jsonb
            LANGUAGE sql AS $$ INSERT INTO public.injected VALUES ('create ' || current_user) RETURNING '{}'::jsonb $$;
        CREATE FUNCTION "App-1".amba_results(text, text, double precision, integer DEFAULT 0) RETURNS SETOF record
            LANGUAGE sql AS $$ INSERT INTO public.injected VALUES ('results ' || current_user) RETURNING NULL::record $$;
        "#,
    )
    .unwrap();
    let admin_key: String = c
        .query_one(
            r#"SELECT "App-1".amba_create_api_key('admin', 'admin')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let client_key: String = c
        .query_one(r#"SELECT "App-1".amba_create_api_key('web')"#, &[])
        .unwrap()
        .get(0);

    let created = http_call(
        &mut c,
        "amba_admin",
        None,
        &admin_key,
        "/rpc/experiments_create",
        r#"amba_api.experiments_create('inj', '[{"key":"a","weight":1},{"key":"b","weight":1}]'::jsonb)"#,
    );
    assert!(created.is_ok(), "{created:?}");
    for (path, call) in [
        ("/rpc/assign", "amba_api.assign('inj')"),
        ("/rpc/expose", "amba_api.expose('inj')"),
        (
            "/rpc/track",
            "amba_api.track('buy', '{\"amount\": 3}'::jsonb)",
        ),
        ("/rpc/peek", "amba_api.peek('inj')"),
    ] {
        let out = http_call(
            &mut c,
            "amba_client",
            Some("user-1"),
            &client_key,
            path,
            call,
        );
        assert!(out.is_ok(), "{path}: {out:?}");
    }
    let results = http_call(
        &mut c,
        "amba_admin",
        None,
        &admin_key,
        "/rpc/experiments_results",
        "(SELECT count(*) FROM amba_api.experiments_results('inj', 'buy'))",
    );
    assert_eq!(results, Ok("2".to_string()));
    let injected: i64 = c
        .query_one("SELECT count(*) FROM public.injected", &[])
        .unwrap()
        .get(0);
    assert_eq!(injected, 0, "a look-alike ran");

    // The SECURITY DEFINER functions are owned by amba_owner, which is no superuser and
    // cannot log in, and none of them names a function outside pg_catalog and amba.
    let definers = c
        .query(
            "SELECT p.oid::regprocedure::text, r.rolname::text, r.rolsuper, r.rolcanlogin, p.prosrc
               FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
              WHERE p.prosecdef",
            &[],
        )
        .unwrap();
    assert_eq!(
        definers.len(),
        6,
        "assign, expose, track, peek, pre_request, _my_assignments"
    );
    for r in &definers {
        let (name, owner, sup, login, src): (String, String, bool, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert_eq!(
            (owner.as_str(), sup, login),
            ("amba_owner", false, false),
            "{name}"
        );
        assert!(
            !src.contains("App-1") && !src.contains(".amba_"),
            "{name} calls into the extension's schema:\n{src}"
        );
        // CONTRACT 8: only schema-qualified functions, no literal left for overload
        // resolution to type.
        let loose = loose_calls_and_literals(&src);
        assert!(loose.is_empty(), "{name}: {loose:?}\n{src}");
    }
    // The public API works through the quoted schema too (where no look-alike shadows it).
    let v: Option<String> = c
        .query_one(r#"SELECT "App-1".amba_peek('inj', 'user-1')"#, &[])
        .unwrap()
        .get(0);
    assert!(v.is_some());
    let b: f64 = c
        .query_one(r#"SELECT "App-1".amba_bucket('inj', 'user-2')"#, &[])
        .unwrap()
        .get(0);
    assert!((0.0..1.0).contains(&b));
}

#[test]
fn each_statement_sees_committed_definitions_inside_a_transaction() {
    let mut setup = connect();
    let key = unique("fresh_defs");
    setup
        .execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key])
        .unwrap();
    let mut a = connect();
    let mut other = connect();
    let mut tx = a.transaction().unwrap();
    assert_eq!(
        tx.query("SELECT * FROM amba_results($1, 'buy')", &[&key])
            .unwrap()
            .len(),
        2
    );
    // Another session adds a variant and moves all new traffic to it.
    other
        .execute(
            "SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":0},{\"key\":\"b\",\"weight\":0},{\"key\":\"c\",\"weight\":1}]')",
            &[&key],
        )
        .unwrap();
    assert_eq!(
        tx.query("SELECT * FROM amba_results($1, 'buy')", &[&key])
            .unwrap()
            .len(),
        3,
        "results kept the old variants"
    );
    let v: String = tx
        .query_one("SELECT amba_assign($1, 'new-user')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(v, "c", "assign used the old weights");
    let peek: Option<String> = tx
        .query_one("SELECT amba_peek($1, 'other-user')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(peek.as_deref(), Some("c"));
    // Paused by the other session: a new user in the same transaction is refused.
    other
        .execute(
            "SELECT amba_update_experiment($1, status => 'paused')",
            &[&key],
        )
        .unwrap();
    let (state, msg) = db_error(
        tx.query_one("SELECT amba_assign($1, 'late-user')", &[&key])
            .unwrap_err(),
    );
    assert_eq!(state, "55000", "{msg}");
    tx.rollback().unwrap();

    // Deleted by another session: the next statement reports EXPERIMENT_NOT_FOUND.
    let mut tx = a.transaction().unwrap();
    assert_eq!(
        tx.query("SELECT * FROM amba_results($1, 'buy')", &[&key])
            .unwrap()
            .len(),
        3
    );
    other
        .execute("SELECT amba_delete_experiment($1)", &[&key])
        .unwrap();
    let (state, msg) = db_error(
        tx.query("SELECT * FROM amba_results($1, 'buy')", &[&key])
            .unwrap_err(),
    );
    assert_eq!(state, "P0002");
    assert!(msg.starts_with("EXPERIMENT_NOT_FOUND:"), "{msg}");
    tx.rollback().unwrap();
}

/// Waits until the backend `pid` waits on a lock (the interleaving, not a sleep).
fn wait_until_blocked(observer: &mut Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: bool = observer
            .query_one("SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        assert!(Instant::now() < deadline, "backend {pid} never blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A user id whose bucket falls in [lo, hi) for the experiment.
fn user_in_bucket(c: &mut Client, key: &str, lo: f64, hi: f64) -> String {
    c.query_one(
        "SELECT u FROM generate_series(1, 10000) i, LATERAL (SELECT 'rr-' || i AS u) x
          WHERE amba_bucket($1, u) >= $2 AND amba_bucket($1, u) < $3 LIMIT 1",
        &[&key, &lo, &hi],
    )
    .unwrap()
    .get(0)
}

#[test]
fn repeatable_read_removal_and_first_assignment_never_both_commit() {
    let variants =
        "[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"x\",\"weight\":1}]";
    let without_x = "[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]";
    let mut observer = connect();

    // 1. The assignment first: the REPEATABLE READ removal, whose snapshot predates it,
    //    waits for it and then refuses (the latest snapshot sees the assignment).
    let key = unique("rr_assign_first");
    observer
        .execute(
            "SELECT amba_create_experiment($1, $2::text::jsonb)",
            &[&key, &variants],
        )
        .unwrap();
    let user = user_in_bucket(&mut observer, &key, 0.7, 1.0);
    let mut assigner = connect();
    let mut remover = connect();
    remover
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    assigner.batch_execute("BEGIN").unwrap();
    let v: String = assigner
        .query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .unwrap()
        .get(0);
    assert_eq!(v, "x");
    let remover_pid: i32 = remover
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = mpsc::channel();
    let (k, w) = (key.clone(), without_x.to_string());
    let handle = std::thread::spawn(move || {
        let r = remover
            .query_one(
                "SELECT amba_update_experiment($1, $2::text::jsonb)",
                &[&k, &w],
            )
            .map(|_| ());
        tx.send(r.map_err(db_error)).unwrap();
        let _ = remover.batch_execute("ROLLBACK");
    });
    wait_until_blocked(&mut observer, remover_pid);
    assigner.batch_execute("COMMIT").unwrap();
    let (state, msg) = rx
        .recv()
        .unwrap()
        .expect_err("the removal committed beside the assignment");
    handle.join().unwrap();
    assert_eq!(state, "22023", "{msg}");
    assert!(msg.contains("has assignments"), "{msg}");
    let stored: String = observer
        .query_one("SELECT variant FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1 AND a.user_id = $2", &[&key, &user])
        .unwrap()
        .get(0);
    assert_eq!(stored, "x");

    // 2. The removal first: a REPEATABLE READ first assignment whose snapshot still has x
    //    waits for it, then fails with a serialization failure (the client retries).
    let key = unique("rr_remove_first");
    observer
        .execute(
            "SELECT amba_create_experiment($1, $2::text::jsonb)",
            &[&key, &variants],
        )
        .unwrap();
    let user = user_in_bucket(&mut observer, &key, 0.7, 1.0);
    let mut assigner = connect();
    let mut remover = connect();
    assigner
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    // Its snapshot: x is still there (and the definition is cached by this statement).
    let peek: Option<String> = assigner
        .query_one("SELECT amba_peek($1, $2)", &[&key, &user])
        .unwrap()
        .get(0);
    assert_eq!(peek.as_deref(), Some("x"));
    remover.batch_execute("BEGIN").unwrap();
    remover
        .query_one(
            "SELECT amba_update_experiment($1, $2::text::jsonb)",
            &[&key, &without_x],
        )
        .unwrap();
    let assigner_pid: i32 = assigner
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = mpsc::channel();
    let (k, u) = (key.clone(), user.clone());
    let handle = std::thread::spawn(move || {
        let r = assigner
            .query_one("SELECT amba_assign($1, $2)", &[&k, &u])
            .map(|r| r.get::<_, String>(0));
        tx.send(r.map_err(db_error)).unwrap();
        let _ = assigner.batch_execute("ROLLBACK");
    });
    wait_until_blocked(&mut observer, assigner_pid);
    remover.batch_execute("COMMIT").unwrap();
    let (state, msg) = rx
        .recv()
        .unwrap()
        .expect_err("the assignment to a removed variant committed");
    handle.join().unwrap();
    assert_eq!(state, "40001", "{msg}");
    let n: i64 = observer
        .query_one("SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Retried (a new transaction), the user gets a variant that exists.
    let v: String = observer
        .query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .unwrap()
        .get(0);
    assert!(["a", "b"].contains(&v.as_str()));
}

#[test]
fn delete_racing_a_first_assignment_takes_it_along() {
    let mut observer = connect();
    let key = unique("delete_race");
    observer
        .execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key])
        .unwrap();
    let id: i64 = observer
        .query_one("SELECT id FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap()
        .get(0);
    let mut assigner = connect();
    assigner.batch_execute("BEGIN").unwrap();
    assigner
        .query_one("SELECT amba_assign($1, 'racer')", &[&key])
        .unwrap();
    assigner
        .query_one("SELECT amba_expose($1, 'racer')", &[&key])
        .unwrap();
    let mut deleter = connect();
    let deleter_pid: i32 = deleter
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let k = key.clone();
    let handle = std::thread::spawn(move || {
        deleter
            .query_one("SELECT amba_delete_experiment($1)", &[&k])
            .unwrap()
            .get::<_, bool>(0)
    });
    wait_until_blocked(&mut observer, deleter_pid);
    assigner.batch_execute("COMMIT").unwrap();
    assert!(handle.join().unwrap());
    for table in ["assignments", "exposures"] {
        let n: i64 = observer
            .query_one(
                &format!("SELECT count(*) FROM amba.{table} WHERE experiment_id = $1"),
                &[&id],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} left behind");
    }
}

#[test]
fn the_audit_trail_is_append_only_for_admins() {
    let mut c = connect();
    let key = unique("audit");
    c.execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE amba_admin").unwrap();
    for sql in [
        "UPDATE amba.experiment_history SET changed_by = 'forged'",
        "DELETE FROM amba.experiment_history",
        "TRUNCATE amba.experiment_history",
    ] {
        let (state, msg) = db_error(tx.batch_execute(sql).unwrap_err());
        assert_eq!(state, "42501", "{sql}: {msg}");
        tx.rollback().unwrap();
        tx = c.transaction().unwrap();
        tx.batch_execute("SET LOCAL ROLE amba_admin").unwrap();
    }
    // Admins still change experiments, and each change is appended.
    tx.execute(
        "SELECT amba_update_experiment($1, status => 'paused')",
        &[&key],
    )
    .unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM amba_experiment_history($1)", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[test]
fn an_existing_role_that_can_log_in_is_reused_with_a_warning() {
    let db = Db::new("amba_hardening_roles");
    let mut c = db.client();
    let (tx, rx) = mpsc::channel::<String>();
    drop(c);
    let mut config: postgres::Config = database_url().parse().unwrap();
    config.dbname(&db.0);
    let connector = NoTls;
    let mut notices = config
        .notice_callback(move |n| {
            let _ = tx.send(n.message().to_string());
        })
        .connect(connector)
        .unwrap();
    connect()
        .batch_execute("ALTER ROLE amba_analyst LOGIN")
        .unwrap();
    let created = notices.batch_execute("CREATE EXTENSION amba");
    connect()
        .batch_execute("ALTER ROLE amba_analyst NOLOGIN")
        .unwrap();
    created.unwrap();
    let got: Vec<String> = rx.try_iter().collect();
    assert!(
        got.iter()
            .any(|m| m.contains("amba_analyst") && m.contains("can log in")),
        "{got:?}"
    );
    c = db.client();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'amba_analyst' AND NOT rolcanlogin",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn the_bucketing_version_is_stored_and_checked() {
    let mut c = connect();
    let key = unique("bucketing_version");
    c.execute("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let stored: i16 = c
        .query_one(
            "SELECT bucketing_version FROM amba.experiments WHERE key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    // An experiment stored under another bucketing rule is refused, not silently re-bucketed.
    c.execute(
        "UPDATE amba.experiments SET bucketing_version = 2 WHERE key = $1",
        &[&key],
    )
    .unwrap();
    for f in ["amba_assign", "amba_peek"] {
        let (state, msg) = db_error(
            c.query_one(&format!("SELECT {f}($1, 'someone')::text"), &[&key])
                .unwrap_err(),
        );
        assert!(
            state == "22023" && msg.contains("bucketing version 2"),
            "{f}: {state} {msg}"
        );
    }
    // The database is shared: leave no experiment of another rule behind (contract_limits
    // checks every experiment there is of this build's rule).
    c.execute("DELETE FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap();
}

/// In a function body (SQL or PL/pgSQL): each call of a function that is not
/// schema-qualified (`name(` without `schema.` before it; SQL's own constructs such as
/// `coalesce(` aside) and each string literal without a `::type` cast right after it.
/// Comments are skipped; literals' contents are not read as code.
fn loose_calls_and_literals(src: &str) -> Vec<String> {
    const SQL_CONSTRUCTS: [&str; 8] = [
        "coalesce", "nullif", "greatest", "least", "exists", "in", "any", "all",
    ];
    let chars: Vec<char> = src.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' {
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if chars[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            if !(chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':')) {
                found.push(format!(
                    "literal {} without a cast",
                    chars[start..i].iter().collect::<String>()
                ));
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            let qualified = start > 0 && chars[start - 1] == '.';
            if chars.get(i) == Some(&'(') && !qualified && !SQL_CONSTRUCTS.contains(&word.as_str())
            {
                found.push(format!("unqualified call {word}("));
            }
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn the_loose_call_scanner_finds_what_it_must() {
    assert_eq!(
        loose_calls_and_literals(
            "-- sha256( in a comment\n x := pg_catalog.sha256(convert_to(k, 'UTF8'::name)) || 'it''s'; y := coalesce(a, 'b'::text);"
        ),
        ["unqualified call convert_to(", "literal 'it''s' without a cast"]
    );
}
