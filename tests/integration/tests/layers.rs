//! Layers and holdouts (SPEC §11, CONTRACT section 11) at the SQL level, each rule against
//! a reference that does not come from amba:
//!
//! - placement: the ranges amba gives (experiment jsonb, `amba_list_layers`) against the
//!   lowest-free-gap rule worked out here by hand, and against each other (disjoint);
//! - users: the layer bucket computed here with `xxhash-rust` from its definition,
//!   `xxh3_64(utf8(layer) || 0x02 || utf8(user_id))` → `(h >> 11) / 2^53` (likewise the
//!   variant bucket with 0x00 and the coverage bucket with 0x01), checked against
//!   `amba_layer_bucket`, and a chi-square test that the share of users landing in each
//!   range is its width;
//! - holdouts: what `amba_assign` must answer and write for each user, derived from those
//!   buckets and the holdout's weights, against the rows of `amba.assignments` /
//!   `amba.exposures` and `amba_results`;
//! - races: forced (one transaction holds, the other call is seen waiting for it in
//!   pg_stat_activity/pg_blocking_pids, then the first commits or rolls back; both
//!   outcomes), and eight connections on one user at once.
//!
//! Every test has a database of its own with fixed experiment keys and user ids, so the
//! buckets — and so what each test checks — are the same on every run.

use amba_integration_tests::{backend_pid, heap_line_pointers, wait_until_blocked_by, Db};
use postgres::{Client, GenericClient};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use xxhash_rust::xxh3::xxh3_64;

const AB: &str = r#"[{"key":"a","weight":1},{"key":"b","weight":1}]"#;
/// A holdout: its control (`holdout`) is the held-out group.
const HOLDOUT_30: &str = r#"[{"key":"holdout","weight":30},{"key":"general","weight":70}]"#;
const HOLDOUT_50: &str = r#"[{"key":"holdout","weight":1},{"key":"general","weight":1}]"#;

// ---------------------------------------------------------------------------------------
// Independent references
// ---------------------------------------------------------------------------------------

/// `(xxh3_64(key || separator || user) >> 11) / 2^53`, from the definition (SPEC §3, §10,
/// §11).
fn bucket_with(separator: u8, key: &str, user: &str) -> f64 {
    let mut bytes = Vec::with_capacity(key.len() + 1 + user.len());
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(separator);
    bytes.extend_from_slice(user.as_bytes());
    (xxh3_64(&bytes) >> 11) as f64 / 9_007_199_254_740_992.0
}

fn variant_bucket(key: &str, user: &str) -> f64 {
    bucket_with(0x00, key, user)
}

fn coverage_bucket(key: &str, user: &str) -> f64 {
    bucket_with(0x01, key, user)
}

fn layer_bucket(layer: &str, user: &str) -> f64 {
    bucket_with(0x02, layer, user)
}

/// The variant index for a bucket (SPEC §3): the first i with bucket < (w_1+…+w_i)/W,
/// sums left to right in double precision; else the last variant with weight > 0.
fn pick(bucket: f64, weights: &[f64]) -> usize {
    let total = weights.iter().fold(0.0, |acc, w| acc + w);
    let mut running = 0.0;
    for (i, w) in weights.iter().enumerate() {
        running += w;
        if bucket < running / total {
            return i;
        }
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap()
}

/// The variant of `user` in an `AB` experiment.
fn ab(key: &str, user: &str) -> String {
    ["a", "b"][pick(variant_bucket(key, user), &[1.0, 1.0])].to_string()
}

/// Whether `user` is held out by a holdout with weights `weights` (control first).
fn held_out(holdout: &str, weights: &[f64], user: &str) -> bool {
    pick(variant_bucket(holdout, user), weights) == 0
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

/// Asserts `r` failed with `code` (SQLSTATE `state`, message prefixed with the code).
fn assert_code<T: std::fmt::Debug>(
    r: Result<T, postgres::Error>,
    state: &str,
    code: &str,
    what: &str,
) -> String {
    match r {
        Ok(v) => panic!("{what}: accepted ({v:?}); must be {code} ({state})"),
        Err(e) => {
            let (s, msg) = err(e);
            assert!(
                s == state && msg.starts_with(&format!("{code}:")),
                "{what}: {s} {msg}; must be {code} ({state})"
            );
            msg
        }
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, postgres::Error>, what: &str) -> String {
    assert_code(r, "22023", "INVALID_ARGUMENT", what)
}

/// The arguments of `amba_create_experiment` beyond the key (variants default to `AB`).
#[derive(Default, Clone, Copy)]
struct New<'a> {
    variants: Option<&'a str>,
    status: Option<&'a str>,
    layer: Option<&'a str>,
    share: Option<f64>,
    holdout: Option<&'a str>,
    targeting: Option<&'a str>,
    coverage: Option<f64>,
}

fn try_create(c: &mut impl GenericClient, key: &str, n: New) -> Result<Value, postgres::Error> {
    c.query_one(
        "SELECT amba_create_experiment($1, $2::text::jsonb, status => coalesce($3, 'active'),
                targeting => $4::text::jsonb, coverage => $5,
                layer => $6, layer_share => $7, holdout => $8)::text",
        &[
            &key,
            &n.variants.unwrap_or(AB),
            &n.status,
            &n.targeting,
            &n.coverage,
            &n.layer,
            &n.share,
            &n.holdout,
        ],
    )
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
}

fn create(c: &mut impl GenericClient, key: &str, n: New) -> Value {
    try_create(c, key, n).unwrap_or_else(|e| panic!("create {key}: {e}"))
}

/// A layered experiment of `share` in `layer`.
fn create_in(c: &mut impl GenericClient, key: &str, layer: &str, share: f64) -> Value {
    create(
        c,
        key,
        New {
            layer: Some(layer),
            share: Some(share),
            ..New::default()
        },
    )
}

/// The arguments of `amba_update_experiment` beyond the key (NULL: unchanged).
#[derive(Default, Clone, Copy)]
struct Upd<'a> {
    variants: Option<&'a str>,
    status: Option<&'a str>,
    coverage: Option<f64>,
    layer: Option<&'a str>,
    share: Option<f64>,
    holdout: Option<&'a str>,
}

fn try_update(c: &mut impl GenericClient, key: &str, u: Upd) -> Result<Value, postgres::Error> {
    c.query_one(
        "SELECT amba_update_experiment($1, variants => $2::text::jsonb, status => $3,
                coverage => $4, layer => $5, layer_share => $6, holdout => $7)::text",
        &[
            &key,
            &u.variants,
            &u.status,
            &u.coverage,
            &u.layer,
            &u.share,
            &u.holdout,
        ],
    )
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
}

fn update(c: &mut impl GenericClient, key: &str, u: Upd) -> Value {
    try_update(c, key, u).unwrap_or_else(|e| panic!("update {key}: {e}"))
}

fn set_status(
    c: &mut impl GenericClient,
    key: &str,
    status: &str,
) -> Result<Value, postgres::Error> {
    try_update(
        c,
        key,
        Upd {
            status: Some(status),
            ..Upd::default()
        },
    )
}

fn get_experiment(c: &mut Client, key: &str) -> Option<Value> {
    let j: Option<String> = c
        .query_one("SELECT amba_get_experiment($1)::text", &[&key])
        .unwrap()
        .get(0);
    j.map(|j| serde_json::from_str(&j).unwrap())
}

/// The `"layer"` of an experiment jsonb: (key, start, end), None when it has none.
fn layer_of(e: &Value) -> Option<(String, Option<f64>, Option<f64>)> {
    let l = &e["layer"];
    if l.is_null() {
        return None;
    }
    let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["end", "key", "start"], "layer object keys: {l}");
    Some((
        l["key"].as_str().unwrap().to_string(),
        l["start"].as_f64(),
        l["end"].as_f64(),
    ))
}

/// The range `[start, end)` of an experiment that has one.
fn range_of(e: &Value) -> (f64, f64) {
    match layer_of(e) {
        Some((_, Some(s), Some(t))) => (s, t),
        other => panic!("{}: no range ({other:?})", e["key"]),
    }
}

/// One row of `amba_list_layers()`.
#[derive(Debug, Clone, PartialEq)]
struct LayerRow {
    experiment: Option<String>,
    status: Option<String>,
    start: f64,
    end: f64,
}

fn list_layer(c: &mut Client, layer: &str) -> Vec<LayerRow> {
    c.query(
        "SELECT experiment_key, status, range_start, range_end FROM amba_list_layers() WHERE layer = $1",
        &[&layer],
    )
    .unwrap()
    .iter()
    .map(|r| LayerRow {
        experiment: r.get(0),
        status: r.get(1),
        start: r.get(2),
        end: r.get(3),
    })
    .collect()
}

/// `amba_list_layers()` as (experiment or "-" for a gap, start, end).
fn layout(c: &mut Client, layer: &str) -> Vec<(String, f64, f64)> {
    list_layer(c, layer)
        .into_iter()
        .map(|r| (r.experiment.unwrap_or_else(|| "-".into()), r.start, r.end))
        .collect()
}

/// Checks what every listing of a layer must be: rows in order of start, experiments and
/// gaps that tile [0, 1) exactly, never two experiments' ranges overlapping.
fn assert_layout_consistent(c: &mut Client, layer: &str) {
    let rows = list_layer(c, layer);
    let mut at = 0.0;
    for r in &rows {
        assert!(
            r.start < r.end,
            "{layer}: empty or reversed row {r:?} in {rows:?}"
        );
        assert_eq!(r.start, at, "{layer}: rows do not tile [0, 1): {rows:?}");
        assert_eq!(r.experiment.is_none(), r.status.is_none(), "{layer}: {r:?}");
        at = r.end;
    }
    if !rows.is_empty() {
        assert!(at >= 1.0, "{layer}: rows end at {at}: {rows:?}");
    }
}

/// Everything an experiment call may write, in one string: a rejected call must leave it
/// as it was.
fn state(c: &mut Client) -> String {
    c.query_one(
        "SELECT md5(coalesce((SELECT string_agg(e::text, '|' ORDER BY e.id) FROM amba.experiments e), ''))
             || ' history ' || (SELECT count(*) FROM amba.experiment_history)
             || ' assignments ' || (SELECT count(*) FROM amba.assignments)
             || ' exposures ' || (SELECT count(*) FROM amba.exposures)
             || ' weight versions ' || (SELECT count(*) FROM amba.weight_versions)
             || ' overrides ' || (SELECT count(*) FROM amba.overrides)",
        &[],
    )
    .unwrap()
    .get(0)
}

fn assign(
    c: &mut impl GenericClient,
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

fn assign_ok(c: &mut impl GenericClient, key: &str, user: &str) -> Option<String> {
    assign(c, key, user, None).unwrap_or_else(|e| panic!("amba_assign({key}, {user}): {e}"))
}

fn peek(c: &mut Client, key: &str, user: &str, attributes: Option<&Value>) -> Option<String> {
    let a = attributes.map(|a| a.to_string());
    c.query_one(
        "SELECT amba_peek($1, $2, $3::text::jsonb)",
        &[&key, &user, &a],
    )
    .unwrap_or_else(|e| panic!("amba_peek({key}, {user}): {e}"))
    .get(0)
}

/// `amba_peek` of each user in each experiment, in one statement: users × keys.
fn peek_all(c: &mut Client, keys: &[&str], users: &[String]) -> Vec<Vec<Option<String>>> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let rows = c
        .query(
            "SELECT u.i, array_agg(amba_peek(k.k, u.u) ORDER BY k.j)
               FROM unnest($1::text[]) WITH ORDINALITY AS u(u, i),
                    unnest($2::text[]) WITH ORDINALITY AS k(k, j)
              GROUP BY u.i ORDER BY u.i",
            &[&users, &keys],
        )
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, Vec<Option<String>>>(1))
        .collect()
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

/// The stored assignment rows of an experiment, whole: user → (variant, weight version,
/// assigned_at as text).
fn stored_rows(c: &mut Client, key: &str) -> BTreeMap<String, (String, i32, String)> {
    c.query(
        "SELECT a.user_id, a.variant, a.weight_version, a.assigned_at::text FROM amba.assignments a
           JOIN amba.experiments e ON e.id = a.experiment_id WHERE e.key = $1",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

/// The exposed users of an experiment.
fn exposed(c: &mut Client, key: &str) -> BTreeSet<String> {
    c.query(
        "SELECT x.user_id FROM amba.exposures x
           JOIN amba.experiments e ON e.id = x.experiment_id WHERE e.key = $1",
        &[&key],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
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

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The first ids `prefix0`, `prefix1`, … for which `pred` holds.
fn ids_where(prefix: &str, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|u| pred(u))
        .take(n)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------

/// Shares here are sums of powers of two, so every start and end is exact and the
/// expected layouts can be written down (rounding is the next test's subject).
#[test]
fn placement_takes_the_lowest_free_gap_and_ending_pausing_drafting_and_deleting_behave() {
    let db = Db::with_amba("lay_place");
    let mut c = db.client();
    let l = "checkout";

    // No layer: "layer": null, no row in amba_list_layers.
    let plain = create(&mut c, "plain", New::default());
    assert!(plain["layer"].is_null(), "{plain}");
    assert!(plain.as_object().unwrap().contains_key("layer"));

    // a 0.25 → [0, 0.25); b 0.5 → [0.25, 0.75): the rest is a free gap.
    let a = create_in(&mut c, "a", l, 0.25);
    assert_eq!(layer_of(&a), Some((l.to_string(), Some(0.0), Some(0.25))));
    let b = create_in(&mut c, "b", l, 0.5);
    assert_eq!(layer_of(&b), Some((l.to_string(), Some(0.25), Some(0.75))));
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("a".into(), 0.0, 0.25),
            ("b".into(), 0.25, 0.75),
            ("-".into(), 0.75, 1.0)
        ]
    );
    let rows = list_layer(&mut c, l);
    assert_eq!(rows[0].status.as_deref(), Some("active"));
    assert_eq!(rows[2].status, None);

    // 0.375 does not fit in the 0.25 left: layer full, nothing written.
    let before = state(&mut c);
    let msg = assert_invalid(
        try_create(
            &mut c,
            "c",
            New {
                layer: Some(l),
                share: Some(0.375),
                ..New::default()
            },
        ),
        "c 0.375 in a layer with 0.25 free",
    );
    assert!(msg.contains("layer full"), "{msg}");
    assert_eq!(state(&mut c), before, "a rejected create writes nothing");
    assert!(get_experiment(&mut c, "c").is_none());
    // The key stays free: the same create with a share that fits works.
    let c0 = create_in(&mut c, "c", l, 0.25);
    assert_eq!(range_of(&c0), (0.75, 1.0));
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("a".into(), 0.0, 0.25),
            ("b".into(), 0.25, 0.75),
            ("c".into(), 0.75, 1.0)
        ]
    );
    // Full: even a tiny share is refused, also one too small to move a start (which would
    // otherwise be placed at 1, outside the unit interval, or make an empty range).
    for share in [1e-9, 1e-13, 5e-324] {
        let msg = assert_invalid(
            try_create(
                &mut c,
                "d",
                New {
                    layer: Some(l),
                    share: Some(share),
                    ..New::default()
                },
            ),
            &format!("share {share} in a full layer"),
        );
        assert!(msg.contains("layer full"), "{msg}");
    }

    // Ending a frees [0, 0.25): its jsonb keeps the layer's key, start and end null.
    let a_ended = set_status(&mut c, "a", "ended").unwrap();
    assert_eq!(layer_of(&a_ended), Some((l.to_string(), None, None)));
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("-".into(), 0.0, 0.25),
            ("b".into(), 0.25, 0.75),
            ("c".into(), 0.75, 1.0)
        ]
    );
    // A later experiment takes the lowest gap that fits: d 0.125 → [0, 0.125).
    let d = create_in(&mut c, "d", l, 0.125);
    assert_eq!(range_of(&d), (0.0, 0.125));

    // Re-activating a (0.25) with only [0.125, 0.25) free fails and changes nothing; so
    // does pausing or drafting it (every status but ended owns a range).
    let before = state(&mut c);
    for status in ["active", "paused", "draft"] {
        let msg = assert_invalid(
            set_status(&mut c, "a", status),
            &format!("ended a -> {status} with no room"),
        );
        assert!(msg.contains("layer full"), "{msg}");
        assert_eq!(
            state(&mut c),
            before,
            "a failed re-activation writes nothing"
        );
    }
    assert_eq!(get_experiment(&mut c, "a").unwrap()["status"], "ended");

    // Paused and draft experiments keep their range; back to active too.
    for status in ["paused", "draft", "active"] {
        let b2 = set_status(&mut c, "b", status).unwrap();
        assert_eq!(range_of(&b2), (0.25, 0.75), "b {status}");
    }
    // Other updates keep it as well, and naming the layer and share it has is no change.
    let b3 = update(
        &mut c,
        "b",
        Upd {
            coverage: Some(0.5),
            layer: Some(l),
            share: Some(0.5),
            ..Upd::default()
        },
    );
    assert_eq!(range_of(&b3), (0.25, 0.75));
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("d".into(), 0.0, 0.125),
            ("-".into(), 0.125, 0.25),
            ("b".into(), 0.25, 0.75),
            ("c".into(), 0.75, 1.0)
        ]
    );

    // End d and c: gaps [0, 0.25) and [0.75, 1). Re-activating a places it in the lowest.
    set_status(&mut c, "d", "ended").unwrap();
    set_status(&mut c, "c", "ended").unwrap();
    let a2 = set_status(&mut c, "a", "active").unwrap();
    assert_eq!(range_of(&a2), (0.0, 0.25));
    // d, ended, paused now: placed again too, in [0.75, 0.875), the only room left.
    let d2 = set_status(&mut c, "d", "paused").unwrap();
    assert_eq!(range_of(&d2), (0.75, 0.875));
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("a".into(), 0.0, 0.25),
            ("b".into(), 0.25, 0.75),
            ("d".into(), 0.75, 0.875),
            ("-".into(), 0.875, 1.0)
        ]
    );
    assert_eq!(list_layer(&mut c, l)[2].status.as_deref(), Some("paused"));

    // Deleting b frees [0.25, 0.75): e 0.5 takes exactly it.
    let deleted: bool = c
        .query_one("SELECT amba_delete_experiment('b')", &[])
        .unwrap()
        .get(0);
    assert!(deleted);
    assert_eq!(
        layout(&mut c, l),
        vec![
            ("a".into(), 0.0, 0.25),
            ("-".into(), 0.25, 0.75),
            ("d".into(), 0.75, 0.875),
            ("-".into(), 0.875, 1.0)
        ]
    );
    let e = create_in(&mut c, "e", l, 0.5);
    assert_eq!(range_of(&e), (0.25, 0.75));

    // Created ended: no range, nothing taken. Created draft or paused: placed.
    let f = create(
        &mut c,
        "f",
        New {
            layer: Some(l),
            share: Some(0.0625),
            status: Some("ended"),
            ..New::default()
        },
    );
    assert_eq!(layer_of(&f), Some((l.to_string(), None, None)));
    let g = create(
        &mut c,
        "g",
        New {
            layer: Some(l),
            share: Some(0.0625),
            status: Some("draft"),
            ..New::default()
        },
    );
    assert_eq!(range_of(&g), (0.875, 0.9375));
    let h = create(
        &mut c,
        "h",
        New {
            layer: Some(l),
            share: Some(0.0625),
            status: Some("paused"),
            ..New::default()
        },
    );
    assert_eq!(range_of(&h), (0.9375, 1.0));
    // f, created ended, is placed when it leaves ended — here there is no room left.
    assert_invalid(
        set_status(&mut c, "f", "draft"),
        "f leaves ended in a full layer",
    );
    // Deleting one that never had a range.
    assert!(c
        .query_one("SELECT amba_delete_experiment('f')", &[])
        .unwrap()
        .get::<_, bool>(0));

    // Layers are independent: another layer starts at 0.
    let other = create_in(&mut c, "other", "search", 0.75);
    assert_eq!(range_of(&other), (0.0, 0.75));
    assert_eq!(
        layout(&mut c, "search"),
        vec![("other".into(), 0.0, 0.75), ("-".into(), 0.75, 1.0)]
    );
    // A layer whose experiments are all ended lists nothing.
    set_status(&mut c, "other", "ended").unwrap();
    assert!(list_layer(&mut c, "search").is_empty());

    // A share of exactly 1 fills an empty layer.
    let whole = create_in(&mut c, "whole", "whole_layer", 1.0);
    assert_eq!(range_of(&whole), (0.0, 1.0));
    assert_eq!(
        layout(&mut c, "whole_layer"),
        vec![("whole".into(), 0.0, 1.0)]
    );

    for layer in [l, "search", "whole_layer"] {
        assert_layout_consistent(&mut c, layer);
    }
    // Every experiment jsonb agrees with the listing.
    for row in list_layer(&mut c, l) {
        if let Some(key) = row.experiment {
            let e = get_experiment(&mut c, &key).unwrap();
            assert_eq!(range_of(&e), (row.start, row.end), "{key}");
            assert_eq!(e["status"].as_str(), row.status.as_deref());
        }
    }
    // The history records the placement: a's after-image at its re-activation.
    let after: String = c
        .query_one(
            "SELECT after::text FROM amba_experiment_history('a') WHERE action = 'update' ORDER BY changed_at DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(range_of(&after), (0.0, 0.25));
}

#[test]
fn bad_layers_shares_and_changes_are_rejected_and_write_nothing() {
    let db = Db::with_amba("lay_bad");
    let mut c = db.client();
    create_in(&mut c, "x", "lay", 0.4);
    create(&mut c, "nolayer", New::default());
    let before = state(&mut c);

    // Shares out of (0, 1].
    for share in [
        0.0,
        -0.1,
        -0.0,
        1.5,
        1.0000001,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        assert_invalid(
            try_create(
                &mut c,
                "y",
                New {
                    layer: Some("lay"),
                    share: Some(share),
                    ..New::default()
                },
            ),
            &format!("layer_share {share}"),
        );
    }
    // Bad layer keys (a layer is written like an experiment key).
    let long = "l".repeat(129);
    for layer in ["", " ", "has space", "ü", "a/b", "tab\t", long.as_str()] {
        assert_invalid(
            try_create(
                &mut c,
                "y",
                New {
                    layer: Some(layer),
                    share: Some(0.1),
                    ..New::default()
                },
            ),
            &format!("layer {layer:?}"),
        );
    }
    // A share without a layer.
    assert_invalid(
        try_create(
            &mut c,
            "y",
            New {
                share: Some(0.5),
                ..New::default()
            },
        ),
        "layer_share without a layer",
    );
    assert_eq!(state(&mut c), before, "rejected creates write nothing");
    assert!(get_experiment(&mut c, "y").is_none());
    // The longest valid layer key and the whole character set are accepted.
    let ok_key = "A-z_0.9:".repeat(16);
    assert_eq!(ok_key.len(), 128);
    let y = create_in(&mut c, "y", &ok_key, 1.0);
    assert_eq!(range_of(&y), (0.0, 1.0));
    let before = state(&mut c);

    // Layer and share are create-only: any change is INVALID_ARGUMENT, and nothing changes.
    for (what, u) in [
        (
            "another layer",
            Upd {
                layer: Some("lay2"),
                ..Upd::default()
            },
        ),
        (
            "another share",
            Upd {
                share: Some(0.2),
                ..Upd::default()
            },
        ),
        (
            "another layer and share",
            Upd {
                layer: Some("lay2"),
                share: Some(0.2),
                ..Upd::default()
            },
        ),
        (
            "same layer, another share",
            Upd {
                layer: Some("lay"),
                share: Some(0.5),
                ..Upd::default()
            },
        ),
        (
            "a share out of range",
            Upd {
                share: Some(1.5),
                ..Upd::default()
            },
        ),
        (
            "another share with a status",
            Upd {
                share: Some(0.3),
                status: Some("paused"),
                ..Upd::default()
            },
        ),
    ] {
        assert_invalid(try_update(&mut c, "x", u), &format!("update x: {what}"));
    }
    for (what, u) in [
        (
            "a layer for an experiment without one",
            Upd {
                layer: Some("lay"),
                ..Upd::default()
            },
        ),
        (
            "a layer and share for an experiment without one",
            Upd {
                layer: Some("lay"),
                share: Some(0.1),
                ..Upd::default()
            },
        ),
        (
            "a share for an experiment without a layer",
            Upd {
                share: Some(0.1),
                ..Upd::default()
            },
        ),
    ] {
        assert_invalid(
            try_update(&mut c, "nolayer", u),
            &format!("update nolayer: {what}"),
        );
    }
    assert_eq!(state(&mut c), before, "rejected updates write nothing");

    // amba_layer_bucket: pure (IMMUTABLE), and bad input is INVALID_ARGUMENT.
    let volatility: String = c
        .query_one(
            "SELECT provolatile::text FROM pg_proc WHERE proname = 'amba_layer_bucket'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(volatility, "i");
    for (layer, user) in [
        (Some("has space"), Some("u")),
        (Some(""), Some("u")),
        (None, Some("u")),
        (Some("lay"), None),
        (Some("lay"), Some("")),
    ] {
        assert_invalid(
            c.query_one("SELECT amba_layer_bucket($1, $2)", &[&layer, &user])
                .map(|r| r.get::<_, f64>(0)),
            &format!("amba_layer_bucket({layer:?}, {user:?})"),
        );
    }
}

/// Experiments of one layer own disjoint ranges (CONTRACT 11): `[start, start + share)`
/// never reaches into the next experiment's range, also when the gap is computed in
/// floating point. Shares that add up exactly in decimal (0.3 = 0.01 + 0.01 + 0.28) but
/// not in binary must not produce a range that ends past the next one's start, and a
/// share a little larger than the gap must not be placed there.
#[test]
fn ranges_stay_disjoint_when_gaps_and_shares_meet_in_floating_point() {
    let db = Db::with_amba("lay_disjoint");
    let mut c = db.client();
    let mut failures: Vec<String> = Vec::new();

    // [0, 0.3) then [0.3, 1); end the first: the gap is [0, 0.3).
    create_in(&mut c, "p1", "fp", 0.3);
    create_in(&mut c, "p2", "fp", 0.7);
    set_status(&mut c, "p1", "ended").unwrap();
    // 0.01, 0.01, then 0.28: 0.01 + 0.01 = 0.02 and 0.02 + 0.28 = 0.30000000000000004 in
    // binary, past 0.3 where p2 starts. Refusing q3 or placing it where it ends by 0.3
    // are both fine; overlapping p2 is not.
    create_in(&mut c, "q1", "fp", 0.01);
    create_in(&mut c, "q2", "fp", 0.01);
    let q3 = try_create(
        &mut c,
        "q3",
        New {
            layer: Some("fp"),
            share: Some(0.28),
            ..New::default()
        },
    );
    if let Ok(q3) = &q3 {
        let (start, end) = range_of(q3);
        let p2_start = range_of(&get_experiment(&mut c, "p2").unwrap()).0;
        if end > p2_start {
            failures.push(format!(
                "q3 (share 0.28) placed at [{start:?}, {end:?}) ends past the start of p2 ({p2_start:?}): layout {:?}",
                layout(&mut c, "fp")
            ));
        }
    }

    // A share a little larger than the lowest gap: [0, 0.1) is free before r2 at 0.1;
    // r3 (0.1 + 5e-13) fits only in the gap after r2.
    create_in(&mut c, "r1", "tol", 0.1);
    create_in(&mut c, "r2", "tol", 0.2);
    set_status(&mut c, "r1", "ended").unwrap();
    let wider = 0.1 + 5e-13;
    let r3 = create_in(&mut c, "r3", "tol", wider);
    let (start, end) = range_of(&r3);
    let r2 = range_of(&get_experiment(&mut c, "r2").unwrap());
    if (start, end) != (r2.1, r2.1 + wider) {
        failures.push(format!(
            "r3 (share {wider:?}) placed at [{start:?}, {end:?}), not in the lowest gap that fits, [{:?}, 1); \
             r2 is at [{:?}, {:?}), the gap before it [0, 0.1) is narrower than the share",
            r2.1, r2.0, r2.1
        ));
    }
    for layer in ["fp", "tol"] {
        let rows: Vec<LayerRow> = list_layer(&mut c, layer)
            .into_iter()
            .filter(|r| r.experiment.is_some())
            .collect();
        for w in rows.windows(2) {
            if w[0].end > w[1].start {
                failures.push(format!("{layer}: {:?} overlaps {:?}", w[0], w[1]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------

#[test]
fn layer_bucket_is_the_published_hash_and_users_split_by_range_width_into_one_experiment_each() {
    let db = Db::with_amba("lay_users");
    let mut c = db.client();
    let l = "home";
    // [0, 0.1), [0.1, 0.35), [0.35, 0.75), free [0.75, 1).
    let keys = ["l1", "l2", "l3"];
    let shares = [0.1, 0.25, 0.4];
    for (k, s) in keys.iter().zip(shares) {
        create_in(&mut c, k, l, s);
    }
    // Each range is [start, start + share), one after the other (sums in double precision).
    let (e1, e2) = (0.1, 0.1 + 0.25);
    let e3 = e2 + 0.4;
    let cells: Vec<(Option<String>, f64, f64)> = vec![
        (Some("l1".into()), 0.0, e1),
        (Some("l2".into()), e1, e2),
        (Some("l3".into()), e2, e3),
        (None, e3, 1.0),
    ];
    let rows: Vec<(Option<String>, f64, f64)> = list_layer(&mut c, l)
        .into_iter()
        .map(|r| (r.experiment, r.start, r.end))
        .collect();
    assert_eq!(rows, cells);

    // amba_layer_bucket equals the reference exactly on a sample (ASCII and not), and is
    // not the variant or coverage bucket of the same key.
    let mut sample = users("s", 3000);
    sample.extend((0..200).map(|i| format!("üser-{i}-日本")));
    sample.push("x".repeat(512));
    let got: Vec<f64> = c
        .query(
            "SELECT amba_layer_bucket($1, u) FROM unnest($2::text[]) WITH ORDINALITY AS t(u, i) ORDER BY i",
            &[&l, &sample],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut differs_from_variant = 0;
    for (u, g) in sample.iter().zip(&got) {
        assert_eq!(*g, layer_bucket(l, u), "amba_layer_bucket({l}, {u:?})");
        assert!((0.0..1.0).contains(g));
        if *g != variant_bucket(l, u) && *g != coverage_bucket(l, u) {
            differs_from_variant += 1;
        }
    }
    assert_eq!(differs_from_variant, sample.len());
    let other_layer: f64 = c
        .query_one("SELECT amba_layer_bucket('search', 's0')", &[])
        .unwrap()
        .get(0);
    assert_eq!(other_layer, layer_bucket("search", "s0"));

    // Chi-square on 100,000 ids: the share of users in each cell is its width
    // (df = 3; 16.27 is the 0.999 quantile). Fixed ids: the same statistic every run.
    let n = 100_000;
    let mut counts = [0u64; 4];
    for i in 0..n {
        let b = layer_bucket(l, &format!("chi{i}"));
        let cell = cells
            .iter()
            .position(|(_, s, t)| *s <= b && b < *t)
            .unwrap();
        counts[cell] += 1;
    }
    let chi2: f64 = cells
        .iter()
        .zip(counts)
        .map(|((_, s, t), o)| {
            let e = n as f64 * (t - s);
            (o as f64 - e).powi(2) / e
        })
        .sum();
    assert!(
        chi2 < 16.27,
        "chi-square {chi2} over cells {cells:?}, counts {counts:?}"
    );

    // Enrolment: a user is in at most the experiment whose range holds their layer bucket,
    // with the variant of their own variant bucket there; users in the free gap are in none.
    let ids = users("u", 3000);
    let expected: Vec<Vec<Option<String>>> = ids
        .iter()
        .map(|u| {
            let b = layer_bucket(l, u);
            (0..3)
                .map(|j| (cells[j].1 <= b && b < cells[j].2).then(|| ab(keys[j], u)))
                .collect()
        })
        .collect();
    let peeked = peek_all(&mut c, &keys, &ids);
    for ((u, p), e) in ids.iter().zip(&peeked).zip(&expected) {
        assert_eq!(
            p,
            e,
            "amba_peek of {u} (layer bucket {})",
            layer_bucket(l, u)
        );
    }
    let per_cell: Vec<usize> = (0..3)
        .map(|j| expected.iter().filter(|e| e[j].is_some()).count())
        .collect();
    assert!(per_cell.iter().all(|n| *n > 100), "{per_cell:?}");
    assert!(expected.iter().any(|e| e.iter().all(Option::is_none)));

    // amba_assign on the first 1,000 in every experiment of the layer (each in its own
    // statement), in both orders: the same answers, stored once, in one experiment at most.
    for (i, u) in ids.iter().take(1000).enumerate() {
        let order: Vec<usize> = if i % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for j in order {
            assert_eq!(
                assign_ok(&mut c, keys[j], u),
                expected[i][j],
                "amba_assign({}, {u})",
                keys[j]
            );
        }
    }
    let mut in_layer: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for k in keys {
        for (u, v) in stored(&mut c, k) {
            let i: usize = u[1..].parse().unwrap();
            let j = keys.iter().position(|x| *x == k).unwrap();
            assert_eq!(Some(&v), expected[i][j].as_ref(), "{k} stored {u}");
            in_layer.entry(u).or_default().push(k);
        }
    }
    assert!(
        in_layer.values().all(|ks| ks.len() == 1),
        "a user in two experiments of one layer"
    );
    let enrolled = expected
        .iter()
        .take(1000)
        .filter(|e| e.iter().any(Option::is_some))
        .count();
    assert_eq!(in_layer.len(), enrolled);
    // The experiments outside the layer are unaffected by it: a user of the gap is enrolled
    // in a plain experiment.
    create(&mut c, "plain", New::default());
    let gap_user = ids
        .iter()
        .zip(&expected)
        .find(|(_, e)| e.iter().all(Option::is_none))
        .unwrap()
        .0;
    assert_eq!(
        assign_ok(&mut c, "plain", gap_user),
        Some(ab("plain", gap_user))
    );
}

#[test]
fn a_freed_range_moves_no_ended_users_and_admits_them_to_the_next_experiment() {
    let db = Db::with_amba("lay_reuse");
    let mut c = db.client();
    let l = "reuse";
    create_in(&mut c, "e1", l, 0.5); // [0, 0.5)
    create_in(&mut c, "side", l, 0.5); // [0.5, 1)
    let ids = users("u", 600);
    let low = |u: &str| layer_bucket(l, u) < 0.5;
    for u in &ids {
        let expected = low(u).then(|| ab("e1", u));
        assert_eq!(assign_ok(&mut c, "e1", u), expected, "e1 {u}");
    }
    let e1_rows = stored_rows(&mut c, "e1");
    assert_eq!(e1_rows.len(), ids.iter().filter(|u| low(u)).count());
    assert!(e1_rows.len() > 200);

    // End e1: its range is free; e2 takes it.
    set_status(&mut c, "e1", "ended").unwrap();
    assert_eq!(
        layout(&mut c, l),
        vec![("-".into(), 0.0, 0.5), ("side".into(), 0.5, 1.0)]
    );
    let e2 = create_in(&mut c, "e2", l, 0.5);
    assert_eq!(range_of(&e2), (0.0, 0.5));
    // e1's users keep their variants, and may be enrolled in e2 (exclusivity holds among
    // experiments that are not ended).
    for u in &ids {
        let expected = low(u).then(|| ab("e2", u));
        assert_eq!(assign_ok(&mut c, "e2", u), expected, "e2 {u}");
        if low(u) {
            assert_eq!(
                assign_ok(&mut c, "e1", u),
                Some(e1_rows[u].0.clone()),
                "e1 {u} returning"
            );
        }
    }
    assert_eq!(stored_rows(&mut c, "e1"), e1_rows, "e1's rows unchanged");
    let both: Vec<&String> = ids.iter().filter(|u| low(u)).collect();
    assert_eq!(stored(&mut c, "e2").len(), both.len());
    // A new user of the ended experiment: EXPERIMENT_INACTIVE.
    let newcomer = ids_where("n", 1, |u| low(u))[0].clone();
    assert_code(
        assign(&mut c, "e1", &newcomer, None),
        "55000",
        "EXPERIMENT_INACTIVE",
        "new user of ended e1",
    );

    // End side; re-activate e1: placed again in the lowest gap, now [0.5, 1). Its returning
    // users keep their variants though their layer bucket is outside the new range (stored
    // first); new users enrol only from the new range.
    set_status(&mut c, "side", "ended").unwrap();
    let e1 = set_status(&mut c, "e1", "active").unwrap();
    assert_eq!(range_of(&e1), (0.5, 1.0));
    for u in ids.iter().filter(|u| low(u)).take(50) {
        assert_eq!(assign_ok(&mut c, "e1", u), Some(e1_rows[u].0.clone()));
    }
    for u in users("m", 300) {
        let expected = (!low(&u)).then(|| ab("e1", &u));
        assert_eq!(assign_ok(&mut c, "e1", &u), expected, "e1 new {u}");
        assert_eq!(peek(&mut c, "e2", &u, None), low(&u).then(|| ab("e2", &u)));
    }
    assert_eq!(
        stored_rows(&mut c, "e1").len(),
        e1_rows.len() + users("m", 300).iter().filter(|u| !low(u)).count()
    );
}

// ---------------------------------------------------------------------------------------
// Holdouts
// ---------------------------------------------------------------------------------------

#[test]
fn users_pass_through_the_holdout_first_and_its_control_holds_them_out() {
    let db = Db::with_amba("lay_holdout");
    let mut c = db.client();
    let hw = [30.0, 70.0];
    create(
        &mut c,
        "hold",
        New {
            variants: Some(HOLDOUT_30),
            ..New::default()
        },
    );
    let e = create(
        &mut c,
        "exp",
        New {
            layer: Some("hl"),
            share: Some(0.6),
            coverage: Some(0.8),
            targeting: Some(r#"{"country": "DE"}"#),
            holdout: Some("hold"),
            ..New::default()
        },
    );
    assert_eq!(e["holdout"], "hold");
    assert_eq!(range_of(&e), (0.0, 0.6));
    let ids = users("u", 500);
    let attrs = |i: usize| json!({"country": if i % 2 == 0 { "DE" } else { "FR" }});
    let passes = |i: usize, u: &str| {
        i % 2 == 0 && layer_bucket("hl", u) < 0.6 && coverage_bucket("exp", u) < 0.8
    };
    let answer =
        |i: usize, u: &str| (passes(i, u) && !held_out("hold", &hw, u)).then(|| ab("exp", u));
    let n_pass = ids
        .iter()
        .enumerate()
        .filter(|(i, u)| passes(*i, u))
        .count();
    let n_held = ids
        .iter()
        .enumerate()
        .filter(|(i, u)| passes(*i, u) && held_out("hold", &hw, u))
        .count();
    assert!(
        n_pass > 80 && n_held > 15 && n_pass - n_held > 50,
        "{n_pass} {n_held}"
    );
    // Each filter leaves someone out on its own (so each is checked before the holdout).
    let alone: [(&str, fn(usize, &str) -> bool); 3] = [
        ("targeting", |i, u| {
            i % 2 == 1 && layer_bucket("hl", u) < 0.6 && coverage_bucket("exp", u) < 0.8
        }),
        ("layer", |i, u| {
            i % 2 == 0 && layer_bucket("hl", u) >= 0.6 && coverage_bucket("exp", u) < 0.8
        }),
        ("coverage", |i, u| {
            i % 2 == 0 && layer_bucket("hl", u) < 0.6 && coverage_bucket("exp", u) >= 0.8
        }),
    ];
    for (what, f) in alone {
        assert!(
            ids.iter().enumerate().any(|(i, u)| f(i, u)),
            "no user left out by {what} alone"
        );
    }

    // Peek first: the same answers, nothing written (not even in the holdout).
    let before = state(&mut c);
    for (i, u) in ids.iter().enumerate() {
        assert_eq!(
            peek(&mut c, "exp", u, Some(&attrs(i))),
            answer(i, u),
            "peek {u}"
        );
    }
    assert_eq!(state(&mut c), before, "peek writes nothing");

    for (i, u) in ids.iter().enumerate() {
        assert_eq!(
            assign(&mut c, "exp", u, Some(&attrs(i))).unwrap(),
            answer(i, u),
            "assign {u}"
        );
    }
    // Rows: a user passing targeting, layer and coverage is assigned and exposed in the
    // holdout; held out (holdout's control): nothing in the experiment; else assigned there.
    let in_hold = stored(&mut c, "hold");
    let hold_exposed = exposed(&mut c, "hold");
    let in_exp = stored(&mut c, "exp");
    for (i, u) in ids.iter().enumerate() {
        if passes(i, u) {
            let hv = if held_out("hold", &hw, u) {
                "holdout"
            } else {
                "general"
            };
            assert_eq!(
                in_hold.get(u).map(String::as_str),
                Some(hv),
                "holdout row of {u}"
            );
            assert!(hold_exposed.contains(u), "{u} exposed in the holdout");
        } else {
            assert!(
                !in_hold.contains_key(u) && !hold_exposed.contains(u),
                "{u} never reached the holdout"
            );
        }
        assert_eq!(
            in_exp.get(u).cloned(),
            answer(i, u),
            "experiment row of {u}"
        );
    }
    assert_eq!((in_hold.len(), hold_exposed.len()), (n_pass, n_pass));
    assert_eq!(in_exp.len(), n_pass - n_held);
    assert!(
        exposed(&mut c, "exp").is_empty(),
        "the experiment itself is exposed only by amba_expose"
    );

    // amba_expose: held out → ASSIGNMENT_REQUIRED; released → their variant.
    let held_user = ids
        .iter()
        .enumerate()
        .find(|(i, u)| passes(*i, u) && held_out("hold", &hw, u))
        .unwrap()
        .1;
    let released = ids
        .iter()
        .enumerate()
        .find(|(i, u)| answer(*i, u).is_some())
        .unwrap();
    assert_code(
        c.query_one("SELECT amba_expose('exp', $1)", &[held_user])
            .map(|r| r.get::<_, String>(0)),
        "P0002",
        "ASSIGNMENT_REQUIRED",
        "expose a held-out user",
    );
    let v: String = c
        .query_one("SELECT amba_expose('exp', $1)", &[released.1])
        .unwrap()
        .get(0);
    assert_eq!(Some(v), answer(released.0, released.1));

    // Sticky: the holdout no longer holds anyone new out (weight 0 on its control), yet
    // everyone held out stays held out, everyone released keeps their variant — also with
    // attributes that would fail the targeting now. No row is added or changed.
    update(
        &mut c,
        "hold",
        Upd {
            variants: Some(r#"[{"key":"holdout","weight":0},{"key":"general","weight":1}]"#),
            ..Upd::default()
        },
    );
    let before = state(&mut c);
    for (i, u) in ids.iter().enumerate().filter(|(i, u)| passes(*i, u)) {
        assert_eq!(
            assign(&mut c, "exp", u, Some(&attrs(i))).unwrap(),
            answer(i, u),
            "again {u}"
        );
        assert_eq!(
            peek(&mut c, "exp", u, Some(&attrs(i))),
            answer(i, u),
            "peek again {u}"
        );
    }
    for (i, u) in ids
        .iter()
        .enumerate()
        .filter(|(i, u)| answer(*i, u).is_some())
    {
        assert_eq!(
            assign(&mut c, "exp", u, Some(&json!({"country": "FR"}))).unwrap(),
            answer(i, u),
            "sticky {u}"
        );
    }
    assert_eq!(state(&mut c), before, "returning users write nothing");
    // A new user passing everything now: general in the holdout, enrolled.
    let fresh = ids_where("new", 1, |u| {
        layer_bucket("hl", u) < 0.6 && coverage_bucket("exp", u) < 0.8
    })[0]
        .clone();
    assert_eq!(
        assign(&mut c, "exp", &fresh, Some(&json!({"country": "DE"}))).unwrap(),
        Some(ab("exp", &fresh))
    );
    assert_eq!(
        stored(&mut c, "hold").get(&fresh).map(String::as_str),
        Some("general")
    );

    // A paused experiment: EXPERIMENT_INACTIVE before anything, nothing written in the
    // holdout.
    set_status(&mut c, "exp", "paused").unwrap();
    let before = state(&mut c);
    let late = ids_where("late", 1, |u| {
        layer_bucket("hl", u) < 0.6 && coverage_bucket("exp", u) < 0.8
    })[0]
        .clone();
    assert_code(
        assign(&mut c, "exp", &late, Some(&json!({"country": "DE"}))),
        "55000",
        "EXPERIMENT_INACTIVE",
        "new user of a paused experiment with a holdout",
    );
    assert_eq!(
        peek(&mut c, "exp", &late, Some(&json!({"country": "DE"}))),
        None
    );
    assert_eq!(state(&mut c), before);
}

#[test]
fn results_of_the_holdout_compare_held_out_with_released_users_across_its_experiments() {
    let db = Db::with_amba("lay_hresults");
    let mut c = db.client();
    let hw = [1.0, 1.0];
    create(
        &mut c,
        "q_hold",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    create(
        &mut c,
        "q1",
        New {
            holdout: Some("q_hold"),
            ..New::default()
        },
    );
    create(
        &mut c,
        "q2",
        New {
            holdout: Some("q_hold"),
            layer: Some("ql"),
            share: Some(1.0),
            ..New::default()
        },
    );
    let ids = users("u", 400);
    // q1 for u0..u299, q2 for u100..u399: u100..u299 pass through the holdout twice.
    for (i, u) in ids.iter().enumerate() {
        let expected = |k: &str| (!held_out("q_hold", &hw, u)).then(|| ab(k, u));
        if i < 300 {
            assert_eq!(assign_ok(&mut c, "q1", u), expected("q1"), "q1 {u}");
        }
        if i >= 100 {
            assert_eq!(assign_ok(&mut c, "q2", u), expected("q2"), "q2 {u}");
        }
    }
    for (i, u) in ids.iter().enumerate() {
        if i % 3 == 0 {
            c.execute("SELECT amba_track($1, 'buy')", &[u]).unwrap();
        }
    }
    let held: Vec<usize> = (0..400)
        .filter(|i| held_out("q_hold", &hw, &ids[*i]))
        .collect();
    let released: Vec<usize> = (0..400)
        .filter(|i| !held_out("q_hold", &hw, &ids[*i]))
        .collect();
    let conv = |set: &[usize]| set.iter().filter(|i| *i % 3 == 0).count() as i64;
    let rows: Vec<(String, bool, i64, i64, i64)> = c
        .query(
            "SELECT variant, is_control, assigned_count, exposed_count, converted_count FROM amba_results('q_hold', 'buy')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "holdout".into(),
                true,
                held.len() as i64,
                held.len() as i64,
                conv(&held)
            ),
            (
                "general".into(),
                false,
                released.len() as i64,
                released.len() as i64,
                conv(&released)
            ),
        ],
        "each user counted once in the holdout, over both experiments"
    );
    assert!(held.len() > 150 && released.len() > 150);
    // The experiments count their released users only (nobody exposed there yet).
    for (k, range) in [("q1", 0..300), ("q2", 100..400)] {
        let n: i64 = c
            .query_one(
                "SELECT sum(assigned_count)::bigint FROM amba_results($1, 'buy')",
                &[&k],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            n,
            range.filter(|i| released.contains(i)).count() as i64,
            "{k}"
        );
    }
    // The other functions work on the holdout too.
    let daily: i64 = c
        .query_one(
            "SELECT count(*) FROM amba_results_daily('q_hold', 'buy')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(daily > 0);
}

#[test]
fn an_inactive_holdout_holds_no_new_user_out_and_overrides_and_stored_assignments_come_first() {
    let db = Db::with_amba("lay_hinactive");
    let mut c = db.client();
    let hw = [1.0, 1.0];
    create(
        &mut c,
        "h",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    create(
        &mut c,
        "e",
        New {
            holdout: Some("h"),
            ..New::default()
        },
    );
    let first = users("a", 200);
    for u in &first {
        assert_eq!(
            assign_ok(&mut c, "e", u),
            (!held_out("h", &hw, u)).then(|| ab("e", u))
        );
    }
    let held_users: Vec<&String> = first.iter().filter(|u| held_out("h", &hw, u)).collect();
    assert!(held_users.len() > 50);

    for status in ["paused", "ended", "draft"] {
        set_status(&mut c, "h", status).unwrap();
        let hold_rows = stored_rows(&mut c, "h");
        let hold_exposed = exposed(&mut c, "h");
        // New users: enrolled, whatever their holdout bucket, and nothing written in h.
        for u in users(&format!("new_{status}_"), 100) {
            assert_eq!(
                peek(&mut c, "e", &u, None),
                Some(ab("e", &u)),
                "peek {u}, holdout {status}"
            );
            assert_eq!(
                assign_ok(&mut c, "e", &u),
                Some(ab("e", &u)),
                "{u}, holdout {status}"
            );
        }
        // Users the holdout holds already stay held out (their assignment there is sticky).
        for u in &held_users {
            assert_eq!(
                assign_ok(&mut c, "e", u),
                None,
                "{u} held out, holdout {status}"
            );
            assert_eq!(peek(&mut c, "e", u, None), None);
        }
        assert_eq!(
            stored_rows(&mut c, "h"),
            hold_rows,
            "holdout {status}: no row written there"
        );
        assert_eq!(exposed(&mut c, "h"), hold_exposed);
    }
    set_status(&mut c, "h", "active").unwrap();

    // Overrides in the holdout decide without writing anything there.
    c.execute("SELECT amba_set_override('h', 'ov_held', 'holdout')", &[])
        .unwrap();
    c.execute("SELECT amba_set_override('h', 'ov_free', 'general')", &[])
        .unwrap();
    assert_eq!(peek(&mut c, "e", "ov_held", None), None);
    assert_eq!(assign_ok(&mut c, "e", "ov_held"), None);
    assert_eq!(assign_ok(&mut c, "e", "ov_free"), Some(ab("e", "ov_free")));
    for u in ["ov_held", "ov_free"] {
        assert_eq!(
            rows_of(&mut c, "h", u),
            (0, 0),
            "{u}: nothing written in the holdout"
        );
    }
    assert_eq!(rows_of(&mut c, "e", "ov_held"), (0, 0));
    // An override in the experiment itself wins before the holdout is consulted.
    let held_new = ids_where("ovx", 1, |u| held_out("h", &hw, u))[0].clone();
    c.execute("SELECT amba_set_override('e', $1, 'b')", &[&held_new])
        .unwrap();
    assert_eq!(assign_ok(&mut c, "e", &held_new), Some("b".into()));
    assert_eq!(rows_of(&mut c, "h", &held_new), (0, 0));

    // A holdout added later leaves the experiment's assigned users alone (stored first),
    // and new users pass through it.
    create(&mut c, "late", New::default());
    let early = users("early", 100);
    for u in &early {
        assert_eq!(assign_ok(&mut c, "late", u), Some(ab("late", u)));
    }
    let late = update(
        &mut c,
        "late",
        Upd {
            holdout: Some("h"),
            ..Upd::default()
        },
    );
    assert_eq!(late["holdout"], "h");
    let before = state(&mut c);
    for u in &early {
        assert_eq!(
            assign_ok(&mut c, "late", u),
            Some(ab("late", u)),
            "{u} assigned before the holdout"
        );
    }
    assert_eq!(state(&mut c), before);
    for u in users("later", 100) {
        assert_eq!(
            assign_ok(&mut c, "late", &u),
            (!held_out("h", &hw, &u)).then(|| ab("late", &u))
        );
        assert_eq!(rows_of(&mut c, "h", &u), (1, 1), "{u} through the holdout");
    }

    // Removing the holdout (''): held-out users of e are enrolled on their next call.
    let e = update(
        &mut c,
        "e",
        Upd {
            holdout: Some(""),
            ..Upd::default()
        },
    );
    assert!(e["holdout"].is_null(), "{e}");
    for u in &held_users {
        assert_eq!(assign_ok(&mut c, "e", u), Some(ab("e", u)), "{u} released");
    }
}

#[test]
fn holdout_naming_rules_are_invalid_argument_and_write_nothing() {
    let db = Db::with_amba("lay_hrules");
    let mut c = db.client();
    create(
        &mut c,
        "h",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    let e = create(
        &mut c,
        "e",
        New {
            holdout: Some("h"),
            ..New::default()
        },
    );
    assert_eq!(e["holdout"], "h");
    let plain = create(&mut c, "plain", New::default());
    assert!(plain["holdout"].is_null());
    assert!(plain.as_object().unwrap().contains_key("holdout"));
    create(
        &mut c,
        "z",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    assign_ok(&mut c, "e", "someone");
    let before = state(&mut c);

    // A missing holdout.
    assert_invalid(
        try_create(
            &mut c,
            "x",
            New {
                holdout: Some("nope"),
                ..New::default()
            },
        ),
        "create naming a missing holdout",
    );
    assert_invalid(
        try_update(
            &mut c,
            "plain",
            Upd {
                holdout: Some("nope"),
                ..Upd::default()
            },
        ),
        "update naming a missing holdout",
    );
    assert_invalid(
        try_create(
            &mut c,
            "x",
            New {
                holdout: Some("bad key"),
                ..New::default()
            },
        ),
        "create naming an invalid key",
    );
    // Naming itself.
    assert_invalid(
        try_create(
            &mut c,
            "x",
            New {
                holdout: Some("x"),
                ..New::default()
            },
        ),
        "create naming itself",
    );
    assert_invalid(
        try_update(
            &mut c,
            "plain",
            Upd {
                holdout: Some("plain"),
                ..Upd::default()
            },
        ),
        "update naming itself",
    );
    // Naming an experiment that names a holdout itself.
    assert_invalid(
        try_create(
            &mut c,
            "x",
            New {
                holdout: Some("e"),
                ..New::default()
            },
        ),
        "create naming e, which names h",
    );
    assert_invalid(
        try_update(
            &mut c,
            "plain",
            Upd {
                holdout: Some("e"),
                ..Upd::default()
            },
        ),
        "update naming e",
    );
    // A holdout (named by e) cannot be given one.
    assert_invalid(
        try_update(
            &mut c,
            "h",
            Upd {
                holdout: Some("z"),
                ..Upd::default()
            },
        ),
        "h, a holdout, given one",
    );
    assert_invalid(
        try_update(
            &mut c,
            "h",
            Upd {
                holdout: Some("z"),
                status: Some("paused"),
                ..Upd::default()
            },
        ),
        "h, a holdout, given one with another change",
    );
    // A named holdout cannot be deleted.
    assert_invalid(
        c.query_one("SELECT amba_delete_experiment('h')", &[])
            .map(|r| r.get::<_, bool>(0)),
        "deleting h, named by e",
    );
    assert_eq!(state(&mut c), before, "each rejection writes nothing");
    assert!(get_experiment(&mut c, "x").is_none());

    // Once nobody names it, it can be given a holdout, and deleted.
    update(
        &mut c,
        "e",
        Upd {
            holdout: Some(""),
            ..Upd::default()
        },
    );
    let h = update(
        &mut c,
        "h",
        Upd {
            holdout: Some("z"),
            ..Upd::default()
        },
    );
    assert_eq!(h["holdout"], "z");
    // Naming the same holdout again is fine; naming another replaces it.
    assert_eq!(
        update(
            &mut c,
            "e",
            Upd {
                holdout: Some("z"),
                ..Upd::default()
            }
        )["holdout"],
        "z"
    );
    update(
        &mut c,
        "h",
        Upd {
            holdout: Some(""),
            ..Upd::default()
        },
    );
    update(
        &mut c,
        "e",
        Upd {
            holdout: Some(""),
            ..Upd::default()
        },
    );
    let deleted: bool = c
        .query_one("SELECT amba_delete_experiment('h')", &[])
        .unwrap()
        .get(0);
    assert!(deleted);
    // The history carries the holdout in before/after.
    let afters: Vec<Value> = c
        .query("SELECT coalesce(after::text, 'null') FROM amba_experiment_history('e') ORDER BY changed_at", &[])
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect();
    let holdouts: Vec<&Value> = afters.iter().map(|a| &a["holdout"]).collect();
    assert_eq!(
        holdouts,
        vec![&json!("h"), &Value::Null, &json!("z"), &Value::Null]
    );
}

// ---------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------

/// Runs `sql` (one row, one text column) on `client` in a thread; `setup` first.
fn in_thread(
    mut client: Client,
    setup: &'static str,
    sql: &'static str,
    finish: &'static str,
    args: Vec<String>,
) -> std::thread::JoinHandle<Result<Option<String>, postgres::Error>> {
    std::thread::spawn(move || {
        if !setup.is_empty() {
            client.batch_execute(setup)?;
        }
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| a as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let r = client
            .query_one(sql, &params)
            .map(|r| r.get::<_, Option<String>>(0));
        if r.is_ok() && !finish.is_empty() {
            client.batch_execute(finish)?;
        } else if r.is_err() && !finish.is_empty() {
            let _ = client.batch_execute("ROLLBACK");
        }
        r
    })
}

/// B's `amba_assign(key, user)` on a connection of its own, in a thread, returned once it
/// is seen waiting for backend `a_pid`, with the wait event it waits on.
fn assign_waiting_for(
    db: &Db,
    observer: &mut Client,
    a_pid: i32,
    key: &str,
    user: &str,
    what: &str,
) -> (
    std::thread::JoinHandle<Result<Option<String>, postgres::Error>>,
    String,
) {
    let mut b = db.client();
    let b_pid = backend_pid(&mut b);
    let handle = in_thread(
        b,
        "",
        "SELECT amba_assign($1, $2)",
        "",
        vec![key.to_string(), user.to_string()],
    );
    let event = wait_until_blocked_by(
        observer,
        b_pid,
        a_pid,
        &format!("{what}: B's amba_assign"),
        || !handle.is_finished(),
    );
    (handle, event)
}

/// Two experiments of one layer placed at once: the second waits for the first's
/// transaction and then places itself around what it committed — the next gap on commit,
/// the lowest gap on rollback — also in REPEATABLE READ with a snapshot taken before, and
/// also against a re-activation.
#[test]
fn experiments_placed_at_once_wait_for_each_other_and_never_overlap() {
    let db = Db::with_amba("lay_race_place");
    let mut c = db.client();
    for (n, (first, commit, isolation)) in [
        ("create", true, "READ COMMITTED"),
        ("create", false, "READ COMMITTED"),
        ("create", true, "REPEATABLE READ"),
        ("create", false, "SERIALIZABLE"),
        ("reactivate", true, "READ COMMITTED"),
        ("reactivate", false, "REPEATABLE READ"),
    ]
    .into_iter()
    .enumerate()
    {
        let l = format!("race{n}");
        let what = format!(
            "{first}, {}, B in {isolation}",
            if commit { "commit" } else { "rollback" }
        );
        // p [0, 0.2), q [0.2, 0.5); then p ended: gaps [0, 0.2) and [0.5, 1).
        let (p, q) = (format!("p{n}"), format!("q{n}"));
        create_in(&mut c, &p, &l, 0.2);
        create_in(&mut c, &q, &l, 0.3);
        set_status(&mut c, &p, "ended").unwrap();

        let mut a = db.client();
        let a_pid = backend_pid(&mut a);
        let mut tx = a.transaction().unwrap();
        let a_key = if first == "create" {
            let k = format!("a{n}");
            let got = create_in(&mut tx, &k, &l, 0.2);
            assert_eq!(range_of(&got), (0.0, 0.2), "{what}: A");
            k
        } else {
            let got = set_status(&mut tx, &p, "active").unwrap();
            assert_eq!(range_of(&got), (0.0, 0.2), "{what}: A re-activates p");
            p.clone()
        };

        let mut b = db.client();
        let b_pid = backend_pid(&mut b);
        let setup: &'static str = match isolation {
            "REPEATABLE READ" => {
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM amba.experiments"
            }
            "SERIALIZABLE" => {
                "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM amba.experiments"
            }
            _ => "",
        };
        let finish: &'static str = if setup.is_empty() { "" } else { "COMMIT" };
        let b_key = format!("b{n}");
        let handle = in_thread(
            b,
            setup,
            "SELECT (amba_create_experiment($1, $2::text::jsonb, layer => $3, layer_share => 0.2) -> 'layer')::text",
            finish,
            vec![b_key.clone(), AB.to_string(), l.clone()],
        );
        let event =
            wait_until_blocked_by(&mut c, b_pid, a_pid, &format!("{what}: B's create"), || {
                !handle.is_finished()
            });
        assert_eq!(event, "advisory", "{what}: B waits on the layer's lock");
        if commit {
            tx.commit().unwrap();
        } else {
            tx.rollback().unwrap();
        }
        let b_layer: Value = serde_json::from_str(
            &handle
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{what}: B: {e}"))
                .unwrap(),
        )
        .unwrap();
        let expected = if commit { (0.5, 0.7) } else { (0.0, 0.2) };
        assert_eq!(
            (
                b_layer["start"].as_f64().unwrap(),
                b_layer["end"].as_f64().unwrap()
            ),
            expected,
            "{what}: B's range"
        );
        let mut want = if commit {
            vec![
                (a_key.clone(), 0.0, 0.2),
                (q.clone(), 0.2, 0.5),
                (b_key.clone(), 0.5, 0.7),
                ("-".into(), 0.7, 1.0),
            ]
        } else {
            vec![
                (b_key.clone(), 0.0, 0.2),
                (q.clone(), 0.2, 0.5),
                ("-".into(), 0.5, 1.0),
            ]
        };
        want.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap());
        assert_eq!(layout(&mut c, &l), want, "{what}");
        assert_layout_consistent(&mut c, &l);
        if !commit && first == "create" {
            assert!(get_experiment(&mut c, &a_key).is_none());
        }
        if !commit && first == "reactivate" {
            assert_eq!(get_experiment(&mut c, &p).unwrap()["status"], "ended");
        }
    }
}

/// One user hitting two experiments of one layer (both behind one holdout) from eight
/// connections at once, user after user: each ends up in at most one of them — the one
/// their layer bucket says — and in the holdout exactly once, and every connection got the
/// same answers.
#[test]
fn eight_connections_on_one_user_put_them_in_one_experiment_of_the_layer_at_most() {
    const CONNECTIONS: usize = 8;
    let db = Db::with_amba("lay_race_many");
    let mut c = db.client();
    let hw = [20.0, 80.0];
    create(
        &mut c,
        "mh",
        New {
            variants: Some(r#"[{"key":"holdout","weight":20},{"key":"general","weight":80}]"#),
            ..New::default()
        },
    );
    for k in ["mx", "my"] {
        create(
            &mut c,
            k,
            New {
                layer: Some("many"),
                share: Some(0.5),
                holdout: Some("mh"),
                ..New::default()
            },
        );
    }
    let ids = Arc::new(users("u", 150));
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|t| {
            let (ids, barrier) = (ids.clone(), barrier.clone());
            let mut client = db.client();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for u in ids.iter() {
                    barrier.wait();
                    let order = if t % 2 == 0 {
                        ["mx", "my"]
                    } else {
                        ["my", "mx"]
                    };
                    for k in order {
                        answers.push(((u.clone(), k), assign_ok(&mut client, k, u)));
                    }
                }
                answers.into_iter().collect::<BTreeMap<_, _>>()
            })
        })
        .collect();
    let results: Vec<BTreeMap<(String, &str), Option<String>>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let expected = |u: &str, k: &str| {
        let in_range = (layer_bucket("many", u) < 0.5) == (k == "mx");
        (in_range && !held_out("mh", &hw, u)).then(|| ab(k, u))
    };
    for r in &results {
        for ((u, k), v) in r {
            assert_eq!(*v, expected(u, k), "{k} {u}");
        }
    }
    let (sx, sy) = (stored(&mut c, "mx"), stored(&mut c, "my"));
    for u in ids.iter() {
        assert!(
            !(sx.contains_key(u) && sy.contains_key(u)),
            "{u} in both experiments of the layer"
        );
        assert_eq!(sx.get(u).cloned(), expected(u, "mx"));
        assert_eq!(sy.get(u).cloned(), expected(u, "my"));
        assert_eq!(rows_of(&mut c, "mh", u), (1, 1), "{u}: once in the holdout");
    }
    let counts: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM amba.assignments), (SELECT count(*) FROM amba.exposures)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        counts,
        ((ids.len() + sx.len() + sy.len()) as i64, ids.len() as i64)
    );
}

/// A first assignment behind a holdout, raced for one user: A assigns and holds its
/// transaction; B's call is seen waiting for it; then A commits (B returns what A stored)
/// or rolls back (B stores its own). Either way the holdout's assignment and exposure, and
/// the experiment's assignment for a released user, exist exactly once, and B inserted
/// nothing it had to take back: it waits for A before inserting, as ON CONFLICT does.
#[test]
fn a_first_assignment_behind_a_holdout_raced_for_one_user_stores_each_row_once() {
    let db = Db::with_amba("lay_race_holdout");
    let mut c = db.client();
    c.batch_execute("CREATE EXTENSION pageinspect").unwrap();
    let hw = [1.0, 1.0];
    create(
        &mut c,
        "rh",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    create(
        &mut c,
        "re",
        New {
            layer: Some("rl"),
            share: Some(1.0),
            holdout: Some("rh"),
            ..New::default()
        },
    );
    for (n, (held, commit)) in [(false, true), (false, false), (true, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        let u = ids_where(&format!("r{n}_"), 1, |u| held_out("rh", &hw, u) == held)[0].clone();
        let want = (!held).then(|| ab("re", &u));
        let what = format!(
            "{} user, A {}",
            if held { "held-out" } else { "released" },
            if commit { "commits" } else { "rolls back" }
        );

        let mut a = db.client();
        let a_pid = backend_pid(&mut a);
        let mut tx = a.transaction().unwrap();
        assert_eq!(assign(&mut tx, "re", &u, None).unwrap(), want, "{what}: A");
        let (handle, event) = assign_waiting_for(&db, &mut c, a_pid, "re", &u, &what);
        assert_eq!(event, "transactionid", "{what}: B waits for A's row");
        if commit {
            tx.commit().unwrap();
        } else {
            tx.rollback().unwrap();
        }
        assert_eq!(handle.join().unwrap().unwrap(), want, "{what}: B");
        assert_eq!(rows_of(&mut c, "rh", &u), (1, 1), "{what}: holdout rows");
        assert_eq!(
            rows_of(&mut c, "re", &u),
            (if held { 0 } else { 1 }, 0),
            "{what}: experiment rows"
        );
        assert_eq!(
            stored(&mut c, "rh").get(&u).map(String::as_str),
            Some(if held { "holdout" } else { "general" })
        );
        // B waited before inserting anything: no speculative insertion of its was taken
        // back (a killed tuple keeps its line pointer with xmin 0).
        for table in ["amba.assignments", "amba.exposures"] {
            assert_eq!(
                heap_line_pointers(&mut c, table, "t_xmin = '0'"),
                0,
                "{what}: {table}"
            );
        }
        // Afterwards, sticky.
        assert_eq!(assign_ok(&mut c, "re", &u), want);
    }
}

/// A holdout paused while a first assignment is on its way holds no new user out, and
/// never fails the call (an inactive holdout holds no new user out), while a user a
/// concurrent call held out stays held out (sticky). B's amba_assign starts while the
/// holdout is active and waits on the user's lock, held by A's uncommitted amba_alias;
/// meanwhile the holdout is paused (committed); A rolls back and B goes on: its statement
/// still sees the holdout active, its first assignment there sees the pause. Forced in
/// three orders: the pause committed before B's statement begins; while B waits; and
/// while B waits after a concurrent call's assignment holding the user out committed
/// (its row, written here as that call writes it, is newer than B's statement).
#[test]
fn a_holdout_paused_during_a_first_assignment_holds_no_new_user_out() {
    let db = Db::with_amba("lay_holdout_paused");
    let mut c = db.client();
    let hw = [1.0, 1.0];
    for (n, order) in ["before B", "while B waits", "after a concurrent hold-out"]
        .into_iter()
        .enumerate()
    {
        let (h, e) = (format!("ph{n}"), format!("pe{n}"));
        create(
            &mut c,
            &h,
            New {
                variants: Some(HOLDOUT_50),
                ..New::default()
            },
        );
        create(
            &mut c,
            &e,
            New {
                holdout: Some(&h),
                ..New::default()
            },
        );
        // Held out while the holdout is active: only the pause lets them in.
        let u = ids_where(&format!("p{n}_"), 1, |u| held_out(&h, &hw, u))[0].clone();
        let what = format!("paused {order}");
        let concurrent_hold_out = n == 2;
        let got = if n == 0 {
            set_status(&mut c, &h, "paused").unwrap();
            assign(&mut c, &e, &u, None)
        } else {
            let mut a = db.client();
            let a_pid = backend_pid(&mut a);
            let mut tx = a.transaction().unwrap();
            tx.execute("SELECT amba_alias($1, $2)", &[&format!("anon_{u}"), &u])
                .unwrap();
            let (handle, event) = assign_waiting_for(&db, &mut c, a_pid, &e, &u, &what);
            assert_eq!(event, "advisory", "{what}: B waits on the user's lock");
            if concurrent_hold_out {
                c.execute(
                    "INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version) \
                     SELECT id, $2, 'holdout', weight_version FROM amba.experiments WHERE key = $1",
                    &[&h, &u],
                )
                .unwrap();
            }
            set_status(&mut c, &h, "paused").unwrap();
            tx.rollback().unwrap();
            handle.join().unwrap()
        };
        if concurrent_hold_out {
            assert_eq!(got.unwrap(), None, "{what}: B is held out");
            assert_eq!(rows_of(&mut c, &h, &u), (1, 1), "{what}: holdout rows");
            assert_eq!(rows_of(&mut c, &e, &u), (0, 0), "{what}: experiment rows");
            assert_eq!(assign_ok(&mut c, &e, &u), None, "{what}: sticky");
        } else {
            let want = ab(&e, &u);
            assert_eq!(got.unwrap(), Some(want.clone()), "{what}: B is released");
            assert_eq!(rows_of(&mut c, &h, &u), (0, 0), "{what}: no holdout rows");
            assert_eq!(rows_of(&mut c, &e, &u), (1, 0), "{what}: experiment rows");
            assert_eq!(assign_ok(&mut c, &e, &u), Some(want), "{what}: sticky");
        }
    }
}

/// The holdout rules hold against a concurrent change too (CONTRACT 11: the named
/// experiment must exist and cannot itself name a holdout). A names a holdout for h (or
/// deletes h) and holds its transaction; B names h as its own holdout and is seen waiting;
/// after A commits, B must fail with INVALID_ARGUMENT and write nothing; after A rolls
/// back, B succeeds. And the other order: B's naming holds, A's change waits and then
/// fails.
#[test]
fn naming_a_holdout_races_a_change_of_it_and_the_rules_still_hold() {
    let db = Db::with_amba("lay_race_rules");
    let mut c = db.client();
    create(
        &mut c,
        "z",
        New {
            variants: Some(HOLDOUT_50),
            ..New::default()
        },
    );
    let mut failures: Vec<String> = Vec::new();
    for (n, (change, commit)) in [
        ("hold h", true),
        ("hold h", false),
        ("delete h", true),
        ("delete h", false),
    ]
    .into_iter()
    .enumerate()
    {
        let h = format!("h{n}");
        let e = format!("e{n}");
        create(
            &mut c,
            &h,
            New {
                variants: Some(HOLDOUT_50),
                ..New::default()
            },
        );
        let what = format!(
            "A: {change} ({}), B names h",
            if commit { "commit" } else { "rollback" }
        );

        let mut a = db.client();
        let a_pid = backend_pid(&mut a);
        let mut tx = a.transaction().unwrap();
        if change == "hold h" {
            update(
                &mut tx,
                &h,
                Upd {
                    holdout: Some("z"),
                    ..Upd::default()
                },
            );
        } else {
            let gone: bool = tx
                .query_one("SELECT amba_delete_experiment($1)", &[&h])
                .unwrap()
                .get(0);
            assert!(gone);
        }
        let mut b = db.client();
        let b_pid = backend_pid(&mut b);
        let handle = in_thread(
            b,
            "",
            "SELECT (amba_create_experiment($1, $2::text::jsonb, holdout => $3) ->> 'holdout')",
            "",
            vec![e.clone(), AB.to_string(), h.clone()],
        );
        wait_until_blocked_by(&mut c, b_pid, a_pid, &format!("{what}: B's create"), || {
            !handle.is_finished()
        });
        if commit {
            tx.commit().unwrap();
        } else {
            tx.rollback().unwrap();
        }
        let got = handle.join().unwrap();
        // Every scenario runs; what went wrong is reported together at the end.
        match (commit, got) {
            (true, Ok(v)) => failures.push(format!(
                "{what}: B accepted (holdout {v:?}); must be INVALID_ARGUMENT"
            )),
            (true, Err(e)) => {
                let (state, msg) = err(e);
                if state != "22023" || !msg.starts_with("INVALID_ARGUMENT:") {
                    failures.push(format!(
                        "{what}: B failed with {state} {msg}; must be INVALID_ARGUMENT (22023)"
                    ));
                }
            }
            (false, Ok(v)) if v.as_deref() == Some(h.as_str()) => {}
            (false, got) => failures.push(format!("{what}: B {got:?}; must name {h}")),
        }
        if commit && get_experiment(&mut c, &e).is_some() {
            failures.push(format!("{what}: e was written"));
        }
        // Never a chain: no experiment names one that names a holdout.
        let chains: Vec<String> = c
            .query(
                "SELECT x.key || ' -> ' || y.key || ' -> ' || z.key FROM amba.experiments x
                   JOIN amba.experiments y ON y.id = x.holdout_id
                   JOIN amba.experiments z ON z.id = y.holdout_id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !chains.is_empty() {
            failures.push(format!("{what}: a holdout naming a holdout: {chains:?}"));
            // Undo it, so the next scenarios start clean.
            c.execute("SELECT amba_update_experiment($1, holdout => '')", &[&e])
                .unwrap();
        }
    }

    // The other order: B names h first and holds; A's change waits for it, then fails.
    for (n, change) in ["hold h", "delete h"].into_iter().enumerate() {
        let h = format!("k{n}");
        let e = format!("f{n}");
        create(
            &mut c,
            &h,
            New {
                variants: Some(HOLDOUT_50),
                ..New::default()
            },
        );
        let what = format!("B names h first, A: {change}");
        let mut b = db.client();
        let b_pid = backend_pid(&mut b);
        let mut tx = b.transaction().unwrap();
        create(
            &mut tx,
            &e,
            New {
                holdout: Some(&h),
                ..New::default()
            },
        );
        let mut a = db.client();
        let a_pid = backend_pid(&mut a);
        let sql: &'static str = if change == "hold h" {
            "SELECT (amba_update_experiment($1, holdout => 'z') ->> 'holdout')"
        } else {
            "SELECT amba_delete_experiment($1)::text"
        };
        let handle = in_thread(a, "", sql, "", vec![h.clone()]);
        wait_until_blocked_by(&mut c, a_pid, b_pid, &format!("{what}: A"), || {
            !handle.is_finished()
        });
        tx.commit().unwrap();
        assert_invalid(handle.join().unwrap(), &what);
        let hh = get_experiment(&mut c, &h).expect("h still there");
        assert!(hh["holdout"].is_null(), "{what}: {hh}");
        assert_eq!(get_experiment(&mut c, &e).unwrap()["holdout"], json!(h));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
