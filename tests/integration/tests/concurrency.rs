//! Races against a running server with the installed extension (DATABASE_URL):
//! concurrent first assignments, re-weighting and variant removal during the race, and
//! cache invalidation across backends.

use amba_integration_tests::connect;
use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;

const CONNECTIONS: usize = 16;
const USERS: usize = 400;

fn unique_key(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("it_{name}_{}_{nanos}", std::process::id())
}

fn create(key: &str, variants: &str) {
    connect()
        .execute("SELECT amba_create_experiment($1, $2::text::jsonb)", &[&key, &variants])
        .unwrap();
}

/// Every (user, variant) each connection got, racing on the same users.
fn race(key: &str, users: usize, reweigh: bool) -> Vec<HashMap<String, String>> {
    let barrier = Arc::new(Barrier::new(CONNECTIONS + usize::from(reweigh)));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..CONNECTIONS {
        let (barrier, key) = (barrier.clone(), key.to_string());
        handles.push(thread::spawn(move || {
            let mut client = connect();
            let stmt = client.prepare("SELECT amba_assign($1, $2)").unwrap();
            barrier.wait();
            let mut seen = HashMap::new();
            // Each connection walks the users from a different starting point.
            for i in 0..users {
                let user = format!("user-{}", (i + t * 37) % users);
                let variant: String = client.query_one(&stmt, &[&key, &user]).unwrap().get(0);
                seen.insert(user, variant);
            }
            seen
        }));
    }
    let reweigher = reweigh.then(|| {
        let (barrier, key, done) = (barrier.clone(), key.to_string(), done.clone());
        thread::spawn(move || {
            let mut client = connect();
            barrier.wait();
            let mut n = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let w = (n % 9) + 1;
                let variants = format!(
                    r#"[{{"key":"control","weight":{w}}},{{"key":"treatment","weight":{}}},{{"key":"third","weight":1}}]"#,
                    10 - w
                );
                client
                    .execute("SELECT amba_update_experiment($1, $2::text::jsonb)", &[&key, &variants])
                    .unwrap();
                n += 1;
            }
            n
        })
    });
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(r) = reweigher {
        let updates = r.join().unwrap();
        assert!(updates > 1, "the re-weighting thread should have run during the race");
    }
    results
}

fn assert_one_row_and_one_variant_per_user(key: &str, results: &[HashMap<String, String>], users: usize) {
    let mut client = connect();
    let rows = client
        .query(
            "SELECT a.user_id, a.variant FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1",
            &[&key],
        )
        .unwrap();
    assert_eq!(rows.len(), users, "exactly one stored assignment per user");
    let stored: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (t, seen) in results.iter().enumerate() {
        assert_eq!(seen.len(), users);
        for (user, variant) in seen {
            assert_eq!(&stored[user], variant, "connection {t} got another variant for {user}");
        }
    }
}

/// Each stored variant must be what the published rule gives for the weights of the
/// version the assignment recorded: assignment saw a consistent variant list.
fn assert_assignments_follow_their_weight_version(key: &str) {
    let mut client = connect();
    let wrong: i64 = client
        .query_one(
            "WITH a AS (
               SELECT a.user_id, a.variant, w.variant_keys, w.weights, amba_bucket(e.key, a.user_id) AS b
                 FROM amba.assignments a
                 JOIN amba.experiments e ON e.id = a.experiment_id
                 JOIN amba.weight_versions w ON w.experiment_id = a.experiment_id AND w.version = a.weight_version
                WHERE e.key = $1),
             pick AS (
               SELECT a.user_id, a.variant,
                      (SELECT k FROM unnest(a.variant_keys, a.weights) WITH ORDINALITY AS v(k, w, i)
                        WHERE a.b < (SELECT sum(w2) FROM unnest(a.weights) WITH ORDINALITY AS x(w2, j) WHERE j <= i)
                                    / (SELECT sum(w3) FROM unnest(a.weights) AS y(w3))
                        ORDER BY i LIMIT 1) AS expected
                 FROM a)
             SELECT count(*) FROM pick WHERE variant IS DISTINCT FROM expected",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "assignments that do not follow the weights of their recorded version");
}

#[test]
fn sixteen_connections_racing_first_assignments_store_one_row_per_user() {
    let key = unique_key("race");
    create(&key, r#"[{"key":"control","weight":1},{"key":"treatment","weight":1},{"key":"third","weight":1}]"#);
    let results = race(&key, USERS, false);
    assert_one_row_and_one_variant_per_user(&key, &results, USERS);
    assert_assignments_follow_their_weight_version(&key);
}

#[test]
fn reweighting_during_the_race_moves_nobody_and_keeps_allocations_consistent() {
    let key = unique_key("reweigh");
    create(&key, r#"[{"key":"control","weight":5},{"key":"treatment","weight":5},{"key":"third","weight":1}]"#);
    let results = race(&key, USERS, true);
    assert_one_row_and_one_variant_per_user(&key, &results, USERS);
    assert_assignments_follow_their_weight_version(&key);
    // Several weight versions were in force during the race.
    let mut client = connect();
    let versions: i64 = client
        .query_one(
            "SELECT count(DISTINCT a.weight_version) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert!(versions >= 2, "only {versions} weight version(s) were used during the race");
    // Later calls from fresh connections return the same variants.
    let again = race(&key, USERS, false);
    assert_one_row_and_one_variant_per_user(&key, &again, USERS);
    assert_eq!(results[0], again[0]);
}

#[test]
fn removing_a_variant_never_succeeds_alongside_a_first_assignment_to_it() {
    for round in 0..5 {
        let key = unique_key(&format!("remove{round}"));
        create(&key, r#"[{"key":"control","weight":1},{"key":"doomed","weight":1}]"#);
        // Make the update wait on assignments in flight, and vice versa, many times.
        let barrier = Arc::new(Barrier::new(5));
        let mut assigners = Vec::new();
        for t in 0..4 {
            let (barrier, key) = (barrier.clone(), key.clone());
            assigners.push(thread::spawn(move || {
                let mut client = connect();
                barrier.wait();
                for i in 0..150 {
                    let user = format!("r{t}-{i}");
                    client.query_one("SELECT amba_assign($1, $2)", &[&key, &user]).unwrap();
                }
            }));
        }
        let remover = {
            let key = key.clone();
            thread::spawn(move || {
                let mut client = connect();
                barrier.wait();
                let mut removed = false;
                for _ in 0..200 {
                    let r = client.execute(
                        "SELECT amba_update_experiment($1, '[{\"key\":\"control\",\"weight\":1}, {\"key\":\"other\",\"weight\":1}]')",
                        &[&key],
                    );
                    match r {
                        Ok(_) => {
                            removed = true;
                            break;
                        }
                        Err(e) => {
                            let db = e.as_db_error().expect("a database error");
                            assert_eq!(db.code().code(), "22023", "{db:?}");
                            assert!(db.message().starts_with("INVALID_ARGUMENT: "), "{}", db.message());
                        }
                    }
                }
                removed
            })
        };
        for a in assigners {
            a.join().unwrap();
        }
        let removed = remover.join().unwrap();
        let mut client = connect();
        let doomed: i64 = client
            .query_one(
                "SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1 AND a.variant = 'doomed'",
                &[&key],
            )
            .unwrap()
            .get(0);
        let listed: bool = client
            .query_one("SELECT amba_get_experiment($1)->'variants' @> '[{\"key\":\"doomed\"}]'", &[&key])
            .unwrap()
            .get(0);
        assert!(!(removed && doomed > 0), "round {round}: variant removed although {doomed} users were assigned to it");
        assert_eq!(listed, !removed);
    }
}

#[test]
fn other_backends_see_updates_at_their_next_call() {
    let key = unique_key("inval");
    create(&key, r#"[{"key":"control","weight":1},{"key":"treatment","weight":1}]"#);
    let mut reader = connect();
    let mut writer = connect();
    // The reader caches the definition.
    reader.query_one("SELECT amba_assign($1, 'first')", &[&key]).unwrap();
    writer.execute("SELECT amba_update_experiment($1, status => 'paused')", &[&key]).unwrap();
    let err = reader.query_one("SELECT amba_assign($1, 'second')", &[&key]).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().starts_with("EXPERIMENT_INACTIVE: "));
    writer
        .execute(
            "SELECT amba_update_experiment($1, '[{\"key\":\"control\",\"weight\":0},{\"key\":\"treatment\",\"weight\":1}]', 'active')",
            &[&key],
        )
        .unwrap();
    for i in 0..50 {
        let user = format!("after-{i}");
        let v: String = reader.query_one("SELECT amba_assign($1, $2)", &[&key, &user]).unwrap().get(0);
        assert_eq!(v, "treatment");
    }
    // Deleting the experiment is seen too.
    writer.execute("SELECT amba_delete_experiment($1)", &[&key]).unwrap();
    let err = reader.query_one("SELECT amba_assign($1, 'third')", &[&key]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "P0002");
}

#[test]
fn concurrent_exposures_store_one_row() {
    let key = unique_key("expose");
    create(&key, r#"[{"key":"control","weight":1},{"key":"treatment","weight":1}]"#);
    connect().execute("SELECT amba_assign($1, 'u' || g) FROM generate_series(1, 200) g", &[&key]).unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (barrier, key) = (barrier.clone(), key.clone());
            thread::spawn(move || {
                let mut client = connect();
                barrier.wait();
                for g in 1..=200 {
                    client.query_one("SELECT amba_expose($1, $2)", &[&key, &format!("u{g}")]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n: i64 = connect()
        .query_one(
            "SELECT exposed_count FROM amba_results($1, 'none') WHERE is_control",
            &[&key],
        )
        .unwrap()
        .get(0);
    let total: i64 = connect()
        .query_one("SELECT sum(exposed_count)::bigint FROM amba_results($1, 'none')", &[&key])
        .unwrap()
        .get(0);
    assert!(n > 0);
    assert_eq!(total, 200);
}
