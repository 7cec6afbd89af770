//! Who is in the experiment (SPEC §3d): overrides, peek, aliases — at the SQL level, and
//! aliasing raced against assign and track from many connections.
//!
//! User ids are chosen by their bucket (`pick_id`, `amba_peek`) wherever an expectation
//! depends on a variant, so every run checks the same thing. The races that matter are
//! forced: one transaction holds (an alias, or an assign and a track, left uncommitted),
//! the other call is seen waiting for it in pg_stat_activity/pg_blocking_pids, and only
//! then does the first commit; both orders are shown.

use amba_integration_tests::{backend_pid, connect, unique, wait_until_blocked_by};
use postgres::{Client, GenericClient};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

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
    c: &mut impl GenericClient,
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

/// What `amba_peek` says for a user (on an active experiment: the variant bucketing gives
/// a new user).
fn peek(c: &mut Client, key: &str, user: &str) -> Option<String> {
    c.query_one("SELECT amba_peek($1, $2)", &[&key, &user])
        .unwrap()
        .get(0)
}

/// The first of `{prefix}-0`, `{prefix}-1`, ... for which `want` holds: tests choose their
/// ids by bucket so that each expectation holds on every run, not half of them.
fn pick_id(
    c: &mut Client,
    prefix: &str,
    mut want: impl FnMut(&mut Client, &str) -> bool,
) -> String {
    for i in 0..10_000 {
        let id = format!("{prefix}-{i}");
        if want(c, &id) {
            return id;
        }
    }
    panic!("no id {prefix}-* fits");
}

/// An id whose variant in `key` (active, not yet seen) is `variant`.
fn id_with_variant(c: &mut Client, key: &str, prefix: &str, variant: &str) -> String {
    pick_id(c, prefix, |c, id| {
        peek(c, key, id).as_deref() == Some(variant)
    })
}

fn other(variant: &str) -> &'static str {
    if variant == "a" {
        "b"
    } else {
        "a"
    }
}

#[test]
fn alias_moves_history_keeps_first_touch_and_redirects_later_calls() {
    let mut c = connect();
    let (k1, k2) = (unique("alias_only_anon"), unique("alias_both"));
    let (k3, k4) = (unique("alias_new_exp"), unique("alias_user_first"));
    for k in [&k1, &k2, &k3, &k4] {
        create(&mut c, k, "active");
    }
    // Ids chosen so that every expectation below tells the cases apart: in k2 and k4 the
    // two ids' variants differ (the surviving row shows whose it is), and in k3 the user's
    // own variant is "a" (so the override "b" set below is not what bucketing gives).
    let anon = unique("anon");
    let user = pick_id(&mut c, &unique("member"), |c, id| {
        peek(c, &k2, &anon) != peek(c, &k2, id)
            && peek(c, &k4, &anon) != peek(c, &k4, id)
            && peek(c, &k3, id).as_deref() == Some("a")
    });
    // k1: only the anonymous id has an assignment (exposed); k2: both, anonymous first;
    // k4: both, the user first.
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
    c.query_one("SELECT amba_assign($1, $2)", &[&k4, &user])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&k4, &user])
        .unwrap();
    c.query_one("SELECT amba_assign($1, $2)", &[&k4, &anon])
        .unwrap();
    c.query_one("SELECT amba_expose($1, $2)", &[&k4, &anon])
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
    let k4_user = assignment(&mut c, &k4, &user).unwrap();
    assert!(k2_anon.1 < assignment(&mut c, &k2, &user).unwrap().1);
    assert!(k4_user.1 < assignment(&mut c, &k4, &anon).unwrap().1);

    let out: serde_json::Value = serde_json::from_str(
        &c.query_one("SELECT (amba_alias($1, $2))::text", &[&anon, &user])
            .unwrap()
            .get::<_, String>(0),
    )
    .unwrap();
    assert_eq!(
        out,
        serde_json::json!({"user_id": user, "moved": 1, "conflicts": 2, "events": 3})
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
    // The contract's rule (sql/api.sql, amba._alias): the earlier assignment wins, whoever
    // holds it. Without `s.assigned_at < t.assigned_at` the anonymous one would win here.
    assert_eq!(
        assignment(&mut c, &k4, &user),
        Some(k4_user),
        "first touch kept (the user's was earlier)"
    );
    for k in [&k1, &k2, &k4] {
        assert_eq!(assignment(&mut c, k, &anon), None);
    }
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
    assert_eq!(assigned_counts(&mut c, &k4).iter().sum::<i64>(), 1);
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
    let v: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&k3, &anon])
        .unwrap()
        .get(0);
    assert_eq!(v, "a", "the user's bucket, not the anonymous id's");
    assert!(assignment(&mut c, &k3, &user).is_some() && assignment(&mut c, &k3, &anon).is_none());
    let peek: Option<String> = c
        .query_one("SELECT amba_peek($1, $2)", &[&k3, &anon])
        .unwrap()
        .get(0);
    assert_eq!(peek, assignment(&mut c, &k3, &user).map(|a| a.0));
    c.query_one("SELECT amba_expose($1, $2)", &[&k3, &anon])
        .unwrap();
    assert!(assignment(&mut c, &k3, &user).unwrap().3.is_some());
    // The user's stored variant in k3 is "a" (chosen above): "b" can only be the override.
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
    // The two ids of a pair get different variants, so a surviving row shows whose it is.
    let pairs: Vec<(String, String)> = (0..PAIRS)
        .map(|i| {
            let anon = format!("{prefix}-anon-{i}");
            let want = peek(&mut c, &key, &anon);
            let user = pick_id(&mut c, &format!("{prefix}-user-{i}"), |c, id| {
                peek(c, &key, id) != want
            });
            (anon, user)
        })
        .collect();
    // Before the race, by pair number mod 4: 0 nothing; 1 the anonymous id assigned; 2 the
    // anonymous id, then the user; 3 the user, then the anonymous id. So at least 3/4 of
    // the aliases find an anonymous assignment to move or merge, at least half of them a
    // conflict, and the winner of each conflict is known (the earlier row, whoever holds
    // it): the race cannot pass by never interleaving.
    let mut before = Vec::new();
    for (i, (anon, user)) in pairs.iter().enumerate() {
        let order: &[&String] = match i % 4 {
            0 => &[],
            1 => &[anon],
            2 => &[anon, user],
            _ => &[user, anon],
        };
        for id in order {
            c.query_one("SELECT amba_assign($1, $2)", &[&key, id])
                .unwrap();
        }
        let winner = match i % 4 {
            0 => None,
            1 | 2 => assignment(&mut c, &key, anon),
            _ => assignment(&mut c, &key, user),
        };
        before.push(winner.map(|(variant, at, ..)| (variant, at)));
    }
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
    // Each anonymous assignment that existed when its pair was first aliased was moved or
    // merged exactly once (later aliases of the pair are no-ops, later calls act on the
    // user): at least the 45 made before the race, at most one per pair; at least the 30
    // conflicts set up before the race.
    assert!(
        (PAIRS as i64 * 3 / 4..=PAIRS as i64).contains(&(moved_total + conflicts_total))
            && conflicts_total >= PAIRS as i64 / 2,
        "moved {moved_total} + conflicts {conflicts_total}"
    );
    // The earlier assignment survived each conflict, under the user id.
    for ((_, user), want) in pairs.iter().zip(&before) {
        let got = assignment(&mut c, &key, user).map(|(variant, at, ..)| (variant, at));
        if want.is_some() {
            assert_eq!(&got, want, "{user}: the earlier assignment survives");
        }
    }
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

fn events_of(c: &mut Client, event: &str) -> Vec<String> {
    c.query(
        "SELECT user_id FROM amba.events WHERE event = $1 ORDER BY user_id",
        &[&event],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn alias_result(c: &mut impl GenericClient, anon: &str, user: &str) -> serde_json::Value {
    let text: String = c
        .query_one("SELECT (amba_alias($1, $2))::text", &[&anon, &user])
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

/// Runs `sql` (one text column, one row) on a connection of its own in a thread: that
/// backend's pid and the thread.
fn call_in_thread(sql: &'static str, args: Vec<String>) -> (i32, JoinHandle<String>) {
    let mut c = connect();
    let pid = backend_pid(&mut c);
    let handle = std::thread::spawn(move || {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| a as &(dyn postgres::types::ToSql + Sync))
            .collect();
        c.query_one(sql, &params).unwrap().get::<_, String>(0)
    });
    (pid, handle)
}

/// Planted bug this catches: `amba_track` not taking the caller's user lock in the hot path
/// (src/assign.rs, `locks::user(user_id, false)` in `track`): the event would be appended
/// under the anonymous id while the alias is in flight, after the alias had moved that id's
/// events, and stay there. Also shows the first outcome of the alias race: the alias
/// commits first, and assign, expose and track for the anonymous id, which waited for it,
/// act as the user.
#[test]
fn an_alias_in_flight_holds_off_assign_expose_and_track_for_its_anonymous_id_which_then_act_as_the_user(
) {
    let mut c = connect();
    let key = unique("alias_first");
    create(&mut c, &key, "active");
    let event = unique("alias_first_ev");
    let user = unique("alias_first_user");
    let theirs: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .unwrap()
        .get(0);
    // An anonymous id whose own bucket gives the other variant: acting as itself it would
    // get (and store) that one.
    let anon = id_with_variant(&mut c, &key, &unique("alias_first_anon"), other(&theirs));

    let mut aliasing = connect();
    let alias_pid = backend_pid(&mut aliasing);
    let mut tx = aliasing.transaction().unwrap();
    let out = alias_result(&mut tx, &anon, &user);
    assert_eq!(
        out,
        serde_json::json!({"user_id": user, "moved": 0, "conflicts": 0, "events": 0})
    );
    let (track_pid, tracking) = call_in_thread(
        "SELECT amba_track($1, $2)::text",
        vec![anon.clone(), event.clone()],
    );
    let (assign_pid, assigning) = call_in_thread(
        "SELECT amba_assign($1, $2)",
        vec![key.clone(), anon.clone()],
    );
    let (expose_pid, exposing) = call_in_thread(
        "SELECT amba_expose($1, $2)",
        vec![key.clone(), anon.clone()],
    );
    for (pid, handle, what) in [
        (track_pid, &tracking, "amba_track for the anonymous id"),
        (assign_pid, &assigning, "amba_assign for the anonymous id"),
        (expose_pid, &exposing, "amba_expose for the anonymous id"),
    ] {
        let waits_on =
            wait_until_blocked_by(&mut c, pid, alias_pid, what, || !handle.is_finished());
        assert_eq!(waits_on, "advisory", "{what} waits on the user lock");
    }
    tx.commit().unwrap();
    tracking.join().unwrap();
    assert_eq!(
        assigning.join().unwrap(),
        theirs,
        "assign acted as the user"
    );
    assert_eq!(exposing.join().unwrap(), theirs, "expose acted as the user");
    assert_eq!(
        events_of(&mut c, &event),
        [user.clone()],
        "the event tracked during the alias is the user's"
    );
    assert_eq!(assignment(&mut c, &key, &anon), None);
    let (variant, _, _, exposed) = assignment(&mut c, &key, &user).unwrap();
    assert_eq!(variant, theirs);
    assert!(exposed.is_some(), "the exposure is the user's");
}

/// The second outcome of the alias race: an assign and a track for the anonymous id commit
/// first, the alias waits for them and then moves their rows. Where both ids hold an
/// assignment the earlier one stays (sql/api.sql, `amba._alias`: `s.assigned_at <
/// t.assigned_at`), shown in both orders. Planted bugs this catches: dropping that condition
/// (the anonymous assignment would always win: fails the user-first case), or reversing it
/// (fails the anonymous-first case); an alias not waiting for calls in flight (the track's
/// event would stay under the anonymous id).
#[test]
fn calls_in_flight_hold_off_an_alias_which_then_moves_their_rows_and_the_earlier_assignment_wins() {
    let mut c = connect();
    let key = unique("calls_first");
    create(&mut c, &key, "active");
    for user_first in [true, false] {
        let event = unique("calls_first_ev");
        let anon = unique("calls_first_anon");
        let anons = peek(&mut c, &key, &anon);
        let user = pick_id(&mut c, &unique("calls_first_user"), |c, id| {
            peek(c, &key, id) != anons
        });
        let users_row = user_first.then(|| {
            c.query_one("SELECT amba_assign($1, $2)", &[&key, &user])
                .unwrap();
            assignment(&mut c, &key, &user).unwrap()
        });

        let mut calling = connect();
        let calls_pid = backend_pid(&mut calling);
        let mut tx = calling.transaction().unwrap();
        tx.query_one("SELECT amba_assign($1, $2)", &[&key, &anon])
            .unwrap();
        tx.query_one("SELECT amba_track($1, $2)", &[&anon, &event])
            .unwrap();
        let anons_row = assignment(&mut tx, &key, &anon).unwrap();
        let users_row = users_row.unwrap_or_else(|| {
            // The user's first assignment comes after the anonymous one's (a later
            // transaction start), while that one is still uncommitted.
            c.query_one("SELECT amba_assign($1, $2)", &[&key, &user])
                .unwrap();
            assignment(&mut c, &key, &user).unwrap()
        });
        assert_ne!(anons_row.0, users_row.0, "the ids were picked to differ");
        assert_eq!(anons_row.1 < users_row.1, !user_first);

        let (alias_pid, aliasing) = call_in_thread(
            "SELECT (amba_alias($1, $2))::text",
            vec![anon.clone(), user.clone()],
        );
        let waits_on = wait_until_blocked_by(
            &mut c,
            alias_pid,
            calls_pid,
            "amba_alias during an assign and a track",
            || !aliasing.is_finished(),
        );
        assert_eq!(waits_on, "advisory", "the alias waits on the user lock");
        tx.commit().unwrap();
        let out: serde_json::Value = serde_json::from_str(&aliasing.join().unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"user_id": user, "moved": 0, "conflicts": 1, "events": 1}),
            "user first: {user_first}"
        );
        let winner = if user_first { &users_row } else { &anons_row };
        assert_eq!(
            assignment(&mut c, &key, &user).map(|(v, at, w, _)| (v, at, w)),
            Some((winner.0.clone(), winner.1.clone(), winner.2)),
            "the earlier assignment survives (user first: {user_first})"
        );
        assert_eq!(assignment(&mut c, &key, &anon), None);
        assert_eq!(events_of(&mut c, &event), [user.clone()]);
        assert_eq!(
            assigned_counts(&mut c, &key).iter().sum::<i64>(),
            if user_first { 1 } else { 2 }
        );
    }
}

/// Planted bug this catches: overrides no longer following aliases (the alias half of the
/// definition's override map, `JOIN amba.aliases` in src/store/experiments.rs LOAD_SQL):
/// the anonymous id would get the user's stored variant instead of the user's override.
/// The ids are chosen so that neither id's bucket nor the stored variant is the override.
#[test]
fn an_override_for_the_user_applies_to_its_aliases_on_assign_peek_and_expose() {
    let mut c = connect();
    // Override set before the alias, and after it.
    let (before, after) = (unique("ovr_alias_before"), unique("ovr_alias_after"));
    create(&mut c, &before, "active");
    create(&mut c, &after, "active");
    let both_a = |c: &mut Client, id: &str| {
        peek(c, &before, id).as_deref() == Some("a") && peek(c, &after, id).as_deref() == Some("a")
    };
    let user = pick_id(&mut c, &unique("ovr_alias_user"), both_a);
    let anon = pick_id(&mut c, &unique("ovr_alias_anon"), both_a);
    for k in [&before, &after] {
        let v: String = c
            .query_one("SELECT amba_assign($1, $2)", &[k, &user])
            .unwrap()
            .get(0);
        assert_eq!(v, "a");
    }
    c.execute("SELECT amba_set_override($1, $2, 'b')", &[&before, &user])
        .unwrap();
    alias_result(&mut c, &anon, &user);
    c.execute("SELECT amba_set_override($1, $2, 'b')", &[&after, &user])
        .unwrap();
    for k in [&before, &after] {
        for f in ["amba_assign", "amba_peek", "amba_expose"] {
            let v: Option<String> = c
                .query_one(&format!("SELECT {f}($1, $2)"), &[k, &anon])
                .unwrap()
                .get(0);
            assert_eq!(v.as_deref(), Some("b"), "{f} for the alias in {k}");
        }
        assert_eq!(
            assignment(&mut c, k, &user).map(|a| (a.0, a.3)),
            Some(("a".to_string(), None)),
            "the stored row is untouched and the override exposed nobody"
        );
        assert_eq!(assignment(&mut c, k, &anon), None);
    }
    // Cleared: the alias gets the user's stored variant again.
    c.execute("SELECT amba_clear_override($1, $2)", &[&after, &user])
        .unwrap();
    let v: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&after, &anon])
        .unwrap()
        .get(0);
    assert_eq!(v, "a");
}

/// Planted bug this catches: the hot path forgetting aliases when the experiment is not
/// active (src/assign.rs `assign`: the `if who != user_id` lookup of the user's assignment
/// before EXPERIMENT_INACTIVE): an aliased id whose user is assigned would be refused
/// instead of getting the user's variant. Shown for an alias made before any call of the
/// anonymous id, and for one that moved the anonymous id's assignment to the user.
#[test]
fn an_aliased_id_on_a_paused_experiment_gets_its_users_variant_not_inactive() {
    let mut c = connect();
    let key = unique("paused_alias");
    create(&mut c, &key, "active");
    // The user assigned before the alias.
    let user = unique("paused_alias_user");
    let theirs: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&key, &user])
        .unwrap()
        .get(0);
    let anon = id_with_variant(&mut c, &key, &unique("paused_alias_anon"), other(&theirs));
    alias_result(&mut c, &anon, &user);
    // The anonymous id assigned before the alias, moved to a user never seen before.
    let (anon2, user2) = (unique("paused_alias_anon2"), unique("paused_alias_user2"));
    let moved: String = c
        .query_one("SELECT amba_assign($1, $2)", &[&key, &anon2])
        .unwrap()
        .get(0);
    assert_eq!(
        alias_result(&mut c, &anon2, &user2)["moved"],
        serde_json::json!(1)
    );
    c.execute(
        "SELECT amba_update_experiment($1, status => 'paused')",
        &[&key],
    )
    .unwrap();
    for (anon, want) in [(&anon, &theirs), (&anon2, &moved)] {
        let v: String = c
            .query_one("SELECT amba_assign($1, $2)", &[&key, anon])
            .unwrap()
            .get(0);
        assert_eq!(&v, want, "amba_assign for {anon} on the paused experiment");
        let p: Option<String> = c
            .query_one("SELECT amba_peek($1, $2)", &[&key, anon])
            .unwrap()
            .get(0);
        assert_eq!(p.as_ref(), Some(want), "amba_peek for {anon}");
    }
    assert_eq!(
        assignment(&mut c, &key, &anon),
        None,
        "nothing written for the alias"
    );
    // An id nobody assigned is refused, as always on a paused experiment.
    let (state, msg) = err(c
        .query_one("SELECT amba_assign($1, $2)", &[&key, &unique("paused_new")])
        .unwrap_err());
    assert!(
        state == "55000" && msg.starts_with("EXPERIMENT_INACTIVE:"),
        "{state} {msg}"
    );
}
