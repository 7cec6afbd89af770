//! Statistics of `amba_results` (SPEC §3 and §3b), as small pure functions on
//! the distributions of [`crate::distributions`]. Every undefined case is `None` (SQL
//! NULL), never NaN or ±inf.

use crate::distributions::{erfc_accurate, normal_cdf, t_upper_quantile, welch_dof};
use crate::finite;

// The Pearson test lives with the rest of the sample-ratio-mismatch check.
pub use crate::srm::srm_p_value;

/// Sequential testing tuning parameter τ (GrowthBook's default).
pub const SEQUENTIAL_TUNING: f64 = 5000.0;

/// Exposed users (n) and converted users (x) of one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arm {
    pub exposed: u64,
    pub converted: u64,
}

impl Arm {
    pub fn new(exposed: u64, converted: u64) -> Self {
        Arm { exposed, converted }
    }

    /// converted / exposed; `None` when nobody was exposed.
    pub fn rate(self) -> Option<f64> {
        (self.exposed > 0).then(|| self.converted as f64 / self.exposed as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    pub z_score: f64,
    pub p_value: f64,
}

/// Pooled two-proportion z-test of `treatment` against `control`, two-sided.
/// `None` when either arm has no exposed users or the pooled standard error is 0.
pub fn z_test(control: Arm, treatment: Arm) -> Option<ZTest> {
    if control.exposed == 0 || treatment.exposed == 0 {
        return None;
    }
    let (n_c, n_t) = (control.exposed as f64, treatment.exposed as f64);
    let (x_c, x_t) = (control.converted as f64, treatment.converted as f64);
    let (p_c, p_t) = (x_c / n_c, x_t / n_t);
    let p = (x_t + x_c) / (n_t + n_c);
    let se = (p * (1.0 - p) * (1.0 / n_t + 1.0 / n_c)).sqrt();
    if !(se > 0.0) {
        return None;
    }
    let z = (p_t - p_c) / se;
    // erfc keeps its relative accuracy deep in the tail, where 1 - Φ would round to 0; the
    // full-precision one (statrs' is off by up to 1e-10 relative from 0.5 on).
    let p_value = erfc_accurate(z.abs() / std::f64::consts::SQRT_2);
    Some(ZTest {
        z_score: finite(z)?,
        p_value: finite(p_value)?,
    })
}

/// Relative effect of `treatment` over `control`, with its interval, Bayesian chance to
/// win and always-valid p-value (SPEC §3b, matching GrowthBook's gbstats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    pub lift: f64,
    pub lift_ci_low: f64,
    pub lift_ci_high: f64,
    pub chance_to_win: f64,
    pub sequential_p_value: f64,
}

/// Delta-method variance of the relative lift.
fn lift_variance(p_c: f64, v_c: f64, n_c: f64, p_t: f64, v_t: f64, n_t: f64) -> f64 {
    v_t / (p_c * p_c * n_t) + v_c * p_t * p_t / (p_c.powi(4) * n_c)
}

/// ρ² of the asymptotic confidence sequence (Waudby-Smith et al. 2023).
fn sequential_rho_squared(alpha: f64) -> f64 {
    let l = alpha.ln();
    (-2.0 * l + (1.0 - 2.0 * l).ln()) / SEQUENTIAL_TUNING
}

/// Always-valid p-value, in log space so it never overflows: for a huge effect it
/// underflows to 0 instead.
pub fn sequential_p_value(total_n: f64, lift: f64, var: f64, alpha: f64) -> f64 {
    let rho2 = sequential_rho_squared(alpha);
    let s = total_n * (lift * lift / var);
    let nr = total_n * rho2 + 1.0;
    let log_p = 0.5 * nr.ln() - rho2 * s / (2.0 * nr);
    log_p.min(0.0).exp()
}

/// Always-valid confidence sequence of the lift (SPEC §3e; Waudby-Smith et al. 2023,
/// eq. 9, τ = 5000), `lift ± half` with N = `total_n` and
/// `half = √(var·N) · √(2(Nρ²+1) ln(√(Nρ²+1)/alpha) / (Nρ)²)`
/// (= gbstats 0.8.0 `SequentialTwoSidedTTest(...).compute_result().ci`, relative).
/// `None` unless N > 0, var > 0, 0 < alpha < 1 and everything is finite.
pub fn lift_confidence_sequence(
    total_n: f64,
    lift: f64,
    var: f64,
    alpha: f64,
) -> Option<(f64, f64)> {
    if !(total_n > 0.0 && var > 0.0 && alpha > 0.0 && alpha < 1.0)
        || !total_n.is_finite()
        || !var.is_finite()
        || !lift.is_finite()
    {
        return None;
    }
    let rho2 = sequential_rho_squared(alpha);
    let nr = total_n * rho2 + 1.0;
    // (√(var·N))² · 2(Nρ²+1)·ln(√(Nρ²+1)/alpha) / (N²ρ²), with one N cancelled.
    let log_term = 0.5 * nr.ln() - alpha.ln();
    let half = (var * 2.0 * nr * log_term / (total_n * rho2)).sqrt();
    Some((finite(lift - half)?, finite(lift + half)?))
}

/// The delta-method variance of the relative lift of `treatment` over `control` (the
/// `var` of SPEC §3b), where `effect` defines it.
pub fn lift_variance_of(control: Arm, treatment: Arm) -> Option<f64> {
    if control.exposed < 2 || treatment.exposed < 2 || control.converted == 0 {
        return None;
    }
    let (n_c, n_t) = (control.exposed as f64, treatment.exposed as f64);
    let (p_c, p_t) = (
        control.converted as f64 / n_c,
        treatment.converted as f64 / n_t,
    );
    let var = lift_variance(p_c, p_c * (1.0 - p_c), n_c, p_t, p_t * (1.0 - p_t), n_t);
    (var > 0.0 && var.is_finite()).then_some(var)
}

/// `None` when n_t < 2, n_c < 2, p_c = 0 or the variance is 0 (or anything non-finite).
pub fn effect(control: Arm, treatment: Arm, alpha: f64) -> Option<Effect> {
    let var = lift_variance_of(control, treatment)?;
    let (n_c, n_t) = (control.exposed as f64, treatment.exposed as f64);
    let p_c = control.converted as f64 / n_c;
    let p_t = treatment.converted as f64 / n_t;
    let (v_c, v_t) = (p_c * (1.0 - p_c), p_t * (1.0 - p_t));
    let lift = (p_t - p_c) / p_c;
    let sd = var.sqrt();
    let dof = welch_dof(v_c, n_c, v_t, n_t);
    // T⁻¹(1 − alpha/2) from the upper tail directly (distributions.rs: accurate for any
    // alpha down to 1e-300 and any dof, where statrs' inverse beta panics or never returns).
    let t = t_upper_quantile(alpha / 2.0, dof)?;
    let half_width = t * sd;
    Some(Effect {
        lift: finite(lift)?,
        lift_ci_low: finite(lift - half_width)?,
        lift_ci_high: finite(lift + half_width)?,
        chance_to_win: finite(normal_cdf(lift / sd))?,
        sequential_p_value: finite(sequential_p_value(n_t + n_c, lift, var, alpha))?,
    })
}

/// Holm–Bonferroni step-down adjustment over the `Some` p-values (statsmodels'
/// `multipletests(method="holm")`); `None` stays `None` and does not count in m.
pub fn holm(p_values: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut present: Vec<(usize, f64)> = p_values
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    present.sort_by(|a, b| a.1.total_cmp(&b.1));
    let m = present.len();
    let mut adjusted = vec![None; p_values.len()];
    let mut running_max: f64 = 0.0;
    for (rank, (index, p)) in present.into_iter().enumerate() {
        let candidate = ((m - rank) as f64 * p).min(1.0);
        running_max = running_max.max(candidate);
        adjusted[index] = Some(running_max);
    }
    adjusted
}

/// Everything `amba_results` reports for one variant, control first.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStats {
    pub conversion_rate: Option<f64>,
    pub z_test: Option<ZTest>,
    pub effect: Option<Effect>,
    pub p_value_holm: Option<f64>,
}

/// The per-variant statistics of an experiment; `arms[0]` is the control, whose row
/// carries only its conversion rate.
pub fn analyze(arms: &[Arm], alpha: f64) -> Vec<VariantStats> {
    let control = arms.first().copied().unwrap_or_default();
    let mut rows: Vec<VariantStats> = arms
        .iter()
        .enumerate()
        .map(|(i, arm)| VariantStats {
            conversion_rate: arm.rate(),
            z_test: if i == 0 { None } else { z_test(control, *arm) },
            effect: if i == 0 {
                None
            } else {
                effect(control, *arm, alpha)
            },
            p_value_holm: None,
        })
        .collect();
    let p_values: Vec<Option<f64>> = rows.iter().map(|r| r.z_test.map(|z| z.p_value)).collect();
    for (row, adjusted) in rows.iter_mut().zip(holm(&p_values)) {
        row.p_value_holm = adjusted;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_test_null_cases() {
        assert!(z_test(Arm::new(0, 0), Arm::new(10, 1)).is_none());
        assert!(z_test(Arm::new(10, 1), Arm::new(0, 0)).is_none());
        assert!(z_test(Arm::new(10, 0), Arm::new(10, 0)).is_none()); // p = 0
        assert!(z_test(Arm::new(10, 10), Arm::new(5, 5)).is_none()); // p = 1
        assert!(z_test(Arm::new(10, 0), Arm::new(10, 1)).is_some());
    }

    #[test]
    fn z_test_known_value() {
        // 100/1000 vs 150/1000 (control better: negative z). By hand: pooled p = 0.125,
        // se = sqrt(0.125 * 0.875 * 2 / 1000) = 0.0147902, z = -0.05 / se = -3.38062.
        let r = z_test(Arm::new(1000, 150), Arm::new(1000, 100)).unwrap();
        assert!((r.z_score + 3.380617).abs() < 1e-6, "{r:?}");
        assert!((r.p_value - 7.2323e-4).abs() < 1e-8, "{r:?}");
    }

    #[test]
    fn extreme_p_values_keep_relative_precision() {
        // z ≈ 25.6: 1 - Φ(z) would round to 0; erfc keeps about 1e-144.
        let r = z_test(Arm::new(100_000, 1_000), Arm::new(100_000, 2_500)).unwrap();
        assert!(r.p_value > 0.0 && r.p_value < 1e-100, "{r:?}");
    }

    #[test]
    fn effect_null_cases() {
        assert!(effect(Arm::new(1, 1), Arm::new(10, 1), 0.05).is_none());
        assert!(effect(Arm::new(10, 1), Arm::new(1, 1), 0.05).is_none());
        assert!(effect(Arm::new(10, 0), Arm::new(10, 1), 0.05).is_none());
        // Both arms all-converting: the variance is 0.
        assert!(effect(Arm::new(10, 10), Arm::new(10, 10), 0.05).is_none());
        // Control all-converting, treatment not: defined.
        assert!(effect(Arm::new(10, 10), Arm::new(10, 5), 0.05).is_some());
    }

    #[test]
    fn sequential_p_value_underflows_instead_of_overflowing() {
        let e = effect(
            Arm::new(10_000_000, 10_000),
            Arm::new(10_000_000, 5_000_000),
            0.05,
        )
        .unwrap();
        assert_eq!(e.sequential_p_value, 0.0);
        let none = effect(Arm::new(1000, 100), Arm::new(1000, 100), 0.05).unwrap();
        assert_eq!(none.sequential_p_value, 1.0);
    }

    #[test]
    fn t_quantile_matches_scipy_at_every_scale() {
        // scipy.stats.t.ppf(p, dof), as the upper tail 1 - p the intervals use
        let cases = [
            (0.975, 1.5, 6.016663104427929),
            (0.975, 10.0, 2.228138851986274),
            (0.975, 100.0, 1.9839715185235518),
            (0.975, 1e4, 1.960201239890626),
            (0.975, 1e5, 1.9599877075346095),
            (0.975, 1e6, 1.959966356814107),
            (0.975, 1e7, 1.959964221767205),
            (0.975, 1e8, 1.9599640082627663),
            (0.975, 1e10, 1.959963984777281),
            (0.995, 1e5, 2.575878469908375),
            (0.995, 1e7, 2.5758297952037488),
            (0.6, 1e5, 0.25334777715718015),
            (0.6, 1e7, 0.25334710987600284),
        ];
        for (p, dof, want) in cases {
            let got = t_upper_quantile(1.0 - p, dof).unwrap();
            assert!(
                ((got - want) / want).abs() < 1e-11,
                "T^-1({p}; {dof}) = {got}, scipy {want}"
            );
        }
        assert_eq!(t_upper_quantile(0.025, 0.0), None);
        // A tiny alpha still has an interval.
        let tiny = effect(Arm::new(1000, 100), Arm::new(1000, 150), 1e-20).unwrap();
        assert!(tiny.lift_ci_low < tiny.lift && tiny.lift < tiny.lift_ci_high);
        assert_eq!(t_upper_quantile(0.0, 10.0), None);
    }

    #[test]
    fn holm_matches_hand_computation() {
        let adjusted = holm(&[None, Some(0.01), Some(0.04), None, Some(0.03)]);
        assert_eq!(adjusted[0], None);
        assert_eq!(adjusted[3], None);
        assert!((adjusted[1].unwrap() - 0.03).abs() < 1e-15);
        assert!((adjusted[4].unwrap() - 0.06).abs() < 1e-15);
        assert!((adjusted[2].unwrap() - 0.06).abs() < 1e-15); // max(0.04, 0.06)
        assert_eq!(holm(&[Some(0.9), Some(0.8)]), vec![Some(1.0), Some(1.0)]);
    }
}
