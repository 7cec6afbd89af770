//! Access control (SPEC §4), probed directly in SQL: every table of schema `amba`,
//! every role, every command, run as that role (`SET LOCAL ROLE` in a transaction that is
//! rolled back), plus who may call which function.
//!
//! Roles probed: amba_admin, amba_analyst, amba_client with and without a JWT `sub`,
//! amba_anon (PostgREST's anonymous role: nothing) and a fresh role with no grants.
//! Each test works on its own experiment, users and key names, so it can run concurrently
//! with other test files against the same database.

use amba_integration_tests::connect;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

use std::sync::Once;

const NOBODY: &str = "amba_probe_nobody";

fn ensure_roles() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let sql = format!(
            "DO $r$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_anon') THEN
                    BEGIN CREATE ROLE amba_anon NOLOGIN;
                    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{NOBODY}') THEN
                    BEGIN CREATE ROLE {NOBODY} NOLOGIN;
                    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END;
                END IF;
            END $r$"
        );
        amba_integration_tests::batch_with_retry(&sql, "the probe role setup");
    });
}

use amba_integration_tests::unique;

/// Who is asking: a role, and the JWT `sub` of the request (client sessions).
#[derive(Clone, Copy, Debug)]
struct Who<'a> {
    role: &'a str,
    sub: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    /// Rows seen (SELECT count) or affected (INSERT/UPDATE/DELETE).
    Rows(i64),
    /// SQLSTATE 42501: permission denied, or a row-level security violation.
    Denied,
}
use Outcome::{Denied, Rows};

/// Runs `sql` as `who` in a transaction that is rolled back. A query returning one bigint
/// reports it; a command reports the rows it affected.
fn probe(db: &mut Client, who: Who, setup: &str, sql: &str) -> Outcome {
    let mut tx = db.transaction().unwrap();
    if !setup.is_empty() {
        tx.batch_execute(setup).unwrap();
    }
    tx.batch_execute(&format!("SET LOCAL ROLE {}", who.role))
        .unwrap();
    let claims = match who.sub {
        Some(sub) => serde_json::json!({ "role": who.role, "sub": sub }).to_string(),
        None => serde_json::json!({ "role": who.role }).to_string(),
    };
    tx.query(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )
    .unwrap();
    let result = if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
        tx.query_one(sql, &[]).map(|r| r.get::<_, i64>(0))
    } else {
        tx.execute(sql, &[]).map(|n| n as i64)
    };
    match result {
        Ok(n) => Rows(n),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code().code() == "42501" => Denied,
            _ => panic!("{who:?} running {sql}: unexpected error {e}"),
        },
    }
}

/// One experiment with three users (a and b assigned and exposed, c only assigned), two
/// events, an audit row and an API key, created by the DB admin.
struct Fixture {
    exp: String,
    id: i64,
    a: String,
    b: String,
    c: String,
    event: String,
    key_name: String,
}

fn fixture(db: &mut Client) -> Fixture {
    ensure_roles();
    let f = Fixture {
        exp: unique("rls_exp"),
        id: 0,
        a: unique("rls_a"),
        b: unique("rls_b"),
        c: unique("rls_c"),
        event: unique("rls_evt"),
        key_name: unique("rls_key"),
    };
    db.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"control\",\"weight\":1},{\"key\":\"treatment\",\"weight\":1}]',
                                       dimensions => ARRAY['plan'])",
        &[&f.exp],
    )
    .unwrap();
    for u in [&f.a, &f.b, &f.c] {
        db.query_one(
            "SELECT amba_assign($1, $2, '{\"plan\": \"pro\"}')",
            &[&f.exp, u],
        )
        .unwrap();
    }
    for u in [&f.a, &f.b] {
        db.query_one("SELECT amba_expose($1, $2)", &[&f.exp, u])
            .unwrap();
        db.query_one("SELECT amba_track($1, $2)", &[u, &f.event])
            .unwrap();
    }
    db.query_one("SELECT amba_create_api_key($1)", &[&f.key_name])
        .unwrap();
    db.query_one(
        "SELECT amba_set_override($1, $2, 'treatment')",
        &[&f.exp, &format!("{}_qa", f.a)],
    )
    .unwrap();
    db.query_one(
        "SELECT amba_alias($1, $2)",
        &[&format!("{}_anon", f.b), &f.b],
    )
    .unwrap();
    let id: i64 = db
        .query_one("SELECT id FROM amba.experiments WHERE key = $1", &[&f.exp])
        .unwrap()
        .get(0);
    Fixture { id, ..f }
}

/// For each table: the fixture's rows (count), and SELECT / INSERT / UPDATE / DELETE probes
/// restricted to the fixture's rows.
struct TableProbe {
    rows: i64,
    select: String,
    insert: String,
    update: String,
    delete: String,
}

fn table_probes(f: &Fixture) -> BTreeMap<&'static str, TableProbe> {
    let id = f.id;
    let (exp, a, b, c, ev, key) = (&f.exp, &f.a, &f.b, &f.c, &f.event, &f.key_name);
    let mut m = BTreeMap::new();
    let mut add = |t: &'static str, rows: i64, filter: String, insert: String, set: &str| {
        m.insert(
            t,
            TableProbe {
                rows,
                select: format!("SELECT count(*) FROM amba.{t} WHERE {filter}"),
                insert,
                update: format!("UPDATE amba.{t} SET {set} WHERE {filter}"),
                delete: format!("DELETE FROM amba.{t} WHERE {filter}"),
            },
        );
    };
    add(
        "experiments",
        1,
        format!("id = {id}"),
        format!("INSERT INTO amba.experiments (key, variant_keys, weights) VALUES ('{exp}_x', '{{a,b}}', '{{1,1}}')"),
        "name = 'renamed'",
    );
    add(
        "weight_versions",
        1,
        format!("experiment_id = {id}"),
        format!("INSERT INTO amba.weight_versions (experiment_id, version, variant_keys, weights) VALUES ({id}, 99, '{{a,b}}', '{{1,1}}')"),
        "weights = weights",
    );
    add(
        "assignments",
        3,
        format!("experiment_id = {id}"),
        format!("INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) VALUES ({id}, '{a}_x', 'control', 1)"),
        "variant = variant",
    );
    add(
        "exposures",
        2,
        format!("experiment_id = {id}"),
        format!("INSERT INTO amba.exposures (experiment_id, user_id) VALUES ({id}, '{c}')"),
        "exposed_at = exposed_at",
    );
    add(
        "events",
        2,
        format!("event = '{ev}'"),
        format!(
            "INSERT INTO amba.events (user_id, event, occurred_at) VALUES ('{b}', '{ev}', now())"
        ),
        "properties = '{}'",
    );
    add(
        "experiment_history",
        2,
        format!("experiment_key = '{exp}'"),
        format!("INSERT INTO amba.experiment_history (experiment_key, changed_by, action) VALUES ('{exp}', 'probe', 'update')"),
        "changed_by = 'forged'",
    );
    add(
        "api_keys",
        1,
        format!("name = '{key}'"),
        format!("INSERT INTO amba.api_keys (name, kind, key_hash) VALUES ('{key}_x', 'admin', sha256(convert_to('{key}', 'UTF8')))"),
        "revoked_at = now()",
    );
    add(
        "overrides",
        1,
        format!("experiment_id = {id}"),
        format!("INSERT INTO amba.overrides (experiment_id, user_id, variant) VALUES ({id}, '{a}_o', 'control')"),
        "variant = variant",
    );
    // Dimension values follow their assignment (foreign key): the probe's insert makes both.
    add(
        "assignment_dimensions",
        3,
        format!("experiment_id = {id}"),
        format!("WITH a AS (INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) VALUES ({id}, '{a}_d', 'control', 1) RETURNING experiment_id, user_id)
                 INSERT INTO amba.assignment_dimensions SELECT experiment_id, user_id, '{{}}' FROM a"),
        "dimension_values = dimension_values",
    );
    add(
        "aliases",
        1,
        format!("user_id = '{b}'"),
        format!("INSERT INTO amba.aliases (anonymous_id, user_id) VALUES ('{a}_anon2', '{b}')"),
        "aliased_at = aliased_at",
    );
    m
}

/// Expected (select, insert, update, delete) for a role on a table.
fn expected(who: &str, table: &str, rows: i64, own_rows: i64) -> [Outcome; 4] {
    match who {
        // The audit trail is append-only, for amba_admin too (SPEC §8).
        "amba_admin" if table == "experiment_history" => [Rows(rows), Rows(1), Denied, Denied],
        "amba_admin" => [Rows(rows), Rows(1), Rows(rows), Rows(rows)],
        "amba_analyst" if table == "api_keys" => [Denied; 4],
        "amba_analyst" => [Rows(rows), Denied, Denied, Denied],
        "amba_client" | "amba_client_no_sub" if table == "assignments" || table == "exposures" => {
            [Rows(own_rows), Denied, Denied, Denied]
        }
        _ => [Denied; 4],
    }
}

#[test]
fn every_table_in_amba_has_row_level_security_and_a_probe() {
    let mut db = connect();
    ensure_roles();
    let rows = db
        .query(
            "SELECT relname::text, relrowsecurity FROM pg_class
              WHERE relnamespace = 'amba'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .unwrap();
    assert!(!rows.is_empty());
    let f = Fixture {
        exp: "x".into(),
        id: 0,
        a: "a".into(),
        b: "b".into(),
        c: "c".into(),
        event: "e".into(),
        key_name: "k".into(),
    };
    let probes = table_probes(&f);
    for r in &rows {
        let (name, rls): (String, bool) = (r.get(0), r.get(1));
        assert!(rls, "row-level security is off on amba.{name}");
        assert!(
            probes.contains_key(name.as_str()),
            "amba.{name} has no access probe in rls.rs"
        );
    }
    assert_eq!(
        rows.len(),
        probes.len(),
        "rls.rs probes a table that no longer exists"
    );
    // No table (or view, sequence) of amba is reachable by PUBLIC.
    let public: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
              WHERE c.relnamespace = 'amba'::regnamespace AND a.grantee = 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(public, 0, "PUBLIC has privileges on relations in amba");
}

#[test]
fn table_access_matrix_for_every_role() {
    let mut db = connect();
    let f = fixture(&mut db);
    let probes = table_probes(&f);
    let scenarios: [(&str, Who, i64); 6] = [
        (
            "amba_admin",
            Who {
                role: "amba_admin",
                sub: None,
            },
            0,
        ),
        (
            "amba_analyst",
            Who {
                role: "amba_analyst",
                sub: None,
            },
            0,
        ),
        (
            "amba_client",
            Who {
                role: "amba_client",
                sub: Some(&f.a),
            },
            1,
        ),
        (
            "amba_client_no_sub",
            Who {
                role: "amba_client",
                sub: None,
            },
            0,
        ),
        (
            "amba_anon",
            Who {
                role: "amba_anon",
                sub: None,
            },
            0,
        ),
        (
            NOBODY,
            Who {
                role: NOBODY,
                sub: Some(&f.a),
            },
            0,
        ),
    ];
    let mut failures = Vec::new();
    for (label, who, own) in scenarios {
        for (table, p) in &probes {
            let got = [
                probe(&mut db, who, "", &p.select),
                probe(&mut db, who, "", &p.insert),
                probe(&mut db, who, "", &p.update),
                probe(&mut db, who, "", &p.delete),
            ];
            let want = expected(label, table, p.rows, own);
            if got != want {
                failures.push(format!("{label} on amba.{table}: got {got:?}, want {want:?} (select, insert, update, delete)"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "access matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn clients_see_only_their_own_rows() {
    let mut db = connect();
    let f = fixture(&mut db);
    for user in [&f.a, &f.b, &f.c] {
        let who = Who {
            role: "amba_client",
            sub: Some(user),
        };
        let others = format!(
            "SELECT count(*) FROM amba.assignments WHERE experiment_id = {} AND user_id <> '{user}'",
            f.id
        );
        assert_eq!(probe(&mut db, who, "", &others), Rows(0));
        let others = format!("SELECT count(*) FROM amba.exposures WHERE user_id <> '{user}'");
        assert_eq!(probe(&mut db, who, "", &others), Rows(0));
        // Unfiltered, too: only the session user's rows, whatever else exists.
        assert_eq!(probe(&mut db, who, "", "SELECT count(*) FROM amba.assignments WHERE user_id <> current_setting('request.jwt.claims')::jsonb->>'sub'"), Rows(0));
        let mine = format!("SELECT count(*) FROM amba.assignments WHERE user_id = '{user}'");
        assert_eq!(probe(&mut db, who, "", &mine), Rows(1));
        // The view of the HTTP surface likewise.
        let view = format!(
            "SELECT count(*) FROM amba_api.my_assignments WHERE experiment_key = '{}'",
            f.exp
        );
        assert_eq!(probe(&mut db, who, "", &view), Rows(1));
    }
    // Without a sub: nothing, directly or through the view.
    let nosub = Who {
        role: "amba_client",
        sub: None,
    };
    assert_eq!(
        probe(&mut db, nosub, "", "SELECT count(*) FROM amba.assignments"),
        Rows(0)
    );
    assert_eq!(
        probe(
            &mut db,
            nosub,
            "",
            "SELECT count(*) FROM amba_api.my_assignments"
        ),
        Rows(0)
    );
    // Only clients read the view.
    for role in ["amba_analyst", "amba_anon", NOBODY] {
        assert_eq!(
            probe(
                &mut db,
                Who {
                    role,
                    sub: Some(&f.a)
                },
                "",
                "SELECT count(*) FROM amba_api.my_assignments"
            ),
            Denied,
            "{role}"
        );
    }
}

/// Row-level security holds even for a role that was granted table privileges by mistake.
#[test]
fn policies_hold_even_with_table_grants() {
    let mut db = connect();
    let f = fixture(&mut db);
    let grant = format!(
        "GRANT USAGE ON SCHEMA amba TO {NOBODY};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA amba TO amba_analyst, amba_client, {NOBODY};"
    );
    let probes = table_probes(&f);
    let cases: [(Who, &str); 3] = [
        (
            Who {
                role: "amba_analyst",
                sub: None,
            },
            "analyst",
        ),
        (
            Who {
                role: "amba_client",
                sub: Some(&f.a),
            },
            "client",
        ),
        (
            Who {
                role: NOBODY,
                sub: Some(&f.a),
            },
            "nobody",
        ),
    ];
    let mut failures = Vec::new();
    for (who, label) in cases {
        for (table, p) in &probes {
            let readable = match label {
                "analyst" => *table != "api_keys",
                _ => false,
            };
            let own = label == "client" && (*table == "assignments" || *table == "exposures");
            let want_select = if readable {
                Rows(p.rows)
            } else if own {
                Rows(1)
            } else {
                Rows(0)
            };
            let got = [
                probe(&mut db, who, &grant, &p.select),
                probe(&mut db, who, &grant, &p.insert),
                probe(&mut db, who, &grant, &p.update),
                probe(&mut db, who, &grant, &p.delete),
            ];
            // No write policy for anyone but amba_admin: inserts violate RLS, updates and
            // deletes see no row to change.
            let want = [want_select, Denied, Rows(0), Rows(0)];
            if got != want {
                failures.push(format!(
                    "{label} on amba.{table}: got {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "policy mismatches:\n{}",
        failures.join("\n")
    );
    // The policies themselves: writes for amba_admin only; analysts read; clients read their own.
    let rows = db
        .query(
            "SELECT tablename::text, policyname::text, roles::text[], cmd::text, coalesce(qual, '') FROM pg_policies
              WHERE schemaname = 'amba'",
            &[],
        )
        .unwrap();
    for r in rows {
        let (table, name, roles, cmd, qual): (String, String, Vec<String>, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        for role in &roles {
            match role.as_str() {
                "amba_admin" => assert!(
                    table != "experiment_history" || cmd == "SELECT" || cmd == "INSERT",
                    "{table}.{name}: the audit trail is append-only"
                ),
                "amba_analyst" => assert_eq!(cmd, "SELECT", "{table}.{name}"),
                // The owner of the SECURITY DEFINER functions: reads, and inserts only
                // where the client endpoints write.
                "amba_owner" => assert!(
                    cmd == "SELECT"
                        || (cmd == "INSERT"
                            && [
                                "assignments",
                                "exposures",
                                "events",
                                "assignment_dimensions"
                            ]
                            .contains(&table.as_str())),
                    "{table}.{name}: {cmd}"
                ),
                "amba_client" => {
                    assert_eq!(cmd, "SELECT", "{table}.{name}");
                    assert!(
                        table == "assignments" || table == "exposures",
                        "{table}.{name}"
                    );
                    assert!(
                        qual.contains("_request_user_id") || qual.contains("_jwt_sub"),
                        "{table}.{name}: {qual}"
                    );
                }
                other => panic!("unexpected policy {table}.{name} for {other}"),
            }
        }
    }
}

fn call(db: &mut Client, who: Who, sql: &str) -> Result<(), String> {
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {}", who.role))
        .unwrap();
    if let Some(sub) = who.sub {
        tx.query(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&serde_json::json!({ "sub": sub, "role": who.role }).to_string()],
        )
        .unwrap();
    }
    tx.query(sql, &[])
        .map(|_| ())
        .map_err(|e| match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        })
}

#[track_caller]
fn assert_denied(r: Result<(), String>, what: &str) {
    match r {
        Err(e) if e.starts_with("42501") => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

fn function_calls(f: &Fixture) -> Vec<(&'static str, String)> {
    let v = r#"'[{"key":"a","weight":1},{"key":"b","weight":1}]'"#;
    let new = unique("rls_new");
    vec![
        (
            "amba_create_experiment",
            format!("SELECT amba_create_experiment('{new}', {v})"),
        ),
        (
            "amba_update_experiment",
            format!(
                "SELECT amba_update_experiment('{}', status => 'paused')",
                f.exp
            ),
        ),
        (
            "amba_delete_experiment",
            format!("SELECT amba_delete_experiment('{}')", f.exp),
        ),
        (
            "amba_assign",
            format!("SELECT amba_assign('{}', '{}')", f.exp, unique("rls_u")),
        ),
        (
            "amba_expose",
            format!("SELECT amba_expose('{}', '{}')", f.exp, f.c),
        ),
        ("amba_track", format!("SELECT amba_track('{}', 'e')", f.a)),
        (
            "amba_create_api_key",
            format!("SELECT amba_create_api_key('{}')", unique("rls_k")),
        ),
        (
            "amba_revoke_api_key",
            format!("SELECT amba_revoke_api_key('{}')", f.key_name),
        ),
        (
            "amba_get_experiment",
            format!("SELECT amba_get_experiment('{}')", f.exp),
        ),
        (
            "amba_list_experiments",
            "SELECT amba_list_experiments()".to_string(),
        ),
        (
            "amba_results",
            format!("SELECT * FROM amba_results('{}', '{}')", f.exp, f.event),
        ),
        (
            "amba_bucket",
            format!("SELECT amba_bucket('{}', 'u')", f.exp),
        ),
        (
            "amba_experiment_history",
            format!("SELECT * FROM amba_experiment_history('{}')", f.exp),
        ),
    ]
}

#[test]
fn clients_cannot_call_the_sql_api_directly() {
    let mut db = connect();
    let f = fixture(&mut db);
    for sub in [Some(f.a.as_str()), None] {
        let who = Who {
            role: "amba_client",
            sub,
        };
        for (name, sql) in function_calls(&f) {
            assert_denied(
                call(&mut db, who, &sql),
                &format!("amba_client calling {name}"),
            );
        }
        // Nor the admin endpoints of the HTTP surface.
        assert_denied(
            call(&mut db, who, "SELECT amba_api.experiments_list()"),
            "amba_client calling experiments_list",
        );
        assert_denied(
            call(
                &mut db,
                who,
                &format!("SELECT amba_api.experiments_delete('{}')", f.exp),
            ),
            "experiments_delete",
        );
    }
    // What a client may execute at all: its four endpoints and the pre-request hook.
    let allowed: BTreeSet<String> = db
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'amba'
              WHERE has_function_privilege('amba_client', p.oid, 'EXECUTE')
                AND p.pronamespace <> 'amba'::regnamespace",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: BTreeSet<String> = [
        "amba_api.assign(text,jsonb)",
        "amba_api.expose(text)",
        "amba_api.peek(text,jsonb)",
        "amba_api.pre_request()",
        "amba_api.track(text,jsonb)",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(allowed, want);
    // Nothing happened.
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM amba.assignments WHERE experiment_id = $1",
            &[&f.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[test]
fn analysts_read_and_compute_but_never_write() {
    let mut db = connect();
    let f = fixture(&mut db);
    let who = Who {
        role: "amba_analyst",
        sub: None,
    };
    let reads = [
        "amba_get_experiment",
        "amba_list_experiments",
        "amba_results",
        "amba_bucket",
        "amba_experiment_history",
    ];
    for (name, sql) in function_calls(&f) {
        let r = call(&mut db, who, &sql);
        if reads.contains(&name) {
            assert!(r.is_ok(), "amba_analyst calling {name}: {r:?}");
        } else {
            assert_denied(r, &format!("amba_analyst calling {name}"));
        }
    }
    // And the reads return the real data.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SET LOCAL ROLE amba_analyst").unwrap();
    let exp: serde_json::Value = serde_json::from_str(
        &tx.query_one("SELECT amba_get_experiment($1)::text", &[&f.exp])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(exp["key"], f.exp.as_str());
    let rows = tx.query("SELECT variant, assigned_count, exposed_count, converted_count FROM amba_results($1, $2)", &[&f.exp, &f.event]).unwrap();
    let assigned: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let exposed: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    let converted: i64 = rows.iter().map(|r| r.get::<_, i64>(3)).sum();
    assert_eq!((assigned, exposed, converted), (3, 2, 2));
    let hist: i64 = tx
        .query_one(
            "SELECT count(*) FROM amba_experiment_history($1)",
            &[&f.exp],
        )
        .unwrap()
        .get(0);
    assert_eq!(hist, 2, "create and override_set");
    let listed: i64 = tx
        .query_one(
            "SELECT count(*) FROM amba_list_experiments() e WHERE e->>'key' = $1",
            &[&f.exp],
        )
        .unwrap()
        .get(0);
    assert_eq!(listed, 1);
    drop(tx);
    // Analysts see no API keys, not even their names.
    assert_eq!(
        probe(&mut db, who, "", "SELECT count(*) FROM amba.api_keys"),
        Denied
    );
    // Nor the admin endpoints.
    assert_denied(
        call(&mut db, who, "SELECT amba_api.experiments_list()"),
        "analyst calling experiments_list",
    );
    // Nothing changed.
    let status: String = db
        .query_one(
            "SELECT status FROM amba.experiments WHERE id = $1",
            &[&f.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
}

#[test]
fn anonymous_and_ungranted_roles_reach_nothing() {
    let mut db = connect();
    let f = fixture(&mut db);
    for role in ["amba_anon", NOBODY] {
        let who = Who {
            role,
            sub: Some(&f.a),
        };
        for (name, sql) in function_calls(&f) {
            assert_denied(call(&mut db, who, &sql), &format!("{role} calling {name}"));
        }
        for sql in [
            format!("SELECT amba_api.assign('{}')", f.exp),
            format!("SELECT amba_api.expose('{}')", f.exp),
            "SELECT amba_api.track('e')".to_string(),
            "SELECT amba_api.experiments_list()".to_string(),
        ] {
            assert_denied(call(&mut db, who, &sql), &format!("{role}: {sql}"));
        }
        // The pre-request hook is the one thing everyone runs (it rejects them itself).
        let r = call(&mut db, who, "SELECT amba_api.pre_request()");
        assert!(
            matches!(&r, Err(e) if e.starts_with("PGRST")),
            "{role}: {r:?}"
        );
    }
    // PostgREST's anonymous role has no privilege of its own, and no membership.
    let (login, member_of): (bool, i64) = {
        let r = db
            .query_one(
                "SELECT r.rolcanlogin, (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid)
                   FROM pg_roles r WHERE r.rolname = 'amba_anon'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!login);
    assert_eq!(member_of, 0);
}

#[test]
fn security_definer_functions_pin_search_path() {
    let mut db = connect();
    let rows = db
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(p.proconfig, '{}')
               FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'amba'
              WHERE p.prosecdef",
            &[],
        )
        .unwrap();
    assert!(
        rows.len() >= 5,
        "expected the HTTP client functions and pre_request among SECURITY DEFINER ones"
    );
    for r in rows {
        let (name, config): (String, Vec<String>) = (r.get(0), r.get(1));
        let path = config
            .iter()
            .find_map(|c| c.strip_prefix("search_path="))
            .unwrap_or_else(|| {
                panic!("SECURITY DEFINER {name} does not pin search_path: {config:?}")
            });
        let schemas: Vec<&str> = path
            .split(',')
            .map(|s| s.trim().trim_matches('"'))
            .collect();
        for s in &schemas {
            assert!(
                ["pg_catalog", "pg_temp", "amba"].contains(s),
                "{name}: search_path {path} includes {s}"
            );
        }
        assert_eq!(
            schemas.last(),
            Some(&"pg_temp"),
            "{name}: pg_temp goes last ({path})"
        );
    }
}

/// Drops the scratch database even when the test fails.
struct ScratchDb(String);

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.0
        ));
    }
}

/// `CREATE EXTENSION amba SCHEMA s`: admins and analysts can still call the functions (the
/// extension grants USAGE on its schema), clients still cannot.
#[test]
fn extension_in_a_custom_schema_stays_usable() {
    ensure_roles();
    let name = unique("amba_rls_scratch");
    let mut admin = connect();
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .unwrap();
    let _guard = ScratchDb(name.clone());
    let mut config: postgres::Config = amba_integration_tests::database_url().parse().unwrap();
    config.dbname(&name);
    let mut db = config.connect(postgres::NoTls).unwrap();
    db.batch_execute("CREATE SCHEMA s; CREATE EXTENSION amba SCHEMA s")
        .unwrap();
    let v = r#"'[{"key":"a","weight":1},{"key":"b","weight":1}]'"#;
    let admin_who = Who {
        role: "amba_admin",
        sub: None,
    };
    let analyst = Who {
        role: "amba_analyst",
        sub: None,
    };
    let client = Who {
        role: "amba_client",
        sub: Some("u"),
    };
    assert_eq!(
        call(
            &mut db,
            admin_who,
            &format!("SELECT s.amba_create_experiment('e', {v})")
        ),
        Ok(())
    );
    db.query_one("SELECT s.amba_create_experiment('e2', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[])
        .unwrap();
    for sql in [
        "SELECT s.amba_get_experiment('e2')",
        "SELECT * FROM s.amba_results('e2', 'buy')",
        "SELECT s.amba_bucket('e2', 'u')",
        "SELECT s.amba_list_experiments()",
        "SELECT * FROM s.amba_experiment_history('e2')",
    ] {
        assert_eq!(call(&mut db, analyst, sql), Ok(()), "analyst: {sql}");
        assert_eq!(call(&mut db, admin_who, sql), Ok(()), "admin: {sql}");
        assert_denied(call(&mut db, client, sql), &format!("client: {sql}"));
    }
    assert_eq!(
        call(&mut db, admin_who, "SELECT s.amba_assign('e2', 'u')"),
        Ok(())
    );
    assert_denied(
        call(&mut db, analyst, "SELECT s.amba_assign('e2', 'u')"),
        "analyst assign",
    );
}
