//! Targeting and coverage (SPEC §10, CONTRACT section 10) at the SQL level, each rule
//! against a reference that does not come from amba:
//!
//! - conditions: the `evalCondition` cases of GrowthBook's SDK suite (the fixture the core
//!   test also reads), through `amba_eval_condition` and through the targeting of real
//!   experiments on `amba_assign` / `amba_peek`;
//! - coverage: the coverage bucket computed here with `xxhash-rust` from its definition,
//!   `xxh3_64(utf8(key) || 0x01 || utf8(user_id))` → `(h >> 11) / 2^53` (and the variant
//!   bucket likewise with 0x00, checked against `amba_bucket`);
//! - everything written: the rows of `amba.assignments` / `amba.exposures`, the experiment
//!   jsonb and `amba_experiment_history`.
//!
//! Every test has a database of its own with fixed experiment keys and user ids, so the
//! buckets — and so what each test checks — are the same on every run.

use amba_integration_tests::Db;
use postgres::Client;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

const FIXTURE: &str = include_str!("../../../core/tests/fixtures/growthbook_eval_condition.json");

/// The GrowthBook cases whose condition amba rejects (INVALID_ARGUMENT) when it is written as
/// an experiment's targeting, where GrowthBook evaluates to false (an unknown operator, an
/// invalid regular expression: CONTRACT 10, "rejected when the experiment is created or
/// updated"), as listed in core/tests/condition_cases.rs. `amba_eval_condition` gives
/// GrowthBook's answer on them.
const REJECTED_CASES: [&str; 3] = [
    "unknown operator - pass",
    "$regex invalid - pass",
    "$regex invalid - fail",
];

const AB: &str = r#"[{"key":"a","weight":1},{"key":"b","weight":1}]"#;

// ---------------------------------------------------------------------------------------
// Independent references
// ---------------------------------------------------------------------------------------

/// `(xxh3_64(key || separator || user) >> 11) / 2^53`, from the definition (SPEC §3, §10).
fn bucket_with(separator: u8, key: &str, user: &str) -> f64 {
    let mut bytes = Vec::with_capacity(key.len() + 1 + user.len());
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(separator);
    bytes.extend_from_slice(user.as_bytes());
    (xxh3_64(&bytes) >> 11) as f64 / 9_007_199_254_740_992.0
}

fn coverage_bucket(key: &str, user: &str) -> f64 {
    bucket_with(0x01, key, user)
}

fn variant_bucket(key: &str, user: &str) -> f64 {
    bucket_with(0x00, key, user)
}

/// The variant of a user in a two-variant 50/50 experiment (`AB`).
fn ab_variant(key: &str, user: &str) -> String {
    if variant_bucket(key, user) < 0.5 {
        "a"
    } else {
        "b"
    }
    .to_string()
}

struct Case {
    index: usize,
    name: String,
    condition: Value,
    attributes: Value,
    expected: bool,
    saved_groups: bool,
}

fn growthbook_cases() -> Vec<Case> {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(doc["spec_version"], "0.8.0");
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(index, c)| Case {
            index,
            name: c[0].as_str().unwrap().to_string(),
            condition: c[1].clone(),
            attributes: c[2].clone(),
            expected: c[3].as_bool().unwrap(),
            saved_groups: c.get(4).is_some(),
        })
        .collect();
    assert_eq!(cases.len(), 248);
    cases
}

/// Whether amba must reject the case's condition as targeting: the saved-group operators,
/// and the three listed cases.
fn rejected(case: &Case) -> bool {
    case.saved_groups || REJECTED_CASES.contains(&case.name.as_str())
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn err(e: postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

/// Asserts `r` is INVALID_ARGUMENT (22023, message prefixed); `what` names the call.
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, postgres::Error>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}); must be INVALID_ARGUMENT"),
        Err(e) => {
            let (state, msg) = err(e);
            assert!(
                state == "22023" && msg.starts_with("INVALID_ARGUMENT:"),
                "{what}: {state} {msg}"
            );
        }
    }
}

fn create(c: &mut Client, key: &str, targeting: Option<&Value>, coverage: Option<f64>) -> Value {
    let t = targeting.map(|t| t.to_string());
    let j: String = c
        .query_one(
            "SELECT amba_create_experiment($1, $2::text::jsonb, targeting => $3::text::jsonb, coverage => $4)::text",
            &[&key, &AB, &t, &coverage],
        )
        .unwrap_or_else(|e| panic!("create {key}: {e}"))
        .get(0);
    serde_json::from_str(&j).unwrap()
}

fn update(
    c: &mut Client,
    key: &str,
    targeting: Option<&Value>,
    coverage: Option<f64>,
    status: Option<&str>,
) -> Value {
    let t = targeting.map(|t| t.to_string());
    let j: String = c
        .query_one(
            "SELECT amba_update_experiment($1, status => $2, targeting => $3::text::jsonb, coverage => $4)::text",
            &[&key, &status, &t, &coverage],
        )
        .unwrap_or_else(|e| panic!("update {key}: {e}"))
        .get(0);
    serde_json::from_str(&j).unwrap()
}

fn assign(
    c: &mut Client,
    key: &str,
    user: &str,
    attributes: Option<&Value>,
) -> Result<Option<String>, postgres::Error> {
    let a = attributes.map(|a| a.to_string());
    c.query_one(
        "SELECT amba_assign($1, $2, $3::text::jsonb)",
        &[&key, &user, &a],
    )
    .map(|r| r.get(0))
}

fn peek(
    c: &mut Client,
    key: &str,
    user: &str,
    attributes: Option<&Value>,
) -> Result<Option<String>, postgres::Error> {
    let a = attributes.map(|a| a.to_string());
    c.query_one(
        "SELECT amba_peek($1, $2, $3::text::jsonb)",
        &[&key, &user, &a],
    )
    .map(|r| r.get(0))
}

fn expose(c: &mut Client, key: &str, user: &str) -> Result<String, postgres::Error> {
    c.query_one("SELECT amba_expose($1, $2)", &[&key, &user])
        .map(|r| r.get(0))
}

/// The stored assignments of an experiment: user → variant.
fn stored(c: &mut Client, key: &str) -> BTreeMap<String, String> {
    c.query(
        "SELECT a.user_id, a.variant FROM amba.assignments a
           JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// (assignment rows, exposure rows) of one user in one experiment.
fn rows_of(c: &mut Client, key: &str, user: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM amba.assignments a JOIN amba.experiments e ON e.id = a.experiment_id
                      WHERE e.key = $1 AND a.user_id = $2),
                    (SELECT count(*) FROM amba.exposures x JOIN amba.experiments e ON e.id = x.experiment_id
                      WHERE e.key = $1 AND x.user_id = $2)",
            &[&key, &user],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn total_rows(c: &mut Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM amba.assignments), (SELECT count(*) FROM amba.exposures)",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn get_experiment(c: &mut Client, key: &str) -> Option<Value> {
    let j: Option<String> = c
        .query_one("SELECT amba_get_experiment($1)::text", &[&key])
        .unwrap()
        .get(0);
    j.map(|j| serde_json::from_str(&j).unwrap())
}

/// The history of an experiment: (action, before, after), oldest first.
fn history(c: &mut Client, key: &str) -> Vec<(String, Value, Value)> {
    c.query(
        "SELECT action, coalesce(before::text, 'null'), coalesce(after::text, 'null')
           FROM amba_experiment_history($1)",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
            serde_json::from_str(r.get::<_, &str>(2)).unwrap(),
        )
    })
    .collect()
}

fn eval_condition(
    c: &mut Client,
    condition: Option<&Value>,
    attributes: Option<&Value>,
) -> Result<bool, postgres::Error> {
    let cond = condition.map(|v| v.to_string());
    let attrs = attributes.map(|v| v.to_string());
    c.query_one(
        "SELECT amba_eval_condition($1::text::jsonb, $2::text::jsonb)",
        &[&cond, &attrs],
    )
    .map(|r| r.get(0))
}

/// The first ids `prefix0`, `prefix1`, … whose coverage bucket in `key` satisfies `pred`.
fn ids_where(key: &str, prefix: &str, n: usize, pred: impl Fn(f64) -> bool) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| pred(coverage_bucket(key, u)))
        .take(n)
        .collect()
}

// ---------------------------------------------------------------------------------------
// amba_eval_condition
// ---------------------------------------------------------------------------------------

#[test]
fn eval_condition_gives_growthbooks_answer_on_every_case() {
    let db = Db::with_amba("tgt_eval");
    let mut c = db.client();
    let mut failures = Vec::new();
    let (mut evaluated, mut rejections) = (0, 0);
    for case in growthbook_cases() {
        let label = format!(
            "#{} {:?}: amba_eval_condition('{}', '{}')",
            case.index, case.name, case.condition, case.attributes
        );
        let got = eval_condition(&mut c, Some(&case.condition), Some(&case.attributes));
        // Evaluated once, only the saved-group operators are rejected (CONTRACT 10: every
        // other case gives GrowthBook's answer).
        if case.saved_groups {
            match got {
                Err(e) => {
                    let (state, msg) = err(e);
                    if state == "22023" && msg.starts_with("INVALID_ARGUMENT:") {
                        rejections += 1;
                    } else {
                        failures.push(format!("{label}: {state} {msg}; must be INVALID_ARGUMENT"));
                    }
                }
                Ok(v) => failures.push(format!("{label}: {v}; must be rejected (22023)")),
            }
        } else {
            match got {
                Ok(v) if v == case.expected => evaluated += 1,
                Ok(v) => failures.push(format!(
                    "{label}: {v}, GrowthBook expects {}",
                    case.expected
                )),
                Err(e) => failures.push(format!(
                    "{label}: error {:?}, GrowthBook expects {}",
                    err(e),
                    case.expected
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 248 GrowthBook cases wrong through SQL:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((evaluated, rejections), (240, 8));
}

#[test]
fn eval_condition_null_empty_and_bad_inputs() {
    let db = Db::with_amba("tgt_eval_edges");
    let mut c = db.client();
    let cond = json!({"country": "DE"});
    // NULL or {} condition: true, whatever the attributes.
    assert!(eval_condition(&mut c, None, None).unwrap());
    assert!(eval_condition(&mut c, None, Some(&json!({"country": "US"}))).unwrap());
    assert!(eval_condition(&mut c, Some(&json!({})), None).unwrap());
    assert!(eval_condition(&mut c, Some(&json!({})), Some(&json!({"x": 1}))).unwrap());
    // NULL attributes are {}.
    assert!(!eval_condition(&mut c, Some(&cond), None).unwrap());
    assert!(eval_condition(&mut c, Some(&json!({"country": {"$exists": false}})), None).unwrap());
    assert!(!eval_condition(&mut c, Some(&json!({"country": {"$exists": true}})), None).unwrap());
    assert!(eval_condition(&mut c, Some(&cond), Some(&json!({"country": "DE"}))).unwrap());
    // Attributes that are not an object, conditions that are not conditions.
    for attrs in [
        json!([]),
        json!([{"country": "DE"}]),
        json!("DE"),
        json!(1),
        json!(true),
        Value::Null,
    ] {
        assert_invalid(
            eval_condition(&mut c, Some(&cond), Some(&attrs)),
            &format!("attributes {attrs}"),
        );
        assert_invalid(
            eval_condition(&mut c, None, Some(&attrs)),
            &format!("NULL condition, attributes {attrs}"),
        );
    }
    // Conditions rejected as targeting: evaluated once, the saved groups and what is not a
    // condition are INVALID_ARGUMENT; an unknown operator or an invalid pattern never holds,
    // as in GrowthBook (so a negation of one holds).
    let de = json!({"country": "DE", "name": "(", "tags": [1, "x"]});
    for bad in bad_conditions() {
        let got = eval_condition(&mut c, Some(&bad), Some(&de));
        let not_a_condition = !bad.is_object();
        let text = bad.to_string();
        if not_a_condition || text.contains("Group") {
            assert_invalid(got, &format!("condition {bad}"));
        } else {
            let negated = text.contains("$not") || text.contains("$nor");
            assert_eq!(
                got.unwrap(),
                negated,
                "condition {bad}: GrowthBook's answer"
            );
        }
    }
    // Pure: IMMUTABLE (CONTRACT 10), and one function each for assign and peek, the
    // attributes a defaulted third argument.
    let volatility: String = c
        .query_one(
            "SELECT provolatile::text FROM pg_proc WHERE proname = 'amba_eval_condition'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(volatility, "i");
    for f in ["amba_assign", "amba_peek"] {
        let r = c
            .query(
                "SELECT pronargs::int, pronargdefaults::int, pg_get_function_identity_arguments(oid)
                   FROM pg_proc WHERE proname = $1",
                &[&f],
            )
            .unwrap();
        assert_eq!(r.len(), 1, "{f}: one function");
        assert_eq!(
            (
                r[0].get::<_, i32>(0),
                r[0].get::<_, i32>(1),
                r[0].get::<_, String>(2)
            ),
            (
                3,
                1,
                "experiment_key text, user_id text, attributes jsonb".to_string()
            ),
            "{f}"
        );
    }
}

/// Conditions amba must reject (unknown operators anywhere, regular expressions Rust's
/// `regex` rejects, and values that are not conditions).
fn bad_conditions() -> Vec<Value> {
    vec![
        json!({"country": {"$foo": 1}}),
        json!({"id": {"$inGroup": "g1"}}),
        json!({"id": {"$notInGroup": "g1"}}),
        json!({"$and": [{"a": 1}, {"b": {"$bar": 1}}]}),
        json!({"$or": [{"a": 1}, {"name": {"$regex": "("}}]}),
        json!({"$nor": [{"a": {"$baz": 2}}]}),
        json!({"$not": {"a": {"$regx": "x"}}}),
        json!({"tags": {"$elemMatch": {"$qux": 1}}}),
        json!({"tags": {"$all": [1], "$nope": 2}}),
        json!({"name": {"$regex": "("}}),
        json!({"name": {"$regexi": "[a-"}}),
        json!({"name": {"$regex": "(?=a)b"}}), // look-ahead: not in Rust's regex
        json!({"name": {"$regex": "(a)\\1"}}), // back-reference: not in Rust's regex
        json!({"name": {"$not": {"$regex": "*"}}}),
        json!([]),
        json!([{"country": "DE"}]),
        json!("DE"),
        json!(42),
        json!(true),
    ]
}

#[test]
fn pathological_regex_evaluates_in_linear_time() {
    let db = Db::with_amba("tgt_redos");
    let mut c = db.client();
    c.batch_execute("SET statement_timeout = '60s'").unwrap();
    let cond = json!({"name": {"$regex": "(a+)+$"}});
    create(&mut c, "redos", Some(&cond), None);
    let evil = json!({"name": format!("{}!", "a".repeat(100_000))});
    let good = json!({"name": "a".repeat(100_000)});
    let t = Instant::now();
    assert!(!eval_condition(&mut c, Some(&cond), Some(&evil)).unwrap());
    assert!(eval_condition(&mut c, Some(&cond), Some(&good)).unwrap());
    assert_eq!(assign(&mut c, "redos", "evil", Some(&evil)).unwrap(), None);
    assert_eq!(peek(&mut c, "redos", "evil", Some(&evil)).unwrap(), None);
    assert_eq!(
        assign(&mut c, "redos", "good", Some(&good)).unwrap(),
        Some(ab_variant("redos", "good"))
    );
    let nested = json!({"name": {"$regexi": "^(a|a?)+$"}});
    assert!(!eval_condition(&mut c, Some(&nested), Some(&evil)).unwrap());
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "catastrophic-backtracking patterns on 100,000 characters took {elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Targeting on assign and peek
// ---------------------------------------------------------------------------------------

/// Every GrowthBook case as the targeting of an experiment of its own: the user is enrolled
/// (peek, then assign, then the stored row) exactly when GrowthBook says the condition
/// holds; the conditions amba rejects are refused at create, nothing created.
#[test]
fn targeting_enrols_exactly_where_growthbook_says_the_condition_holds() {
    let db = Db::with_amba("tgt_gb");
    let mut c = db.client();
    let mut failures = Vec::new();
    for case in growthbook_cases() {
        let key = format!("gb{}", case.index);
        let label = format!(
            "#{} {:?}: targeting {}, attributes {}",
            case.index, case.name, case.condition, case.attributes
        );
        if rejected(&case) {
            assert_invalid(
                c.query_one(
                    "SELECT amba_create_experiment($1, $2::text::jsonb, targeting => $3::text::jsonb)",
                    &[&key, &AB, &case.condition.to_string()],
                ),
                &label,
            );
            assert_eq!(get_experiment(&mut c, &key), None, "{label}: created");
            assert!(history(&mut c, &key).is_empty(), "{label}: audited");
            continue;
        }
        create(&mut c, &key, Some(&case.condition), None);
        let want = case.expected.then(|| ab_variant(&key, "user"));
        let peeked = peek(&mut c, &key, "user", Some(&case.attributes));
        let assigned = assign(&mut c, &key, "user", Some(&case.attributes));
        let rows = stored(&mut c, &key);
        let stored_variant = rows.get("user").cloned();
        match (peeked, assigned) {
            (Ok(p), Ok(a)) => {
                if p != want || a != want || stored_variant != want || rows.len() > 1 {
                    failures.push(format!(
                        "{label}: peek {p:?}, assign {a:?}, stored {stored_variant:?}; expected {want:?} (GrowthBook: {})",
                        case.expected
                    ));
                }
            }
            (p, a) => failures.push(format!("{label}: peek {p:?}, assign {a:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong on assign/peek:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn matching_users_enrol_others_get_null_write_nothing_and_cannot_expose() {
    let db = Db::with_amba("tgt_assign");
    let mut c = db.client();
    let key = "tgt";
    create(
        &mut c,
        key,
        Some(&json!({"country": "DE", "age": {"$gte": 18}})),
        None,
    );
    let de30 = json!({"country": "DE", "age": 30});

    // Matching: peek tells, assign stores the same (the variant of the bucket).
    let v = ab_variant(key, "m1");
    assert_eq!(
        peek(&mut c, key, "m1", Some(&de30)).unwrap(),
        Some(v.clone())
    );
    assert_eq!(rows_of(&mut c, key, "m1"), (0, 0), "peek wrote");
    assert_eq!(
        assign(&mut c, key, "m1", Some(&de30)).unwrap(),
        Some(v.clone())
    );
    assert_eq!(stored(&mut c, key).get("m1"), Some(&v));
    assert_eq!(expose(&mut c, key, "m1").unwrap(), v);
    assert_eq!(rows_of(&mut c, key, "m1"), (1, 1));

    // Not matching (or no attributes): NULL, nothing written, no exposure possible.
    let not_matching: Vec<(&str, Option<Value>)> = vec![
        ("n1", Some(json!({"country": "US", "age": 30}))),
        ("n2", Some(json!({"country": "DE", "age": 17}))),
        ("n3", Some(json!({"country": "DE"}))),
        ("n4", Some(json!({"country": "de", "age": 30}))),
        ("n5", Some(json!({}))),
        ("n6", None),
    ];
    for (user, attrs) in &not_matching {
        assert_eq!(
            peek(&mut c, key, user, attrs.as_ref()).unwrap(),
            None,
            "{user}"
        );
        assert_eq!(
            assign(&mut c, key, user, attrs.as_ref()).unwrap(),
            None,
            "{user}"
        );
        let two_args: Option<String> = c
            .query_one("SELECT amba_assign($1, $2)", &[&key, user])
            .unwrap()
            .get(0);
        assert_eq!(two_args, None, "{user}: two-argument assign");
        let (state, msg) = err(expose(&mut c, key, user).unwrap_err());
        assert!(
            state == "P0002" && msg.starts_with("ASSIGNMENT_REQUIRED:"),
            "{user}: expose gave {state} {msg}"
        );
        assert_eq!(rows_of(&mut c, key, user), (0, 0), "{user}: rows written");
    }
    assert_eq!(total_rows(&mut c), (1, 1));

    // Not enrolled is not remembered: the same user matching later is enrolled.
    assert_eq!(
        assign(&mut c, key, "n1", Some(&de30)).unwrap(),
        Some(ab_variant(key, "n1"))
    );

    // Sticky: once assigned, any attributes (or none) get the stored variant.
    for attrs in [
        Some(json!({"country": "US", "age": 3})),
        Some(json!({})),
        None,
    ] {
        assert_eq!(
            assign(&mut c, key, "m1", attrs.as_ref()).unwrap(),
            Some(v.clone()),
            "{attrs:?}"
        );
        assert_eq!(
            peek(&mut c, key, "m1", attrs.as_ref()).unwrap(),
            Some(v.clone()),
            "{attrs:?}"
        );
    }
    // A change of targeting affects only users not yet assigned.
    update(&mut c, key, Some(&json!({"country": "FR"})), None, None);
    assert_eq!(
        assign(&mut c, key, "m1", Some(&de30)).unwrap(),
        Some(v.clone())
    );
    assert_eq!(assign(&mut c, key, "m2", Some(&de30)).unwrap(), None);
    assert_eq!(
        assign(&mut c, key, "m3", Some(&json!({"country": "FR"}))).unwrap(),
        Some(ab_variant(key, "m3"))
    );
    // Removed: everyone.
    update(&mut c, key, Some(&json!({})), None, None);
    assert_eq!(
        assign(&mut c, key, "m2", None).unwrap(),
        Some(ab_variant(key, "m2"))
    );
    assert_eq!(total_rows(&mut c), (4, 1));
}

/// The contract's five-clause condition (the benchmark's) over every combination of
/// attribute values, on two experiments (coverage 1, and coverage 0.5 with five users per
/// combination): peek, then assign, equal the reference — enrolled iff the condition holds
/// (decided here, from the meaning of each clause) and the coverage bucket is below the
/// coverage — and the stored rows are exactly the enrolled users.
#[test]
fn five_clause_condition_and_coverage_against_a_reference() {
    let db = Db::with_amba("tgt_five");
    let mut c = db.client();
    let condition = json!({
        "country": "DE",
        "platform": {"$in": ["ios", "android"]},
        "version": {"$vgte": "17.0.0"},
        "logged_in": true,
        "age": {"$gte": 18}
    });
    // (version, whether it is >= 17.0.0): string order would get 9.0.0 and 100.0.0 wrong.
    let versions = [
        ("17.2.0", true),
        ("17.0.0", true),
        ("16.9.9", false),
        ("9.0.0", false),
        ("100.0.0", true),
        ("17.10.0", true),
    ];
    let mut combos = Vec::new();
    for country in ["DE", "FR"] {
        for platform in ["ios", "android", "web"] {
            for (version, version_ok) in versions {
                for logged_in in [true, false] {
                    for age in [30, 18, 17] {
                        let attrs = json!({
                            "country": country, "platform": platform, "version": version,
                            "logged_in": logged_in, "age": age, "extra": {"x": [1, 2]}
                        });
                        let holds = country == "DE"
                            && platform != "web"
                            && version_ok
                            && logged_in
                            && age >= 18;
                        combos.push((attrs, holds));
                    }
                }
            }
        }
    }
    let holding = combos.iter().filter(|(_, h)| *h).count();
    assert_eq!(holding, 16);
    for (key, coverage, per_combo) in [("five", 1.0, 1usize), ("five_half", 0.5, 5)] {
        create(&mut c, key, Some(&condition), Some(coverage));
        let mut want_rows = BTreeMap::new();
        let mut enrolled_by_holding = 0;
        for (i, (attrs, holds)) in combos.iter().enumerate() {
            // The condition alone, through amba_eval_condition.
            assert_eq!(
                eval_condition(&mut c, Some(&condition), Some(attrs)).unwrap(),
                *holds,
                "{attrs}"
            );
            for j in 0..per_combo {
                let user = format!("u{i}_{j}");
                let want = (*holds && coverage_bucket(key, &user) < coverage)
                    .then(|| ab_variant(key, &user));
                let p = peek(&mut c, key, &user, Some(attrs)).unwrap();
                let a = assign(&mut c, key, &user, Some(attrs)).unwrap();
                assert_eq!((&p, &a), (&want, &want), "{key} {user} {attrs}");
                if let Some(v) = want {
                    want_rows.insert(user, v);
                    enrolled_by_holding += 1;
                }
            }
        }
        assert_eq!(stored(&mut c, key), want_rows, "{key}: stored rows");
        assert!(enrolled_by_holding > 0, "{key}: nobody enrolled");
        if coverage < 1.0 {
            assert!(
                enrolled_by_holding < holding * per_combo,
                "{key}: coverage left nobody out"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------------------

#[test]
fn coverage_enrols_exactly_the_users_below_it_and_raising_it_removes_nobody() {
    let db = Db::with_amba("tgt_coverage");
    let mut c = db.client();
    let key = "cov";
    let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();

    // The reference variant bucket is amba's (SPEC §3), to the bit.
    let buckets: Vec<f64> = c
        .query("SELECT amba_bucket($1, u) FROM unnest($2::text[]) WITH ORDINALITY AS t(u, i) ORDER BY i", &[&key, &users])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (u, b) in users.iter().zip(&buckets) {
        assert_eq!(*b, variant_bucket(key, u), "variant bucket of {u}");
    }

    create(&mut c, key, None, Some(0.3));
    let expected_at = |coverage: f64| -> BTreeMap<String, String> {
        users
            .iter()
            .filter(|u| coverage_bucket(key, u) < coverage)
            .map(|u| (u.clone(), ab_variant(key, u)))
            .collect()
    };
    let run = |c: &mut Client, users: &[String]| -> BTreeMap<String, String> {
        let mut got = BTreeMap::new();
        for u in users {
            let p = peek(c, key, u, None).unwrap();
            let a = assign(c, key, u, None).unwrap();
            assert_eq!(p, a, "{u}: peek and assign differ");
            if let Some(v) = a {
                got.insert(u.clone(), v);
            }
        }
        got
    };

    // 0.3: exactly the users whose coverage bucket is below 0.3, each with its variant.
    let at_03 = run(&mut c, &users);
    let want_03 = expected_at(0.3);
    assert_eq!(at_03, want_03, "enrolled at coverage 0.3");
    assert_eq!(stored(&mut c, key), want_03);
    assert!(
        (500..700).contains(&want_03.len()),
        "{} of 2000",
        want_03.len()
    );
    // The coverage bucket is not the variant bucket: both variants among the enrolled.
    let a_count = want_03.values().filter(|v| *v == "a").count();
    assert!(
        a_count > 200 && a_count < want_03.len() - 200,
        "{a_count} a of {}",
        want_03.len()
    );

    // 0.6: those stay with their variant, the newly enrolled are exactly [0.3, 0.6).
    update(&mut c, key, None, Some(0.6), None);
    let at_06 = run(&mut c, &users);
    assert_eq!(at_06, expected_at(0.6), "enrolled at coverage 0.6");
    for (u, v) in &at_03 {
        assert_eq!(
            at_06.get(u),
            Some(v),
            "{u} lost or changed by raising coverage"
        );
    }
    let added: BTreeSet<&String> = at_06.keys().filter(|u| !at_03.contains_key(*u)).collect();
    assert!(!added.is_empty());
    for u in &added {
        let b = coverage_bucket(key, u);
        assert!(
            (0.3..0.6).contains(&b),
            "{u}: newly enrolled with coverage bucket {b}"
        );
    }
    assert_eq!(stored(&mut c, key), expected_at(0.6));

    // Lowered to 0.1: the assigned keep their variant (sticky); new users only below 0.1.
    update(&mut c, key, None, Some(0.1), None);
    let fresh: Vec<String> = (0..1000).map(|i| format!("later-{i}")).collect();
    let again = run(&mut c, &users);
    assert_eq!(
        again,
        expected_at(0.6),
        "lowering coverage removed or changed someone"
    );
    let fresh_got = run(&mut c, &fresh);
    let fresh_want: BTreeMap<String, String> = fresh
        .iter()
        .filter(|u| coverage_bucket(key, u) < 0.1)
        .map(|u| (u.clone(), ab_variant(key, u)))
        .collect();
    assert_eq!(fresh_got, fresh_want);
    assert!(!fresh_want.is_empty());

    // 0: nobody new (the assigned still keep theirs).
    update(&mut c, key, None, Some(0.0), None);
    let none: Vec<String> = (0..500).map(|i| format!("zero-{i}")).collect();
    assert!(run(&mut c, &none).is_empty(), "coverage 0 enrolled someone");
    assert_eq!(run(&mut c, &users), expected_at(0.6));

    // Created at 0: nobody; at 1 (and by default): everybody.
    create(&mut c, "cov0", None, Some(0.0));
    create(&mut c, "cov1", None, Some(1.0));
    create(&mut c, "covdefault", None, None);
    for u in &users[..500] {
        assert_eq!(assign(&mut c, "cov0", u, None).unwrap(), None);
        assert_eq!(peek(&mut c, "cov0", u, None).unwrap(), None);
        assert_eq!(
            assign(&mut c, "cov1", u, None).unwrap(),
            Some(ab_variant("cov1", u))
        );
        assert_eq!(
            assign(&mut c, "covdefault", u, None).unwrap(),
            Some(ab_variant("covdefault", u))
        );
    }
    assert!(stored(&mut c, "cov0").is_empty());
    assert_eq!(stored(&mut c, "cov1").len(), 500);
}

// ---------------------------------------------------------------------------------------
// Overrides, aliases, the order of the checks
// ---------------------------------------------------------------------------------------

#[test]
fn overrides_win_over_targeting_and_coverage_and_aliases_act_as_their_user() {
    let db = Db::with_amba("tgt_override");
    let mut c = db.client();
    let us = json!({"country": "US"});
    let de = json!({"country": "DE"});

    // Targeting nobody matches here, coverage 0: only overrides get a variant.
    create(&mut c, "ovr", Some(&de), Some(0.0));
    c.execute("SELECT amba_set_override('ovr', 'qa', 'b')", &[])
        .unwrap();
    c.execute("SELECT amba_set_override('ovr', 'member-o', 'a')", &[])
        .unwrap();
    c.execute("SELECT amba_alias('anon-o', 'member-o')", &[])
        .unwrap();
    for (user, want) in [("qa", "b"), ("member-o", "a"), ("anon-o", "a")] {
        for attrs in [Some(&us), Some(&de), None] {
            assert_eq!(
                assign(&mut c, "ovr", user, attrs).unwrap().as_deref(),
                Some(want),
                "{user} {attrs:?}"
            );
            assert_eq!(
                peek(&mut c, "ovr", user, attrs).unwrap().as_deref(),
                Some(want),
                "{user} {attrs:?}"
            );
        }
        assert_eq!(expose(&mut c, "ovr", user).unwrap(), want, "{user}");
    }
    assert_eq!(assign(&mut c, "ovr", "plain", Some(&de)).unwrap(), None);
    assert_eq!(
        total_rows(&mut c),
        (0, 0),
        "overrides or the not-enrolled wrote rows"
    );
    // Paused: the override still wins (before the status).
    update(&mut c, "ovr", None, None, Some("paused"));
    assert_eq!(
        assign(&mut c, "ovr", "qa", Some(&us)).unwrap().as_deref(),
        Some("b")
    );

    // Coverage is the user's: an aliased id is enrolled iff its user's bucket is below it,
    // with its user's variant, stored for its user.
    let key = "alias_cov";
    create(&mut c, key, None, Some(0.5));
    let covered = ids_where(key, "cov-", 2, |b| b < 0.5);
    let uncovered = ids_where(key, "unc-", 2, |b| b >= 0.5);
    // anonymous id covered, user not: not enrolled.
    c.execute("SELECT amba_alias($1, $2)", &[&covered[0], &uncovered[0]])
        .unwrap();
    assert_eq!(peek(&mut c, key, &covered[0], None).unwrap(), None);
    assert_eq!(assign(&mut c, key, &covered[0], None).unwrap(), None);
    // anonymous id not covered, user covered: enrolled as the user.
    c.execute("SELECT amba_alias($1, $2)", &[&uncovered[1], &covered[1]])
        .unwrap();
    let v = ab_variant(key, &covered[1]);
    assert_eq!(
        peek(&mut c, key, &uncovered[1], None).unwrap(),
        Some(v.clone())
    );
    assert_eq!(
        assign(&mut c, key, &uncovered[1], None).unwrap(),
        Some(v.clone())
    );
    assert_eq!(
        stored(&mut c, key),
        BTreeMap::from([(covered[1].clone(), v.clone())]),
        "stored for the user, nothing else"
    );
    assert_eq!(expose(&mut c, key, &uncovered[1]).unwrap(), v);

    // Targeting: the user's stored assignment holds for its aliases whatever they say,
    // and an anonymous assignment moved to the user by the alias stays sticky.
    let key = "alias_tgt";
    create(&mut c, key, Some(&de), None);
    let v3 = assign(&mut c, key, "member-3", Some(&de)).unwrap().unwrap();
    c.execute("SELECT amba_alias('anon-3', 'member-3')", &[])
        .unwrap();
    assert_eq!(
        assign(&mut c, key, "anon-3", Some(&us)).unwrap(),
        Some(v3.clone())
    );
    assert_eq!(
        peek(&mut c, key, "anon-3", Some(&us)).unwrap(),
        Some(v3.clone())
    );
    let v4 = assign(&mut c, key, "anon-4", Some(&de)).unwrap().unwrap();
    c.execute("SELECT amba_alias('anon-4', 'member-4')", &[])
        .unwrap();
    assert_eq!(
        assign(&mut c, key, "member-4", Some(&us)).unwrap(),
        Some(v4.clone())
    );
    assert_eq!(
        assign(&mut c, key, "anon-4", None).unwrap(),
        Some(v4.clone())
    );
    // A new anonymous id aliased to a new user: the attributes of the call decide.
    c.execute("SELECT amba_alias('anon-5', 'member-5')", &[])
        .unwrap();
    assert_eq!(assign(&mut c, key, "anon-5", Some(&us)).unwrap(), None);
    assert_eq!(
        assign(&mut c, key, "anon-5", Some(&de)).unwrap(),
        Some(ab_variant(key, "member-5"))
    );
    assert_eq!(
        stored(&mut c, key),
        BTreeMap::from([
            ("member-3".to_string(), v3),
            ("member-4".to_string(), v4),
            ("member-5".to_string(), ab_variant(key, "member-5")),
        ])
    );
}

#[test]
fn status_is_checked_before_targeting_and_stored_assignments_before_everything() {
    let db = Db::with_amba("tgt_order");
    let mut c = db.client();
    let de = json!({"country": "DE"});
    let us = json!({"country": "US"});
    for status in ["paused", "draft", "ended"] {
        let key = format!("order-{status}");
        c.execute(
            "SELECT amba_create_experiment($1, $2::text::jsonb, status => $3, targeting => $4::text::jsonb, coverage => 0.0)",
            &[&key, &AB, &status, &de.to_string()],
        )
        .unwrap();
        for attrs in [Some(&us), Some(&de), None] {
            let (state, msg) = err(assign(&mut c, &key, "new-user", attrs).unwrap_err());
            assert!(
                state == "55000" && msg.starts_with("EXPERIMENT_INACTIVE:"),
                "{status} {attrs:?}: {state} {msg}"
            );
            // peek never raises EXPERIMENT_INACTIVE (SPEC §3d).
            assert_eq!(peek(&mut c, &key, "new-user", attrs).unwrap(), None);
        }
    }
    assert_eq!(total_rows(&mut c), (0, 0));

    // A stored user keeps the variant whatever the targeting, coverage and status are now
    // and whatever the attributes say.
    let key = "order-stored";
    create(&mut c, key, Some(&de), None);
    let v = assign(&mut c, key, "kept", Some(&de)).unwrap().unwrap();
    assert_eq!(v, ab_variant(key, "kept"));
    update(
        &mut c,
        key,
        Some(&json!({"country": "FR"})),
        Some(0.0),
        None,
    );
    for attrs in [Some(&us), None] {
        assert_eq!(assign(&mut c, key, "kept", attrs).unwrap(), Some(v.clone()));
        assert_eq!(peek(&mut c, key, "kept", attrs).unwrap(), Some(v.clone()));
    }
    update(&mut c, key, None, None, Some("paused"));
    for attrs in [Some(&us), Some(&de), None] {
        assert_eq!(
            assign(&mut c, key, "kept", attrs).unwrap(),
            Some(v.clone()),
            "paused {attrs:?}"
        );
        assert_eq!(
            peek(&mut c, key, "kept", attrs).unwrap(),
            Some(v.clone()),
            "paused {attrs:?}"
        );
    }
    let (state, _) =
        err(assign(&mut c, key, "other", Some(&json!({"country": "FR"}))).unwrap_err());
    assert_eq!(state, "55000");
    assert_eq!(
        stored(&mut c, key),
        BTreeMap::from([("kept".to_string(), v)])
    );
}

// ---------------------------------------------------------------------------------------
// Create, update, audit; bad input
// ---------------------------------------------------------------------------------------

fn targeting_of(e: &Value) -> Value {
    let obj = e.as_object().unwrap();
    assert!(obj.contains_key("targeting"), "no \"targeting\" key: {e}");
    obj["targeting"].clone()
}

fn coverage_of(e: &Value) -> f64 {
    e["coverage"]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric \"coverage\": {e}"))
}

#[test]
fn create_update_get_and_history_carry_targeting_and_coverage() {
    let db = Db::with_amba("tgt_crud");
    let mut c = db.client();
    let t1 = json!({"country": "DE", "age": {"$gte": 18}});
    let t2 = json!({"$or": [{"platform": "ios"}, {"version": {"$vgte": "2.0.0"}}]});

    // Unset: "targeting": null, "coverage": 1, in what create, get and list return.
    let plain = create(&mut c, "plain", None, None);
    let listed: Vec<Value> = c
        .query("SELECT e::text FROM amba_list_experiments() e", &[])
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    for e in [
        plain.clone(),
        get_experiment(&mut c, "plain").unwrap(),
        listed[0].clone(),
    ] {
        assert_eq!(targeting_of(&e), Value::Null, "{e}");
        assert_eq!(coverage_of(&e), 1.0, "{e}");
    }

    // Positional: targeting and coverage come after the existing five arguments.
    let j: String = c
        .query_one(
            "SELECT amba_create_experiment('pos', $1::text::jsonb, 'N', 'D', 'draft', $2::text::jsonb, 0.25)::text",
            &[&AB, &t1.to_string()],
        )
        .unwrap()
        .get(0);
    let pos: Value = serde_json::from_str(&j).unwrap();
    assert_eq!((targeting_of(&pos), coverage_of(&pos)), (t1.clone(), 0.25));
    assert_eq!(
        (pos["name"].as_str(), pos["status"].as_str()),
        (Some("N"), Some("draft"))
    );
    let j: String = c
        .query_one(
            "SELECT amba_update_experiment('pos', NULL, 'active', NULL, NULL, $1::text::jsonb, 0.5)::text",
            &[&t2.to_string()],
        )
        .unwrap()
        .get(0);
    let pos: Value = serde_json::from_str(&j).unwrap();
    assert_eq!((targeting_of(&pos), coverage_of(&pos)), (t2.clone(), 0.5));

    // A sequence of updates; each returns the experiment; NULL leaves both alone.
    let key = "seq";
    let mut returned = vec![create(&mut c, key, Some(&t1), Some(0.25))];
    let mut expect = vec![(t1.clone(), 0.25)];
    let j: String = c
        .query_one(
            "SELECT amba_update_experiment($1, name => 'renamed')::text",
            &[&key],
        )
        .unwrap()
        .get(0);
    returned.push(serde_json::from_str(&j).unwrap());
    expect.push((t1.clone(), 0.25));
    let j: String = c
        .query_one(
            "SELECT amba_update_experiment($1, targeting => NULL, coverage => NULL)::text",
            &[&key],
        )
        .unwrap()
        .get(0);
    returned.push(serde_json::from_str(&j).unwrap());
    expect.push((t1.clone(), 0.25));
    returned.push(update(&mut c, key, None, Some(0.75), None));
    expect.push((t1.clone(), 0.75));
    returned.push(update(&mut c, key, Some(&t2), None, None));
    expect.push((t2.clone(), 0.75));
    returned.push(update(&mut c, key, Some(&json!({})), None, None));
    expect.push((Value::Null, 0.75));
    returned.push(update(&mut c, key, None, Some(0.0), Some("paused")));
    expect.push((Value::Null, 0.0));
    returned.push(update(&mut c, key, Some(&t1), Some(1.0), Some("active")));
    expect.push((t1.clone(), 1.0));
    for (i, (e, (t, cov))) in returned.iter().zip(&expect).enumerate() {
        assert_eq!(
            (targeting_of(e), coverage_of(e)),
            (t.clone(), *cov),
            "step {i}: {e}"
        );
    }
    let now = get_experiment(&mut c, key).unwrap();
    assert_eq!((targeting_of(&now), coverage_of(&now)), (t1.clone(), 1.0));

    // History: one row per call, carrying both before and after.
    let h = history(&mut c, key);
    assert_eq!(h.len(), returned.len(), "{h:?}");
    assert_eq!(h[0].0, "create");
    assert_eq!(h[0].1, Value::Null);
    for (i, (action, before, after)) in h.iter().enumerate() {
        if i > 0 {
            assert_eq!(action, "update");
            let (t, cov) = &expect[i - 1];
            assert_eq!(
                (targeting_of(before), coverage_of(before)),
                (t.clone(), *cov),
                "history {i} before"
            );
        }
        let (t, cov) = &expect[i];
        assert_eq!(
            (targeting_of(after), coverage_of(after)),
            (t.clone(), *cov),
            "history {i} after"
        );
        assert_eq!(after["name"], returned[i]["name"]);
    }

    // An empty condition at create is everyone (stored as no condition or as {}).
    let empty = create(&mut c, "empty", Some(&json!({})), None);
    let t = targeting_of(&empty);
    assert!(t == Value::Null || t == json!({}), "{t}");
    assert_eq!(
        assign(&mut c, "empty", "x", Some(&json!({"any": 1}))).unwrap(),
        Some(ab_variant("empty", "x"))
    );
}

#[test]
fn bad_targeting_coverage_and_attributes_are_rejected_and_change_nothing() {
    let db = Db::with_amba("tgt_bad");
    let mut c = db.client();
    let good = json!({"country": "DE"});
    let bad_coverages = [
        -0.1,
        1.5,
        1.000_000_1,
        -1e-300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];

    // Create: refused, nothing created, nothing audited.
    let mut n = 0;
    let mut create_bad = |c: &mut Client, targeting: Option<Value>, coverage: Option<f64>| {
        n += 1;
        let key = format!("bad{n}");
        let what = format!("create targeting {targeting:?} coverage {coverage:?}");
        assert_invalid(
            c.query_one(
                "SELECT amba_create_experiment($1, $2::text::jsonb, targeting => $3::text::jsonb, coverage => $4)",
                &[&key, &AB, &targeting.map(|t| t.to_string()), &coverage],
            ),
            &what,
        );
        assert_eq!(get_experiment(c, &key), None, "{what}: created");
        assert!(history(c, &key).is_empty(), "{what}: audited");
    };
    for t in bad_conditions() {
        create_bad(&mut c, Some(t.clone()), None);
        create_bad(&mut c, Some(t), Some(0.5));
    }
    for cov in bad_coverages {
        create_bad(&mut c, None, Some(cov));
        create_bad(&mut c, Some(good.clone()), Some(cov));
    }
    // The literals of the brief, as SQL text.
    for cov in ["'NaN'", "'Infinity'", "'-Infinity'", "-0.1", "1.5"] {
        assert_invalid(
            c.query_one(
                &format!(
                    "SELECT amba_create_experiment('lit', $1::text::jsonb, coverage => {cov})"
                ),
                &[&AB],
            ),
            cov,
        );
    }
    assert_eq!(get_experiment(&mut c, "lit"), None);
    let experiments: i64 = c
        .query_one("SELECT count(*) FROM amba.experiments", &[])
        .unwrap()
        .get(0);
    let audited: i64 = c
        .query_one("SELECT count(*) FROM amba.experiment_history", &[])
        .unwrap()
        .get(0);
    assert_eq!((experiments, audited), (0, 0));

    // Update: refused, the stored definition and the history unchanged, also when the same
    // call carries valid changes of other fields.
    let key = "stable";
    create(&mut c, key, Some(&good), Some(0.4));
    let someone = ids_where(key, "someone-", 1, |b| b < 0.4).remove(0);
    let v = assign(&mut c, key, &someone, Some(&good)).unwrap();
    assert_eq!(v, Some(ab_variant(key, &someone)));
    let before = get_experiment(&mut c, key).unwrap();
    let history_before = history(&mut c, key).len();
    let update_bad = |c: &mut Client, targeting: Option<Value>, coverage: Option<f64>| {
        let what = format!("update targeting {targeting:?} coverage {coverage:?}");
        assert_invalid(
            c.query_one(
                "SELECT amba_update_experiment($1, status => 'paused', name => 'changed',
                                               targeting => $2::text::jsonb, coverage => $3)",
                &[&key, &targeting.map(|t| t.to_string()), &coverage],
            ),
            &what,
        );
        assert_eq!(
            get_experiment(c, key).as_ref(),
            Some(&before),
            "{what}: definition changed"
        );
        assert_eq!(history(c, key).len(), history_before, "{what}: audited");
    };
    for t in bad_conditions() {
        update_bad(&mut c, Some(t.clone()), None);
        update_bad(&mut c, Some(t), Some(0.9));
    }
    for cov in bad_coverages {
        update_bad(&mut c, None, Some(cov));
        update_bad(&mut c, Some(json!({"country": "FR"})), Some(cov));
    }
    // The stored rules still apply: the condition and coverage 0.4 as before.
    assert_eq!(assign(&mut c, key, &someone, None).unwrap(), v);
    assert_eq!(
        assign(&mut c, key, "us", Some(&json!({"country": "US"}))).unwrap(),
        None
    );
    let covered = ids_where(key, "c", 1, |b| b < 0.4).remove(0);
    let uncovered = ids_where(key, "c", 1, |b| b >= 0.4).remove(0);
    assert_eq!(
        assign(&mut c, key, &covered, Some(&good)).unwrap(),
        Some(ab_variant(key, &covered))
    );
    assert_eq!(assign(&mut c, key, &uncovered, Some(&good)).unwrap(), None);

    // Attributes that are not a JSON object: INVALID_ARGUMENT on assign and peek, for new
    // users of targeted and untargeted experiments and for a stored user; nothing written.
    create(&mut c, "untargeted", None, None);
    let rows_before = total_rows(&mut c);
    for attrs in [
        json!([]),
        json!([{"country": "DE"}]),
        json!("DE"),
        json!(""),
        json!(7),
        json!(false),
        Value::Null,
    ] {
        for (k, user) in [
            (key, "fresh"),
            ("untargeted", "fresh"),
            (key, someone.as_str()),
        ] {
            assert_invalid(
                assign(&mut c, k, user, Some(&attrs)),
                &format!("assign {k} {user} {attrs}"),
            );
            assert_invalid(
                peek(&mut c, k, user, Some(&attrs)),
                &format!("peek {k} {user} {attrs}"),
            );
        }
    }
    assert_eq!(total_rows(&mut c), rows_before, "rejected calls wrote rows");
}

/// A change of targeting or coverage made by one session applies at once to new users in
/// another session that has the experiment's definition cached already.
#[test]
fn changes_reach_sessions_that_cached_the_definition() {
    let db = Db::with_amba("tgt_sessions");
    let mut admin = db.client();
    let mut app = db.client();
    let key = "shared";
    let de = json!({"country": "DE"});
    create(&mut admin, key, None, None);
    // The app's backend loads (and caches) the definition.
    assert_eq!(
        assign(&mut app, key, "warm", None).unwrap(),
        Some(ab_variant(key, "warm"))
    );

    update(&mut admin, key, Some(&de), None, None);
    assert_eq!(assign(&mut app, key, "s1", None).unwrap(), None);
    assert_eq!(
        peek(&mut app, key, "s1", Some(&json!({"country": "US"}))).unwrap(),
        None
    );
    assert_eq!(
        assign(&mut app, key, "s1", Some(&de)).unwrap(),
        Some(ab_variant(key, "s1"))
    );

    update(&mut admin, key, None, Some(0.0), None);
    assert_eq!(assign(&mut app, key, "s2", Some(&de)).unwrap(), None);
    assert_eq!(peek(&mut app, key, "s2", Some(&de)).unwrap(), None);

    let covered = ids_where(key, "s3-", 1, |b| b < 0.5).remove(0);
    let uncovered = ids_where(key, "s3-", 1, |b| b >= 0.5).remove(0);
    update(&mut admin, key, Some(&json!({})), Some(0.5), None);
    assert_eq!(assign(&mut app, key, &uncovered, None).unwrap(), None);
    assert_eq!(
        assign(&mut app, key, &covered, None).unwrap(),
        Some(ab_variant(key, &covered))
    );
    // The assigned keep theirs throughout.
    assert_eq!(
        assign(&mut app, key, "warm", Some(&de)).unwrap(),
        Some(ab_variant(key, "warm"))
    );
    assert_eq!(
        assign(&mut app, key, "s1", None).unwrap(),
        Some(ab_variant(key, "s1"))
    );
    assert_eq!(stored(&mut app, key).keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec!["warm".to_string(), "s1".to_string(), covered.clone()];
        v.sort();
        v
    });
}

/// JSON that jsonb holds but amba cannot read — a number beyond double precision (1e400),
/// nesting deeper than 128 levels, attributes over 128 KiB — is INVALID_ARGUMENT wherever it
/// is read (amba_eval_condition, a targeting condition at create, the attributes of a new
/// user of a targeted experiment in assign and peek), never a bare internal error, and
/// nothing is written.
#[test]
fn json_amba_cannot_read_is_invalid_argument() {
    let db = Db::with_amba("tgt_unreadable");
    let mut c = db.client();
    create(&mut c, "t", Some(&json!({"country": "DE"})), None);
    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let big = format!(
        "{{\"country\": \"DE\", \"pad\": \"{}\"}}",
        "x".repeat(140 * 1024)
    );
    let unreadable_attributes = [
        r#"{"country": "DE", "b": 1e400}"#,
        deep.as_str(),
        big.as_str(),
    ];
    for attrs in unreadable_attributes {
        let what = &attrs[..attrs.len().min(40)];
        assert_invalid(
            c.query_one(
                "SELECT amba_eval_condition('{\"country\": \"DE\"}', $1::text::jsonb)",
                &[&attrs],
            ),
            &format!("eval, attributes {what}"),
        );
        for f in ["amba_assign", "amba_peek"] {
            assert_invalid(
                c.query_one(
                    &format!("SELECT {f}('t', 'new-user', $1::text::jsonb)"),
                    &[&attrs],
                ),
                &format!("{f}, attributes {what}"),
            );
        }
    }
    for cond in [r#"{"a": 1e400}"#, deep.as_str()] {
        let what = &cond[..cond.len().min(40)];
        assert_invalid(
            c.query_one(
                "SELECT amba_eval_condition($1::text::jsonb, '{}')",
                &[&cond],
            ),
            &format!("eval, condition {what}"),
        );
        assert_invalid(
            c.query_one(
                "SELECT amba_create_experiment('t2', $1::text::jsonb, targeting => $2::text::jsonb)",
                &[&AB, &cond],
            ),
            &format!("create, targeting {what}"),
        );
    }
    assert!(stored(&mut c, "t").is_empty(), "an assignment was stored");
    let t2: i64 = c
        .query_one(
            "SELECT count(*) FROM amba.experiments WHERE key = 't2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(t2, 0);
    // Readable attributes still enrol.
    assert!(
        assign(&mut c, "t", "new-user", Some(&json!({"country": "DE"})))
            .unwrap()
            .is_some()
    );
}
