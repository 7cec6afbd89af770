//! Mean metrics (CONTRACT 3c) and the always-valid lift interval (3e) against reference
//! values from gbstats 0.8.0, scipy, statsmodels and mpmath. The fixture is committed;
//! regenerate it with
//!
//! ```text
//! python3 scripts/fixtures/metric_reference.py   # gbstats, scipy, statsmodels, numpy, mpmath
//! ```
//!
//! Tolerances (never loosened to make a case pass):
//! - means, standard deviations, deltas, lifts, θ, p-values: 1e-9 relative; interval bounds
//!   and the confidence sequence 1e-8 relative; a reference of exactly 0 must be 0;
//! - probabilities whose reference underflowed (below f64::MIN_POSITIVE) must be below
//!   1e-300: the only absolute floor;
//! - NULLs exactly; percentile_cont 1e-9 relative; the Student t tail and quantile 1e-11
//!   relative (tighter than the columns need: they feed every p-value and interval).
//!
//! Every test collects all failing cases and reports them together, each with its inputs.

use amba_core::metric::{
    analyze_means, percentile_cont, t_two_sided_p_value, t_upper_quantile, MeanArm, MetricRow,
};
use amba_core::stats::lift_confidence_sequence;
use serde_json::Value;

const METRIC_REFERENCE: &str = include_str!("fixtures/metric_reference.json");

const REL: f64 = 1e-9;
const REL_INTERVAL: f64 = 1e-8;
const REL_T_TAIL: f64 = 1e-11;
const UNDERFLOW_FLOOR: f64 = 1e-300;

fn doc() -> Value {
    serde_json::from_str(METRIC_REFERENCE).expect("fixture is valid JSON")
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
}

fn mean_arm(v: &Value) -> MeanArm {
    MeanArm {
        n: f(&v["n"]),
        sum: f(&v["sum"]),
        sum_sq: f(&v["sum_sq"]),
        x_sum: f(&v["x_sum"]),
        x_sum_sq: f(&v["x_sum_sq"]),
        xy_sum: f(&v["xy_sum"]),
    }
}

fn row_checks(got: &MetricRow, r: &Value) -> Vec<Option<String>> {
    let e = |k: &str| opt_f64(&r[k]);
    vec![
        mismatch("mean", got.mean, e("mean"), Kind::Value(REL)),
        mismatch("stddev", got.stddev, e("stddev"), Kind::Value(REL)),
        mismatch("delta", got.delta, e("delta"), Kind::Value(REL)),
        mismatch(
            "delta_ci_low",
            got.delta_ci_low,
            e("delta_ci_low"),
            Kind::Value(REL_INTERVAL),
        ),
        mismatch(
            "delta_ci_high",
            got.delta_ci_high,
            e("delta_ci_high"),
            Kind::Value(REL_INTERVAL),
        ),
        mismatch("p_value", got.p_value, e("p_value"), Kind::Probability(REL)),
        mismatch(
            "p_value_holm",
            got.p_value_holm,
            e("p_value_holm"),
            Kind::Probability(REL),
        ),
        mismatch("lift", got.lift, e("lift"), Kind::Value(REL)),
        mismatch(
            "lift_ci_low",
            got.lift_ci_low,
            e("lift_ci_low"),
            Kind::Value(REL_INTERVAL),
        ),
        mismatch(
            "lift_ci_high",
            got.lift_ci_high,
            e("lift_ci_high"),
            Kind::Value(REL_INTERVAL),
        ),
        mismatch(
            "cuped_theta",
            got.cuped_theta,
            e("cuped_theta"),
            Kind::Value(REL),
        ),
    ]
}

#[test]
fn section_3c_matches_gbstats() {
    let doc = doc();
    let cases = doc["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut fields = 0;
    for c in cases {
        let alpha = f(&c["alpha"]);
        let cuped = c["cuped"].as_bool().unwrap();
        let arms: Vec<MeanArm> = c["arms"].as_array().unwrap().iter().map(mean_arm).collect();
        let label = format!(
            "{:?} (alpha {alpha}, cuped {cuped}, arms {arms:?})",
            c["name"].as_str().unwrap()
        );
        let got = analyze_means(&arms, alpha, cuped);
        let rows = c["rows"].as_array().unwrap();
        if got.len() != rows.len() {
            failures.push(format!(
                "{label}: {} rows, expected {}",
                got.len(),
                rows.len()
            ));
            continue;
        }
        for (i, (row, r)) in got.iter().zip(rows).enumerate() {
            let checks = row_checks(row, r);
            fields += checks.len();
            for problem in checks.into_iter().flatten() {
                failures.push(format!(
                    "{label}, variant {i} [{}]: {problem}",
                    r["source"].as_str().unwrap_or("")
                ));
            }
        }
    }
    report(
        &format!("fields of {} cases", cases.len()),
        fields,
        &failures,
    );
}

#[test]
fn percentile_caps_match_postgres_percentile_cont() {
    let doc = doc();
    let mut failures = Vec::new();
    let mut checked = 0;
    for p in doc["percentiles"].as_array().unwrap() {
        let mut values: Vec<f64> = p["values"].as_array().unwrap().iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        let q = f(&p["q"]);
        checked += 1;
        if let Some(problem) = mismatch(
            "percentile_cont",
            percentile_cont(&values, q),
            opt_f64(&p["expected"]),
            Kind::Value(REL),
        ) {
            failures.push(format!(
                "q {q} over {} values starting {:?}: {problem}",
                values.len(),
                &values[..values.len().min(5)]
            ));
        }
    }
    // The caps of the percentile-capped cases, from the users' values before capping.
    for c in doc["cases"].as_array().unwrap() {
        let cap = &c["cap"];
        if cap["kind"].as_str() != Some("percentile") {
            continue;
        }
        let mut values: Vec<f64> = cap["values"].as_array().unwrap().iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        let q = f(&cap["q"]);
        checked += 1;
        if let Some(problem) = mismatch(
            "cap",
            percentile_cont(&values, q),
            opt_f64(&cap["value"]),
            Kind::Value(REL),
        ) {
            failures.push(format!(
                "{:?} (q {q}, {} users): {problem}",
                c["name"].as_str().unwrap(),
                values.len()
            ));
        }
    }
    report("percentiles", checked, &failures);
}

#[test]
fn confidence_sequences_match_gbstats() {
    let doc = doc();
    let sequences = doc["sequences"].as_array().unwrap();
    let mut failures = Vec::new();
    for s in sequences {
        let (n, lift, var, alpha) = (
            f(&s["total_n"]),
            f(&s["lift"]),
            f(&s["var"]),
            f(&s["alpha"]),
        );
        let label = format!(
            "{:?} (N {n}, lift {lift:e}, var {var:e}, alpha {alpha})",
            s["name"].as_str().unwrap()
        );
        let got = lift_confidence_sequence(n, lift, var, alpha);
        for problem in [
            mismatch(
                "ci_low",
                got.map(|g| g.0),
                opt_f64(&s["ci_low"]),
                Kind::Value(REL_INTERVAL),
            ),
            mismatch(
                "ci_high",
                got.map(|g| g.1),
                opt_f64(&s["ci_high"]),
                Kind::Value(REL_INTERVAL),
            ),
        ]
        .into_iter()
        .flatten()
        {
            failures.push(format!("{label}: {problem}"));
        }
    }
    report("confidence sequences", sequences.len(), &failures);
}

#[test]
fn student_t_tail_matches_mpmath() {
    let doc = doc();
    let tails = doc["t_tails"].as_array().unwrap();
    let mut failures = Vec::new();
    for t in tails {
        let (x, dof) = (f(&t["t"]), f(&t["dof"]));
        for sign in [1.0, -1.0] {
            if let Some(problem) = mismatch(
                "p",
                t_two_sided_p_value(sign * x, dof),
                opt_f64(&t["p"]),
                Kind::Probability(REL_T_TAIL),
            ) {
                failures.push(format!("t {}, dof {dof}: {problem}", sign * x));
            }
        }
    }
    report("Student t tails", tails.len() * 2, &failures);
}

#[test]
fn student_t_quantile_matches_mpmath() {
    let doc = doc();
    let quantiles = doc["t_quantiles"].as_array().unwrap();
    let mut failures = Vec::new();
    for q in quantiles {
        let (p, dof) = (f(&q["p"]), f(&q["dof"]));
        if let Some(problem) = mismatch(
            "t",
            t_upper_quantile(p, dof),
            opt_f64(&q["t"]),
            Kind::Value(REL_T_TAIL),
        ) {
            failures.push(format!(
                "T^-1(1 - {p:e}; {dof}): {problem} (scipy t.isf {})",
                q["scipy_isf"]
            ));
        }
    }
    report("Student t quantiles", quantiles.len(), &failures);
}

#[test]
fn confidence_sequence_null_cases() {
    assert!(lift_confidence_sequence(0.0, 0.1, 0.01, 0.05).is_none());
    assert!(lift_confidence_sequence(100.0, 0.1, 0.0, 0.05).is_none());
    assert!(lift_confidence_sequence(100.0, 0.1, -1.0, 0.05).is_none());
    assert!(lift_confidence_sequence(100.0, f64::NAN, 0.01, 0.05).is_none());
    assert!(lift_confidence_sequence(100.0, 0.1, 0.01, 0.0).is_none());
    assert!(lift_confidence_sequence(100.0, 0.1, 0.01, 1.0).is_none());
    assert!(lift_confidence_sequence(f64::INFINITY, 0.1, 0.01, 0.05).is_none());
    let (lo, hi) = lift_confidence_sequence(2000.0, 0.5, 0.0259, 0.05).unwrap();
    assert!(lo < 0.5 && 0.5 < hi && ((0.5 - lo) - (hi - 0.5)).abs() < 1e-12);
}

#[test]
fn fixtures_cover_what_the_brief_asks() {
    let doc = doc();
    let cases = doc["cases"].as_array().unwrap();
    let sizes: std::collections::BTreeSet<usize> = cases
        .iter()
        .map(|c| c["arms"].as_array().unwrap().len())
        .collect();
    for k in [2, 3, 4] {
        assert!(sizes.contains(&k), "no case with {k} variants");
    }
    for alpha in [0.05, 0.01, 0.2] {
        assert!(
            cases.iter().any(|c| c["alpha"].as_f64() == Some(alpha)),
            "no case at alpha {alpha}"
        );
    }
    let kinds: Vec<&str> = cases
        .iter()
        .filter_map(|c| c["cap"]["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"absolute") && kinds.contains(&"percentile"),
        "capping not covered"
    );
    let rows = || {
        cases
            .iter()
            .flat_map(|c| c["rows"].as_array().unwrap().iter().skip(1))
    };
    assert!(
        rows().any(|r| r["cuped_theta"].as_f64() == Some(0.0)),
        "no CUPED case with theta 0"
    );
    assert!(
        rows().any(|r| r["cuped_theta"].as_f64().is_some_and(|t| t != 0.0)),
        "no CUPED case with theta != 0"
    );
    assert!(
        rows().any(|r| r["lift"].is_null() && !r["delta"].is_null()),
        "no control-mean-0 case"
    );
    assert!(
        cases.iter().any(|c| c["arms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["n"].as_f64() == Some(1.0))),
        "no n = 1 arm"
    );
    assert!(
        cases.iter().any(|c| c["arms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["n"].as_f64() == Some(2.0))),
        "no n = 2 arm"
    );
    assert!(
        rows().any(|r| r["p_value"].as_f64().is_some_and(|p| p < 1e-100)),
        "no deep-tail p-value"
    );
    assert!(doc["sequences"].as_array().unwrap().len() >= 20);
    assert!(doc["t_quantiles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["p"].as_f64() == Some(1e-300)));
    assert_eq!(doc["generator"]["gbstats"].as_str(), Some("0.8.0"));
}
