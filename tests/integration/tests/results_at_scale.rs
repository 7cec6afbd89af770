//! Results at scale (issue 18): from 20k assignments on, `amba_results`,
//! `amba_metric_results` and `amba_results_daily` cut the user ids into one slice per
//! parallel worker and add the slices up. This proves the cut changes no answer: on 60k
//! users with ids of many shapes (bytewise order puts `U-`, `a b`, `u`, `ü` far apart),
//! overrides, decoy events and events before assignment, each function returns exactly what
//! a reference computed here in Rust from the raw rows says, with 1 slice and with 2, 3 and
//! 5 slices, and the plan run inside is a Parallel Append exactly when there are slices.

use amba_integration_tests::{database_url, Db};
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

const USERS: i64 = 60_000;
const DAY_US: i64 = 86_400_000_000;

/// The data, in bulk SQL (deterministic: no random()). Users `g` in 1..=USERS, their ids
/// in five shapes; the first half assigned under 50/50 (version 1), the rest after a
/// re-weight to 30/70 (version 2), a minute apart over about 20 days. Two thirds exposed;
/// purchases (some without a numeric amount) and decoy views from 1.2 × USERS ids over 30
/// days, some before their user's assignment; 40 users overridden.
fn load(c: &mut Client) -> i64 {
    c.batch_execute(&format!(
        "SELECT amba_create_experiment('scale', '[{{\"key\": \"control\", \"weight\": 50}}, {{\"key\": \"treatment\", \"weight\": 50}}]');
         CREATE TEMP VIEW ids AS
           SELECT g, CASE g % 5 WHEN 0 THEN 'U-' || g WHEN 1 THEN 'ü' || g WHEN 2 THEN 'a b' || g
                                WHEN 3 THEN 'u' || g ELSE g::text END AS user_id
             FROM generate_series(1, {users}) g;
         INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
         SELECT e.id, i.user_id, CASE WHEN amba_bucket('scale', i.user_id) < 0.5 THEN 'control' ELSE 'treatment' END,
                1, timestamptz '2026-03-01 00:00+00' + i.g * interval '29 seconds'
           FROM ids i, amba.experiments e WHERE e.key = 'scale' AND i.g <= {half};
         SELECT amba_update_experiment('scale', '[{{\"key\": \"control\", \"weight\": 30}}, {{\"key\": \"treatment\", \"weight\": 70}}]');
         INSERT INTO amba.assignments (experiment_id, user_id, variant, weight_version, assigned_at)
         SELECT e.id, i.user_id, CASE WHEN amba_bucket('scale', i.user_id) < 0.3 THEN 'control' ELSE 'treatment' END,
                2, timestamptz '2026-03-01 00:00+00' + i.g * interval '29 seconds'
           FROM ids i, amba.experiments e WHERE e.key = 'scale' AND i.g > {half};
         INSERT INTO amba.exposures (experiment_id, user_id, exposed_at)
         SELECT a.experiment_id, a.user_id, a.assigned_at + (hashtext(a.user_id) & 1023) * interval '1 minute'
           FROM amba.assignments a WHERE hashtext(a.user_id || 'x') % 3 <> 0;
         INSERT INTO amba.events (user_id, event, occurred_at, properties)
         SELECT CASE k % 5 WHEN 0 THEN 'U-' || u WHEN 1 THEN 'ü' || u WHEN 2 THEN 'a b' || u
                           WHEN 3 THEN 'u' || u ELSE u::text END,
                CASE WHEN k % 4 = 0 THEN 'view' ELSE 'purchase' END,
                timestamptz '2026-03-01 00:00+00' + (hashtext(k::text || 't') & 2147483647) % (30 * 86400) * interval '1 second',
                CASE WHEN k % 7 = 0 THEN '{{\"amount\": \"n/a\"}}'::jsonb
                     ELSE jsonb_build_object('amount', (hashtext(k::text || 'a') & 1023) / 4.0) END
           FROM (SELECT k, 1 + (hashtext(k::text) & 2147483647) % {ids} AS u
                   FROM generate_series(1, {events}) k) s;
         SELECT amba_set_override('scale', user_id, 'control') FROM ids WHERE g % 1500 = 7;
         -- A dimension, as amba_assign stores it: three tiers, some users without one.
         SELECT amba_update_experiment('scale', dimensions => ARRAY['tier']);
         INSERT INTO amba.assignment_dimensions (experiment_id, user_id, dimension_values)
         SELECT a.experiment_id, a.user_id,
                CASE WHEN hashtext(a.user_id || 'd') % 11 = 0 THEN '{{}}'::jsonb
                     ELSE jsonb_build_object('tier', (ARRAY['gold', 'silver', 'bronze'])[1 + (hashtext(a.user_id || 't') & 3) % 3]) END
           FROM amba.assignments a;",
        users = USERS,
        half = USERS / 2,
        ids = USERS * 6 / 5,
        events = USERS * 4,
    ))
    .unwrap();
    for table in [
        "assignments",
        "exposures",
        "events",
        "assignment_dimensions",
    ] {
        c.batch_execute(&format!("VACUUM ANALYZE amba.{table}"))
            .unwrap();
    }
    c.query_one("SELECT id FROM amba.experiments WHERE key = 'scale'", &[])
        .unwrap()
        .get(0)
}

/// One counted user, from the raw rows (microseconds since the epoch).
struct User {
    variant: String,
    /// The `tier` stored with the assignment (None: the user has none).
    tier: Option<String>,
    assigned_us: i64,
    exposed_us: Option<i64>,
    /// purchases: (time, amount when it is a JSON number)
    purchases: Vec<(i64, Option<f64>)>,
}

fn raw_users(c: &mut Client, experiment_id: i64) -> Vec<User> {
    let us = "(extract(epoch FROM {}) * 1000000)::bigint";
    let t = |col: &str| us.replace("{}", col);
    let overridden: std::collections::HashSet<String> = c
        .query(
            "SELECT user_id FROM amba.overrides WHERE experiment_id = $1",
            &[&experiment_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(overridden.len(), 40);
    let mut exposed: HashMap<String, i64> = HashMap::new();
    for r in c
        .query(
            &format!(
                "SELECT user_id, {} FROM amba.exposures WHERE experiment_id = $1",
                t("exposed_at")
            ),
            &[&experiment_id],
        )
        .unwrap()
    {
        exposed.insert(r.get(0), r.get(1));
    }
    let mut purchases: HashMap<String, Vec<(i64, Option<f64>)>> = HashMap::new();
    for r in c
        .query(
            &format!(
                "SELECT user_id, {}, CASE jsonb_typeof(properties -> 'amount') WHEN 'number' THEN (properties ->> 'amount')::float8 END \
                 FROM amba.events WHERE event = 'purchase'",
                t("occurred_at")
            ),
            &[],
        )
        .unwrap()
    {
        purchases.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    let mut tiers: HashMap<String, Option<String>> = HashMap::new();
    for r in c
        .query(
            "SELECT user_id, dimension_values ->> 'tier' FROM amba.assignment_dimensions WHERE experiment_id = $1",
            &[&experiment_id],
        )
        .unwrap()
    {
        tiers.insert(r.get(0), r.get(1));
    }
    c.query(
        &format!(
            "SELECT user_id, variant, {} FROM amba.assignments WHERE experiment_id = $1",
            t("assigned_at")
        ),
        &[&experiment_id],
    )
    .unwrap()
    .iter()
    .filter(|r| !overridden.contains(&r.get::<_, String>(0)))
    .map(|r| {
        let user: String = r.get(0);
        User {
            variant: r.get(1),
            tier: tiers.remove(&user).flatten(),
            assigned_us: r.get(2),
            exposed_us: exposed.get(&user).copied(),
            purchases: purchases.remove(&user).unwrap_or_default(),
        }
    })
    .collect()
}

/// amba_results' counts: variant → (assigned, exposed, converted).
fn reference_counts(users: &[User]) -> BTreeMap<String, (i64, i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for u in users {
        let e = out.entry(u.variant.clone()).or_default();
        e.0 += 1;
        if u.exposed_us.is_some() {
            e.1 += 1;
            if u.purchases
                .iter()
                .map(|p| p.0)
                .max()
                .is_some_and(|last| last >= u.assigned_us)
            {
                e.2 += 1;
            }
        }
    }
    out
}

/// amba_results_by's counts for `tier`: (tier, variant) → (assigned, exposed, converted).
fn reference_counts_by_tier(users: &[User]) -> BTreeMap<(Option<String>, String), (i64, i64, i64)> {
    let mut out: BTreeMap<(Option<String>, String), (i64, i64, i64)> = BTreeMap::new();
    for u in users {
        let one = std::slice::from_ref(u);
        let (_, c) = reference_counts(one).into_iter().next().expect("one user");
        let e = out.entry((u.tier.clone(), u.variant.clone())).or_default();
        e.0 += c.0;
        e.1 += c.1;
        e.2 += c.2;
    }
    out
}

/// Y per exposed user (sum of numeric amounts at or after assignment), by variant.
fn reference_ys(users: &[User]) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for u in users.iter().filter(|u| u.exposed_us.is_some()) {
        let y = u
            .purchases
            .iter()
            .filter(|p| p.0 >= u.assigned_us)
            .filter_map(|p| p.1)
            .sum();
        out.entry(u.variant.clone()).or_default().push(y);
    }
    out
}

/// percentile_cont(q) of every value.
fn percentile_cont(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

/// variant → (n, mean, sample standard deviation) of the Ys capped at `cap`.
fn reference_means(
    ys: &BTreeMap<String, Vec<f64>>,
    cap: Option<f64>,
) -> BTreeMap<String, (i64, f64, f64)> {
    ys.iter()
        .map(|(variant, values)| {
            let capped: Vec<f64> = values
                .iter()
                .map(|y| cap.map_or(*y, |c| y.min(c)))
                .collect();
            let n = capped.len() as f64;
            let mean = capped.iter().sum::<f64>() / n;
            let var = capped.iter().map(|y| (y - mean) * (y - mean)).sum::<f64>() / (n - 1.0);
            (variant.clone(), (capped.len() as i64, mean, var.sqrt()))
        })
        .collect()
}

/// amba_results_daily's counts: (day as days since 1970-01-01, variant) → (exposed, converted),
/// cumulative: exposed by the end of the day, and converted (a purchase at or after
/// assignment) by then too.
fn reference_daily(users: &[User], days: &[i64]) -> BTreeMap<(i64, String), (i64, i64)> {
    let mut out = BTreeMap::new();
    for &day in days {
        let end = (day + 1) * DAY_US;
        for u in users {
            let e: &mut (i64, i64) = out.entry((day, u.variant.clone())).or_default();
            let Some(exposed) = u.exposed_us.filter(|x| *x < end) else {
                continue;
            };
            e.0 += 1;
            let _ = exposed;
            if u.purchases
                .iter()
                .any(|p| p.0 >= u.assigned_us && p.0 < end)
            {
                e.1 += 1;
            }
        }
    }
    out
}

/// amba_quantile_results' counts and quantile for `q` from the raw rows: variant →
/// (exposed users, values, PostgreSQL's percentile_disc(q) of the values: the value at
/// position max(1, ⌈q·n⌉) in ascending order).
fn reference_quantiles(users: &[User], q: f64) -> BTreeMap<String, (i64, i64, Option<f64>)> {
    let mut values: BTreeMap<String, (i64, Vec<f64>)> = BTreeMap::new();
    for u in users.iter().filter(|u| u.exposed_us.is_some()) {
        let e = values.entry(u.variant.clone()).or_default();
        e.0 += 1;
        e.1.extend(
            u.purchases
                .iter()
                .filter(|p| p.0 >= u.assigned_us)
                .filter_map(|p| p.1),
        );
    }
    values
        .into_iter()
        .map(|(variant, (exposed, mut v))| {
            v.sort_by(f64::total_cmp);
            let k = ((q * v.len() as f64).ceil() as usize).max(1);
            (variant, (exposed, v.len() as i64, v.get(k - 1).copied()))
        })
        .collect()
}

/// amba_ratio_results' sums for amount per purchase from the raw rows: variant →
/// (exposed users, Σ amount, Σ purchases), each at or after the user's assignment.
fn reference_ratio_sums(users: &[User]) -> BTreeMap<String, (i64, f64, f64)> {
    let mut out: BTreeMap<String, (i64, f64, f64)> = BTreeMap::new();
    for u in users.iter().filter(|u| u.exposed_us.is_some()) {
        let e = out.entry(u.variant.clone()).or_default();
        e.0 += 1;
        for p in u.purchases.iter().filter(|p| p.0 >= u.assigned_us) {
            e.1 += p.1.unwrap_or(0.0);
            e.2 += 1.0;
        }
    }
    out
}

fn close(want: f64, got: f64) -> bool {
    (want - got).abs() <= 1e-9 * want.abs().max(1.0)
}

/// A connection that collects auto_explain's plans of the statements amba runs inside.
fn explaining_client(db: &str) -> (Client, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel::<String>();
    let mut config: postgres::Config = database_url().parse().unwrap();
    config.dbname(db);
    let mut c = config
        .notice_callback(move |n| {
            let _ = tx.send(n.message().to_string());
        })
        .connect(NoTls)
        .unwrap();
    c.batch_execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; \
         SET auto_explain.log_level = notice",
    )
    .unwrap();
    (c, rx)
}

/// `amba_results('scale', 'purchase')`: variant → (assigned, exposed, converted).
fn results_counts(c: &mut Client) -> BTreeMap<String, (i64, i64, i64)> {
    c.query("SELECT variant, assigned_count, exposed_count, converted_count FROM amba_results('scale', 'purchase')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

#[test]
fn sliced_results_equal_a_reference_computed_from_the_raw_rows() {
    let db = Db::with_amba("amba_scale");
    let mut c = db.client();
    let id = load(&mut c);
    let users = raw_users(&mut c, id);
    let counts = reference_counts(&users);
    let by_tier = reference_counts_by_tier(&users);
    assert_eq!(
        by_tier.len(),
        8,
        "three tiers and no tier, two variants: {by_tier:?}"
    );
    let ys = reference_ys(&users);
    let all_ys: Vec<f64> = ys.values().flatten().copied().collect();
    let p90 = percentile_cont(&all_ys, 0.9);
    let means = [
        ("NULL::float8, NULL::float8", reference_means(&ys, None)),
        (
            "200::float8, NULL::float8",
            reference_means(&ys, Some(200.0)),
        ),
        ("NULL::float8, 0.9::float8", reference_means(&ys, Some(p90))),
    ];
    let (first_day, last_day): (i32, i32) = {
        let r = c.query_one("SELECT min(day - date '1970-01-01'), max(day - date '1970-01-01') FROM amba_results_daily('scale', 'purchase')", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    let days: Vec<i64> = (first_day as i64..=last_day as i64).collect();
    assert!(days.len() > 20, "{days:?}");
    let daily = reference_daily(&users, &days);
    // The reference itself is not trivial: both variants, every kind of user.
    assert!(
        counts
            .values()
            .all(|c| c.0 > 10_000 && c.1 > 5_000 && c.2 > 1_000 && c.2 < c.1),
        "{counts:?}"
    );

    let quantiles: BTreeMap<String, BTreeMap<String, (i64, i64, Option<f64>)>> = [0.5, 0.9, 0.99]
        .iter()
        .map(|q| (q.to_string(), reference_quantiles(&users, *q)))
        .collect();
    let ratio_sums = reference_ratio_sums(&users);
    let mut quantile_tests: BTreeMap<String, Vec<(Option<f64>, Option<f64>, Option<f64>)>> =
        BTreeMap::new();
    let mut ratio_p: Option<Option<f64>> = None;

    let (mut ex, notices) = explaining_client(&db.0);
    for workers in [0, 2, 3, 5] {
        ex.batch_execute(&format!("SET max_parallel_workers_per_gather = {workers}"))
            .unwrap();
        let _: Vec<String> = notices.try_iter().collect();

        assert_eq!(
            results_counts(&mut ex),
            counts,
            "amba_results with {workers} workers"
        );
        let got_by: BTreeMap<(Option<String>, String), (i64, i64, i64)> = ex
            .query("SELECT dimension_value, variant, assigned_count, exposed_count, converted_count FROM amba_results_by('scale', 'purchase', 'tier')", &[])
            .unwrap()
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
            .collect();
        assert_eq!(got_by, by_tier, "amba_results_by with {workers} workers");
        let plans: Vec<String> = notices.try_iter().collect();
        let counting = plans
            .iter()
            .find(|p| p.contains("FROM amba.events e"))
            .expect("the counting statement's plan");
        let slices = counting.matches(" on events e").count();
        if workers >= 2 {
            assert!(counting.contains("Parallel Append"), "{counting}");
            assert_eq!(slices, workers, "one slice per worker: {counting}");
        } else {
            assert!(!counting.contains("Parallel"), "{counting}");
            assert_eq!(slices, 1, "{counting}");
        }

        for (caps, want) in &means {
            let got: BTreeMap<String, (i64, f64, f64)> = ex
                .query(
                    &format!("SELECT variant, exposed_count, mean, stddev FROM amba_metric_results('scale', 'purchase', 'amount', 0.05, {caps})"),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            for (variant, w) in want {
                let g = got[variant];
                assert!(
                    g.0 == w.0 && close(w.1, g.1) && close(w.2, g.2),
                    "metric ({caps}), {workers} workers, {variant}: want {w:?}, got {g:?}"
                );
            }
        }
        let plans: Vec<String> = notices.try_iter().collect();
        let appends = plans
            .iter()
            .filter(|p| p.contains("amba.events") && p.contains("Parallel Append"))
            .count();
        // the uncapped and absolutely capped calls are sliced; a percentile over all users is not
        assert_eq!(appends, if workers >= 2 { 2 } else { 0 }, "{plans:?}");

        // Quantile and ratio metrics (SPEC §13), sliced too: the counts, the quantile and
        // the sums equal the raw rows' at every number of slices, and so does each test's
        // answer (one slice's answer is the reference for the rest).
        for q in [0.5, 0.9, 0.99] {
            let rows = ex
                .query(
                    "SELECT variant, exposed_count, event_count, quantile_value, delta, p_value, lift_ci_low \
                     FROM amba_quantile_results('scale', 'purchase', 'amount', $1)",
                    &[&q],
                )
                .unwrap();
            let got: BTreeMap<String, (i64, i64, Option<f64>)> = rows
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect();
            assert_eq!(
                got,
                quantiles[&q.to_string()],
                "quantile {q}, {workers} workers"
            );
            let tests: Vec<(Option<f64>, Option<f64>, Option<f64>)> = rows
                .iter()
                .map(|r| (r.get(4), r.get(5), r.get(6)))
                .collect();
            assert!(
                tests[1].1.is_some(),
                "the comparison has an answer: {tests:?}"
            );
            let first = quantile_tests
                .entry(q.to_string())
                .or_insert_with(|| tests.clone());
            assert_eq!(*first, tests, "quantile {q} tests, {workers} workers");
        }
        let rows = ex
            .query(
                "SELECT variant, exposed_count, numerator_sum, denominator_sum, p_value \
                 FROM amba_ratio_results('scale', 'purchase', 'amount', 'purchase', NULL)",
                &[],
            )
            .unwrap();
        for r in &rows {
            let variant: String = r.get(0);
            let want = ratio_sums[&variant];
            let got: (i64, f64, f64) = (r.get(1), r.get(2), r.get(3));
            assert!(
                got.0 == want.0 && close(want.1, got.1) && close(want.2, got.2),
                "ratio, {workers} workers, {variant}: want {want:?}, got {got:?}"
            );
        }
        let p: Option<f64> = rows[1].get(4);
        let first_p = *ratio_p.get_or_insert(p);
        assert!(
            first_p.zip(p).is_some_and(|(a, b)| close(a, b)),
            "ratio p-value, {workers} workers: {first_p:?} then {p:?}"
        );
        let plans: Vec<String> = notices.try_iter().collect();
        let sliced = plans
            .iter()
            .filter(|p| p.contains("amba.events") && p.contains("Parallel Append"))
            .count();
        assert_eq!(
            sliced,
            if workers >= 2 { 4 } else { 0 },
            "three quantiles and a ratio: {plans:?}"
        );

        let got: BTreeMap<(i64, String), (i64, i64)> = ex
            .query(
                "SELECT (day - date '1970-01-01')::int8, variant, exposed_count, converted_count FROM amba_results_daily('scale', 'purchase')",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        assert_eq!(got, daily, "amba_results_daily with {workers} workers");
        let plans: Vec<String> = notices.try_iter().collect();
        assert_eq!(
            plans.iter().any(|p| p.contains("Parallel Append")),
            workers >= 2,
            "{plans:?}"
        );
    }

    // A DBA's inheritance child (archiving old rows) gives each column a second row of
    // statistics (pg_stats.inherited): the slices are still cut from them, and the results
    // are the same (the child is empty).
    c.batch_execute(
        "CREATE TABLE amba.events_archive () INHERITS (amba.events); \
         CREATE TABLE amba.assignments_archive () INHERITS (amba.assignments); \
         ANALYZE amba.events; ANALYZE amba.assignments",
    )
    .unwrap();
    let inherited: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'amba' AND inherited \
               AND attname = 'user_id' AND tablename IN ('events', 'assignments')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        inherited, 2,
        "both tables have statistics over their children"
    );
    ex.batch_execute("SET max_parallel_workers_per_gather = 2")
        .unwrap();
    let _: Vec<String> = notices.try_iter().collect();
    assert_eq!(
        results_counts(&mut ex),
        counts,
        "amba_results with inheritance children"
    );
    let got: BTreeMap<String, (i64, i64, Option<f64>)> = ex
        .query(
            "SELECT variant, exposed_count, event_count, quantile_value \
             FROM amba_quantile_results('scale', 'purchase', 'amount', 0.9)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(
        got, quantiles["0.9"],
        "quantile 0.9 with inheritance children"
    );
    let plans: Vec<String> = notices.try_iter().collect();
    assert_eq!(
        plans
            .iter()
            .filter(|p| p.contains("amba.events") && p.contains("Parallel Append"))
            .count(),
        2,
        "both still sliced: {plans:?}"
    );
    c.batch_execute("DROP TABLE amba.events_archive, amba.assignments_archive")
        .unwrap();
}
