//! Property tests of the pure core (proptest, 256 cases per property):
//! - the validators never panic on arbitrary input, reject with INVALID_ARGUMENT, and
//!   whatever they accept satisfies the contract's rules;
//! - bucketing always lands on a variant with a positive weight;
//! - the statistics never return NaN or ±inf inside a `Some`.

use amba_core::bucket;
use amba_core::error::{CoreError, ErrorCode};
use amba_core::metric::{
    analyze_means, percentile_cont, t_two_sided_p_value, t_upper_quantile, MeanArm, MetricRow,
};
use amba_core::stats::{self, Arm};
use amba_core::validate::{self, Variant};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

// ---------------------------------------------------------------------------------------
// Strategies

/// Any text: arbitrary chars (control characters, surrogate-free unicode, NUL), key-like
/// text, and long runs around the length limits.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..40).prop_map(String::from_iter),
        vec(any::<char>(), 100..700).prop_map(String::from_iter),
        "[A-Za-z0-9_.:-]{0,140}",
        "[a-z\u{0}-\u{1f}\u{7f}\u{80}-\u{9f}\u{200b}\u{feff} é✓]{0,20}",
        (
            0usize..600,
            prop_oneof![Just('a'), Just('é'), Just('𝄞'), Just('\n')]
        )
            .prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![1 => Just(None), 9 => text().prop_map(Some)]
}

/// Every f64 class: NaN, ±inf, ±0, subnormals, huge, and the interesting unit interval.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        Just(1.0 - f64::EPSILON / 2.0),
        0.0..1.0f64,
        -1e6..1e6f64,
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|v| Value::Number(v.into())),
        any::<u64>().prop_map(|v| Value::Number(v.into())),
        any_f64()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("key".to_string()),
        Just("weight".to_string()),
        "[a-z]{0,6}",
        text()
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(json_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Something shaped like a variants array, with every field possibly wrong.
fn variants_like() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => "[A-Za-z0-9_.:-]{1,10}".prop_map(Value::String),
        1 => text().prop_map(Value::String),
        1 => json_value(),
    ];
    let weight = prop_oneof![
        4 => (0.0..100.0f64).prop_map(|w| Value::Number(Number::from_f64(w).unwrap())),
        2 => json_number(),
        1 => json_value(),
    ];
    let item = (
        key,
        weight,
        any::<bool>(),
        proptest::option::of((json_key(), json_value())),
    )
        .prop_map(|(k, w, drop_weight, extra)| {
            let mut m = Map::new();
            m.insert("key".into(), k);
            if !drop_weight {
                m.insert("weight".into(), w);
            }
            if let Some((ek, ev)) = extra {
                m.insert(ek, ev);
            }
            Value::Object(m)
        });
    prop_oneof![
        4 => vec(item, 0..7).prop_map(Value::Array),
        1 => json_value(),
    ]
}

/// JSON text: well-formed values, variant-like arrays, mangled JSON and raw text.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        variants_like().prop_map(|v| v.to_string()),
        (variants_like(), any::<prop::sample::Index>(), text()).prop_map(|(v, cut, tail)| {
            let s = v.to_string();
            let at = cut.index(s.len() + 1);
            let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            format!("{}{tail}", &s[..at])
        }),
        Just(r#"[{"key":"a","weight":1e999},{"key":"b","weight":1}]"#.to_string()),
        Just(r#"[{"key":"a","weight":-0},{"key":"b","weight":1e-400}]"#.to_string()),
        Just(format!("{}1{}", "[".repeat(200), "]".repeat(200))),
        text(),
    ]
}

fn check_rejection(e: &CoreError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
    prop_assert!(e.to_string().starts_with("INVALID_ARGUMENT: "), "{}", e);
    Ok(())
}

fn check_accepted_variants(v: &[Variant]) -> Result<(), TestCaseError> {
    prop_assert!(v.len() >= 2);
    let mut total = 0.0;
    for (i, variant) in v.iter().enumerate() {
        prop_assert!(validate::variant_key(Some(&variant.key)).is_ok());
        prop_assert!(variant.weight.is_finite() && variant.weight >= 0.0);
        prop_assert!(
            v[..i].iter().all(|o| o.key != variant.key),
            "duplicate key accepted"
        );
        total += variant.weight;
    }
    prop_assert!(total > 0.0 && total.is_finite());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Validators

proptest! {
    #[test]
    fn text_validators_never_panic(s in opt_text()) {
        let s = s.as_deref();
        let key_ok = |max: usize| s.is_some_and(|s| {
            let n = s.chars().count();
            (1..=max).contains(&n) && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        });
        match validate::experiment_key(s) {
            Ok(()) => prop_assert!(key_ok(validate::EXPERIMENT_KEY_MAX)),
            Err(e) => { check_rejection(&e)?; prop_assert!(!key_ok(validate::EXPERIMENT_KEY_MAX)); }
        }
        match validate::variant_key(s) {
            Ok(()) => prop_assert!(key_ok(validate::VARIANT_KEY_MAX)),
            Err(e) => { check_rejection(&e)?; prop_assert!(!key_ok(validate::VARIANT_KEY_MAX)); }
        }
        let user_ok = s.is_some_and(|s| !s.is_empty() && s.chars().count() <= validate::USER_ID_MAX);
        match validate::user_id(s) {
            Ok(()) => prop_assert!(user_ok),
            Err(e) => { check_rejection(&e)?; prop_assert!(!user_ok); }
        }
        let event_ok = s.is_some_and(|s| {
            let n = s.chars().count();
            (1..=validate::EVENT_MAX).contains(&n) && !s.chars().any(char::is_control)
        });
        match validate::event(s) {
            Ok(()) => prop_assert!(event_ok),
            Err(e) => { check_rejection(&e)?; prop_assert!(!event_ok); }
        }
        match validate::status(s) {
            Ok(()) => prop_assert!(s.is_some_and(|s| validate::STATUSES.contains(&s))),
            Err(e) => check_rejection(&e)?,
        }
        for r in [
            validate::text_length("name", s, validate::NAME_MAX),
            validate::api_key_name(s),
            validate::api_key_kind(s),
        ] {
            if let Err(e) = r {
                check_rejection(&e)?;
            }
        }
    }

    #[test]
    fn alpha_is_accepted_exactly_inside_the_unit_interval(a in proptest::option::of(any_f64())) {
        match validate::alpha(a) {
            Ok(v) => prop_assert!(a == Some(v) && v > 0.0 && v < 1.0),
            Err(e) => {
                check_rejection(&e)?;
                prop_assert!(!a.is_some_and(|a| a > 0.0 && a < 1.0));
            }
        }
    }

    #[test]
    fn variants_json_never_panics(text in json_text()) {
        match validate::variants_json(&text) {
            Ok(v) => check_accepted_variants(&v)?,
            Err(e) => check_rejection(&e)?,
        }
    }

    #[test]
    fn variants_value_never_panics(value in variants_like()) {
        match validate::variants(&value) {
            Ok(v) => check_accepted_variants(&v)?,
            Err(e) => check_rejection(&e)?,
        }
    }

    #[test]
    fn variant_update_never_panics(
        old in vec("[a-d]{1,2}", 0..5),
        new in vec(("[a-d]{1,2}", 0.0..10.0f64), 0..5),
        assigned in any::<u8>(),
    ) {
        let new: Vec<Variant> = new.into_iter().map(|(key, weight)| Variant { key, weight }).collect();
        let has_assignments = |k: &str| k.bytes().map(u32::from).sum::<u32>() % 8 < u32::from(assigned % 9);
        match validate::variant_update(&old, &new, has_assignments) {
            Ok(()) => {
                if let (Some(o), Some(n)) = (old.first(), new.first()) {
                    prop_assert_eq!(o, &n.key);
                }
                for k in &old {
                    prop_assert!(new.iter().any(|v| &v.key == k) || !has_assignments(k));
                }
            }
            Err(e) => check_rejection(&e)?,
        }
    }

    #[test]
    fn properties_size_never_panics(bytes in any::<usize>()) {
        match validate::properties_size(bytes) {
            Ok(()) => prop_assert!(bytes <= validate::PROPERTIES_MAX_BYTES),
            Err(e) => { check_rejection(&e)?; prop_assert!(bytes > validate::PROPERTIES_MAX_BYTES); }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bucketing

/// Valid weights: >= 0 and finite, mixing zeros, subnormals, tiny, ordinary and huge values.
fn weights() -> impl Strategy<Value = Vec<f64>> {
    let w = prop_oneof![
        3 => Just(0.0),
        1 => Just(5e-324),
        1 => Just(f64::MIN_POSITIVE),
        1 => 1e-300..1e-290f64,
        4 => 0.0..1.0f64,
        4 => 1.0..100.0f64,
        1 => 1e290..1e300f64,
        1 => Just(f64::MAX / 16.0),
    ];
    vec(w, 1..12).prop_filter("valid weights: the sum is finite and > 0", |w| {
        let total = w.iter().fold(0.0, |acc, x| acc + x);
        total > 0.0 && total.is_finite()
    })
}

fn unit_bucket() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..1.0f64,
        Just(0.0),
        Just(1.0 - f64::EPSILON / 2.0),
        any::<u64>().prop_map(bucket::bucket_of_hash),
    ]
}

proptest! {
    #[test]
    fn pick_lands_on_a_positive_weight(w in weights(), b in unit_bucket()) {
        prop_assert!((0.0..1.0).contains(&b));
        let t = bucket::thresholds(&w);
        let picked = bucket::pick(b, &t, &w);
        prop_assert!(picked.is_some_and(|i| i < w.len() && w[i] > 0.0), "pick({b:e}, {w:?}) = {picked:?}");
    }

    #[test]
    fn allocate_lands_on_a_positive_weight(w in weights(), key in "[a-z0-9]{1,20}", user in text()) {
        let picked = bucket::allocate(&key, &user, &w);
        prop_assert!(picked.is_some_and(|i| w[i] > 0.0), "allocate({key:?}, {user:?}, {w:?}) = {picked:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Statistics never return NaN or ±inf in a Some

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..4u64,
        0..1_000u64,
        0..10_000_000u64,
        any::<u64>(),
        Just(u64::MAX)
    ]
}

fn conversion_arm() -> impl Strategy<Value = Arm> {
    (
        count(),
        prop_oneof![Just(0.0), Just(1.0), 0.0..1.0f64, 0.0..0.001f64],
    )
        .prop_map(|(n, share)| {
            let x = ((n as f64) * share).floor() as u64;
            Arm::new(n, x.min(n))
        })
}

fn alpha_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.05),
        Just(0.01),
        Just(0.2),
        1e-12..1.0f64,
        Just(1e-300),
        Just(5e-324),
        Just(1.0 - f64::EPSILON / 2.0),
    ]
}

fn all_finite(values: &[Option<f64>]) -> bool {
    values.iter().all(|v| v.is_none_or(f64::is_finite))
}

/// Sufficient statistics of n users: consistent sums from a mean, a standard deviation and
/// a correlation, or arbitrary numbers.
fn mean_arm() -> impl Strategy<Value = MeanArm> {
    let n = prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(2.0),
        Just(3.0),
        (2u32..10_000).prop_map(f64::from),
        (1e6..1e12f64).prop_map(f64::round),
    ];
    let mean = prop_oneof![
        Just(0.0),
        -10.0..10.0f64,
        -1e6..1e6f64,
        1e100..1e200f64,
        Just(1e300)
    ];
    let sd = prop_oneof![Just(0.0), 0.0..10.0f64, 0.0..1e6f64, 1e100..1e200f64];
    let consistent = (n, mean.clone(), sd.clone(), mean, sd, -1.0..=1.0f64).prop_map(
        |(n, my, sy, mx, sx, rho)| {
            let m1 = (n - 1.0).max(0.0);
            MeanArm {
                n,
                sum: n * my,
                sum_sq: sy * sy * m1 + n * my * my,
                x_sum: n * mx,
                x_sum_sq: sx * sx * m1 + n * mx * mx,
                xy_sum: rho * sx * sy * m1 + n * mx * my,
            }
        },
    );
    let arbitrary = (
        any_f64(),
        any_f64(),
        any_f64(),
        any_f64(),
        any_f64(),
        any_f64(),
    )
        .prop_map(|(n, sum, sum_sq, x_sum, x_sum_sq, xy_sum)| MeanArm {
            n,
            sum,
            sum_sq,
            x_sum,
            x_sum_sq,
            xy_sum,
        });
    prop_oneof![4 => consistent, 1 => arbitrary]
}

fn row_values(r: &MetricRow) -> [Option<f64>; 11] {
    [
        r.mean,
        r.stddev,
        r.delta,
        r.delta_ci_low,
        r.delta_ci_high,
        r.p_value,
        r.p_value_holm,
        r.lift,
        r.lift_ci_low,
        r.lift_ci_high,
        r.cuped_theta,
    ]
}

/// Alphas for the proptests (tiny ones are checked once in `analyze_survives_any_valid_alpha`).
fn moderate_alpha() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.05),
        Just(0.01),
        Just(0.2),
        1e-6..1.0f64,
        Just(1.0 - f64::EPSILON / 2.0)
    ]
}

#[test]
fn analyze_survives_any_valid_alpha() {
    // validate::alpha accepts 1e-300 (statrs' inverse beta panicked there, and never returned
    // near 1e-100): the interval must still come back, finite.
    for alpha in [1e-300, 1e-100, 1e-20] {
        let rows = stats::analyze(&[Arm::new(200, 20), Arm::new(200, 31)], alpha);
        let e = rows[1].effect.expect("an interval");
        assert!(
            e.lift_ci_low.is_finite()
                && e.lift_ci_high.is_finite()
                && e.lift_ci_low < e.lift
                && e.lift < e.lift_ci_high
        );
    }
}

proptest! {
    #[test]
    fn analyze_is_always_finite(arms in vec(conversion_arm(), 0..6), alpha in moderate_alpha()) {
        let rows = stats::analyze(&arms, alpha);
        prop_assert_eq!(rows.len(), arms.len());
        for r in &rows {
            let mut values = vec![r.conversion_rate, r.p_value_holm];
            if let Some(z) = r.z_test {
                values.extend([Some(z.z_score), Some(z.p_value)]);
            }
            if let Some(e) = r.effect {
                values.extend([e.lift, e.lift_ci_low, e.lift_ci_high, e.chance_to_win, e.sequential_p_value].map(Some));
            }
            prop_assert!(all_finite(&values), "{arms:?} alpha {alpha}: {r:?}");
        }
    }

    #[test]
    fn srm_p_value_is_always_finite(cells in vec((any_f64(), any_f64()), 0..8)) {
        let (observed, expected): (Vec<f64>, Vec<f64>) = cells.into_iter().unzip();
        let p = stats::srm_p_value(&observed, &expected);
        prop_assert!(p.is_none_or(|p| (0.0..=1.0).contains(&p)), "{observed:?} {expected:?}: {p:?}");
    }

    #[test]
    fn srm_p_value_of_counts_is_always_finite(cells in vec((count(), prop_oneof![Just(0.0), 0.0..1.0f64, 1.0..1e19f64]), 0..8)) {
        let observed: Vec<f64> = cells.iter().map(|c| c.0 as f64).collect();
        let expected: Vec<f64> = cells.iter().map(|c| c.1).collect();
        let p = stats::srm_p_value(&observed, &expected);
        prop_assert!(p.is_none_or(|p| (0.0..=1.0).contains(&p)), "{observed:?} {expected:?}: {p:?}");
    }

    #[test]
    fn analyze_means_is_always_finite(arms in vec(mean_arm(), 0..5), alpha in alpha_value(), cuped in any::<bool>()) {
        let rows = analyze_means(&arms, alpha, cuped);
        prop_assert_eq!(rows.len(), arms.len());
        for (i, r) in rows.iter().enumerate() {
            prop_assert!(all_finite(&row_values(r)), "{arms:?} alpha {alpha} cuped {cuped}: row {i} {r:?}");
            if i == 0 {
                prop_assert!(row_values(r)[2..].iter().all(Option::is_none), "control row has comparisons: {r:?}");
            }
            if !cuped {
                prop_assert_eq!(r.cuped_theta, None);
            }
            for p in [r.p_value, r.p_value_holm].into_iter().flatten() {
                prop_assert!((0.0..=1.0).contains(&p), "p {p}");
            }
            if let (Some(lo), Some(d), Some(hi)) = (r.delta_ci_low, r.delta, r.delta_ci_high) {
                prop_assert!(lo <= d && d <= hi, "{r:?}");
            }
            if let (Some(lo), Some(l), Some(hi)) = (r.lift_ci_low, r.lift, r.lift_ci_high) {
                prop_assert!(lo <= l && l <= hi, "{r:?}");
            }
        }
    }

    #[test]
    fn lift_confidence_sequence_is_always_finite(
        n in prop_oneof![any_f64(), (0u64..u64::MAX).prop_map(|n| n as f64)],
        lift in any_f64(),
        var in any_f64(),
        alpha in prop_oneof![alpha_value(), any_f64()],
    ) {
        if let Some((lo, hi)) = stats::lift_confidence_sequence(n, lift, var, alpha) {
            prop_assert!(lo.is_finite() && hi.is_finite() && lo <= lift && lift <= hi, "({lo}, {hi})");
        }
    }

    #[test]
    fn t_p_value_is_a_probability(t in any_f64(), dof in prop_oneof![any_f64(), 1.0..1e12f64]) {
        let p = t_two_sided_p_value(t, dof);
        prop_assert!(p.is_none_or(|p| (0.0..=1.0).contains(&p)), "t {t} dof {dof}: {p:?}");
    }

    #[test]
    fn t_quantile_inverts_the_p_value(
        p in prop_oneof![any_f64(), 0.0..0.5f64, (-700.0..-0.7f64).prop_map(f64::exp)],
        dof in prop_oneof![any_f64(), 0.01..1.0f64, 1.0..30.0f64, 1.0..1e12f64],
    ) {
        let q = t_upper_quantile(p, dof);
        if let Some(q) = q {
            prop_assert!(q.is_finite() && q >= 0.0, "T^-1(1 - {p}; {dof}) = {q}");
            // Round trip where the tail is well conditioned (not in the subnormal range).
            if p > 1e-290 && q > 1e-12 {
                let back = t_two_sided_p_value(q, dof).unwrap() / 2.0;
                prop_assert!(((back - p) / p).abs() < 1e-9, "p {p}, dof {dof}: quantile {q}, back {back}");
            }
        } else {
            // None only outside the domain, or where the quantile overflows (tiny p and dof).
            prop_assert!(!(p > 0.0 && p <= 0.5 && dof >= 1.0) || p < 1e-290, "None for p {p}, dof {dof}");
        }
    }

    #[test]
    fn percentile_cont_stays_within_the_values(mut values in vec(-1e300..1e300f64, 0..50), q in any_f64()) {
        values.sort_by(f64::total_cmp);
        match percentile_cont(&values, q) {
            Some(v) => prop_assert!(values[0] <= v && v <= values[values.len() - 1], "{v} outside {values:?}"),
            None => prop_assert!(values.is_empty() || !(0.0..=1.0).contains(&q)),
        }
    }
}
