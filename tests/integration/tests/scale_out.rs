//! Scale-out on Citus (SPEC §9).
//!
//! Without Citus (CI: Citus is not packaged for Debian), `amba_distribute()` is
//! INVALID_ARGUMENT and changes nothing: that test always runs. Every other test needs a
//! Citus coordinator named by `AMBA_CITUS_URL` (a database where `citus` is created and the
//! workers are added; docs/SCALE-OUT.md) and is marked `#[ignore]`, so a run without Citus
//! lists them as ignored, never as passed. With a coordinator, run them with `--ignored`
//! (or all nine with `--include-ignored`):
//!
//! ```sh
//! AMBA_CITUS_URL=postgresql://postgres@127.0.0.1:29700/amba_citus \
//!   cargo test -p amba-integration-tests --test scale_out -- --ignored
//! ```
//!
//! They show distribution, exactly one assignment per user from many connections at once,
//! results equal to a single node's (this suite's own server) on the same rows, and a
//! PostgREST-style client request through the coordinator. Asked to run without
//! `AMBA_CITUS_URL`, they fail (never pass vacuously).

use amba_integration_tests::{unique, Db};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;

#[test]
fn without_citus_amba_distribute_is_invalid_argument_and_changes_nothing() {
    let db = Db::with_amba("amba_no_citus");
    let mut c = db.client();
    let has_citus: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!has_citus);
    let pkey = "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_pkey'";
    let before: String = c.query_one(pkey, &[]).unwrap().get(0);
    let err = c.query_one("SELECT amba_distribute()", &[]).unwrap_err();
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code().code(), "22023");
    assert!(
        db_err.message().starts_with("INVALID_ARGUMENT: "),
        "{}",
        db_err.message()
    );
    assert!(
        db_err
            .message()
            .contains("citus extension is not installed"),
        "{}",
        db_err.message()
    );
    let after: String = c.query_one(pkey, &[]).unwrap().get(0);
    assert_eq!(before, after);
    // No truncate trigger (the mark of a distributed table) on any of amba's tables.
    let triggers: i64 = c
        .query_one("SELECT count(*) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid WHERE r.relnamespace = 'amba'::regnamespace AND t.tgtype & 32 <> 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    // A DB admin's act: none of amba's roles may call it.
    for role in ["amba_admin", "amba_analyst", "amba_client"] {
        let may: bool = c
            .query_one(
                "SELECT has_function_privilege($1, 'amba_distribute()', 'EXECUTE')",
                &[&role],
            )
            .unwrap()
            .get(0);
        assert!(!may, "{role} may call amba_distribute");
    }
}

/// Why the tests below are ignored unless asked for (cargo prints it for each).
const NEEDS_CITUS: &str = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)";

/// The Citus coordinator to test against. The tests calling it are `#[ignore]`d: run with
/// `--ignored` they need `AMBA_CITUS_URL`, and fail without it.
fn citus() -> Client {
    let Ok(url) = std::env::var("AMBA_CITUS_URL") else {
        panic!("{NEEDS_CITUS}");
    };
    let mut c = Client::connect(&url, NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to AMBA_CITUS_URL {url}: {e}"));
    // Once per run (the tests of this file run at the same time).
    static SETUP: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        let workers: i64 = c
            .query_one("SELECT count(*) FROM citus_get_active_worker_nodes()", &[])
            .unwrap()
            .get(0);
        assert!(
            workers >= 2,
            "the Citus cluster at {url} has {workers} workers; the tests need two"
        );
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS amba")
            .unwrap();
        c.query_one("SELECT amba_distribute()", &[]).unwrap();
        *done = true;
    }
    c
}

fn citus_client() -> Client {
    Client::connect(&std::env::var("AMBA_CITUS_URL").unwrap(), NoTls).unwrap()
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn distributed_tables_are_sharded_by_user_and_colocated() {
    let mut c = citus();
    let rows = c
        .query(
            "SELECT logicalrelid::text, partmethod::text, colocationid FROM pg_dist_partition
              WHERE logicalrelid::text LIKE 'amba.%' ORDER BY 1",
            &[],
        )
        .unwrap();
    let by_table: BTreeMap<String, (String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for t in [
        "amba.assignments",
        "amba.exposures",
        "amba.events",
        "amba.assignment_dimensions",
    ] {
        assert_eq!(by_table[t].0, "h", "{t} is hash-distributed");
        assert_eq!(
            by_table[t].1, by_table["amba.assignments"].1,
            "{t} is colocated with assignments"
        );
    }
    for t in [
        "amba.experiments",
        "amba.weight_versions",
        "amba.experiment_history",
        "amba.overrides",
        "amba.aliases",
        "amba.api_keys",
    ] {
        assert_eq!(by_table[t].0, "n", "{t} is a reference table");
    }
    let delegated: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_dist_object o JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND o.objid = p.oid
              WHERE p.proname IN ('amba_assign', 'amba_expose', 'amba_track', 'amba_peek') AND o.distribution_argument_index IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(delegated, 4);
    // The 0.3.0 keys are back after the tables were converted.
    let keys: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conname IN ('experiments_holdout_id_fkey', 'assignment_dimensions_experiment_id_user_id_fkey')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 2);
    // Calling it again is harmless.
    let again: String = c.query_one("SELECT amba_distribute()", &[]).unwrap().get(0);
    assert!(again.contains("already"), "{again}");
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn exactly_one_assignment_per_user_from_many_connections_at_once() {
    let mut c = citus();
    let key = unique("citus_race");
    c.query_one("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let users: Vec<String> = (0..300).map(|i| format!("race-{i}")).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let (key, users, barrier) = (key.clone(), users.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = citus_client();
                barrier.wait();
                // Every thread walks the users from a different place, so first touches race.
                let mut got = BTreeMap::new();
                for i in 0..users.len() {
                    let u = &users[(i + t * 19) % users.len()];
                    let v: String = c
                        .query_one("SELECT amba_assign($1, $2)", &[&key, u])
                        .unwrap()
                        .get(0);
                    got.insert(u.clone(), v);
                }
                got
            })
        })
        .collect();
    let answers: Vec<BTreeMap<String, String>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for a in &answers[1..] {
        assert_eq!(
            a, &answers[0],
            "every connection got the same variant for every user"
        );
    }
    let rows = c
        .query(
            "SELECT a.user_id, count(*), min(a.variant) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
              WHERE e.key = $1 GROUP BY a.user_id",
            &[&key],
        )
        .unwrap();
    assert_eq!(rows.len(), users.len());
    for r in rows {
        let (u, n, v): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(n, 1, "{u} has {n} assignments");
        assert_eq!(answers[0][&u], v);
        // and the variant is the bucket's: sticky and the same as on one node
        let b: f64 = c
            .query_one("SELECT amba_bucket($1, $2)", &[&key, &u])
            .unwrap()
            .get(0);
        assert_eq!(v, if b < 0.5 { "a" } else { "b" });
    }
}

/// The same calls on the Citus coordinator and on one plain node: assignments, exposures and
/// events through the API, with times a day or more apart, so both hold the same rows
/// (the user ids are the experiment's own: events are not per experiment).
fn load_same_rows(c: &mut Client, key: &str) {
    c.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"control\",\"weight\":1},{\"key\":\"treatment\",\"weight\":1}]')",
        &[&key],
    )
    .unwrap();
    c.batch_execute(&format!(
        "SELECT amba_assign('{key}', '{key}-' || g) FROM generate_series(1, 400) g;
         SELECT amba_expose('{key}', '{key}-' || g) FROM generate_series(1, 400) g WHERE g % 3 <> 0;
         SELECT amba_track('{key}-' || g, 'buy', jsonb_build_object('amount', g % 17),
                           now() + (g % 5 - 1) * interval '1 day')
           FROM generate_series(1, 480) g WHERE g % 2 = 0;
         SELECT amba_track('{key}-' || g, 'view', NULL, now()) FROM generate_series(1, 480) g;"
    ))
    .unwrap();
}

fn rows_of(c: &mut impl postgres::GenericClient, sql: &str) -> Vec<Vec<String>> {
    c.simple_query(sql)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn results_equal_a_single_nodes_on_the_same_rows() {
    let mut c = citus();
    let key = unique("citus_same");
    load_same_rows(&mut c, &key);
    let single = Db::with_amba("amba_single");
    let mut s = single.client();
    load_same_rows(&mut s, &key);
    for q in [
        format!("SELECT * FROM amba_results('{key}', 'buy')"),
        format!("SELECT * FROM amba_metric_results('{key}', 'buy', 'amount')"),
        format!("SELECT * FROM amba_metric_results('{key}', 'buy', 'amount', cap_percentile => 0.9)"),
        format!("SELECT day - current_date, variant, exposed_count, converted_count, lift, p_value FROM amba_results_daily('{key}', 'buy')"),
    ] {
        let on_citus = rows_of(&mut c, &q);
        eprintln!("{q}: {} rows", on_citus.len());
        assert!(!on_citus.is_empty(), "{q}");
        assert_eq!(on_citus, rows_of(&mut s, &q), "{q}");
    }
    // The counting is pushed down to the shards: a Citus plan over every shard.
    let plan = rows_of(&mut c, "EXPLAIN SELECT a.variant, count(*), count(x.user_id) FROM amba.assignments a LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id WHERE a.experiment_id = 1 GROUP BY a.variant");
    let text: String = plan
        .iter()
        .map(|r| r[0].clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("Custom Scan (Citus Adaptive)"), "{text}");
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn http_client_requests_work_through_the_coordinator() {
    let mut c = citus();
    let key = unique("citus_http");
    c.query_one("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let api_key: String = c
        .query_one(
            "SELECT amba_create_api_key($1)",
            &[&unique("citus_client_key")],
        )
        .unwrap()
        .get(0);
    // What PostgREST runs per request (see http_contract.rs): one transaction, the settings
    // of the request, the pre-request function, the call.
    let request = |c: &mut Client, user: &str, path: &str, call: &str| -> Vec<Vec<String>> {
        let claims = format!("{{\"role\": \"amba_client\", \"sub\": \"{user}\"}}");
        let headers = format!("{{\"x-api-key\": \"{api_key}\"}}");
        let mut tx = c.transaction().unwrap();
        tx.execute(
            "SELECT set_config('search_path', '\"amba_api\", \"public\"', true), set_config('role', 'amba_client', true), \
             set_config('request.jwt.claims', $1, true), set_config('request.method', 'POST', true), \
             set_config('request.path', $2, true), set_config('request.headers', $3, true), \
             set_config('request.cookies', '{}', true)",
            &[&claims, &path, &headers],
        )
        .unwrap();
        tx.batch_execute("SELECT amba_api.pre_request()").unwrap();
        let rows = rows_of(&mut tx, call);
        tx.commit().unwrap();
        rows
    };
    let v = request(
        &mut c,
        "http-1",
        "/rpc/assign",
        &format!("SELECT amba_api.assign('{key}') ->> 'variant'"),
    );
    let direct: String = c
        .query_one("SELECT amba_assign($1, 'http-1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(v[0][0], direct);
    request(
        &mut c,
        "http-1",
        "/rpc/expose",
        &format!("SELECT amba_api.expose('{key}')"),
    );
    request(
        &mut c,
        "http-2",
        "/rpc/assign",
        &format!("SELECT amba_api.assign('{key}')"),
    );
    // Row-level security through the coordinator: each client sees its own assignment only.
    let mine = request(&mut c, "http-1", "/my_assignments", &format!("SELECT experiment_key, exposed_at IS NOT NULL FROM amba_api.my_assignments WHERE experiment_key = '{key}'"));
    assert_eq!(mine, vec![vec![key.clone(), "t".to_string()]]);
    let theirs = request(&mut c, "http-2", "/my_assignments", &format!("SELECT experiment_key, exposed_at IS NOT NULL FROM amba_api.my_assignments WHERE experiment_key = '{key}'"));
    assert_eq!(theirs, vec![vec![key.clone(), "f".to_string()]]);
}

/// The same identity story on Citus and on one node: a visitor touches two experiments,
/// one of which the account touched first; the login aliases them; later calls with the
/// visitor's id act on the account. Both must end with the same rows.
fn alias_story(c: &mut Client, tag: &str) -> Vec<Vec<String>> {
    let (e1, e2, anon, user) = (
        format!("{tag}_e1"),
        format!("{tag}_e2"),
        format!("{tag}-anon"),
        format!("{tag}-user"),
    );
    for e in [&e1, &e2] {
        c.query_one("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[e]).unwrap();
    }
    c.query_one("SELECT amba_assign($1, $2)", &[&e2, &user])
        .unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&e1, &anon])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&e1, &anon])
        .unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&e2, &anon])
        .unwrap();
    c.query_one("SELECT amba_set_override($1, $2, 'b')", &[&e2, &anon])
        .unwrap();
    for event in ["view", "buy"] {
        c.query_one("SELECT amba_track($1, $2)", &[&anon, &event])
            .unwrap();
    }
    let mut out = rows_of(
        c,
        &format!("SELECT amba_alias('{anon}', '{user}') - 'user_id'"),
    );
    // Later calls with the visitor's id act on the account.
    out.extend(rows_of(
        c,
        &format!("SELECT amba_assign('{e1}', '{anon}') = amba_assign('{e1}', '{user}')"),
    ));
    out.extend(rows_of(
        c,
        &format!("SELECT amba_track('{anon}', 'buy') IS NOT NULL"),
    ));
    out.extend(rows_of(
        c,
        &format!(
            "SELECT replace(e.key, '{tag}', ''), replace(a.user_id, '{tag}', ''), a.variant = amba_bucket_variant, x.exposed_at IS NOT NULL
               FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
               LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id,
               LATERAL (SELECT CASE WHEN amba_bucket(e.key, '{anon}') < 0.5 THEN 'a' ELSE 'b' END AS amba_bucket_variant) v
              WHERE e.key IN ('{e1}', '{e2}') ORDER BY 1, 2"
        ),
    ));
    out.extend(rows_of(c, &format!("SELECT replace(user_id, '{tag}', ''), event, count(*) FROM amba.events WHERE user_id IN ('{anon}', '{user}') GROUP BY 1, 2 ORDER BY 1, 2")));
    out.extend(rows_of(
        c,
        &format!("SELECT replace(user_id, '{tag}', ''), variant FROM amba_list_overrides('{e2}')"),
    ));
    out
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn alias_moves_a_visitor_to_the_account_as_on_one_node() {
    let mut c = citus();
    let tag = unique("citus_alias");
    let on_citus = alias_story(&mut c, &tag);
    let single = Db::with_amba("amba_single_alias");
    let on_one_node = alias_story(&mut single.client(), &tag);
    assert_eq!(on_citus, on_one_node);
    // moved 1 (e1), 1 conflict (e2, the account's earlier assignment wins), 2 events
    assert_eq!(
        on_citus[0][0], r#"{"moved": 1, "events": 2, "conflicts": 1}"#,
        "{on_citus:?}"
    );
    let anon_rows: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.assignments WHERE user_id = $1",
            &[&format!("{tag}-anon")],
        )
        .unwrap()
        .get(0);
    assert_eq!(anon_rows, 0);
}

#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn experiment_admin_works_through_the_coordinator() {
    let mut c = citus();
    let key = unique("citus_admin");
    let k: &str = &key;
    let got =
        |c: &mut Client, sql: &str| -> String { rows_of(c, &sql.replace("$k", k))[0][0].clone() };
    assert_eq!(got(&mut c, "SELECT amba_create_experiment('$k', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]') ->> 'key'"), key);
    assert_eq!(
        got(&mut c, "SELECT amba_get_experiment('$k') ->> 'status'"),
        "active"
    );
    assert_eq!(
        got(
            &mut c,
            "SELECT count(*) FROM amba_list_experiments() j WHERE j ->> 'key' = '$k'"
        ),
        "1"
    );
    assert_eq!(got(&mut c, "SELECT amba_update_experiment('$k', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"c\",\"weight\":8}]') ->> 'weight_version'"), "2");
    // Enough users that one lands in c, then c cannot be removed.
    let in_c = got(&mut c, "SELECT count(*) FROM (SELECT amba_assign('$k', 'adm-' || g) v FROM generate_series(1, 40) g) s WHERE v = 'c'");
    assert_ne!(in_c, "0");
    let err = c
        .query_one(&"SELECT amba_update_experiment('$k', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')".replace("$k", k), &[])
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .starts_with("INVALID_ARGUMENT: variant \"c\" has assignments"),
        "{err}"
    );
    assert_eq!(
        got(
            &mut c,
            "SELECT amba_set_override('$k', 'qa', 'b') ->> 'variant'"
        ),
        "b"
    );
    assert_eq!(got(&mut c, "SELECT amba_assign('$k', 'qa')"), "b");
    assert_eq!(got(&mut c, "SELECT amba_clear_override('$k', 'qa')"), "t");
    assert_eq!(
        got(&mut c, "SELECT count(*) FROM amba_experiment_history('$k')"),
        "4"
    );
    assert_eq!(
        got(
            &mut c,
            "SELECT amba_report('$k', 'buy') LIKE '<!DOCTYPE html>%'"
        ),
        "t"
    );
    assert_eq!(got(&mut c, "SELECT amba_delete_experiment('$k')"), "t");
    assert_eq!(got(&mut c, "SELECT count(*) FROM amba.assignments a WHERE a.user_id LIKE 'adm-%' AND a.experiment_id NOT IN (SELECT id FROM amba.experiments)"), "0");
    assert_eq!(got(&mut c, "SELECT amba_get_experiment('$k') IS NULL"), "t");
}

/// Variant removal holds off first assignments on the workers: while a removal is not yet
/// committed on the coordinator, a delegated first assignment of a user the old weights put
/// in the removed variant waits (on its worker, for the experiment's row); once the removal
/// commits, it follows the new weights. Never both.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn a_removal_holds_off_first_assignments_on_the_workers() {
    let mut c = citus();
    let key = unique("citus_remove");
    c.query_one("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"c\",\"weight\":8}]')", &[&key])
        .unwrap();
    // A user the old weights put in c (bucket ≥ 0.2) and the new ones in b (bucket ≥ 0.5).
    let user: String = c
        .query_one("SELECT 'rm-' || g FROM generate_series(1, 1000) g WHERE amba_bucket($1, 'rm-' || g) >= 0.5 LIMIT 1", &[&key])
        .unwrap()
        .get(0);
    let lock_waits = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT coalesce(sum(result::bigint), 0)::bigint FROM run_command_on_workers(
                 $$SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%amba_assign%'$$)",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(lock_waits(&mut c), 0);
    let mut remover = citus_client();
    let mut tx = remover.transaction().unwrap();
    tx.query_one("SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key]).unwrap();
    let (k, u) = (key.clone(), user.clone());
    let assigner = std::thread::spawn(move || -> String {
        citus_client()
            .query_one("SELECT amba_assign($1, $2)", &[&k, &u])
            .unwrap()
            .get(0)
    });
    // The first assignment is waiting on its worker.
    let mut polls = 0;
    while lock_waits(&mut c) == 0 {
        polls += 1;
        assert!(
            polls < 3000 && !assigner.is_finished(),
            "the first assignment did not wait for the removal"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!assigner.is_finished());
    tx.commit().unwrap();
    assert_eq!(assigner.join().unwrap(), "b");
    let in_c: i64 = c
        .query_one("SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1 AND a.variant = 'c'", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(in_c, 0);
}

/// Backends on the workers waiting on a lock while running a statement like `pattern`.
fn worker_lock_waits(c: &mut Client, pattern: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(result::bigint), 0)::bigint FROM run_command_on_workers(
             format($$SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %L$$, $1::text))",
        &[&pattern],
    )
    .unwrap()
    .get(0)
}

fn wait_for_worker_lock_wait(
    c: &mut Client,
    pattern: &str,
    waiter: &std::thread::JoinHandle<()>,
    what: &str,
) {
    let mut polls = 0;
    while worker_lock_waits(c, pattern) == 0 {
        polls += 1;
        assert!(polls < 3000 && !waiter.is_finished(), "{what} did not wait");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!waiter.is_finished(), "{what} did not wait");
}

fn event_owners(c: &mut Client, event: &str) -> Vec<String> {
    c.query(
        "SELECT user_id FROM amba.events WHERE event = $1",
        &[&event],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// An alias and a delegated call for its anonymous id, on the worker that owns that id,
/// never leave an event behind (the alias's locks on the workers, sql/distribute.sql). An
/// alias in flight holds off the call, which then acts on the user id. A call in flight
/// holds off the alias, which then moves what the call wrote. Both outcomes are shown.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn an_alias_and_a_track_for_its_anonymous_id_on_a_worker_wait_for_each_other() {
    let mut c = citus();
    let tag = unique("citus_alias_race");

    // 1. The alias is in flight; a delegated amba_track for the anonymous id waits for it.
    let (anon, user, event) = (
        format!("{tag}-anon1"),
        format!("{tag}-user1"),
        format!("{tag}-e1"),
    );
    let mut aliaser = citus_client();
    let mut tx = aliaser.transaction().unwrap();
    tx.query_one("SELECT amba_alias($1, $2)", &[&anon, &user])
        .unwrap();
    let (a, e) = (anon.clone(), event.clone());
    let tracker = std::thread::spawn(move || {
        citus_client()
            .execute("SELECT amba_track($1, $2)", &[&a, &e])
            .unwrap();
    });
    wait_for_worker_lock_wait(
        &mut c,
        "%amba_track%",
        &tracker,
        "the track during the alias",
    );
    tx.commit().unwrap();
    tracker.join().unwrap();
    assert_eq!(
        event_owners(&mut c, &event),
        [user.clone()],
        "tracked under the user id"
    );

    // 2. A track is in flight on the worker that owns the anonymous id; the alias waits
    //    for it, then moves the event.
    let (anon, user, event) = (
        format!("{tag}-anon2"),
        format!("{tag}-user2"),
        format!("{tag}-e2"),
    );
    let (host, port): (String, i32) = c
        .query_one(
            "SELECT nodename::text, nodeport FROM pg_dist_shard_placement
              WHERE shardid = get_shard_id_for_distribution_column('amba.events', $1::text)",
            &[&anon],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let coordinator: postgres::Config = std::env::var("AMBA_CITUS_URL").unwrap().parse().unwrap();
    let mut config = postgres::Config::new();
    config
        .host(&host)
        .port(port as u16)
        .user(coordinator.get_user().unwrap_or("postgres"));
    if let Some(db) = coordinator.get_dbname() {
        config.dbname(db);
    }
    let mut worker = config.connect(NoTls).unwrap();
    let on_worker: i32 = worker
        .query_one("SELECT current_setting('port')::int", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        on_worker, port,
        "connected to the worker that owns the anonymous id"
    );
    let mut tracking = worker.transaction().unwrap();
    tracking
        .execute("SELECT amba_track($1, $2)", &[&anon, &event])
        .unwrap();
    let (a, u) = (anon.clone(), user.clone());
    let aliasing = std::thread::spawn(move || {
        citus_client()
            .query_one("SELECT amba_alias($1, $2)", &[&a, &u])
            .unwrap();
    });
    wait_for_worker_lock_wait(&mut c, "%aliases%", &aliasing, "the alias during the track");
    tracking.commit().unwrap();
    aliasing.join().unwrap();
    assert_eq!(
        event_owners(&mut c, &event),
        [user],
        "moved to the user id by the alias"
    );
}

/// A role whose sessions, on every node, report each command Citus sends to another node
/// (`citus.log_remote_commands`, set on the role: Citus passes the role's settings to the
/// workers). A worker's notices reach the client through the coordinator.
fn remote_command_probe() -> (Client, std::sync::mpsc::Receiver<(String, String)>) {
    let mut c = citus();
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amba_remote_probe') THEN
             CREATE ROLE amba_remote_probe SUPERUSER LOGIN;
           END IF;
         END $$;
         ALTER ROLE amba_remote_probe SET citus.log_remote_commands = on;",
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config: postgres::Config = std::env::var("AMBA_CITUS_URL").unwrap().parse().unwrap();
    config.user("amba_remote_probe");
    let probe = config
        .notice_callback(move |n| {
            let _ = tx.send((n.message().to_string(), n.detail().unwrap_or("").to_string()));
        })
        .connect(NoTls)
        .unwrap();
    (probe, rx)
}

/// The port of the worker that holds `user_id`'s shard.
fn owner_port(c: &mut Client, user_id: &str) -> i32 {
    c.query_one(
        "SELECT p.nodeport FROM pg_dist_shard_placement p
          WHERE p.shardid = get_shard_id_for_distribution_column('amba.assignments', $1::text)",
        &[&user_id],
    )
    .unwrap()
    .get(0)
}

/// Issue 32: a hot-path call through the coordinator is one statement sent to the worker
/// that owns the user, which runs everything else locally: no command from a worker to
/// another node, no distributed transaction (BEGIN … assign_distributed_transaction_id),
/// no intermediate result (COPY … format result), no two-phase commit. For new and
/// returning users, first and repeated exposures, peeks, events, overrides, aliases, and
/// the 0.3.0 features (targeting, layers, a holdout, dimensions). An aliased anonymous id
/// is the exception: its rows live with the account, on the account's worker.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn hot_path_calls_are_one_local_transaction_on_the_worker_that_owns_the_user() {
    let mut c = citus();
    let (plain, hold, layered) = (unique("rc_plain"), unique("rc_hold"), unique("rc_layer"));
    let two = "[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]";
    c.query_one("SELECT amba_create_experiment($1, $2::text::jsonb)", &[&plain, &two]).unwrap();
    c.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"out\",\"weight\":1},{\"key\":\"in\",\"weight\":9}]')",
        &[&hold],
    )
    .unwrap();
    c.query_one(
        "SELECT amba_create_experiment($1, $2::text::jsonb, layer => $1, layer_share => 0.5, holdout => $3,
                dimensions => ARRAY['country'], targeting => '{\"country\": \"de\"}')",
        &[&layered, &two, &hold],
    )
    .unwrap();
    let u = unique("rcu");
    let (overridden, anon, account) = (format!("{u}-o"), format!("{u}-anon"), format!("{u}-acct"));
    c.query_one("SELECT amba_set_override($1, $2, 'b')", &[&plain, &overridden]).unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&plain, &anon]).unwrap();
    c.query_one("SELECT amba_alias($1, $2)", &[&anon, &account]).unwrap();

    // A bandit (SPEC §14): its weights are a new weight version after an update.
    let bandit = unique("rc_bandit");
    c.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]',
                bandit => '{\"event\": \"buy\", \"kind\": \"conversion\", \"min_users\": 2}')",
        &[&bandit],
    )
    .unwrap();
    for i in 0..30 {
        let id = format!("{bandit}-{i}");
        c.query_one("SELECT amba_assign($1, $2)", &[&bandit, &id]).unwrap();
        c.query_one("SELECT amba_expose($1, $2)", &[&bandit, &id]).unwrap();
        if i % 3 == 0 {
            c.query_one("SELECT amba_track($1, 'buy')", &[&id]).unwrap();
        }
    }
    let updated: String = c.query_one("SELECT amba_bandit_update($1)::text", &[&bandit]).unwrap().get(0);
    let updated: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(updated["updated"], serde_json::json!(true), "{updated}");
    // A user the layer and the holdout let in (peek writes nothing).
    let enrolled = (0..200)
        .map(|i| format!("{u}-3-{i}"))
        .find(|id| {
            c.query_one("SELECT amba_peek($1, $2, '{\"country\": \"de\"}') IS NOT NULL", &[&layered, id])
                .unwrap()
                .get::<_, bool>(0)
        })
        .expect("someone in 200 passes a half layer and a 10% holdout");

    let (mut probe, notices) = remote_command_probe();
    let calls: Vec<(String, String, String)> = vec![
        ("new user".into(), format!("SELECT amba_assign('{plain}', '{u}-1')"), format!("{u}-1")),
        ("returning user".into(), format!("SELECT amba_assign('{plain}', '{u}-1')"), format!("{u}-1")),
        ("first exposure".into(), format!("SELECT amba_expose('{plain}', '{u}-1')"), format!("{u}-1")),
        ("second exposure".into(), format!("SELECT amba_expose('{plain}', '{u}-1')"), format!("{u}-1")),
        ("peek, assigned".into(), format!("SELECT amba_peek('{plain}', '{u}-1')"), format!("{u}-1")),
        ("peek, new".into(), format!("SELECT amba_peek('{plain}', '{u}-2')"), format!("{u}-2")),
        ("event".into(), format!("SELECT amba_track('{u}-1', 'buy', '{{\"amount\": 3}}')"), format!("{u}-1")),
        ("overridden user".into(), format!("SELECT amba_assign('{plain}', '{overridden}')"), overridden.clone()),
        ("aliased id".into(), format!("SELECT amba_assign('{plain}', '{anon}')"), anon.clone()),
        ("aliased id's exposure".into(), format!("SELECT amba_expose('{plain}', '{anon}')"), anon.clone()),
        ("aliased id's event".into(), format!("SELECT amba_track('{anon}', 'buy')"), anon.clone()),
        (
            "layer, holdout, targeting, dimensions: new user".into(),
            format!("SELECT amba_assign('{layered}', '{enrolled}', '{{\"country\": \"de\"}}')"),
            enrolled.clone(),
        ),
        (
            "layer, holdout: returning user".into(),
            format!("SELECT amba_assign('{layered}', '{enrolled}', '{{\"country\": \"de\"}}')"),
            enrolled.clone(),
        ),
        ("layered exposure".into(), format!("SELECT amba_expose('{layered}', '{enrolled}')"), enrolled.clone()),
        (
            "bandit, after its update: new user".into(),
            format!("SELECT amba_assign('{bandit}', '{u}-5')"),
            format!("{u}-5"),
        ),
        (
            "layered peek".into(),
            format!("SELECT amba_peek('{layered}', '{u}-4', '{{\"country\": \"de\"}}')"),
            format!("{u}-4"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, sql, user) in &calls {
        let _: Vec<_> = notices.try_iter().collect();
        probe.batch_execute(sql).unwrap_or_else(|e| panic!("{what}: {sql}: {e}"));
        let issued: Vec<(String, String)> = notices
            .try_iter()
            .filter(|(message, _)| message.starts_with("issuing "))
            .collect();
        let port = owner_port(&mut c, user);
        let function = sql.split('(').next().unwrap().trim_start_matches("SELECT ");
        let delegated = !issued.is_empty()
            && issued[0].0.starts_with(&format!("issuing SELECT public.{function}("))
            && issued[0].1.contains(&format!(":{port} "));
        let rest = &issued[issued.len().min(1)..];
        let ok = if *user == anon {
            // Not yet one transaction: the anonymous id's worker reads and writes the
            // account's rows on the account's worker (docs/SCALE-OUT.md). It stays one
            // remote transaction there: no two-phase commit, no intermediate result.
            let account_port = owner_port(&mut c, &account);
            rest.iter().all(|(m, _)| {
                m.contains(&format!(":{account_port} "))
                    && !m.contains("PREPARE TRANSACTION")
                    && !m.contains("COMMIT PREPARED")
                    && !m.contains("format result")
            })
        } else {
            rest.is_empty()
        };
        if !(delegated && ok) {
            failures.push(format!("{what} ({sql}), owner port {port}: {issued:#?}"));
        }
    }
    assert!(failures.is_empty(), "calls that were not one command to the owning worker:\n{}", failures.join("\n"));
    // The calls did what they say (the layered user passed through the holdout).
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.assignments a JOIN amba.exposures x USING (experiment_id, user_id)
              WHERE a.experiment_id = (SELECT id FROM amba.experiments WHERE key = $1) AND a.user_id = $2",
            &[&hold, &enrolled],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 1, "assigned and exposed in the holdout");
    let dims: i64 = c
        .query_one("SELECT count(*) FROM amba.assignment_dimensions WHERE user_id = $1", &[&enrolled])
        .unwrap()
        .get(0);
    let in_layered: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.assignments WHERE user_id = $1 AND experiment_id = (SELECT id FROM amba.experiments WHERE key = $2)",
            &[&enrolled, &layered],
        )
        .unwrap()
        .get(0);
    assert_eq!((dims, in_layered), (1, 1), "assigned in the layered experiment, with its dimension row");
}

/// A connection to `db` on one node of the cluster `AMBA_CITUS_URL` names (same user).
fn node_client(host: &str, port: u16, db: &str) -> Client {
    let url: postgres::Config = std::env::var("AMBA_CITUS_URL").unwrap().parse().unwrap();
    // A Config of its own: `host` and `port` on the parsed one would add a second address.
    let mut config = postgres::Config::new();
    config.host(host).port(port).dbname(db);
    if let Some(user) = url.get_user() {
        config.user(user);
    }
    if let Some(password) = url.get_password() {
        config.password(password);
    }
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {host}:{port}/{db}: {e}"))
}

/// A cluster distributed by amba 0.2.0 is updated to 0.3.0 with `ALTER EXTENSION amba
/// UPDATE` on the coordinator, then `amba_distribute()` again: every node is at 0.3.0, the
/// new per-user table is distributed with the others, the hot path is delegated again (the
/// update recreates amba_assign and amba_peek), the 0.2.0 users keep their variants, and
/// the 0.3.0 features work. In a database of its own on every node, dropped at the end.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn a_cluster_distributed_by_0_2_0_updates_to_0_3_0() {
    let mut c = citus();
    let config: postgres::Config = std::env::var("AMBA_CITUS_URL").unwrap().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        other => panic!("AMBA_CITUS_URL must name a TCP host, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let workers: Vec<(String, u16)> = c
        .query("SELECT nodename::text, nodeport FROM pg_dist_node WHERE groupid <> 0 ORDER BY nodeport", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u16))
        .collect();
    assert!(workers.len() >= 2, "{workers:?}");
    let db = "amba_citus_upgrade";
    let mut nodes = vec![(host.clone(), port)];
    nodes.extend(workers.iter().cloned());
    for (h, p) in &nodes {
        let mut admin = node_client(h, *p, "postgres");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        node_client(h, *p, db).batch_execute("CREATE EXTENSION citus").unwrap();
    }
    let mut co = node_client(&host, port, db);
    co.query_one("SELECT citus_set_coordinator_host($1, $2)", &[&host, &(port as i32)]).unwrap();
    for (h, p) in &workers {
        co.query_one("SELECT citus_add_node($1, $2)", &[h, &(*p as i32)]).unwrap();
    }
    // One statement at a time: several in one message are one transaction, and Citus
    // creates the extension on the workers at its commit.
    co.batch_execute("CREATE EXTENSION amba VERSION '0.2.0'").unwrap();
    co.batch_execute("SELECT amba_distribute()").unwrap();
    co.batch_execute(
        "SELECT amba_create_experiment('old', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]');
         SELECT amba_assign('old', 'u' || g) FROM generate_series(1, 60) g;
         SELECT amba_expose('old', 'u' || g) FROM generate_series(1, 25) g;
         SELECT amba_track('u' || g, 'buy') FROM generate_series(1, 60, 3) g;",
    )
    .unwrap();
    let before = rows_of(&mut co, "SELECT variant, exposed_count, converted_count FROM amba_results('old', 'buy') ORDER BY 1");
    let sticky_before = rows_of(&mut co, "SELECT user_id, variant FROM amba.assignments ORDER BY 1");

    co.batch_execute("ALTER EXTENSION amba UPDATE").unwrap();
    for (h, p) in &nodes {
        let v: String = node_client(h, *p, db)
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'amba'", &[])
            .unwrap()
            .get(0);
        assert_eq!(v, "0.3.0", "amba on {h}:{p}");
    }
    let again: String = co.query_one("SELECT amba_distribute()", &[]).unwrap().get(0);
    assert!(again.contains("already"), "{again}");
    let dims: String = co
        .query_one("SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = 'amba.assignment_dimensions'::regclass", &[])
        .unwrap()
        .get(0);
    assert_eq!(dims, "h");
    let delegated: i64 = co
        .query_one(
            "SELECT count(*) FROM pg_dist_object o JOIN pg_proc p ON o.classid = 'pg_proc'::regclass AND o.objid = p.oid
              WHERE p.proname IN ('amba_assign', 'amba_expose', 'amba_track', 'amba_peek') AND o.distribution_argument_index IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(delegated, 4);
    // The update creates the policies of one node again; the lock policy of a distributed
    // amba is back (without it the HTTP path's row lock would take nothing).
    let lock_policy: i64 = co
        .query_one(
            "SELECT count(*) FROM pg_policies WHERE schemaname = 'amba' AND tablename = 'experiments' AND policyname = 'owner_lock'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(lock_policy, 1);

    assert_eq!(rows_of(&mut co, "SELECT variant, exposed_count, converted_count FROM amba_results('old', 'buy') ORDER BY 1"), before);
    let sticky_after: Vec<Vec<String>> = sticky_before
        .iter()
        .map(|r| {
            let v: Option<String> = co.query_one("SELECT amba_assign('old', $1)", &[&r[0]]).unwrap().get(0);
            vec![r[0].clone(), v.unwrap()]
        })
        .collect();
    assert_eq!(sticky_after, sticky_before, "0.2.0 users keep their variants");
    co.batch_execute(
        "SELECT amba_create_experiment('seg', '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]',
                targeting => '{\"country\": \"de\"}', dimensions => ARRAY['country']);
         SELECT amba_assign('seg', 's' || g, '{\"country\": \"de\"}') FROM generate_series(1, 40) g;",
    )
    .unwrap();
    let by: i64 = co
        .query_one("SELECT sum(assigned_count)::int8 FROM amba_results_by('seg', 'buy', 'country') WHERE dimension_value = 'de'", &[])
        .unwrap()
        .get(0);
    assert_eq!(by, 40, "every segment row is found through the coordinator");
    drop(co);
    for (h, p) in &nodes {
        node_client(h, *p, "postgres")
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .unwrap();
    }
}

/// Workers keep experiment definitions between delegated calls (checked by row version on
/// every call): a pause, a re-weighting and an override made through the coordinator are
/// seen by the very next call of a connection whose worker backends hold the old
/// definition.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn definitions_kept_on_the_workers_follow_every_change_at_once() {
    let mut admin = citus();
    let key = unique("wcache");
    admin
        .query_one("SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]')", &[&key])
        .unwrap();
    let mut app = citus_client();
    let users: Vec<String> = (0..20).map(|i| format!("{key}-u{i}")).collect();
    let mut first: Vec<String> = Vec::new();
    for u in &users {
        // Twice: the second call is served from the worker's kept definition.
        app.query_one("SELECT amba_assign($1, $2)", &[&key, u]).unwrap();
        first.push(app.query_one("SELECT amba_assign($1, $2)", &[&key, u]).unwrap().get(0));
    }
    // Paused: no new user, returning users keep their variant.
    admin.query_one("SELECT amba_update_experiment($1, status => 'paused')", &[&key]).unwrap();
    let err = app.query_one("SELECT amba_assign($1, $2)", &[&key, &format!("{key}-new1")]).unwrap_err();
    assert!(err.as_db_error().unwrap().message().starts_with("EXPERIMENT_INACTIVE"), "{err}");
    let again: String = app.query_one("SELECT amba_assign($1, $2)", &[&key, &users[0]]).unwrap().get(0);
    assert_eq!(again, first[0]);
    // Active again, all weight on b: every new user gets b, under the new weight version.
    admin
        .query_one(
            "SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":0},{\"key\":\"b\",\"weight\":1}]', status => 'active')",
            &[&key],
        )
        .unwrap();
    for i in 0..20 {
        let u = format!("{key}-n{i}");
        let v: String = app.query_one("SELECT amba_assign($1, $2)", &[&key, &u]).unwrap().get(0);
        assert_eq!(v, "b", "{u} after the re-weighting");
    }
    let versions: i64 = admin
        .query_one(
            "SELECT count(*) FROM amba.assignments WHERE experiment_id = (SELECT id FROM amba.experiments WHERE key = $1)
              AND user_id LIKE $1 || '-n%' AND weight_version = 2",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(versions, 20);
    // An override for a user assigned a: the next call returns it; cleared, a again.
    let (i, _) = first.iter().enumerate().find(|(_, v)| *v == "a").expect("someone in a");
    admin.query_one("SELECT amba_set_override($1, $2, 'b')", &[&key, &users[i]]).unwrap();
    let v: String = app.query_one("SELECT amba_assign($1, $2)", &[&key, &users[i]]).unwrap().get(0);
    assert_eq!(v, "b", "the override");
    admin.query_one("SELECT amba_clear_override($1, $2)", &[&key, &users[i]]).unwrap();
    let v: String = app.query_one("SELECT amba_assign($1, $2)", &[&key, &users[i]]).unwrap().get(0);
    assert_eq!(v, "a", "the override cleared");
}

/// Guardrails (SPEC §12) and bandits (§14) through the coordinator: each counts over every
/// shard and then changes the experiment's row in the reference table, in one transaction.
/// A guardrail that trips pauses the experiment, and the very next first assignment on a
/// worker is refused; a bandit update writes its weights as a new weight version.
#[test]
#[ignore = "needs a Citus coordinator: set AMBA_CITUS_URL (docs/SCALE-OUT.md)"]
fn guardrails_pause_and_bandits_update_through_the_coordinator() {
    let mut c = citus();
    let key = unique("gr");
    c.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"control\",\"weight\":1},{\"key\":\"treatment\",\"weight\":1}]',
                guardrails => '[{\"event\": \"error\", \"kind\": \"conversion\", \"bad\": \"increase\"}]')",
        &[&key],
    )
    .unwrap();
    // Treatment users mostly fail, control users rarely: the guardrail must trip.
    c.batch_execute(&format!(
        "SELECT amba_assign('{key}', '{key}-u' || g) FROM generate_series(1, 3000) g;
         SELECT amba_expose('{key}', '{key}-u' || g) FROM generate_series(1, 3000) g;
"
    ))
    .unwrap();
    // (Read first: Citus refuses amba_track inside a query it pushes down to the shards.)
    let failing: Vec<String> = c
        .query(
            "SELECT a.user_id FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
              WHERE e.key = $1 AND (a.variant = 'treatment' AND hashtext(a.user_id) % 2 = 0
                                    OR hashtext(a.user_id) % 20 = 0)",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.query_one("SELECT count(amba_track(u, 'error')) FROM unnest($1::text[]) u", &[&failing])
        .unwrap();
    let paused: i64 = c
        .query_one("SELECT count(*) FROM amba_check_guardrails($1) WHERE tripped AND paused", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(paused, 1, "the guardrail tripped and paused the experiment");
    let status: String = c
        .query_one("SELECT status FROM amba.experiments WHERE key = $1", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(status, "paused");
    let err = citus_client()
        .query_one("SELECT amba_assign($1, $2)", &[&key, &format!("{key}-late")])
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().starts_with("EXPERIMENT_INACTIVE"), "{err}");

    let bandit = unique("bd");
    c.query_one(
        "SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1},{\"key\":\"c\",\"weight\":1}]',
                bandit => '{\"event\": \"buy\", \"kind\": \"conversion\", \"min_users\": 5}')",
        &[&bandit],
    )
    .unwrap();
    for i in 0..150 {
        let u = format!("{bandit}-u{i}");
        let v: String = c.query_one("SELECT amba_assign($1, $2)", &[&bandit, &u]).unwrap().get(0);
        c.query_one("SELECT amba_expose($1, $2)", &[&bandit, &u]).unwrap();
        // c converts about 60%, a and b about 14% (not 100%: a zero variance carries no
        // information in the contract's posterior).
        if (v == "c" && i % 5 < 3) || i % 7 == 0 {
            c.query_one("SELECT amba_track($1, 'buy')", &[&u]).unwrap();
        }
    }
    let updated: String = c.query_one("SELECT amba_bandit_update($1)::text", &[&bandit]).unwrap().get(0);
    let updated: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(updated["updated"], serde_json::json!(true), "{updated}");
    let weights: Vec<f64> = c
        .query_one("SELECT weights FROM amba.experiments WHERE key = $1", &[&bandit])
        .unwrap()
        .get(0);
    assert!(weights[2] > weights[0] && weights[2] > weights[1], "the best arm gains: {weights:?}");
    let version: i32 = c
        .query_one("SELECT weight_version FROM amba.experiments WHERE key = $1", &[&bandit])
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
}
