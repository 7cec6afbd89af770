//! Ratio metrics of `amba_ratio_results` (CONTRACT §13), and the two-sided t-test that
//! ratio and quantile metrics ([`crate::quantile`]) share.
//!
//! As in GrowthBook's gbstats 0.8.0, one struct per kind of statistic ([`RatioStats`],
//! [`crate::quantile::QuantileStats`]) says what its point estimate, variance and sample
//! size are ([`TTestStatistic`]), and one function, [`two_sided_ttest`] (gbstats'
//! `TwoSidedTTest` with `difference_type` "absolute" and "relative" at once), compares a
//! treatment with the control. [`compare_to_control`] does that for every variant of a call
//! and adds Holm's adjustment. Every answer is finite; where gbstats returns its
//! uninformative default output the answer is `None` (SQL NULL).
//!
//! ## The test (gbstats `TTest` / `TwoSidedTTest`)
//!
//! With, per arm, the estimate m, the per-observation variance v and the size n
//! (a = control, b = treatment):
//! - no answer when `m_a = 0`, or when either arm "has zero variance" (each kind's own rule);
//! - absolute: `delta = m_b − m_a`, `var = v_b/n_b + v_a/n_a`;
//! - relative: `lift = (m_b − m_a)/m_a`, `var_l = v_b/(m_a² n_b) + v_a m_b²/(m_a⁴ n_a)`;
//! - Welch–Satterthwaite `ν = (v_b/n_b + v_a/n_a)² / (v_b²/(n_b²(n_b−1)) + v_a²/(n_a²(n_a−1)))`;
//! - intervals `x ± T⁻¹(1 − alpha/2; ν)·√var`; `p_value = 2 P(T_ν > |delta|/√var)` (the
//!   absolute test's). gbstats computes it as `2(1 − T(|t|))`, which loses its relative
//!   digits as p gets small and is 0 below ~1e-16; the tail itself is kept here (the
//!   reference takes scipy's `t.sf` and checks it against gbstats' value where p > 1e-5).
//!
//! ## Ratio statistic (gbstats `RatioStatistic` over two `SampleMeanStatistic`s)
//!
//! Per variant, over its n exposed users with numerator M and denominator D:
//! `ratio = ΣM/ΣD`; with `μ_M = ΣM/n`, `μ_D = ΣD/n`, `v_M = (ΣM² − (ΣM)²/n)/(n−1)`,
//! `v_D` likewise and `cov = (ΣMD − ΣM·ΣD/n)/(n−1)`, the delta-method variance
//! `v = v_M/μ_D² − 2·cov·μ_M/μ_D³ + μ_M²·v_D/μ_D⁴` (0 when μ_D = 0 or n ≤ 1). The test uses
//! m = ratio, n = users.
//!
//! gbstats has no answer (so neither has this) when: the control's ratio is 0 (ΣM_c = 0 or
//! ΣD_c = 0); either arm has n < 2 (n = 0 included) or ΣD = 0; either arm's variance is
//! ≤ 0. The one deliberate difference: a variance that is truly 0 (every user has M = r·D
//! for one r) can come out of the float sums as rounding noise of either sign (±1e-16);
//! gbstats then answers on the noise when it happens to be positive. Here such a variance
//! counts as 0 (the contract: zero variance, NULL), by the same noise bound as the mean
//! metrics of [`crate::metric`]: `v·μ_D²·(n−1) ≤ 3nε·(√ΣM² + |r|·√ΣD²)²` (the rounding
//! error a centred sum of n terms can carry). Only data where M − r·D agrees across users
//! to about √(3nε) relative is affected.
//!
//! The formulas are evaluated in gbstats' order of operations, so results match it to the
//! last few bits; tests/ratio_quantile_reference.rs checks them against gbstats itself.

use crate::distributions::{t_two_sided_p_value, t_upper_quantile, welch_dof};
use crate::finite;
use crate::stats::holm;

/// A variant's statistic as gbstats' t-test sees it (its `Statistic` class).
pub trait TTestStatistic {
    /// The sample size of the test (users for ratios, events for quantiles).
    fn n(&self) -> f64;
    /// The point estimate (gbstats `mean`; here `unadjusted_mean` is the same).
    fn mean(&self) -> f64;
    /// The per-observation variance (gbstats `variance`): the test's variance is v/n.
    fn variance(&self) -> f64;
    /// gbstats `_has_zero_variance`: true where the test has no answer because of this arm.
    fn has_zero_variance(&self) -> bool;
}

/// gbstats `TwoSidedTTest(...).compute_result()`, absolute and relative, for one treatment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    /// `m_b − m_a`.
    pub delta: f64,
    pub delta_ci_low: f64,
    pub delta_ci_high: f64,
    /// Two-sided p-value of the absolute difference.
    pub p_value: f64,
    /// `(m_b − m_a)/m_a`.
    pub lift: f64,
    pub lift_ci_low: f64,
    pub lift_ci_high: f64,
}

/// Two-sided Welch t-test of `treatment` against `control` at level `alpha` (gbstats
/// `TwoSidedTTest` with `FrequentistConfig(alpha, difference_type="absolute")` and
/// `"relative"`; formulas in the module documentation). `None` where gbstats returns its
/// default output (control estimate 0, either arm with zero variance), and where anything
/// would not be finite (e.g. alpha outside (0, 1)).
pub fn two_sided_ttest<S: TTestStatistic + ?Sized>(
    control: &S,
    treatment: &S,
    alpha: f64,
) -> Option<TestResult> {
    let (m_a, m_b) = (control.mean(), treatment.mean());
    if m_a == 0.0 || control.has_zero_variance() || treatment.has_zero_variance() {
        return None;
    }
    let (v_a, n_a) = (control.variance(), control.n());
    let (v_b, n_b) = (treatment.variance(), treatment.n());
    let dof = welch_dof(v_a, n_a, v_b, n_b);
    // T⁻¹(1 − alpha/2; ν), from the upper tail.
    let q = t_upper_quantile(alpha / 2.0, dof)?;

    let delta = m_b - m_a;
    let var = v_b / n_b + v_a / n_a;
    let sd = var.sqrt();
    let p_value = t_two_sided_p_value(delta / sd, dof)?;

    let lift = (m_b - m_a) / m_a;
    let var_l = v_b / (m_a.powi(2) * n_b) + v_a * m_b.powi(2) / (m_a.powi(4) * n_a);
    let (half, half_l) = (q * sd, q * var_l.sqrt());
    Some(TestResult {
        delta: finite(delta)?,
        delta_ci_low: finite(delta - half)?,
        delta_ci_high: finite(delta + half)?,
        p_value: finite(p_value)?,
        lift: finite(lift)?,
        lift_ci_low: finite(lift - half_l)?,
        lift_ci_high: finite(lift + half_l)?,
    })
}

/// The comparison columns of one variant's row (all `None` on the control row and where
/// the test has no answer).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Comparison {
    pub delta: Option<f64>,
    pub delta_ci_low: Option<f64>,
    pub delta_ci_high: Option<f64>,
    pub p_value: Option<f64>,
    /// Holm over the non-`None` p-values of the call (see [`compare_to_control`]).
    pub p_value_holm: Option<f64>,
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
}

impl From<Option<TestResult>> for Comparison {
    fn from(r: Option<TestResult>) -> Comparison {
        match r {
            None => Comparison::default(),
            Some(r) => Comparison {
                delta: Some(r.delta),
                delta_ci_low: Some(r.delta_ci_low),
                delta_ci_high: Some(r.delta_ci_high),
                p_value: Some(r.p_value),
                p_value_holm: None,
                lift: Some(r.lift),
                lift_ci_low: Some(r.lift_ci_low),
                lift_ci_high: Some(r.lift_ci_high),
            },
        }
    }
}

/// One [`Comparison`] per arm, `arms[0]` the control (its row empty): each other arm
/// against it with [`two_sided_ttest`], then `p_value_holm` = Holm ([`holm`]) over the
/// non-`None` p-values of these rows. (A call that compares more than one set of arms,
/// like results by segment, runs [`two_sided_ttest`] itself and gives all its p-values to
/// [`crate::stats::holm`] at once.)
pub fn compare_to_control<S: TTestStatistic>(arms: &[S], alpha: f64) -> Vec<Comparison> {
    let Some(control) = arms.first() else {
        return Vec::new();
    };
    let mut rows: Vec<Comparison> = arms
        .iter()
        .enumerate()
        .map(|(i, arm)| {
            if i == 0 {
                Comparison::default()
            } else {
                two_sided_ttest(control, arm, alpha).into()
            }
        })
        .collect();
    let p_values: Vec<Option<f64>> = rows.iter().map(|r| r.p_value).collect();
    for (row, adjusted) in rows.iter_mut().zip(holm(&p_values)) {
        row.p_value_holm = adjusted;
    }
    rows
}

/// Sufficient statistics of one variant of a ratio metric (CONTRACT §13): n exposed users,
/// ΣM, ΣD, ΣM², ΣD², ΣMD over them (a user without events counts with M = D = 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RatioStats {
    pub n: f64,
    pub m_sum: f64,
    pub d_sum: f64,
    pub m_sum_sq: f64,
    pub d_sum_sq: f64,
    pub md_sum: f64,
}

/// Sample variance `(SS − S²/n)/(n − 1)` as gbstats' `SampleMeanStatistic` computes it
/// (0 for n ≤ 1).
fn sample_variance(n: f64, sum: f64, sum_sq: f64) -> f64 {
    if n <= 1.0 {
        return 0.0;
    }
    (sum_sq - sum.powi(2) / n) / (n - 1.0)
}

impl RatioStats {
    /// Adds one user (numerator value `m`, denominator value `d`).
    pub fn add_user(&mut self, m: f64, d: f64) {
        self.n += 1.0;
        self.m_sum += m;
        self.d_sum += d;
        self.m_sum_sq += m * m;
        self.d_sum_sq += d * d;
        self.md_sum += m * d;
    }

    /// The sums over `(M, D)` per user, added left to right.
    pub fn from_users(users: &[(f64, f64)]) -> RatioStats {
        let mut s = RatioStats::default();
        for &(m, d) in users {
            s.add_user(m, d);
        }
        s
    }

    /// `ΣM/ΣD`; `None` when ΣD = 0 (or the quotient is not finite).
    pub fn ratio(&self) -> Option<f64> {
        if self.d_sum == 0.0 {
            return None;
        }
        finite(self.m_sum / self.d_sum)
    }

    /// gbstats' `RatioStatistic.mean`: ΣM/ΣD, 0 when ΣD = 0.
    fn gbstats_mean(&self) -> f64 {
        if self.d_sum == 0.0 {
            0.0
        } else {
            self.m_sum / self.d_sum
        }
    }

    /// `(ΣMD − ΣM·ΣD/n)/(n − 1)` (0 for n ≤ 1).
    fn covariance(&self) -> f64 {
        if self.n <= 1.0 {
            return 0.0;
        }
        (self.md_sum - self.m_sum * self.d_sum / self.n) / (self.n - 1.0)
    }

    /// The delta-method variance of the ratio per user, exactly gbstats'
    /// `RatioStatistic.variance`: `v_M/μ_D² − 2·cov·μ_M/μ_D³ + μ_M²·v_D/μ_D⁴`, 0 when
    /// μ_D = 0 or n ≤ 1. (Not guarded against rounding noise; [`TTestStatistic`] is.)
    pub fn variance(&self) -> f64 {
        let n = self.n;
        let mean_d = if n == 0.0 { 0.0 } else { self.d_sum / n };
        if mean_d == 0.0 || n <= 1.0 {
            return 0.0;
        }
        let mean_m = self.m_sum / n;
        let v_m = sample_variance(n, self.m_sum, self.m_sum_sq);
        let v_d = sample_variance(n, self.d_sum, self.d_sum_sq);
        // gbstats: pow(μ, 2), pow(μ, 3), pow(μ, 4) are libm pow; powf is the same call.
        v_m / mean_d.powf(2.0) - 2.0 * self.covariance() * mean_m / mean_d.powf(3.0)
            + mean_m.powf(2.0) * v_d / mean_d.powf(4.0)
    }

    /// Whether [`Self::variance`] is within the rounding noise of the sums (see the module
    /// documentation): `v·μ_D²·(n−1) ≤ 3nε·(√ΣM² + |r|·√ΣD²)²`.
    fn variance_is_noise(&self, variance: f64) -> bool {
        let n = self.n;
        let mean_d = self.d_sum / n;
        let r = self.gbstats_mean();
        let scale = self.m_sum_sq.abs().sqrt() + r.abs() * self.d_sum_sq.abs().sqrt();
        variance * mean_d * mean_d * (n - 1.0) <= 3.0 * n * f64::EPSILON * scale * scale
    }
}

impl TTestStatistic for RatioStats {
    fn n(&self) -> f64 {
        self.n
    }

    fn mean(&self) -> f64 {
        self.gbstats_mean()
    }

    fn variance(&self) -> f64 {
        RatioStats::variance(self)
    }

    /// gbstats: variance ≤ 0 (which covers n < 2 and ΣD = 0); here also a variance of
    /// rounding noise, and one that is not finite.
    fn has_zero_variance(&self) -> bool {
        let v = RatioStats::variance(self);
        !(v > 0.0 && v.is_finite()) || self.variance_is_noise(v)
    }
}

/// One row of `amba_ratio_results` (apart from the variant and its exposed count).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RatioRow {
    pub numerator_sum: f64,
    pub denominator_sum: f64,
    /// ΣM/ΣD, `None` when ΣD = 0.
    pub ratio: Option<f64>,
    pub comparison: Comparison,
}

/// The rows of `amba_ratio_results`, `arms[0]` the control: sums, ratio, and the
/// comparisons of [`compare_to_control`].
pub fn analyze_ratio(arms: &[RatioStats], alpha: f64) -> Vec<RatioRow> {
    arms.iter()
        .zip(compare_to_control(arms, alpha))
        .map(|(arm, comparison)| RatioRow {
            numerator_sum: arm.m_sum,
            denominator_sum: arm.d_sum,
            ratio: arm.ratio(),
            comparison,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(users: &[(f64, f64)]) -> RatioStats {
        RatioStats::from_users(users)
    }

    #[test]
    fn ratio_and_its_nulls() {
        assert_eq!(stats(&[(3.0, 2.0), (1.0, 2.0)]).ratio(), Some(1.0));
        assert_eq!(stats(&[(3.0, 0.0)]).ratio(), None);
        assert_eq!(RatioStats::default().ratio(), None);
        assert_eq!(RatioStats::default().variance(), 0.0);
    }

    #[test]
    fn no_answer_where_gbstats_has_none() {
        let ok = stats(&[(1.0, 2.0), (3.0, 2.0), (0.0, 1.0), (2.0, 4.0)]);
        let ok2 = stats(&[(2.0, 2.0), (3.0, 1.0), (1.0, 1.0), (2.0, 3.0)]);
        assert!(two_sided_ttest(&ok, &ok2, 0.05).is_some());
        // n < 2, ΣD = 0, control ratio 0, zero variance (identical users)
        for (c, t) in [
            (ok, stats(&[(1.0, 2.0)])),
            (stats(&[(1.0, 2.0)]), ok),
            (ok, stats(&[(0.0, 0.0), (0.0, 0.0)])),
            (stats(&[(0.0, 1.0), (0.0, 3.0)]), ok),
            (ok, stats(&[(1.0, 1.0); 10])),
            (ok, RatioStats::default()),
        ] {
            assert_eq!(two_sided_ttest(&c, &t, 0.05), None, "{c:?} {t:?}");
        }
        // Proportional users: the true variance is 0, whatever rounding leaves.
        let prop: Vec<(f64, f64)> = (0..1000)
            .map(|i| (3.0 * f64::from(i % 7), f64::from(i % 7)))
            .collect();
        assert!(stats(&prop).has_zero_variance());
        // alpha outside (0, 1)
        assert_eq!(two_sided_ttest(&ok, &ok2, 0.0), None);
        assert_eq!(two_sided_ttest(&ok, &ok2, 1.5), None);
    }

    #[test]
    fn holm_and_control_row() {
        let a = stats(&[(1.0, 2.0), (3.0, 2.0), (0.0, 1.0), (2.0, 4.0)]);
        let b = stats(&[(2.0, 2.0), (3.0, 1.0), (1.0, 1.0), (2.0, 3.0)]);
        let rows = analyze_ratio(&[a, b, RatioStats::default(), b], 0.05);
        assert_eq!(rows[0].comparison, Comparison::default());
        assert_eq!(rows[0].ratio, Some(6.0 / 9.0));
        assert_eq!(rows[2].comparison, Comparison::default());
        let p = rows[1].comparison.p_value.unwrap();
        assert_eq!(rows[1].comparison.p_value_holm, Some((2.0 * p).min(1.0)));
    }
}
