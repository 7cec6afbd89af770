//! The core against reference values computed by independent Python libraries
//! (CONTRACT sections 3, 3b, 10 and 11). The fixtures are committed; regenerate them with
//!
//! ```text
//! python3 scripts/fixtures/bucket_vectors.py     # Python xxhash (C xxHash)
//! python3 scripts/fixtures/ztest_reference.py    # statsmodels, scipy, mpmath
//! python3 scripts/fixtures/gbstats_reference.py  # gbstats, statsmodels, scipy, mpmath
//! ```
//!
//! Tolerances (never loosened to make a case pass):
//! - bucketing: hash, bucket (bit for bit) and variant exactly; coverage and layer buckets
//!   (sections 10 and 11) likewise;
//! - z-test: 1e-9 relative on z and p; z = 0 exactly where the reference is 0;
//! - 3b: 1e-9 relative, interval bounds 1e-8 relative, NULLs exactly;
//! - probabilities whose reference underflowed (0 or subnormal, below f64::MIN_POSITIVE)
//!   must be below 1e-300: the only absolute floor.
//!
//! Every test collects all failing cases and reports them together, each with its inputs.

use amba_core::stats::{self, Arm};
use amba_core::{bucket, srm};
use serde_json::Value;

const BUCKET_VECTORS: &str = include_str!("fixtures/bucket_vectors.json");
const ZTEST_REFERENCE: &str = include_str!("fixtures/ztest_reference.json");
const GBSTATS_REFERENCE: &str = include_str!("fixtures/gbstats_reference.json");

const REL: f64 = 1e-9;
const REL_INTERVAL: f64 = 1e-8;
const UNDERFLOW_FLOOR: f64 = 1e-300;

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is valid JSON")
}

fn u64_of(v: &Value) -> u64 {
    v.as_str()
        .expect("a decimal string")
        .parse()
        .expect("a u64")
}

fn f64_of_bits(v: &Value) -> f64 {
    f64::from_bits(u64_of(v))
}

fn opt_f64(v: &Value) -> Option<f64> {
    if v.is_null() {
        None
    } else {
        Some(v.as_f64().expect("a number or null"))
    }
}

fn arm_of(v: &Value) -> Arm {
    Arm::new(
        v["exposed"].as_u64().unwrap(),
        v["converted"].as_u64().unwrap(),
    )
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

// ---------------------------------------------------------------------------------------
// Bucketing

#[test]
fn bucket_vectors_match_python_xxhash() {
    let doc = parse(BUCKET_VECTORS);
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 200, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for (n, v) in vectors.iter().enumerate() {
        let key = v["experiment_key"].as_str().unwrap();
        let user = v["user_id"].as_str().unwrap();
        let weights: Vec<f64> = v["weights_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(f64_of_bits)
            .collect();
        let case = format!(
            "#{n} ({}): key {key:?} ({} chars), user {:?} ({} chars), weights {weights:?}",
            v["note"].as_str().unwrap_or(""),
            key.chars().count(),
            if user.chars().count() > 40 {
                format!("{}…", user.chars().take(40).collect::<String>())
            } else {
                user.to_string()
            },
            user.chars().count(),
        );
        let want_hash = u64_of(&v["hash"]);
        let want_bucket = f64_of_bits(&v["bucket_bits"]);
        let want_variant = v["variant_index"].as_u64().unwrap() as usize;

        let h = bucket::hash(key, user);
        if h != want_hash {
            failures.push(format!("{case}: hash {h}, expected {want_hash}"));
        }
        let b = bucket::bucket(key, user);
        if b.to_bits() != want_bucket.to_bits() {
            failures.push(format!("{case}: bucket {b:e}, expected {want_bucket:e}"));
        }
        if bucket::bucket_of_hash(want_hash).to_bits() != want_bucket.to_bits() {
            failures.push(format!(
                "{case}: bucket_of_hash({want_hash}) differs from {want_bucket:e}"
            ));
        }
        let picked = bucket::pick(want_bucket, &bucket::thresholds(&weights), &weights);
        if picked != Some(want_variant) {
            failures.push(format!(
                "{case}: pick(bucket {want_bucket:e}) = {picked:?}, expected {want_variant}"
            ));
        }
        let allocated = bucket::allocate(key, user, &weights);
        if allocated != Some(want_variant) {
            failures.push(format!(
                "{case}: allocate = {allocated:?}, expected {want_variant}"
            ));
        }
        // The human-readable copies agree with the bit patterns.
        let shown: Vec<f64> = v["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        if shown.len() != weights.len() {
            failures.push(format!(
                "{case}: fixture lists {} weights but {} bit patterns",
                shown.len(),
                weights.len()
            ));
        }
    }
    report("bucket vectors", vectors.len(), &failures);
}

/// The coverage (CONTRACT 10, separator 0x01) and layer (CONTRACT 11, separator 0x02)
/// vectors: hash and bucket bit for bit, and the variant hash of the same input differs.
fn check_other_buckets(
    field: &str,
    key_field: &str,
    hash: fn(&str, &str) -> u64,
    bucket: fn(&str, &str) -> f64,
) {
    let doc = parse(BUCKET_VECTORS);
    let vectors = doc[field].as_array().unwrap();
    assert!(vectors.len() >= 100, "only {} {field}", vectors.len());
    let mut failures = Vec::new();
    for (n, v) in vectors.iter().enumerate() {
        let key = v[key_field].as_str().unwrap();
        let user = v["user_id"].as_str().unwrap();
        let case = format!(
            "{field} #{n} ({}): {key_field} {key:?}, user {:?} ({} chars)",
            v["note"].as_str().unwrap_or(""),
            user.chars().take(40).collect::<String>(),
            user.chars().count(),
        );
        let want_hash = u64_of(&v["hash"]);
        let want_bucket = f64_of_bits(&v["bucket_bits"]);
        let h = hash(key, user);
        if h != want_hash {
            failures.push(format!("{case}: hash {h}, expected {want_hash}"));
        }
        let b = bucket(key, user);
        if b.to_bits() != want_bucket.to_bits() {
            failures.push(format!("{case}: bucket {b:e}, expected {want_bucket:e}"));
        }
        if bucket::hash(key, user) != u64_of(&v["variant_hash"]) {
            failures.push(format!("{case}: variant hash differs from the fixture"));
        }
        if h == bucket::hash(key, user) {
            failures.push(format!("{case}: same hash as the variant bucket"));
        }
    }
    report(field, vectors.len(), &failures);
}

#[test]
fn coverage_vectors_match_python_xxhash() {
    check_other_buckets(
        "coverage_vectors",
        "experiment_key",
        bucket::coverage_hash,
        bucket::coverage_bucket,
    );
}

#[test]
fn layer_vectors_match_python_xxhash() {
    check_other_buckets(
        "layer_vectors",
        "layer",
        bucket::layer_hash,
        bucket::layer_bucket,
    );
}

// ---------------------------------------------------------------------------------------
// z-test

#[test]
fn z_test_matches_statsmodels() {
    let doc = parse(ZTEST_REFERENCE);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let control = arm_of(&c["control"]);
        let treatment = arm_of(&c["treatment"]);
        let case = format!(
            "#{n} ({}): control {}/{}, treatment {}/{}",
            c["note"].as_str().unwrap_or(""),
            control.converted,
            control.exposed,
            treatment.converted,
            treatment.exposed
        );
        let got = stats::z_test(control, treatment);
        for problem in [
            mismatch(
                "z_score",
                got.map(|r| r.z_score),
                opt_f64(&c["z_score"]),
                Kind::Value(REL),
            ),
            mismatch(
                "p_value",
                got.map(|r| r.p_value),
                opt_f64(&c["p_value"]),
                Kind::Probability(REL),
            ),
        ]
        .into_iter()
        .flatten()
        {
            failures.push(format!("{case}: {problem}"));
        }
    }
    report("z-test cases", cases.len(), &failures);
}

// ---------------------------------------------------------------------------------------
// Section 3b

/// E_i = Σ_g count_g · (w_i(g) / W(g)), groups in the listed order.
/// The fixture's groups as production sees them: weight version i+1 for group i, variant
/// keys "v0", "v1", ... in arm order.
fn as_versions(
    groups: &[Value],
    variants: usize,
) -> (Vec<String>, Vec<(i32, u64)>, Vec<srm::WeightVersion>) {
    let keys: Vec<String> = (0..variants).map(|i| format!("v{i}")).collect();
    let mut by_version = Vec::new();
    let mut versions = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let weights: Vec<f64> = g["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        assert_eq!(weights.len(), variants);
        by_version.push((i as i32 + 1, g["count"].as_u64().unwrap()));
        versions.push(srm::WeightVersion {
            version: i as i32 + 1,
            keys: keys.clone(),
            weights,
        });
    }
    (keys, by_version, versions)
}

fn experiment_label(e: &Value, arms: &[Arm]) -> String {
    let arms: Vec<String> = arms
        .iter()
        .map(|a| format!("{}/{}", a.converted, a.exposed))
        .collect();
    format!(
        "{:?} (alpha {}, arms converted/exposed [{}])",
        e["name"].as_str().unwrap(),
        e["alpha"],
        arms.join(", ")
    )
}

/// A case that hangs must fail, not block the test run: `analyze` runs on its own thread
/// (a hung thread is left behind and dies with the test process).
const ANALYZE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

fn analyze_with_deadline(arms: &[Arm], alpha: f64) -> Option<Vec<stats::VariantStats>> {
    let arms = arms.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(stats::analyze(&arms, alpha));
    });
    rx.recv_timeout(ANALYZE_DEADLINE).ok()
}

#[test]
fn section_3b_matches_gbstats() {
    let doc = parse(GBSTATS_REFERENCE);
    let experiments = doc["experiments"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut rows_checked = 0;
    let mut fields_checked = 0;
    for e in experiments {
        let alpha = e["alpha"].as_f64().unwrap();
        let arms: Vec<Arm> = e["arms"].as_array().unwrap().iter().map(arm_of).collect();
        let label = experiment_label(e, &arms);
        let Some(got) = analyze_with_deadline(&arms, alpha) else {
            failures.push(format!(
                "{label}: analyze() did not return within {} s (hangs)",
                ANALYZE_DEADLINE.as_secs()
            ));
            continue;
        };
        let rows = e["rows"].as_array().unwrap();
        if got.len() != rows.len() {
            failures.push(format!(
                "{label}: {} rows, expected {}",
                got.len(),
                rows.len()
            ));
            continue;
        }
        for (row, r) in got.iter().zip(rows) {
            rows_checked += 1;
            let variant = r["variant"].as_u64().unwrap();
            let effect = row.effect;
            let checks = [
                mismatch(
                    "conversion_rate",
                    row.conversion_rate,
                    opt_f64(&r["conversion_rate"]),
                    Kind::Value(1e-15),
                ),
                mismatch(
                    "z_score",
                    row.z_test.map(|z| z.z_score),
                    opt_f64(&r["z_score"]),
                    Kind::Value(REL),
                ),
                mismatch(
                    "p_value",
                    row.z_test.map(|z| z.p_value),
                    opt_f64(&r["p_value"]),
                    Kind::Probability(REL),
                ),
                mismatch(
                    "lift",
                    effect.map(|x| x.lift),
                    opt_f64(&r["lift"]),
                    Kind::Value(REL),
                ),
                mismatch(
                    "lift_ci_low",
                    effect.map(|x| x.lift_ci_low),
                    opt_f64(&r["lift_ci_low"]),
                    Kind::Value(REL_INTERVAL),
                ),
                mismatch(
                    "lift_ci_high",
                    effect.map(|x| x.lift_ci_high),
                    opt_f64(&r["lift_ci_high"]),
                    Kind::Value(REL_INTERVAL),
                ),
                mismatch(
                    "chance_to_win",
                    effect.map(|x| x.chance_to_win),
                    opt_f64(&r["chance_to_win"]),
                    Kind::Probability(REL),
                ),
                mismatch(
                    "p_value_holm",
                    row.p_value_holm,
                    opt_f64(&r["p_value_holm"]),
                    Kind::Probability(REL),
                ),
                mismatch(
                    "sequential_p_value",
                    effect.map(|x| x.sequential_p_value),
                    opt_f64(&r["sequential_p_value"]),
                    Kind::Probability(REL),
                ),
            ];
            fields_checked += checks.len();
            for problem in checks.into_iter().flatten() {
                failures.push(format!(
                    "{label}, variant {variant} [{}]: {problem}",
                    r["source"].as_str().unwrap_or("")
                ));
            }
        }
    }
    report(
        &format!(
            "fields ({rows_checked} rows in {} experiments)",
            experiments.len()
        ),
        fields_checked,
        &failures,
    );
}

#[test]
fn srm_matches_check_srm_and_contract_formula() {
    let doc = parse(GBSTATS_REFERENCE);
    let experiments = doc["experiments"].as_array().unwrap();
    let mut failures = Vec::new();
    for e in experiments {
        let arms: Vec<Arm> = e["arms"].as_array().unwrap().iter().map(arm_of).collect();
        let label = experiment_label(e, &arms);
        let groups = e["srm_groups"].as_array().unwrap();
        let (keys, by_version, versions) = as_versions(groups, arms.len());
        let by_key: Vec<(String, u64)> = keys
            .iter()
            .cloned()
            .zip(arms.iter().map(|a| a.exposed))
            .collect();
        let got = srm::srm_p_value_by_version(&keys, &by_key, &by_version, &versions);
        let expected = srm::expected_exposures(&keys, &by_version, &versions);
        if let Some(problem) = mismatch(
            "srm_p_value",
            got,
            opt_f64(&e["srm_p_value"]),
            Kind::Probability(REL),
        ) {
            failures.push(format!(
                "{label}, groups {} [{}]: {problem} (E = {expected:?})",
                serde_json::to_string(groups).unwrap(),
                e["srm_source"].as_str().unwrap_or("")
            ));
        }
    }
    report("SRM p-values", experiments.len(), &failures);
}

#[test]
fn fixtures_cover_what_the_contract_asks() {
    let doc = parse(GBSTATS_REFERENCE);
    let experiments = doc["experiments"].as_array().unwrap();
    let sizes: std::collections::BTreeSet<usize> = experiments
        .iter()
        .map(|e| e["arms"].as_array().unwrap().len())
        .collect();
    for k in [2, 3, 4] {
        assert!(sizes.contains(&k), "no experiment with {k} variants");
    }
    for alpha in [0.05, 0.1, 0.01, 0.2] {
        assert!(
            experiments
                .iter()
                .any(|e| e["alpha"].as_f64() == Some(alpha)),
            "no experiment at alpha {alpha}"
        );
    }
    let rows = || {
        experiments
            .iter()
            .flat_map(|e| e["rows"].as_array().unwrap().iter().skip(1))
    };
    assert!(
        rows().any(|r| r["sequential_p_value"].as_f64() == Some(0.0)),
        "no underflowing sequential p-value"
    );
    assert!(
        rows().any(|r| r["lift"].is_null() && !r["z_score"].is_null()),
        "no NULL 3b row beside a z-test"
    );
    assert!(
        experiments
            .iter()
            .any(|e| e["srm_groups"].as_array().unwrap().len() >= 3),
        "no re-weighted experiment"
    );
    assert!(doc["generator"]["gbstats"].is_string());
}
