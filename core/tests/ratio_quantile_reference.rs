//! Ratio and quantile metrics (CONTRACT §13) against gbstats 0.8.0 (`TwoSidedTTest` with
//! `RatioStatistic` / `QuantileClusteredStatistic`), scipy and statsmodels. The fixture is
//! committed; regenerate it with
//!
//! ```text
//! python3 scripts/fixtures/ratio_quantile_reference.py   # gbstats, scipy, statsmodels, numpy
//! ```
//!
//! Every case carries the raw per-user rows and the sufficient statistics the generator
//! computed from them in Python: the Rust statistics are recomputed from the rows and must
//! equal Python's (counts exactly, sums and quantiles to 1e-12 relative: serde_json's
//! default float parsing, without its `float_roundtrip` feature, can read a decimal 1 ulp
//! off, and a sum of such values then differs in its last bits); the test results are
//! computed from the recorded statistics.
//!
//! Tolerances (never loosened to make a case pass): estimates, variances, p-values and
//! lifts 1e-9 relative, interval bounds 1e-8 relative; a reference of exactly 0 must be 0;
//! a p-value whose reference underflowed must be below 1e-300; NULLs exactly.
//!
//! Every test collects all failing cases and reports them together.

use amba_core::quantile::{analyze_quantile, QuantileStats};
use amba_core::ratio::{analyze_ratio, Comparison, RatioStats, TTestStatistic};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/ratio_quantile_reference.json");

const REL: f64 = 1e-9;
const REL_INTERVAL: f64 = 1e-8;
const UNDERFLOW_FLOOR: f64 = 1e-300;

fn doc() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is valid JSON")
}

fn opt_f64(v: &Value) -> Option<f64> {
    if v.is_null() {
        None
    } else {
        Some(v.as_f64().expect("a number or null"))
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

fn relative_error(actual: f64, expected: f64) -> f64 {
    if actual == expected {
        0.0
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Relative tolerance; a reference of exactly 0 must be matched exactly.
    Value(f64),
    /// A probability: relative tolerance, or below 1e-300 where the reference underflowed.
    Probability(f64),
}

/// `None` when `actual` matches `expected` (including both NULL), else a description.
fn mismatch(field: &str, actual: Option<f64>, expected: Option<f64>, kind: Kind) -> Option<String> {
    match (actual, expected) {
        (None, None) => None,
        (Some(a), None) => Some(format!("{field}: got {a:e}, expected NULL")),
        (None, Some(e)) => Some(format!("{field}: got NULL, expected {e:e}")),
        (Some(a), Some(e)) => {
            if !a.is_finite() {
                return Some(format!("{field}: got non-finite {a}, expected {e:e}"));
            }
            let ok = match kind {
                Kind::Value(tol) => {
                    if e == 0.0 {
                        a == 0.0
                    } else {
                        relative_error(a, e) <= tol
                    }
                }
                Kind::Probability(tol) => {
                    if e.abs() < f64::MIN_POSITIVE {
                        a.abs() < UNDERFLOW_FLOOR
                    } else {
                        relative_error(a, e) <= tol
                    }
                }
            };
            (!ok).then(|| {
                format!(
                    "{field}: got {a:e}, expected {e:e} (relative error {:.3e})",
                    relative_error(a, e)
                )
            })
        }
    }
}

fn report(what: &str, checked: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {checked} {what} disagree with the reference:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} {what} agree with the reference");
}

fn comparison_checks(got: &Comparison, r: &Value) -> Vec<Option<String>> {
    let e = |k: &str| opt_f64(&r[k]);
    let v = Kind::Value(REL);
    let ci = Kind::Value(REL_INTERVAL);
    let p = Kind::Probability(REL);
    vec![
        mismatch("delta", got.delta, e("delta"), v),
        mismatch("delta_ci_low", got.delta_ci_low, e("delta_ci_low"), ci),
        mismatch("delta_ci_high", got.delta_ci_high, e("delta_ci_high"), ci),
        mismatch("p_value", got.p_value, e("p_value"), p),
        mismatch("p_value_holm", got.p_value_holm, e("p_value_holm"), p),
        mismatch("lift", got.lift, e("lift"), v),
        mismatch("lift_ci_low", got.lift_ci_low, e("lift_ci_low"), ci),
        mismatch("lift_ci_high", got.lift_ci_high, e("lift_ci_high"), ci),
    ]
}

fn ratio_stats(s: &Value) -> RatioStats {
    RatioStats {
        n: f(&s["n"]),
        m_sum: f(&s["m_sum"]),
        d_sum: f(&s["d_sum"]),
        m_sum_sq: f(&s["m_sum_sq"]),
        d_sum_sq: f(&s["d_sum_sq"]),
        md_sum: f(&s["md_sum"]),
    }
}

fn quantile_stats(s: &Value) -> QuantileStats {
    QuantileStats {
        n: f(&s["n"]),
        n_star: f(&s["n_star"]),
        nu: f(&s["nu"]),
        quantile_hat: f(&s["quantile_hat"]),
        quantile_lower: f(&s["quantile_lower"]),
        quantile_upper: f(&s["quantile_upper"]),
        main_sum: f(&s["main_sum"]),
        main_sum_squares: f(&s["main_sum_squares"]),
        denominator_sum: f(&s["denominator_sum"]),
        denominator_sum_squares: f(&s["denominator_sum_squares"]),
        main_denominator_sum_product: f(&s["main_denominator_sum_product"]),
        n_clusters: f(&s["n_clusters"]),
    }
}

/// Relative tolerance of statistics recomputed from the rows (see the module comment).
const REL_PARSED: f64 = 1e-12;

/// The fields of two statistics that differ by more than [`REL_PARSED`] (exactly, when
/// the expected value is a whole number: counts and sums of counts).
fn field_differences(names: &[&str], got: &[f64], want: &[f64]) -> Vec<String> {
    names
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (&g, &w))| {
            if w.fract() == 0.0 {
                g != w
            } else {
                relative_error(g, w) > REL_PARSED
            }
        })
        .map(|(name, (g, w))| format!("{name}: got {g:e}, expected {w:e}"))
        .collect()
}

fn ratio_fields(s: &RatioStats) -> Vec<f64> {
    vec![s.n, s.m_sum, s.d_sum, s.m_sum_sq, s.d_sum_sq, s.md_sum]
}

fn quantile_fields(s: &QuantileStats) -> Vec<f64> {
    vec![
        s.n,
        s.n_star,
        s.nu,
        s.quantile_hat,
        s.quantile_lower,
        s.quantile_upper,
        s.main_sum,
        s.main_sum_squares,
        s.denominator_sum,
        s.denominator_sum_squares,
        s.main_denominator_sum_product,
        s.n_clusters,
    ]
}

fn cases<'a>(doc: &'a Value, key: &str) -> &'a Vec<Value> {
    doc[key].as_array().expect("a list of cases")
}

fn arms(case: &Value) -> &Vec<Value> {
    case["arms"].as_array().expect("arms")
}

fn label(case: &Value) -> String {
    format!(
        "{:?} (alpha {})",
        case["name"].as_str().unwrap_or("?"),
        case["alpha"]
    )
}

#[test]
fn ratio_sums_from_the_rows_equal_pythons() {
    let doc = doc();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases(&doc, "ratio_cases") {
        for (i, arm) in arms(case).iter().enumerate() {
            let users: Vec<(f64, f64)> = arm["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| (f(&u[0]), f(&u[1])))
                .collect();
            checked += 1;
            let got = RatioStats::from_users(&users);
            let want = ratio_stats(&arm["stats"]);
            let names = ["n", "m_sum", "d_sum", "m_sum_sq", "d_sum_sq", "md_sum"];
            for problem in field_differences(&names, &ratio_fields(&got), &ratio_fields(&want)) {
                failures.push(format!("{}, variant {i}: {problem}", label(case)));
            }
        }
    }
    report("ratio arms' sums", checked, &failures);
}

#[test]
fn ratio_matches_gbstats() {
    let doc = doc();
    let mut failures = Vec::new();
    let mut fields = 0;
    for case in cases(&doc, "ratio_cases") {
        let alpha = f(&case["alpha"]);
        let stats: Vec<RatioStats> = arms(case)
            .iter()
            .map(|a| ratio_stats(&a["stats"]))
            .collect();
        let rows = analyze_ratio(&stats, alpha);
        let expected = case["rows"].as_array().unwrap();
        assert_eq!(rows.len(), expected.len(), "{}", label(case));
        for (i, ((row, want), arm)) in rows.iter().zip(expected).zip(arms(case)).enumerate() {
            let mut checks = comparison_checks(&row.comparison, want);
            checks.push(mismatch(
                "ratio",
                row.ratio,
                opt_f64(&arm["ratio"]),
                Kind::Value(REL),
            ));
            checks.push(mismatch(
                "variance (gbstats RatioStatistic.variance)",
                Some(stats[i].variance()),
                opt_f64(&arm["variance"]),
                Kind::Value(REL),
            ));
            checks.push(
                (row.numerator_sum != stats[i].m_sum || row.denominator_sum != stats[i].d_sum)
                    .then(|| "numerator/denominator sums not passed through".to_string()),
            );
            fields += checks.len();
            for problem in checks.into_iter().flatten() {
                failures.push(format!(
                    "{}, variant {i} [{}]: {problem}",
                    label(case),
                    want["source"].as_str().unwrap_or("")
                ));
            }
        }
    }
    report("ratio fields", fields, &failures);
}

#[test]
fn quantile_statistics_from_the_rows_equal_pythons() {
    let doc = doc();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases(&doc, "quantile_cases") {
        let nu = f(&case["nu"]);
        for (i, arm) in arms(case).iter().enumerate() {
            let users: Vec<Vec<f64>> = arm["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_array().unwrap().iter().map(f).collect())
                .collect();
            checked += 1;
            let got = QuantileStats::from_users(&users, nu);
            let want = quantile_stats(&arm["stats"]);
            let names = [
                "n",
                "n_star",
                "nu",
                "quantile_hat",
                "quantile_lower",
                "quantile_upper",
                "main_sum",
                "main_sum_squares",
                "denominator_sum",
                "denominator_sum_squares",
                "main_denominator_sum_product",
                "n_clusters",
            ];
            let got_fields = quantile_fields(&got);
            for problem in field_differences(&names, &got_fields, &quantile_fields(&want)) {
                failures.push(format!("{}, variant {i}: {problem}", label(case)));
            }
            if mismatch(
                "quantile_value",
                got.quantile_value(),
                opt_f64(&arm["quantile_value"]),
                Kind::Value(REL_PARSED),
            )
            .is_some()
            {
                failures.push(format!(
                    "{}, variant {i}: quantile_value {:?}, expected {}",
                    label(case),
                    got.quantile_value(),
                    arm["quantile_value"]
                ));
            }
        }
    }
    report("quantile arms' statistics", checked, &failures);
}

#[test]
fn quantile_matches_gbstats() {
    let doc = doc();
    let mut failures = Vec::new();
    let mut fields = 0;
    for case in cases(&doc, "quantile_cases") {
        let alpha = f(&case["alpha"]);
        let stats: Vec<QuantileStats> = arms(case)
            .iter()
            .map(|a| quantile_stats(&a["stats"]))
            .collect();
        let rows = analyze_quantile(&stats, alpha);
        let expected = case["rows"].as_array().unwrap();
        assert_eq!(rows.len(), expected.len(), "{}", label(case));
        for (i, ((row, want), arm)) in rows.iter().zip(expected).zip(arms(case)).enumerate() {
            let s = &stats[i];
            let mut checks = comparison_checks(&row.comparison, want);
            checks.push(mismatch(
                "quantile_value",
                row.quantile_value,
                opt_f64(&arm["quantile_value"]),
                Kind::Value(0.0),
            ));
            checks.push(mismatch(
                "variance_init",
                Some(s.variance_init()),
                opt_f64(&arm["variance_init"]),
                Kind::Value(REL),
            ));
            checks.push(mismatch(
                "variance",
                Some(s.variance()),
                opt_f64(&arm["variance"]),
                Kind::Value(REL),
            ));
            let zero = arm["zero_variance"].as_bool().unwrap();
            checks.push((s.has_zero_variance() != zero).then(|| {
                format!(
                    "has_zero_variance {}, gbstats {zero}",
                    s.has_zero_variance()
                )
            }));
            checks.push((row.event_count != s.n).then(|| "event_count != n".to_string()));
            fields += checks.len();
            for problem in checks.into_iter().flatten() {
                failures.push(format!(
                    "{} nu {}, variant {i} [{}]: {problem}",
                    label(case),
                    case["nu"],
                    want["source"].as_str().unwrap_or("")
                ));
            }
        }
    }
    report("quantile fields", fields, &failures);
}

/// The fixture exercises what CONTRACT §13 and gbstats' rules make special.
#[test]
fn fixture_covers_the_edge_cases() {
    let doc = doc();
    assert_eq!(doc["generator"]["gbstats"].as_str(), Some("0.8.0"));
    let ratio = cases(&doc, "ratio_cases");
    let quantile = cases(&doc, "quantile_cases");
    let all = || ratio.iter().chain(quantile.iter());
    for alpha in [0.05, 0.1, 0.01] {
        for (kind, list) in [("ratio", ratio), ("quantile", quantile)] {
            assert!(
                list.iter().any(|c| c["alpha"].as_f64() == Some(alpha)),
                "no {kind} case at alpha {alpha}"
            );
        }
    }
    let rows = |list: &'static str| {
        let doc = doc.clone();
        move |pred: &dyn Fn(&Value, &Value, &Value) -> bool| {
            cases(&doc, list).iter().any(|c| {
                let a = arms(c);
                c["rows"].as_array().unwrap()[1..]
                    .iter()
                    .enumerate()
                    .any(|(i, r)| pred(&a[0], &a[i + 1], r))
            })
        }
    };
    let n = |a: &Value| f(&a["stats"]["n"]);
    let answered = |r: &Value| !r["delta"].is_null();
    let ratio_rows = rows("ratio_cases");
    let quantile_rows = rows("quantile_cases");
    // Ratio: ΣD = 0 (either side), control ratio 0, n = 0 and n = 1, zero variance, noise.
    assert!(ratio_rows(
        &|_, t, r| f(&t["stats"]["d_sum"]) == 0.0 && !answered(r)
    ));
    assert!(ratio_rows(
        &|c, _, r| f(&c["stats"]["d_sum"]) == 0.0 && !answered(r)
    ));
    assert!(ratio_rows(&|c, _, r| f(&c["stats"]["m_sum"]) == 0.0
        && f(&c["stats"]["d_sum"]) != 0.0
        && !answered(r)));
    assert!(ratio_rows(&|c, _, r| f(&c["stats"]["m_sum"]) == 0.0
        && f(&c["variance"]) > 0.0
        && !answered(r)));
    assert!(ratio_rows(&|_, t, r| n(t) == 0.0 && !answered(r)));
    assert!(ratio_rows(&|_, t, r| n(t) == 1.0 && !answered(r)));
    assert!(ratio_rows(&|c, _, r| n(c) == 1.0 && !answered(r)));
    assert!(ratio_rows(&|_, t, r| n(t) == 2.0 && answered(r)));
    assert!(ratio_rows(&|_, t, r| n(t) >= 2.0
        && f(&t["variance"]) == 0.0
        && !answered(r)));
    assert!(ratio_rows(&|c, _, r| f(&c["variance"]) == 0.0
        && n(c) >= 1000.0
        && !answered(r)));
    assert!(ratio_rows(&|c, _, r| f(&c["ratio"]) < 0.0 && answered(r)));
    assert!(!doc["deviations"].as_array().unwrap().is_empty());
    assert!(ratio_rows(
        &|_, t, r| f(&t["variance"]) > 0.0 && !answered(r)
    ));
    // Quantile: n = 0 (nobody exposed and exposed without events), n = 1, the size rule,
    // zero variance below and from 1000 values, the floor, n_clusters = 1, control 0.
    let q = |a: &Value, k: &str| f(&a["stats"][k]);
    assert!(quantile_rows(&|_, t, r| n(t) == 0.0
        && q(t, "n_clusters") == 0.0
        && !answered(r)));
    assert!(quantile_rows(&|_, t, r| n(t) == 0.0
        && q(t, "n_clusters") > 0.0
        && !answered(r)));
    assert!(quantile_rows(&|_, t, r| n(t) == 1.0 && !answered(r)));
    assert!(quantile_rows(&|_, t, r| f(&t["variance_init"]) > 0.0
        && n(t) > 1.0
        && !answered(r)));
    assert!(quantile_rows(&|_, t, r| f(&t["variance_init"]) == 0.0
        && n(t) < 1000.0
        && n(t) >= 100.0
        && !answered(r)));
    assert!(quantile_rows(&|_, t, r| f(&t["variance_init"]) == 0.0
        && n(t) >= 1000.0
        && answered(r)));
    assert!(quantile_rows(&|c, _, r| f(&c["variance_init"]) == 0.0
        && n(c) >= 1000.0
        && answered(r)));
    assert!(quantile_rows(&|_, t, r| {
        let vi = f(&t["variance_init"]);
        vi > 0.0 && vi < 1e-5 && n(t) >= 100.0 && f(&t["variance"]) == 1e-5 && answered(r)
    }));
    assert!(quantile_rows(&|_, t, r| {
        let vi = f(&t["variance_init"]);
        vi > 0.0 && vi < 1e-5 && n(t) < 100.0 && f(&t["variance"]) == vi && answered(r)
    }));
    assert!(quantile_rows(
        &|_, t, r| q(t, "n_clusters") == 1.0 && answered(r)
    ));
    assert!(quantile_rows(
        &|_, t, r| q(t, "n_clusters") == 1.0 && !answered(r)
    ));
    assert!(quantile_rows(
        &|c, _, r| q(c, "quantile_hat") == 0.0 && !answered(r)
    ));
    // Ties at the quantile (the bounds equal to it), many events per user, 1000+ users.
    assert!(quantile_rows(&|_, t, _| q(t, "quantile_lower")
        == q(t, "quantile_upper")
        && n(t) > 1.0));
    assert!(quantile.iter().any(|c| arms(c).iter().any(|a| a["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u.as_array().unwrap().len() >= 500))));
    for (kind, list) in [("ratio", ratio), ("quantile", quantile)] {
        assert!(
            list.iter().any(|c| arms(c)
                .iter()
                .all(|a| a["users"].as_array().unwrap().len() >= 1000)),
            "no {kind} case with 1000+ users in every variant"
        );
    }
    // Deep-tail p-values, and three or more variants (Holm).
    assert!(all().any(|c| c["rows"].as_array().unwrap()[1..]
        .iter()
        .any(|r| r["p_value"].as_f64().is_some_and(|p| p < 1e-100))));
    assert!(all().any(|c| c["rows"].as_array().unwrap()[1..]
        .iter()
        .filter(|r| answered(r))
        .count()
        >= 2));
    let total: usize = all().map(|c| arms(c).len() - 1).sum();
    eprintln!(
        "{} ratio and {} quantile cases, {total} comparisons",
        ratio.len(),
        quantile.len()
    );
}

/// Cases where gbstats has no answer, by construction (independent of the fixture).
#[test]
fn no_answer_rules() {
    use amba_core::ratio::two_sided_ttest;
    let users = |k: usize| -> Vec<Vec<f64>> {
        (0..k)
            .map(|i| vec![100.0 + (i % 17) as f64, 90.0 + (i % 23) as f64])
            .collect()
    };
    let q = |k: usize, nu: f64| QuantileStats::from_users(&users(k), nu);
    // p90 needs more than 34.6 values: 17 users (34 values) are too few, 18 (36) are not.
    assert!(q(17, 0.9).has_zero_variance());
    assert!(!q(18, 0.9).has_zero_variance());
    assert!(two_sided_ttest(&q(300, 0.9), &q(17, 0.9), 0.05).is_none());
    assert!(two_sided_ttest(&q(300, 0.9), &q(200, 0.9), 0.05).is_some());
    // The same symmetric rule for p10.
    assert!(q(17, 0.1).has_zero_variance());
    // nu outside (0, 1): no answer rather than a division by zero.
    let mut s = q(300, 0.5);
    s.nu = 1.0;
    assert!(s.has_zero_variance());
}
