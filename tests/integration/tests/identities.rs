//! Who is in the experiment (SPEC §3d): overrides, peek, aliases — at the SQL level, and
//! aliasing raced against assign and track from many connections.

use amba_integration_tests::{connect, unique};
use postgres::Client;
use std::sync::{Arc, Barrier};

fn create(c: &mut Client, key: &str, status: &str) {
    c.execute(
        "SELECT amba_create_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"b\",\"weight\":1}]', status => $2)",
        &[&key, &status],
    )
    .unwrap();
}

fn err(e: postgres::Error) -> (String, String) {
    let d = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    (d.code().code().to_string(), d.message().to_string())
}

fn count(c: &mut Client, sql: &str, key: &str) -> i64 {
    c.query_one(sql, &[&key]).unwrap().get(0)
}

const ROWS_OF: &str = "SELECT (SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1)
                            + (SELECT count(*) FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id WHERE e.key = $1)";

fn assigned_counts(c: &mut Client, key: &str) -> Vec<i64> {
    c.query(
        "SELECT assigned_count FROM amba_results($1, 'buy')",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn overrides_serve_draft_experiments_write_nothing_and_leave_results() {
    let mut c = connect();
    let key = unique("ovr");
    create(&mut c, &key, "draft");
    let set: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT (amba_set_override($1, 'qa', 'b'))::text", &[&key])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(
        (set["user_id"].as_str(), set["variant"].as_str()),
        (Some("qa"), Some("b"))
    );
    // Draft: the override works, a normal user is refused.
    for f in ["amba_assign", "amba_expose", "amba_peek"] {
        let v: String = c
            .query_one(&format!("SELECT {f}($1, 'qa')"), &[&key])
            .unwrap()
            .get(0);
        assert_eq!(v, "b", "{f}");
    }
    assert_eq!(count(&mut c, ROWS_OF, &key), 0, "an override wrote rows");
    assert_eq!(
        err(c
            .query_one("SELECT amba_assign($1, 'someone')", &[&key])
            .unwrap_err())
        .0,
        "55000"
    );
    // Set again: replaced.
    c.execute("SELECT amba_set_override($1, 'qa', 'a')", &[&key])
        .unwrap();
    let v: String = c
        .query_one("SELECT amba_assign($1, 'qa')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(v, "a");
    let listed = c
        .query(
            "SELECT user_id, variant FROM amba_list_overrides($1)",
            &[&key],
        )
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].get::<_, String>(0), listed[0].get::<_, String>(1)),
        ("qa".into(), "a".into())
    );

    // Active: a user assigned and exposed, then overridden, leaves every count while the
    // override exists, and gets the stored variant back when it is cleared.
    c.execute(
        "SELECT amba_update_experiment($1, status => 'active')",
        &[&key],
    )
    .unwrap();
    let stored: String = c
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    c.query_one("SELECT amba_expose($1, 'u1')", &[&key])
        .unwrap();
    c.query_one("SELECT amba_assign($1, 'u2')", &[&key])
        .unwrap();
    assert_eq!(assigned_counts(&mut c, &key).iter().sum::<i64>(), 2);
    let other = if stored == "a" { "b" } else { "a" };
    c.execute("SELECT amba_set_override($1, 'u1', $2)", &[&key, &other])
        .unwrap();
    assert_eq!(
        assigned_counts(&mut c, &key).iter().sum::<i64>(),
        1,
        "overridden user still counted"
    );
    let exposed: i64 = c
        .query_one(
            "SELECT sum(exposed_count)::bigint FROM amba_results($1, 'buy')",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(exposed, 0);
    let metric: i64 = c
        .query_one(
            "SELECT sum(exposed_count)::bigint FROM amba_metric_results($1, 'buy')",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(metric, 0);
    let v: String = c
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(v, other);
    // A variant with an override cannot be removed; a missing variant cannot be set.
    let (state, msg) = err(c.query_one("SELECT amba_update_experiment($1, '[{\"key\":\"a\",\"weight\":1},{\"key\":\"c\",\"weight\":1}]')", &[&key]).unwrap_err());
    assert_eq!(state, "22023", "{msg}");
    let (state, msg) = err(c
        .query_one("SELECT amba_set_override($1, 'qa', 'nope')", &[&key])
        .unwrap_err());
    assert!(
        state == "22023" && msg.starts_with("INVALID_ARGUMENT:"),
        "{msg}"
    );
    // Cleared: the stored assignment again, counted again.
    let cleared: bool = c
        .query_one("SELECT amba_clear_override($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert!(cleared);
    let again: bool = c
        .query_one("SELECT amba_clear_override($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert!(!again);
    let v: String = c
        .query_one("SELECT amba_assign($1, 'u1')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(v, stored);
    assert_eq!(assigned_counts(&mut c, &key).iter().sum::<i64>(), 2);
    // Audited.
    let actions: Vec<String> = c
        .query("SELECT action FROM amba_experiment_history($1)", &[&key])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions.iter().filter(|a| *a == "override_set").count(), 3);
    assert_eq!(actions.iter().filter(|a| *a == "override_clear").count(), 1);
    // Unknown experiment: EXPERIMENT_NOT_FOUND on each.
    for sql in [
        "SELECT amba_set_override('no-such-exp', 'u', 'a')::text",
        "SELECT amba_clear_override('no-such-exp', 'u')::text",
        "SELECT count(*)::text FROM amba_list_overrides('no-such-exp')",
        "SELECT amba_peek('no-such-exp', 'u')",
    ] {
        let (state, msg) = err(c.query_one(sql, &[]).unwrap_err());
        assert!(
            state == "P0002" && msg.starts_with("EXPERIMENT_NOT_FOUND:"),
            "{sql}: {msg}"
        );
    }
}

#[test]
fn peek_tells_the_variant_without_enrolling() {
    let mut c = connect();
    let key = unique("peek");
    create(&mut c, &key, "active");
    let peeked: Vec<Option<String>> = (0..50)
        .map(|i| {
            c.query_one("SELECT amba_peek($1, $2)", &[&key, &format!("p{i}")])
                .unwrap()
                .get(0)
        })
        .collect();
    assert_eq!(count(&mut c, ROWS_OF, &key), 0, "peek wrote");
    for (i, p) in peeked.iter().enumerate() {
        let assigned: String = c
            .query_one("SELECT amba_assign($1, $2)", &[&key, &format!("p{i}")])
            .unwrap()
            .get(0);
        assert_eq!(
            p.as_deref(),
            Some(assigned.as_str()),
            "peek and assign disagree for p{i}"
        );
    }
    c.execute(
        "SELECT amba_update_experiment($1, status => 'paused')",
        &[&key],
    )
    .unwrap();
    let stored: Option<String> = c
        .query_one("SELECT amba_peek($1, 'p0')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(stored, peeked[0]);
    let none: Option<String> = c
        .query_one("SELECT amba_peek($1, 'never-seen')", &[&key])
        .unwrap()
        .get(0);
    assert_eq!(none, None, "peek on a paused experiment for a new user");
}

fn assignment(
    c: &mut Client,
    key: &str,
    user: &str,
) -> Option<(String, String, i32, Option<String>)> {
    c.query_opt(
        "SELECT a.variant, a.assigned_at::text, a.weight_version, x.exposed_at::text
           FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
           LEFT JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
          WHERE e.key = $1 AND a.user_id = $2",
        &[&key, &user],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

#[test]
fn alias_moves_history_keeps_first_touch_and_redirects_later_calls() {
    let mut c = connect();
    let (k1, k2) = (unique("alias_only_anon"), unique("alias_both"));
    create(&mut c, &k1, "active");
    create(&mut c, &k2, "active");
    let (anon, user) = (unique("anon"), unique("member"));
    // k1: only the anonymous id has an assignment (exposed); k2: both, anonymous first.
    c.query_one("SELECT amba_assign($1, $2)", &[&k1, &anon])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&k1, &anon])
        .unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&k2, &anon])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&k2, &anon])
        .unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&k2, &user])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&k2, &user])
        .unwrap();
    for i in 0..3 {
        c.query_one(
            "SELECT amba_track($1, 'buy', occurred_at => now() + $2 * interval '1 second')",
            &[&anon, &(i as f64)],
        )
        .unwrap();
    }
    let k1_anon = assignment(&mut c, &k1, &anon).unwrap();
    let k2_anon = assignment(&mut c, &k2, &anon).unwrap();

    let out: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT (amba_alias($1, $2))::text", &[&anon, &user])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(
        out,
        serde_json::json!({"user_id": user, "moved": 1, "conflicts": 1, "events": 3})
    );
    assert_eq!(
        assignment(&mut c, &k1, &user),
        Some(k1_anon),
        "moved unchanged"
    );
    assert_eq!(
        assignment(&mut c, &k2, &user),
        Some(k2_anon),
        "first touch kept (the anonymous one was earlier)"
    );
    assert_eq!(assignment(&mut c, &k1, &anon), None);
    assert_eq!(assignment(&mut c, &k2, &anon), None);
    let events: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1 AND event = 'buy'",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(events, 3);
    // Each person once in results.
    assert_eq!(assigned_counts(&mut c, &k2).iter().sum::<i64>(), 1);
    // Later calls with the anonymous id act on the user.
    let v: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&k1, &anon])
        .unwrap()
        .get(0);
    assert_eq!(v, assignment(&mut c, &k1, &user).unwrap().0);
    c.query_one("SELECT amba_track($1, 'buy')", &[&anon])
        .unwrap();
    let events: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.events WHERE user_id = $1",
            &[&user],
        )
        .unwrap()
        .get(0);
    assert_eq!(events, 4);
    let k3 = unique("alias_new_exp");
    create(&mut c, &k3, "active");
    c.query_one("SELECT amba_assign($1, $2)", &[&k3, &anon])
        .unwrap();
    assert!(assignment(&mut c, &k3, &user).is_some() && assignment(&mut c, &k3, &anon).is_none());
    let peek: Option<String> = c
        .query_one("SELECT amba_peek($1, $2)", &[&k3, &anon])
        .unwrap()
        .get(0);
    assert_eq!(peek, assignment(&mut c, &k3, &user).map(|a| a.0));
    c.query_one("SELECT amba_expose($1, $2)", &[&k3, &anon])
        .unwrap();
    assert!(assignment(&mut c, &k3, &user).unwrap().3.is_some());
    c.execute("SELECT amba_set_override($1, $2, 'b')", &[&k3, &anon])
        .unwrap();
    let listed: String = c
        .query_one("SELECT user_id FROM amba_list_overrides($1)", &[&k3])
        .unwrap()
        .get(0);
    assert_eq!(
        listed, user,
        "an override set for the anonymous id is the user's"
    );
    let v: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&k3, &anon])
        .unwrap()
        .get(0);
    assert_eq!(v, "b");

    // Same pair again: a no-op.
    let again: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT (amba_alias($1, $2))::text", &[&anon, &user])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(
        again,
        serde_json::json!({"user_id": user, "moved": 0, "conflicts": 0, "events": 0})
    );
    // The refused shapes.
    let other = unique("other");
    for (a, u, why) in [
        (
            anon.as_str(),
            other.as_str(),
            "already aliased to another id",
        ),
        (user.as_str(), other.as_str(), "others are aliased to it"),
        (
            other.as_str(),
            anon.as_str(),
            "the user id is itself an alias",
        ),
        (other.as_str(), other.as_str(), "the same id"),
    ] {
        let (state, msg) = err(c
            .query_one("SELECT amba_alias($1, $2)", &[&a, &u])
            .unwrap_err());
        assert!(
            state == "22023" && msg.starts_with("INVALID_ARGUMENT:"),
            "{why}: {state} {msg}"
        );
    }
}

#[test]
fn aliasing_raced_against_assign_and_track_never_loses_or_duplicates_a_row() {
    const PAIRS: usize = 60;
    const THREADS: usize = 6;
    let mut c = connect();
    let key = unique("alias_race");
    create(&mut c, &key, "active");
    let prefix = unique("race");
    let pairs: Vec<(String, String)> = (0..PAIRS)
        .map(|i| (format!("{prefix}-anon-{i}"), format!("{prefix}-user-{i}")))
        .collect();
    // Every thread walks all pairs (from its own offset): assign the anonymous id, track for
    // it, assign the user, alias the pair; the calls of different threads interleave.
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (barrier, key, pairs) = (barrier.clone(), key.clone(), pairs.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                let mut tracked = 0;
                let mut aliased = Vec::new();
                for i in 0..PAIRS {
                    let (anon, user) = &pairs[(i * 7 + t * 11) % PAIRS];
                    match t % 3 {
                        0 => {
                            c.query_one("SELECT amba_assign($1, $2)", &[&key, anon])
                                .unwrap();
                        }
                        1 => {
                            c.query_one("SELECT amba_track($1, 'race')", &[anon])
                                .unwrap();
                            tracked += 1;
                        }
                        _ => {
                            c.query_one("SELECT amba_assign($1, $2)", &[&key, user])
                                .unwrap();
                        }
                    }
                    let out: serde_json::Value = serde_json::from_str(
                        &c.query_one("SELECT (amba_alias($1, $2))::text", &[anon, user])
                            .unwrap()
                            .get::<_, String>(0),
                    )
                    .unwrap();
                    aliased.push(out);
                }
                (tracked, aliased)
            })
        })
        .collect();
    let mut tracked = 0;
    let mut moved_total = 0;
    let mut conflicts_total = 0;
    for h in handles {
        let (t, outs) = h.join().unwrap();
        tracked += t;
        for o in outs {
            moved_total += o["moved"].as_i64().unwrap();
            conflicts_total += o["conflicts"].as_i64().unwrap();
        }
    }
    // Exactly one assignment per person, under the user id, and nothing under anonymous ids.
    let rows = c
        .query(
            "SELECT a.user_id, count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
              WHERE e.key = $1 GROUP BY a.user_id",
            &[&key],
        )
        .unwrap();
    assert_eq!(rows.len(), PAIRS, "one assignment per person");
    for r in &rows {
        let (user, n): (String, i64) = (r.get(0), r.get(1));
        assert!(user.contains("-user-") && n == 1, "{user}: {n}");
    }
    // Every tracked event is there, once, under the user id.
    let events: i64 = c.query_one("SELECT count(*) FROM amba.events WHERE event = 'race' AND user_id LIKE $1 || '-user-%'", &[&prefix]).unwrap().get(0);
    let stray: i64 = c.query_one("SELECT count(*) FROM amba.events WHERE event = 'race' AND user_id LIKE $1 || '-anon-%'", &[&prefix]).unwrap().get(0);
    assert_eq!((events, stray), (tracked as i64, 0));
    // Each alias moved or merged each anonymous assignment exactly once: the anonymous
    // assignments made before the alias (moved or in conflict) plus those made after (on
    // the user directly) account for all of them.
    assert!(
        moved_total + conflicts_total <= PAIRS as i64,
        "moved {moved_total} + conflicts {conflicts_total}"
    );
    assert_eq!(
        assigned_counts(&mut c, &key).iter().sum::<i64>(),
        PAIRS as i64
    );
}

/// One statement assigning and tracking many users (an analyst's backfill) holds a bounded
/// number of locks: user locks are per bucket of ids, not per id.
#[test]
fn a_bulk_statement_of_many_new_users_does_not_exhaust_the_lock_table() {
    let mut c = connect();
    let key = unique("bulk");
    create(&mut c, &key, "active");
    let n: i64 = c
        .query_one(
            "SELECT count(amba_assign($1, 'bulk-' || g)) FROM generate_series(1, 30000) g",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 30000);
    let tracked: i64 = c
        .query_one(
            "SELECT count(amba_track('bulk-' || g, 'bulk_event')) FROM generate_series(1, 30000) g",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tracked, 30000);
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT count(amba_assign($1, 'bulk2-' || g)) FROM generate_series(1, 5000) g",
        &[&key],
    )
    .unwrap();
    let held: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(held <= 257, "{held} advisory locks held by one transaction");
}
