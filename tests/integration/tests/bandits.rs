//! Bandits (SPEC §14, CONTRACT section 14) at the SQL level, each rule against a reference
//! that does not come from amba:
//!
//! - the numbers: tests/integration/fixtures/sql_metrics_reference.json (written by
//!   scripts/fixtures/sql_metrics_reference.py; its docstring says how the data go in) holds
//!   two bandit experiments as raw data — users, the variant the bucketing of §3 gives them
//!   at the weights in force, exposures, overrides, events as offsets from each user's
//!   assignment, decoys — and, per `amba_bandit_update`, the answer worked out in Python
//!   (period-weighted estimates with numpy, Gaussian posteriors, best and second-best
//!   probabilities by scipy quadrature, top-two weights with the floor) and the rows of
//!   `amba_bandit_results`. The data go in through the SQL API; the weights and
//!   probabilities must agree to 1e-6, means to 1e-9, intervals to 1e-8; the users assigned
//!   after an update land where the reference's new weights put them;
//! - no update before every arm has `min_users` exposed users (`{"updated": false,
//!   "reason": ...}`, not an error, nothing written), counted as the contract says;
//! - each update: a new weight version, a `bandit_update` audit row, nobody moves;
//! - a bandit inside a layer and behind a holdout;
//! - a weight of 0 is refused (`INVALID_ARGUMENT`, nothing written);
//! - two concurrent updates, forced (one transaction holds, the other is seen waiting in
//!   pg_locks / pg_stat_activity, then the first commits or rolls back);
//! - pg_cron running `amba_bandit_update` for real.
//!
//! Every test has a database of its own with fixed experiment keys and user ids, so the
//! buckets — and so what each test checks — are the same on every run.

use amba_integration_tests::cron::{self, CronJob};
use amba_integration_tests::{
    arr, backend_pid, experiment_id, experiment_json as experiment, invalid_argument, opt_s, s,
    unique, wait_until_blocked_by, Db,
};
use postgres::types::ToSql;
use postgres::{Client, Row};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn fixture() -> Value {
    amba_integration_tests::fixture("sql_metrics_reference.json")
}

/// The experiment's weights in force, exactly as stored.
fn weights(c: &mut Client, key: &str) -> Vec<f64> {
    c.query_one(
        "SELECT weights FROM amba.experiments WHERE key = $1",
        &[&key],
    )
    .unwrap()
    .get(0)
}

/// Every weight version of the experiment: (version, weights), oldest first.
fn weight_versions(c: &mut Client, key: &str) -> Vec<(i32, Vec<f64>)> {
    let id = experiment_id(c, key);
    c.query(
        "SELECT version, weights FROM amba.weight_versions WHERE experiment_id = $1 ORDER BY version",
        &[&id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The experiment's `bandit_update` audit rows as (before, after), oldest first.
fn bandit_history(c: &mut Client, key: &str) -> Vec<(Value, Value)> {
    c.query(
        "SELECT before::text, after::text FROM amba.experiment_history
          WHERE experiment_key = $1 AND action = 'bandit_update' ORDER BY history_id",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| {
        (
            serde_json::from_str(r.get::<_, &str>(0)).unwrap(),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
        )
    })
    .collect()
}

/// Every stored assignment of the experiment: user → (variant, weight version).
fn assignments(c: &mut Client, key: &str) -> BTreeMap<String, (String, i32)> {
    let id = experiment_id(c, key);
    c.query(
        "SELECT user_id, variant, weight_version FROM amba.assignments WHERE experiment_id = $1",
        &[&id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

/// `amba_bandit_update(key)` (with `seed` when given): the answer as JSON, and its
/// `weights` and `best_arm_probabilities` as PostgreSQL's float8 input reads them from the
/// answer's text (correctly rounded, so exactly the doubles amba wrote; serde_json without
/// its float_roundtrip feature may be one unit in the last place off).
struct Answer {
    json: Value,
    weights: Vec<f64>,
    best_arm_probabilities: Vec<f64>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.json)
    }
}

fn bandit_update(c: &mut Client, key: &str, seed: Option<i64>) -> Answer {
    let floats = "coalesce((SELECT array_agg(x::float8 ORDER BY i)
                              FROM jsonb_array_elements_text(r -> $3) WITH ORDINALITY AS t(x, i)), '{}')";
    // as users call it: with the seed, or without it (the WHERE only gives $2 a type)
    let call = match seed {
        Some(_) => "amba_bandit_update($1, $2)",
        None => "amba_bandit_update($1) WHERE $2::bigint IS NULL",
    };
    let sql = format!(
        "SELECT r::text, {w}, {p} FROM (SELECT {call}) AS x(r)",
        w = floats,
        p = floats.replace("$3", "$4"),
    );
    let row = c
        .query_one(&sql, &[&key, &seed, &"weights", &"best_arm_probabilities"])
        .unwrap_or_else(|e| panic!("amba_bandit_update({key}, {seed:?}): {e}"));
    Answer {
        json: serde_json::from_str(row.get::<_, &str>(0)).unwrap(),
        weights: row.get(1),
        best_arm_probabilities: row.get(2),
    }
}

/// `(xxh3_64(key || 0x00 || user) >> 11) / 2^53` (SPEC §3), from the definition.
fn bucket_with(separator: u8, key: &str, user: &str) -> f64 {
    let mut bytes = Vec::with_capacity(key.len() + 1 + user.len());
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(separator);
    bytes.extend_from_slice(user.as_bytes());
    (xxh3_64(&bytes) >> 11) as f64 / 9_007_199_254_740_992.0
}

/// The variant index for a bucket (SPEC §3): the first i with bucket < (w_1+…+w_i)/W,
/// sums left to right in double precision; else the last variant with weight > 0.
fn pick(bucket: f64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut running = 0.0;
    for (i, w) in weights.iter().enumerate() {
        running += w;
        if bucket < running / total {
            return i;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap()
}

/// `count` user ids (`prefix-N`) whose variant in `key` at `weights` is `arm`.
fn users_of_arm(key: &str, weights: &[f64], arm: usize, prefix: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|u| pick(bucket_with(0, key, u), weights) == arm)
        .take(count)
        .collect()
}

const THREE: &str =
    r#"[{"key":"control","weight":1},{"key":"a","weight":1},{"key":"b","weight":1}]"#;
const SIGNUP_BANDIT: &str = r#"{"event": "signup", "kind": "conversion", "min_users": 20}"#;

/// Assigns and exposes `users` in `key`; those for whom `converts(variant, i)` holds sign
/// up an hour after their assignment. Returns each user's variant.
fn fill(
    c: &mut Client,
    key: &str,
    users: &[String],
    converts: impl Fn(&str, usize) -> bool,
) -> Vec<String> {
    let variants: Vec<Option<String>> = c
        .query(
            "SELECT amba_assign($1, u) FROM unnest($2::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
            &[&key, &users],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let variants: Vec<String> = variants
        .into_iter()
        .map(|v| v.expect("every user is enrolled"))
        .collect();
    c.query(
        "SELECT amba_expose($1, u) FROM unnest($2::text[]) AS u",
        &[&key, &users],
    )
    .unwrap();
    let buyers: Vec<String> = users
        .iter()
        .zip(&variants)
        .enumerate()
        .filter(|(i, (_, v))| converts(v, *i))
        .map(|(_, (u, _))| u.clone())
        .collect();
    c.query(
        "SELECT amba_track(u, 'signup', NULL, a.assigned_at + interval '1 hour')
           FROM unnest($2::text[]) AS u
           JOIN amba.assignments a ON a.user_id = u
           JOIN amba.experiments e ON e.id = a.experiment_id AND e.key = $1",
        &[&key, &buyers],
    )
    .unwrap();
    variants
}

/// Control converts 10%, a 20%, b 40%: b should win.
fn b_wins(v: &str, i: usize) -> bool {
    match v {
        "control" => i % 10 == 0,
        "a" => i % 5 == 0,
        _ => i % 5 < 2,
    }
}

// ---------------------------------------------------------------------------------------
// 1. The numbers, against the Python reference
// ---------------------------------------------------------------------------------------

/// Calls `sql` (whose $1 is `key`, then one array per column) on chunks of 400 rows.
fn in_chunks(c: &mut Client, sql: &str, key: &str, columns: &[&dyn Chunkable]) -> Vec<Row> {
    let len = columns[0].len();
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + 400).min(len);
        let parts: Vec<Box<dyn ToSql + Sync>> =
            columns.iter().map(|c| c.slice(start, end)).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&key];
        params.extend(parts.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        out.extend(
            c.query(sql, &params)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
        start = end;
    }
    out
}

trait Chunkable {
    fn len(&self) -> usize;
    fn slice(&self, start: usize, end: usize) -> Box<dyn ToSql + Sync>;
}

impl<T: ToSql + Sync + Clone + 'static> Chunkable for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn slice(&self, start: usize, end: usize) -> Box<dyn ToSql + Sync> {
        Box::new(self[start..end].to_vec())
    }
}

/// Runs `sql` in chunks; it returns (user, expected, got) rows that must agree.
fn check_variants(c: &mut Client, what: &str, sql: &str, key: &str, columns: &[&dyn Chunkable]) {
    let wrong: Vec<String> = in_chunks(c, sql, key, columns)
        .iter()
        .filter(|r| Some(r.get::<_, String>(1)) != r.get::<_, Option<String>>(2))
        .map(|r| {
            format!(
                "{}: {:?}, want {}",
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(2),
                r.get::<_, String>(1)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what} disagrees with the reference: {wrong:?}"
    );
}

const WEIGHT_TOL: f64 = 1e-6;
const MEAN_TOL: f64 = 1e-9;
const BOUND_TOL: f64 = 1e-8;

/// Compares `amba_bandit_results` with the reference's rows; every difference, as text.
fn compare_results(label: &str, got: &[Row], want: &[Value]) -> Vec<String> {
    let mut problems = vec![];
    if got.len() != want.len() {
        problems.push(format!("{label}: {} rows, want {}", got.len(), want.len()));
    }
    for (g, w) in got.iter().zip(want) {
        let arm = s(&w["variant"]);
        let mut check = |name: &str, ok: bool, got: String| {
            if !ok {
                problems.push(format!("{label} {arm} {name}: got {got}, want {}", w[name]));
            }
        };
        check(
            "variant",
            g.get::<_, String>("variant") == arm,
            g.get::<_, String>("variant"),
        );
        let is_control: bool = g.get("is_control");
        check(
            "is_control",
            Some(is_control) == w["is_control"].as_bool(),
            is_control.to_string(),
        );
        let exposed: i64 = g.get("exposed_count");
        check(
            "exposed_count",
            Some(exposed) == w["exposed_count"].as_i64(),
            exposed.to_string(),
        );
        let half = match (w["ci_low"].as_f64(), w["ci_high"].as_f64()) {
            (Some(l), Some(h)) => (h - l) / 2.0,
            _ => 0.0,
        };
        for (name, tol, scale_of) in [
            ("mean", MEAN_TOL, None),
            ("ci_low", BOUND_TOL, Some(half)),
            ("ci_high", BOUND_TOL, Some(half)),
            ("best_arm_probability", WEIGHT_TOL, Some(f64::NAN)),
            ("weight", WEIGHT_TOL, Some(f64::NAN)),
        ] {
            let got: Option<f64> = g.get(name);
            let ok = match (got, w[name].as_f64()) {
                (None, None) => w[name].is_null(),
                (Some(g), Some(x)) => {
                    let allowed = match scale_of {
                        None => tol * x.abs().max(g.abs()),
                        Some(h) if h.is_nan() => tol, // absolute (probabilities, weights)
                        Some(h) => tol * x.abs().max(h),
                    };
                    (g - x).abs() <= allowed
                }
                _ => false,
            };
            check(name, ok, format!("{got:?}"));
        }
    }
    problems
}

/// Creates the fixture's bandit `e` and replays its phases as the generator's docstring
/// says; at each phase's end calls `amba_bandit_update` (with a seed) and
/// `amba_bandit_results` and compares them with the reference. Returns every difference.
fn replay_bandit(c: &mut Client, e: &Value) -> Vec<String> {
    let key = s(&e["key"]);
    let mut problems = vec![];
    let created: Value = serde_json::from_str(
        c.query_one(
            "SELECT amba_create_experiment($1, $2::text::jsonb, name => $3, bandit => $4::text::jsonb)::text",
            &[&key, &s(&e["variants"]), &s(&e["title"]), &s(&e["bandit"])],
        )
        .unwrap_or_else(|err| panic!("create {key}: {err}"))
        .get(0),
    )
    .unwrap();
    assert_eq!(created["weight_version"], 1, "{key}: {created}");
    let mut assigned: Vec<(String, String)> = vec![];
    let mut overridden: BTreeMap<String, String> = BTreeMap::new();

    for (n, p) in arr(&e["phases"]).iter().enumerate() {
        let phase = format!("{key} phase {n}");
        if !p["update"].is_null() {
            // A manual re-weighting: a period of its own.
            let updated: Value = serde_json::from_str(
                c.query_one(
                    "SELECT amba_update_experiment($1, variants => $2::text::jsonb)::text",
                    &[&key, &s(&p["update"]["variants"])],
                )
                .unwrap_or_else(|err| panic!("{phase}: update: {err}"))
                .get(0),
            )
            .unwrap();
            assert_eq!(
                updated["weight_version"], p["expect_weight_version"],
                "{phase}: {updated}"
            );
        }
        assert_eq!(
            experiment(c, key)["weight_version"],
            p["expect_weight_version"],
            "{phase}: weight version"
        );
        assert!(arr(&p["pre_overrides"]).is_empty() && arr(&p["reassign"]).is_empty());

        // New users: the variant the reference's bucketing gives at the weights in force
        // (after an update: the reference's new weights).
        let assign = arr(&p["assign"]);
        let users: Vec<String> = assign.iter().map(|a| s(&a[0]).to_string()).collect();
        let attrs: Vec<Option<String>> = assign.iter().map(|a| opt_s(&a[1])).collect();
        let want: Vec<String> = assign.iter().map(|a| s(&a[2]).to_string()).collect();
        check_variants(
            c,
            &format!("{phase}: amba_assign"),
            "SELECT x.u, x.v, amba_assign($1, x.u, x.a::jsonb) FROM unnest($2::text[], $3::text[], $4::text[]) AS x(u, a, v)",
            key,
            &[&users, &attrs, &want],
        );
        assigned.extend(users.into_iter().zip(want));

        let expose = arr(&p["expose"]);
        let users: Vec<String> = expose.iter().map(|a| s(&a[0]).to_string()).collect();
        let want: Vec<String> = expose.iter().map(|a| s(&a[1]).to_string()).collect();
        check_variants(
            c,
            &format!("{phase}: amba_expose"),
            "SELECT x.u, x.v, amba_expose($1, x.u) FROM unnest($2::text[], $3::text[]) AS x(u, v)",
            key,
            &[&users, &want],
        );

        // Events at the user's stored assigned_at + offset.
        let events = arr(&p["events"]);
        let users: Vec<String> = events.iter().map(|x| s(&x[0]).to_string()).collect();
        let names: Vec<String> = events.iter().map(|x| s(&x[1]).to_string()).collect();
        let offsets: Vec<i64> = events.iter().map(|x| x[2].as_i64().unwrap()).collect();
        let props: Vec<Option<String>> = events.iter().map(|x| opt_s(&x[3])).collect();
        let mismatched: i64 = in_chunks(
            c,
            "SELECT count(*) FILTER (WHERE amba_track(x.u, x.e, x.p::jsonb, t.at) IS DISTINCT FROM t.at) \
               FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[]) AS x(u, e, off, p) \
               CROSS JOIN LATERAL (SELECT a.assigned_at + (x.off || ' microseconds')::interval AS at \
                 FROM amba.assignments a JOIN amba.experiments ex ON ex.id = a.experiment_id \
                WHERE ex.key = $1 AND a.user_id = x.u) t",
            key,
            &[&users, &names, &offsets, &props],
        )
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .sum();
        assert_eq!(mismatched, 0, "{phase}: amba_track stored other times");

        // Overrides after the fact: those users leave the estimates; a cleared one counts.
        for o in arr(&p["overrides"]).iter().map(arr) {
            c.query_one(
                "SELECT amba_set_override($1, $2, $3)",
                &[&key, &s(&o[0]), &s(&o[1])],
            )
            .unwrap();
            overridden.insert(s(&o[0]).to_string(), s(&o[1]).to_string());
            if o[2] == true {
                c.query_one("SELECT amba_clear_override($1, $2)", &[&key, &s(&o[0])])
                    .unwrap();
                overridden.remove(s(&o[0]));
            }
        }

        let expected = &p["bandit_update"];
        if expected.is_null() {
            continue;
        }
        let versions_before = weight_versions(c, key);
        let audits_before = bandit_history(c, key).len();
        let answer = bandit_update(c, key, Some(20250601 + n as i64));
        if expected["updated"] == false {
            // Too few exposed users in some arm: an answer, not an error; nothing written.
            assert_eq!(answer.json["updated"], false, "{phase}: {answer}");
            assert!(
                answer.json["reason"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty()),
                "{phase}: no reason: {answer}"
            );
            assert_eq!(
                weight_versions(c, key),
                versions_before,
                "{phase}: weights changed"
            );
            assert_eq!(
                bandit_history(c, key).len(),
                audits_before,
                "{phase}: audited"
            );
            eprintln!("{phase}: {answer}");
        } else {
            assert_eq!(
                answer.json["updated"], true,
                "{phase}: {answer}; reference {expected}"
            );
            let keys: Vec<&String> = answer.json.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["best_arm_probabilities", "updated", "weights"],
                "{phase}: {answer}"
            );
            for name in ["weights", "best_arm_probabilities"] {
                let got = if name == "weights" {
                    answer.weights.clone()
                } else {
                    answer.best_arm_probabilities.clone()
                };
                let want: Vec<f64> = arr(&expected[name])
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                if got.len() != want.len()
                    || got
                        .iter()
                        .zip(&want)
                        .any(|(g, w)| (g - w).abs() > WEIGHT_TOL)
                {
                    problems.push(format!("{phase}: {name} {got:?}, want {want:?}"));
                }
            }
            // A new weight version with exactly those weights, one audit row, nobody moved.
            let versions = weight_versions(c, key);
            assert_eq!(
                versions.len(),
                versions_before.len() + 1,
                "{phase}: weight versions"
            );
            let (version, stored) = versions.last().unwrap().clone();
            assert_eq!(
                Some(version as i64),
                expected["weight_version"].as_i64(),
                "{phase}"
            );
            assert_eq!(stored, answer.weights, "{phase}: stored weights");
            assert_eq!(weights(c, key), stored, "{phase}: the experiment's weights");
            assert_eq!(
                bandit_history(c, key).len(),
                audits_before + 1,
                "{phase}: audit rows"
            );
            // (an overridden user is answered their override, as before the update)
            let (users, want): (Vec<String>, Vec<String>) = assigned
                .iter()
                .map(|(u, v)| (u.clone(), overridden.get(u).unwrap_or(v).clone()))
                .unzip();
            check_variants(
                c,
                &format!("{phase}: after the update, amba_assign of an earlier user"),
                "SELECT x.u, x.v, amba_assign($1, x.u) FROM unnest($2::text[], $3::text[]) AS x(u, v)",
                key,
                &[&users, &want],
            );
        }
        let rows = c
            .query("SELECT * FROM amba_bandit_results($1)", &[&key])
            .unwrap();
        problems.extend(compare_results(
            &format!("{phase}: amba_bandit_results"),
            &rows,
            arr(&p["bandit_results"]),
        ));
    }

    // Every stored assignment: the reference's variant and weight version.
    let want: BTreeMap<String, (String, i32)> = e["final"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(u, v)| {
            (
                u.clone(),
                (s(&v[0]).to_string(), v[1].as_i64().unwrap() as i32),
            )
        })
        .collect();
    assert_eq!(assignments(c, key), want, "{key}: stored assignments");
    problems
}

#[test]
fn bandit_updates_and_results_equal_the_python_reference() {
    let fx = fixture();
    let db = Db::with_amba("bandit_numbers");
    let mut c = db.client();
    let mut problems = vec![];
    let mut updates = 0;
    for e in arr(&fx["bandit_experiments"]) {
        problems.extend(replay_bandit(&mut c, e));
        updates += arr(&e["phases"])
            .iter()
            .filter(|p| !p["bandit_update"].is_null())
            .count();
    }
    assert!(
        problems.is_empty(),
        "{} differences from tests/integration/fixtures/sql_metrics_reference.json:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    assert!(updates >= 6);
    eprintln!("{updates} bandit updates and their results equal the reference");
}

/// The comparison of `amba_bandit_results` can fail: each expected number, moved by more
/// than its tolerance, is caught.
#[test]
fn the_results_comparison_catches_every_column() {
    let fx = fixture();
    let e = &arr(&fx["bandit_experiments"])[0];
    let db = Db::with_amba("bandit_selfcheck");
    let mut c = db.client();
    replay_bandit(&mut c, e);
    let last = arr(&e["phases"])
        .iter()
        .rev()
        .find(|p| !p["bandit_results"].is_null())
        .unwrap();
    let want = arr(&last["bandit_results"]).clone();
    let rows = c
        .query("SELECT * FROM amba_bandit_results($1)", &[&s(&e["key"])])
        .unwrap();
    assert!(compare_results("final", &rows, &want).is_empty());
    for (i, row) in want.iter().enumerate() {
        for (name, by) in [
            (
                "exposed_count",
                json!(row["exposed_count"].as_i64().unwrap() + 1),
            ),
            ("is_control", json!(!row["is_control"].as_bool().unwrap())),
            ("mean", json!(row["mean"].as_f64().unwrap() * (1.0 + 1e-7))),
            ("ci_low", json!(row["ci_low"].as_f64().unwrap() - 1e-6)),
            ("ci_high", json!(row["ci_high"].as_f64().unwrap() + 1e-6)),
            (
                "best_arm_probability",
                json!(row["best_arm_probability"].as_f64().unwrap() + 2e-6),
            ),
            ("weight", json!(row["weight"].as_f64().unwrap() - 2e-6)),
        ] {
            let mut moved = want.clone();
            moved[i][name] = by;
            assert_eq!(
                compare_results("moved", &rows, &moved).len(),
                1,
                "moving row {i} {name} was not caught exactly once"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. When the weights change, and how
// ---------------------------------------------------------------------------------------

/// An arm without an estimate (no period with two exposed users) has no `mean`, and its
/// posterior is the prior N(0, 10^4) (CONTRACT 14: d_i = 0), so its interval is
/// 0 ± Φ⁻¹(0.975) · 100; with every arm at the prior each is best with probability 1/k.
#[test]
fn arms_without_data_report_the_priors_interval() {
    let db = Db::with_amba("bandit_prior");
    let mut c = db.client();
    let bandit = r#"{"event": "signup", "kind": "conversion"}"#;
    c.query_one(
        "SELECT amba_create_experiment('prior', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &bandit],
    )
    .unwrap();
    // One exposed user in the control: still no period with two.
    let first = users_of_arm("prior", &[1.0, 1.0, 1.0], 0, "p", 1);
    c.query_one(
        "SELECT amba_assign('prior', $1), amba_expose('prior', $1)",
        &[&first[0]],
    )
    .unwrap();
    let z = 1.959_963_984_540_054; // scipy.stats.norm.ppf(0.975)
    let rows = c
        .query(
            "SELECT variant, exposed_count, mean, ci_low, ci_high, best_arm_probability \
               FROM amba_bandit_results('prior')",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let what = format!("arm {}", row.get::<_, String>(0));
        assert_eq!(row.get::<_, i64>(1), i64::from(i == 0), "{what}: exposed");
        assert_eq!(row.get::<_, Option<f64>>(2), None, "{what}: mean");
        let (low, high): (Option<f64>, Option<f64>) = (row.get(3), row.get(4));
        assert!(
            (low.unwrap() + z * 100.0).abs() < 1e-8,
            "{what}: ci_low {low:?}"
        );
        assert!(
            (high.unwrap() - z * 100.0).abs() < 1e-8,
            "{what}: ci_high {high:?}"
        );
        let best: Option<f64> = row.get(5);
        assert!(
            (best.unwrap() - 1.0 / 3.0).abs() < 1e-6,
            "{what}: best {best:?}"
        );
    }
}

/// Nothing changes until every arm has `min_users` exposed users — users assigned but not
/// exposed, and overridden users, do not count — and then the next call updates.
#[test]
fn no_update_before_every_arm_has_min_users() {
    let db = Db::with_amba("bandit_min");
    let mut c = db.client();
    let bandit = r#"{"event": "signup", "kind": "conversion", "min_users": 5}"#;
    c.query_one(
        "SELECT amba_create_experiment('min', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &bandit],
    )
    .unwrap();
    let even = [1.0, 1.0, 1.0];
    let control = users_of_arm("min", &even, 0, "c", 5);
    let a = users_of_arm("min", &even, 1, "a", 5);
    let b = users_of_arm("min", &even, 2, "b", 7);

    // Nobody yet.
    let answer = bandit_update(&mut c, "min", None);
    assert_eq!(answer.json["updated"], false, "{answer}");

    // Five exposed in control and a; in b four exposed, one assigned only, one exposed
    // and then overridden, one exposed and overridden but cleared again (counts).
    for u in control.iter().chain(&a).chain(&b[..4]) {
        c.query_one(
            "SELECT amba_assign('min', $1), amba_expose('min', $1)",
            &[u],
        )
        .unwrap();
    }
    c.query_one("SELECT amba_assign('min', $1)", &[&b[4]])
        .unwrap();
    c.query_one(
        "SELECT amba_assign('min', $1), amba_expose('min', $1)",
        &[&b[5]],
    )
    .unwrap();
    c.query_one("SELECT amba_set_override('min', $1, 'b')", &[&b[5]])
        .unwrap();
    let exposed: Vec<i64> = c
        .query("SELECT exposed_count FROM amba_bandit_results('min')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        exposed,
        [5, 5, 4],
        "the arms' exposed, not overridden users"
    );

    let answer = bandit_update(&mut c, "min", Some(7));
    assert_eq!(answer.json["updated"], false, "{answer}");
    let keys: Vec<&String> = answer.json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["reason", "updated"], "{answer}");
    assert!(
        answer.json["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{answer}"
    );
    eprintln!("4 of 5 in b: {answer}");
    // Nothing written: one weight version, the weights as created, no audit row.
    assert_eq!(weight_versions(&mut c, "min"), vec![(1, even.to_vec())]);
    assert_eq!(experiment(&mut c, "min")["weight_version"], 1);
    assert!(bandit_history(&mut c, "min").is_empty());

    // One more exposed user in b (overridden and cleared again: counted) and it updates.
    c.query_one(
        "SELECT amba_assign('min', $1), amba_expose('min', $1)",
        &[&b[6]],
    )
    .unwrap();
    c.query_one("SELECT amba_set_override('min', $1, 'a')", &[&b[6]])
        .unwrap();
    c.query_one("SELECT amba_clear_override('min', $1)", &[&b[6]])
        .unwrap();
    let answer = bandit_update(&mut c, "min", Some(7));
    assert_eq!(answer.json["updated"], true, "{answer}");
    assert_eq!(weight_versions(&mut c, "min").len(), 2);
    assert_eq!(bandit_history(&mut c, "min").len(), 1);
}

/// Each update writes a new weight version (the one new users get), audits it as
/// `bandit_update`, keeps the control first and every weight at least the floor, and moves
/// nobody already assigned.
#[test]
fn each_update_is_a_new_weight_version_and_nobody_moves() {
    let db = Db::with_amba("bandit_versions");
    let mut c = db.client();
    c.query_one(
        "SELECT amba_create_experiment('steer', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    let first: Vec<String> = (0..300).map(|i| format!("first-{i}")).collect();
    fill(&mut c, "steer", &first, b_wins);
    let mut before = assignments(&mut c, "steer");
    assert!(before.values().all(|(_, v)| *v == 1));

    for round in 1..=2 {
        let answer = bandit_update(&mut c, "steer", Some(round));
        assert_eq!(answer.json["updated"], true, "{answer}");
        let w = answer.weights.clone();
        let p = answer.best_arm_probabilities.clone();
        assert_eq!(w.len(), 3);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{p:?}");
        // default floor 0.01: never 0, and b (40% against 10% and 20%) gets the most
        assert!(w.iter().all(|&x| x >= 0.01 - 1e-12), "{w:?}");
        assert!(w[2] > w[1] && w[1] > w[0], "{w:?}");

        // A new weight version, consecutive, with exactly the answer's weights.
        let versions = weight_versions(&mut c, "steer");
        assert_eq!(
            versions.iter().map(|v| v.0).collect::<Vec<_>>(),
            (1..=round as i32 + 1).collect::<Vec<_>>()
        );
        assert_eq!(versions.last().unwrap().1, w);
        let exp = experiment(&mut c, "steer");
        assert_eq!(exp["weight_version"], round + 1);
        let keys: Vec<&str> = arr(&exp["variants"]).iter().map(|v| s(&v["key"])).collect();
        assert_eq!(keys, ["control", "a", "b"], "the control stays first");

        // Audited: one bandit_update row per update, before/after the weight versions, the
        // answer in it.
        let audit = bandit_history(&mut c, "steer");
        assert_eq!(audit.len(), round as usize);
        let (old, new) = audit.last().unwrap();
        assert_eq!(old["weight_version"], round);
        assert_eq!(new["weight_version"], round + 1);
        assert_eq!(
            new["bandit_update"], answer.json,
            "the audit row carries the answer"
        );

        // Sticky: everyone keeps variant and weight version, also when asked again.
        let users: Vec<String> = before.keys().cloned().collect();
        let again: Vec<String> = c
            .query(
                "SELECT amba_assign('steer', u) FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
                &[&users],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let was: Vec<String> = users.iter().map(|u| before[u].0.clone()).collect();
        assert_eq!(again, was, "an update moved someone");
        let now = assignments(&mut c, "steer");
        assert!(
            before.iter().all(|(u, v)| now[u] == *v),
            "stored assignments changed"
        );

        // New users: the new version, where the new weights put them.
        let new: Vec<String> = (0..200).map(|i| format!("round{round}-{i}")).collect();
        let got = fill(&mut c, "steer", &new, b_wins);
        let want: Vec<&str> = new
            .iter()
            .map(|u| ["control", "a", "b"][pick(bucket_with(0, "steer", u), &w)])
            .collect();
        assert_eq!(got, want, "new users are bucketed at the new weights");
        let stored = assignments(&mut c, "steer");
        assert!(new.iter().all(|u| stored[u].1 == round as i32 + 1));
        // the next round checks these users too
        before = stored;
    }
}

/// A bandit in a layer (its range of the layer's users) and behind a holdout (held-out
/// users never enter): the update changes only the bandit's weights; enrolment still
/// follows the layer and the holdout, and new users get the new weights.
#[test]
fn bandit_with_a_layer_share_and_a_holdout() {
    let db = Db::with_amba("bandit_layer");
    let mut c = db.client();
    let holdout = r#"[{"key":"holdout","weight":20},{"key":"general","weight":80}]"#;
    c.query_one(
        "SELECT amba_create_experiment('hold', $1::text::jsonb)",
        &[&holdout],
    )
    .unwrap();
    // Two bandits in layer L: one behind the holdout (60% of the layer), one without (40%).
    c.query_one(
        "SELECT amba_create_experiment('lb', $1::text::jsonb, layer => 'L', layer_share => 0.6,
                holdout => 'hold', bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    c.query_one(
        "SELECT amba_create_experiment('lonly', $1::text::jsonb, layer => 'L', layer_share => 0.4,
                bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    let range = |c: &mut Client, key: &str| -> (f64, f64) {
        let l = &experiment(c, key)["layer"];
        (l["start"].as_f64().unwrap(), l["end"].as_f64().unwrap())
    };
    let ranges = [range(&mut c, "lb"), range(&mut c, "lonly")];
    assert_eq!(ranges[0].0, 0.0, "lowest free gap");

    // Who each experiment enrols, from the definitions (SPEC §11): the layer bucket in the
    // range, and for lb the holdout's variant 'general'.
    let expected = |key: &str, user: &str, weights: &[f64]| -> Option<&'static str> {
        let (start, end) = if key == "lb" { ranges[0] } else { ranges[1] };
        let lb = bucket_with(2, "L", user);
        if !(start <= lb && lb < end) {
            return None;
        }
        if key == "lb" && pick(bucket_with(0, "hold", user), &[20.0, 80.0]) == 0 {
            return None;
        }
        Some(["control", "a", "b"][pick(bucket_with(0, key, user), weights)])
    };
    let assign_all = |c: &mut Client, users: &[String]| -> Vec<(Option<String>, Option<String>)> {
        c.query(
            "SELECT amba_assign('lb', u), amba_assign('lonly', u)
               FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
            &[&users],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };

    let users: Vec<String> = (0..1200).map(|i| format!("layer-user-{i}")).collect();
    let even = [1.0, 1.0, 1.0];
    let got = assign_all(&mut c, &users);
    for (u, (lb, lonly)) in users.iter().zip(&got) {
        assert_eq!(lb.as_deref(), expected("lb", u, &even), "lb {u}");
        assert_eq!(lonly.as_deref(), expected("lonly", u, &even), "lonly {u}");
        assert!(
            lb.is_none() || lonly.is_none(),
            "{u} in both experiments of a layer"
        );
    }
    // Expose and convert the enrolled users (b wins in both).
    for key in ["lb", "lonly"] {
        let mine: Vec<String> = users
            .iter()
            .filter(|u| expected(key, u, &even).is_some())
            .cloned()
            .collect();
        assert!(mine.len() > 250, "{key}: {} users", mine.len());
        fill(&mut c, key, &mine, b_wins);
        let exposed: Vec<i64> = c
            .query("SELECT exposed_count FROM amba_bandit_results($1)", &[&key])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let by_arm: Vec<i64> = ["control", "a", "b"]
            .iter()
            .map(|arm| {
                mine.iter()
                    .filter(|u| expected(key, u, &even) == Some(*arm))
                    .count() as i64
            })
            .collect();
        assert_eq!(exposed, by_arm, "{key}: exposed users per arm");
    }
    let hold_before = experiment(&mut c, "hold");

    let mut new_weights = BTreeMap::new();
    for key in ["lb", "lonly"] {
        let answer = bandit_update(&mut c, key, Some(1));
        assert_eq!(answer.json["updated"], true, "{key}: {answer}");
        let exp = experiment(&mut c, key);
        assert_eq!(exp["weight_version"], 2, "{key}");
        new_weights.insert(key, weights(&mut c, key));
    }
    // The layer ranges, the holdout and its weights are untouched.
    assert_eq!([range(&mut c, "lb"), range(&mut c, "lonly")], ranges);
    assert_eq!(experiment(&mut c, "lb")["holdout"], "hold");
    let hold_after = experiment(&mut c, "hold");
    assert_eq!(hold_after["weight_version"], hold_before["weight_version"]);
    assert_eq!(hold_after["variants"], hold_before["variants"]);

    // Everyone keeps their answer; new users follow the layer, the holdout and the new
    // weights.
    assert_eq!(assign_all(&mut c, &users), got, "an update moved someone");
    let newcomers: Vec<String> = (0..800).map(|i| format!("layer-late-{i}")).collect();
    let late = assign_all(&mut c, &newcomers);
    for (u, (lb, lonly)) in newcomers.iter().zip(&late) {
        assert_eq!(
            lb.as_deref(),
            expected("lb", u, &new_weights["lb"]),
            "lb {u}"
        );
        assert_eq!(
            lonly.as_deref(),
            expected("lonly", u, &new_weights["lonly"]),
            "lonly {u}"
        );
    }
    assert!(late.iter().any(|x| x.0.is_some()) && late.iter().any(|x| x.1.is_some()));
}

/// A variant at weight 0 cannot be a bandit's arm (the bandit never drives a weight to 0,
/// and nothing else may leave it there): INVALID_ARGUMENT at create and update, nothing
/// written.
#[test]
fn an_arm_at_weight_zero_is_refused() {
    let db = Db::with_amba("bandit_zero");
    let mut c = db.client();
    let zero = r#"[{"key":"control","weight":1},{"key":"a","weight":0},{"key":"b","weight":1}]"#;
    let history = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM amba.experiment_history", &[])
            .unwrap()
            .get(0)
    };

    // Created with an arm at 0.
    let m = invalid_argument(
        &mut c,
        "SELECT amba_create_experiment('zero', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&zero, &SIGNUP_BANDIT],
    );
    eprintln!("create: {m}");
    assert!(experiment(&mut c, "zero").is_null());
    assert_eq!(history(&mut c), 0);

    // A bandit re-weighted by hand to 0 on one arm.
    c.query_one(
        "SELECT amba_create_experiment('bandit', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    let before = experiment(&mut c, "bandit");
    let rows = history(&mut c);
    let m = invalid_argument(
        &mut c,
        "SELECT amba_update_experiment('bandit', variants => $1::text::jsonb)",
        &[&zero],
    );
    eprintln!("update: {m}");
    assert_eq!(experiment(&mut c, "bandit"), before);
    assert_eq!(history(&mut c), rows, "a refused update was audited");
    assert_eq!(weight_versions(&mut c, "bandit").len(), 1);

    // An ordinary experiment with an arm at 0 made a bandit.
    c.query_one(
        "SELECT amba_create_experiment('plain', $1::text::jsonb)",
        &[&zero],
    )
    .unwrap();
    let plain = experiment(&mut c, "plain");
    let rows = rows + 1;
    let m = invalid_argument(
        &mut c,
        "SELECT amba_update_experiment('plain', bandit => $1::text::jsonb)",
        &[&SIGNUP_BANDIT],
    );
    eprintln!("update to a bandit: {m}");
    assert_eq!(experiment(&mut c, "plain"), plain);
    assert_eq!(history(&mut c), rows, "a refused change was audited");
}

// ---------------------------------------------------------------------------------------
// 3. Concurrent updates, forced
// ---------------------------------------------------------------------------------------

/// Sets up `race` (300 users, b winning) in a database of its own.
fn race_db(prefix: &str) -> Db {
    let db = Db::with_amba(prefix);
    let mut c = db.client();
    c.query_one(
        "SELECT amba_create_experiment('race', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    let users: Vec<String> = (0..300).map(|i| format!("race-{i}")).collect();
    fill(&mut c, "race", &users, b_wins);
    db
}

/// Connection A runs an update in an open transaction; B's update is seen waiting for A
/// (pg_locks, pg_stat_activity); then A ends with `end` ("COMMIT" or "ROLLBACK"). Returns
/// A's and B's answers.
fn forced_race(db: &Db, end: &str) -> (Answer, Answer) {
    let mut a = db.client();
    let mut observer = db.client();
    let mut b = db.client();
    let pid_a = backend_pid(&mut a);
    let pid_b = backend_pid(&mut b);

    a.batch_execute("BEGIN").unwrap();
    let answer_a = bandit_update(&mut a, "race", None);
    assert_eq!(answer_a.json["updated"], true, "{answer_a}");

    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let second = std::thread::spawn(move || {
        let answer = bandit_update(&mut b, "race", None);
        flag.store(false, Ordering::SeqCst);
        answer
    });
    let wait_event = wait_until_blocked_by(
        &mut observer,
        pid_b,
        pid_a,
        "B's amba_bandit_update",
        || running.load(Ordering::SeqCst),
    );
    let waiting: Vec<(String, String)> = observer
        .query(
            "SELECT locktype, mode FROM pg_locks WHERE pid = $1 AND NOT granted",
            &[&pid_b],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        !waiting.is_empty(),
        "B is not waiting for a lock in pg_locks"
    );
    eprintln!("B waits for A ({wait_event}; pg_locks: {waiting:?}); A then runs {end}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        running.load(Ordering::SeqCst),
        "B finished while A still held its lock"
    );

    a.batch_execute(end).unwrap();
    let answer_b = second.join().unwrap();
    assert_eq!(answer_b.json["updated"], true, "{answer_b}");
    (answer_a, answer_b)
}

/// Two updates at once serialize: B waits for A, then computes on top of A's version. Two
/// new weight versions, one each, consecutive; two audit rows, each from the version
/// before it.
#[test]
fn concurrent_updates_serialize_when_the_first_commits() {
    let db = race_db("bandit_race_commit");
    let (answer_a, answer_b) = forced_race(&db, "COMMIT");
    let mut c = db.client();
    let versions = weight_versions(&mut c, "race");
    assert_eq!(versions.iter().map(|v| v.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(versions[1].1, answer_a.weights, "version 2 is A's");
    assert_eq!(versions[2].1, answer_b.weights, "version 3 is B's");
    assert_eq!(experiment(&mut c, "race")["weight_version"], 3);
    let audit = bandit_history(&mut c, "race");
    let steps: Vec<(Value, Value)> = audit
        .iter()
        .map(|(before, after)| {
            (
                before["weight_version"].clone(),
                after["weight_version"].clone(),
            )
        })
        .collect();
    assert_eq!(steps, [(json!(1), json!(2)), (json!(2), json!(3))]);
    assert_eq!(audit[0].1["bandit_update"], answer_a.json);
    assert_eq!(audit[1].1["bandit_update"], answer_b.json);
}

/// When A rolls back, nothing of A remains and B's update is the only one: version 2, one
/// audit row.
#[test]
fn concurrent_updates_when_the_first_rolls_back() {
    let db = race_db("bandit_race_rollback");
    let (_, answer_b) = forced_race(&db, "ROLLBACK");
    let mut c = db.client();
    let versions = weight_versions(&mut c, "race");
    assert_eq!(versions.iter().map(|v| v.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(versions[1].1, answer_b.weights, "version 2 is B's");
    assert_eq!(experiment(&mut c, "race")["weight_version"], 2);
    let audit = bandit_history(&mut c, "race");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0["weight_version"], 1);
    assert_eq!(audit[0].1["bandit_update"], answer_b.json);
}

// ---------------------------------------------------------------------------------------
// 4. pg_cron, for real
// ---------------------------------------------------------------------------------------

#[test]
fn pg_cron_runs_the_bandit_update() {
    let mut pg = cron::ready();

    let db = Db::with_amba("bandit_cron");
    let mut c = db.client();
    c.query_one(
        "SELECT amba_create_experiment('cron-bandit', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&THREE, &SIGNUP_BANDIT],
    )
    .unwrap();
    let users: Vec<String> = (0..300).map(|i| format!("cron-{i}")).collect();
    fill(&mut c, "cron-bandit", &users, b_wins);
    assert_eq!(experiment(&mut c, "cron-bandit")["weight_version"], 1);

    let command = "SELECT amba_bandit_update('cron-bandit')";
    let job_name = unique("amba-bandit");
    let started = Instant::now();
    let mut job = CronJob::every_minute(&mut pg, &job_name, command, &db.0);

    // Wait for the weights to move (at most 150 s; pg_cron runs at the next minute).
    let deadline = started + Duration::from_secs(150);
    while Instant::now() < deadline
        && experiment(&mut c, "cron-bandit")["weight_version"].as_i64() == Some(1)
    {
        job.nudge_if_missed(&mut pg);
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    let version = experiment(&mut c, "cron-bandit")["weight_version"].as_i64();
    let runs: Vec<(String, String)> = pg
        .query(
            "SELECT status, coalesce(return_message, '') FROM cron.job_run_details WHERE jobid = $1 ORDER BY runid",
            &[&job.0],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        version >= Some(2),
        "weight version {version:?} {elapsed:?} after scheduling pg_cron job {} ({job_name}); its runs: {runs:?}",
        job.0
    );
    let audit = bandit_history(&mut c, "cron-bandit");
    assert!(!audit.is_empty(), "no bandit_update audit row");
    assert_eq!(audit[0].0["weight_version"], 1);
    assert_eq!(audit[0].1["weight_version"], 2);
    eprintln!("pg_cron job {} moved the weights after {elapsed:?}", job.0);

    // The run that did it is recorded as succeeded (the record is finished just after the
    // command commits: poll briefly).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs: Vec<(String, String, String, String)> = pg
            .query(
                "SELECT status, coalesce(return_message, ''), database, command FROM cron.job_run_details
                  WHERE jobid = $1 ORDER BY runid",
                &[&job.0],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        if let Some(ok) = runs.iter().find(|r| r.0 == "succeeded") {
            assert_eq!(ok.2, db.0);
            assert_eq!(ok.3, command);
            assert!(runs.iter().all(|r| r.0 != "failed"), "{runs:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no succeeded run of pg_cron job {} in cron.job_run_details: {runs:?}",
            job.0
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(job);
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM cron.job WHERE jobname = $1",
            &[&job_name],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the job was not unscheduled");
}

// ---------------------------------------------------------------------------------------
// 4. Many arms: capped, and the exact integrals can be cancelled
// ---------------------------------------------------------------------------------------

/// `n` variants of weight 1 as a JSON array text.
fn arms(n: usize) -> String {
    let v: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("v{i}"), "weight": 1}))
        .collect();
    Value::Array(v).to_string()
}

/// The exact top-two integrals cost about k³: a bandit has at most 50 arms (51 is
/// INVALID_ARGUMENT, at create and when variants are added), and on 50 arms with data the
/// computation honours statement_timeout: cancelled (57014) at a quarter of its uncancelled
/// time, the connection still usable.
#[test]
fn many_arms_are_capped_and_their_integrals_can_be_cancelled() {
    let db = Db::with_amba("bandit_many");
    let mut c = db.client();
    let bandit = r#"{"event": "signup", "kind": "conversion", "min_weight": 0.001}"#;
    let m = invalid_argument(
        &mut c,
        "SELECT amba_create_experiment('many51', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&arms(51), &bandit],
    );
    assert!(m.contains("at most 50"), "{m}");
    c.query_one(
        "SELECT amba_create_experiment('many', $1::text::jsonb, bandit => $2::text::jsonb)",
        &[&arms(50), &bandit],
    )
    .unwrap();
    let m = invalid_argument(
        &mut c,
        "SELECT amba_update_experiment('many', $1::text::jsonb)",
        &[&arms(51)],
    );
    assert!(m.contains("at most 50"), "{m}");
    c.batch_execute(
        "SELECT count(amba_assign('many', 'u' || g)), count(amba_expose('many', 'u' || g))
           FROM generate_series(1, 600) g;
         SELECT count(amba_track('u' || g, 'signup')) FROM generate_series(1, 600) g
          WHERE g % 3 = 0 OR g % 7 = 0;",
    )
    .unwrap();
    let started = Instant::now();
    let rows = c
        .query("SELECT * FROM amba_bandit_results('many')", &[])
        .unwrap();
    let full = started.elapsed();
    assert_eq!(rows.len(), 50);
    assert!(
        full > Duration::from_millis(200),
        "too fast to cancel: {full:?}"
    );
    let timeout = full / 4;
    c.batch_execute(&format!("SET statement_timeout = {}", timeout.as_millis()))
        .unwrap();
    let started = Instant::now();
    let e = c
        .query("SELECT * FROM amba_bandit_results('many')", &[])
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code().map(|s| s.code()), Some("57014"), "{e}");
    // Without interrupt checks inside the integrals the cancel would wait for the whole
    // computation (about `full`).
    assert!(
        took < full / 2,
        "cancelled after {took:?}; the timeout was {timeout:?} (uncancelled: {full:?})"
    );
    eprintln!("uncancelled {full:?}; statement_timeout {timeout:?} ended it after {took:?}");
    c.batch_execute("RESET statement_timeout").unwrap();
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the connection is still usable");
}
