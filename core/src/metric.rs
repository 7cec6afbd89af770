//! Mean metrics of `amba_metric_results` (SPEC §3c): Welch's t-test of the
//! difference of means, relative lift with its delta-method interval, Holm, and CUPED, from
//! per-variant sufficient statistics. Every undefined case is `None` (SQL NULL), never NaN
//! or ±inf.
//!
//! The formulas are those of GrowthBook's gbstats 0.8.0 (`TwoSidedTTest` with
//! `SampleMeanStatistic` / `RegressionAdjustedStatistic`); where gbstats gives up with its
//! uninformative default but the contract defines a value (a control mean of 0 for the
//! absolute difference, one arm with zero variance), the contract value is returned.

use crate::distributions::welch_dof;
use crate::finite;
use crate::stats::holm;

// Student's t moved to `distributions`; these names stay importable from here.
pub use crate::distributions::{t_two_sided_p_value, t_upper_quantile, T_MIN_DOF};

/// Sufficient statistics of one variant: Y per user (and X, the pre-period covariate, for CUPED).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeanArm {
    pub n: f64,
    pub sum: f64,
    pub sum_sq: f64,
    pub x_sum: f64,
    pub x_sum_sq: f64,
    pub xy_sum: f64,
}

/// One row of `amba_metric_results` (apart from the variant and its count).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricRow {
    pub mean: Option<f64>,
    pub stddev: Option<f64>,
    pub delta: Option<f64>,
    pub delta_ci_low: Option<f64>,
    pub delta_ci_high: Option<f64>,
    pub p_value: Option<f64>,
    pub p_value_holm: Option<f64>,
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
    pub cuped_theta: Option<f64>,
}

/// `Σ(a − ā)(b − b̄)` from raw sums: `sum_ab − sum_a·sum_b/n`.
fn co_moment(n: f64, sum_a: f64, sum_b: f64, sum_ab: f64) -> f64 {
    sum_ab - sum_a * sum_b / n
}

/// Relative size of the rounding noise that a centred sum computed from raw sums can carry.
/// The one-pass formula cancels when the spread is tiny next to the values: 1000 users all
/// with Y = 9.99 give ΣY² − (ΣY)²/n ≈ 3e-9 instead of 0 (a variance of 3e-12, and a
/// "significant" difference out of nothing). A double sum of n terms is off by at most
/// (n − 1)·ε·Σ|terms|, so a centred sum below `noise_scale(n)` times ΣY² (for CUPED's
/// Y − θX: times (√ΣY² + |θ|·√ΣX²)², which bounds every term by Cauchy–Schwarz) is rounding
/// noise, not spread, and counts as 0. Only data whose values agree to about √(3nε)
/// relative (5 significant digits at n = 10⁶) are affected, and for those the one-pass
/// variance has no reliable digit left anyway.
fn noise_scale(n: f64) -> f64 {
    3.0 * n * f64::EPSILON
}

/// Sample variance `(SS − S²/n)/(n − 1)`, 0 when it is within rounding noise of 0 (or
/// negative by rounding). Needs n >= 2.
fn sample_variance(n: f64, sum: f64, sum_sq: f64) -> f64 {
    let m2 = co_moment(n, sum, sum, sum_sq);
    if m2 <= noise_scale(n) * sum_sq.abs() {
        0.0
    } else {
        m2 / (n - 1.0)
    }
}

/// Per-arm moments used by the comparisons (n >= 2).
#[derive(Debug, Clone, Copy)]
struct Moments {
    n: f64,
    mean_y: f64,
    mean_x: f64,
    /// Unguarded centred sums: Σ(Y−Ȳ)², Σ(X−X̄)², Σ(X−X̄)(Y−Ȳ).
    m2_y: f64,
    m2_x: f64,
    c_xy: f64,
    sum_sq: f64,
    x_sum_sq: f64,
}

impl Moments {
    fn of(arm: &MeanArm) -> Moments {
        let n = arm.n;
        Moments {
            n,
            mean_y: arm.sum / n,
            mean_x: arm.x_sum / n,
            m2_y: co_moment(n, arm.sum, arm.sum, arm.sum_sq),
            m2_x: co_moment(n, arm.x_sum, arm.x_sum, arm.x_sum_sq),
            c_xy: co_moment(n, arm.x_sum, arm.sum, arm.xy_sum),
            sum_sq: arm.sum_sq,
            x_sum_sq: arm.x_sum_sq,
        }
    }

    /// Variance of Y − θX in the arm, `v_Y + θ² v_X − 2θ Cov(Y, X)` (SPEC §3c), 0 when
    /// within rounding noise of 0. With θ = 0 it is exactly `v_Y`.
    fn adjusted_variance(&self, theta: f64) -> f64 {
        let m2 = if theta == 0.0 {
            self.m2_y
        } else {
            self.m2_y + theta * theta * self.m2_x - 2.0 * theta * self.c_xy
        };
        let scale = self.sum_sq.abs().sqrt() + theta.abs() * self.x_sum_sq.abs().sqrt();
        if m2 <= noise_scale(self.n) * scale * scale {
            0.0
        } else {
            m2 / (self.n - 1.0)
        }
    }
}

/// CUPED θ pooled over a pair of arms: `Cov(Y, X)/Var(X)` over the n_t + n_c users with the
/// sums added; 0 when the pooled Var(X) or Var(Y) is 0 (or θ is not finite).
fn pooled_theta(c: &MeanArm, t: &MeanArm) -> f64 {
    let n = c.n + t.n;
    let (sy, sx) = (c.sum + t.sum, c.x_sum + t.x_sum);
    let var_y = sample_variance(n, sy, c.sum_sq + t.sum_sq);
    let var_x = sample_variance(n, sx, c.x_sum_sq + t.x_sum_sq);
    if !(var_x > 0.0 && var_y > 0.0 && var_x.is_finite() && var_y.is_finite()) {
        return 0.0;
    }
    let cov = co_moment(n, sx, sy, c.xy_sum + t.xy_sum) / (n - 1.0);
    let theta = cov / var_x;
    if theta.is_finite() {
        theta
    } else {
        0.0
    }
}

/// The comparison columns of one non-control arm (everything but `p_value_holm`).
fn compare(control: &MeanArm, treatment: &MeanArm, alpha: f64, cuped: bool) -> MetricRow {
    let mut row = MetricRow::default();
    if !(control.n >= 2.0 && treatment.n >= 2.0) {
        return row;
    }
    let theta = if cuped {
        pooled_theta(control, treatment)
    } else {
        0.0
    };
    let (mc, mt) = (Moments::of(control), Moments::of(treatment));
    let (v_c, v_t) = (mc.adjusted_variance(theta), mt.adjusted_variance(theta));
    let (n_c, n_t) = (mc.n, mt.n);
    let var_d = v_t / n_t + v_c / n_c;
    if !(var_d > 0.0) || !var_d.is_finite() {
        return row;
    }
    let (adj_c, adj_t) = if theta == 0.0 {
        (mc.mean_y, mt.mean_y)
    } else {
        (mc.mean_y - theta * mc.mean_x, mt.mean_y - theta * mt.mean_x)
    };
    let delta = adj_t - adj_c;
    let dof = welch_dof(v_c, n_c, v_t, n_t);
    let Some(delta) = finite(delta) else {
        return row;
    };
    let sd = var_d.sqrt();
    // T⁻¹(1 − alpha/2; ν) from the upper tail: 1 − alpha/2 would round to 1 for alpha
    // below ~2e-16.
    let quantile = t_upper_quantile(alpha / 2.0, dof);

    row.delta = Some(delta);
    if let Some(q) = quantile {
        let half = q * sd;
        row.delta_ci_low = finite(delta - half);
        row.delta_ci_high = finite(delta + half);
    }
    row.p_value = t_two_sided_p_value(delta / sd, dof);
    row.cuped_theta = cuped.then_some(theta);

    // Lift: divided by, and its variance taken with, the unadjusted means.
    let (mean_c, mean_t) = (mc.mean_y, mt.mean_y);
    if mean_c != 0.0 && mean_c.is_finite() && mean_t.is_finite() {
        let lift = delta / mean_c;
        let mc2 = mean_c * mean_c;
        let var_l = v_t / (mc2 * n_t) + v_c * mean_t * mean_t / (mc2 * mc2 * n_c);
        if let (Some(lift), true) = (finite(lift), var_l >= 0.0 && var_l.is_finite()) {
            row.lift = Some(lift);
            if let Some(q) = quantile {
                let half = q * var_l.sqrt();
                row.lift_ci_low = finite(lift - half);
                row.lift_ci_high = finite(lift + half);
            }
        }
    }
    row
}

/// One row per arm, arms[0] the control. `cuped`: use the X sums (SPEC §3c CUPED rules).
///
/// - `mean` = S/n (None when n = 0), `stddev` = √((SS − S²/n)/(n − 1)) (None when n < 2),
///   both unadjusted;
/// - per non-control arm t against the control c: `delta` with its Welch t interval and
///   two-sided p-value, `lift` = delta / mean_c with its delta-method interval (same ν),
///   `p_value_holm` over the non-control p-values, and with `cuped` θ pooled over the pair;
/// - the control row has no comparison columns; n_t < 2, n_c < 2 or var_d = 0 leave them
///   all None (`cuped_theta` too); mean_c = 0 leaves the lift columns None.
pub fn analyze_means(arms: &[MeanArm], alpha: f64, cuped: bool) -> Vec<MetricRow> {
    let control = arms.first().copied().unwrap_or_default();
    let mut rows: Vec<MetricRow> = arms
        .iter()
        .enumerate()
        .map(|(i, arm)| {
            let mut row = if i == 0 {
                MetricRow::default()
            } else {
                compare(&control, arm, alpha, cuped)
            };
            row.mean = if arm.n > 0.0 {
                finite(arm.sum / arm.n)
            } else {
                None
            };
            row.stddev = if arm.n >= 2.0 {
                finite(sample_variance(arm.n, arm.sum, arm.sum_sq).sqrt())
            } else {
                None
            };
            row
        })
        .collect();
    let p_values: Vec<Option<f64>> = rows.iter().map(|r| r.p_value).collect();
    for (row, adjusted) in rows.iter_mut().zip(holm(&p_values)) {
        row.p_value_holm = adjusted;
    }
    rows
}

/// PostgreSQL's `percentile_cont(q)` over values sorted ascending: linear interpolation at
/// position q·(n − 1), `lo + (q·(n−1) − ⌊q·(n−1)⌋)·(hi − lo)`. None for no values, q
/// outside [0, 1] (PostgreSQL raises an error there) or a non-finite result.
pub fn percentile_cont(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let position = q * (sorted.len() - 1) as f64;
    let first = position.floor();
    let second = position.ceil();
    let lo = sorted[first as usize];
    let hi = sorted[second as usize];
    if first == second {
        return finite(lo);
    }
    finite(lo + (position - first) * (hi - lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(values: &[f64]) -> MeanArm {
        let mut a = MeanArm {
            n: values.len() as f64,
            ..Default::default()
        };
        for v in values {
            a.sum += v;
            a.sum_sq += v * v;
        }
        a
    }

    #[test]
    fn percentile_cont_interpolates_like_postgres() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(percentile_cont(&v, 0.0), Some(1.0));
        assert_eq!(percentile_cont(&v, 1.0), Some(8.0));
        assert_eq!(percentile_cont(&v, 0.5), Some(3.0)); // position 1.5
        assert!((percentile_cont(&v, 0.9).unwrap() - 6.8).abs() < 1e-14); // position 2.7
        assert_eq!(percentile_cont(&[5.0], 0.3), Some(5.0));
        assert_eq!(percentile_cont(&[], 0.5), None);
        assert_eq!(percentile_cont(&v, 1.5), None);
        assert_eq!(percentile_cont(&v, f64::NAN), None);
    }

    #[test]
    fn null_rules() {
        let rows = analyze_means(
            &[
                arm(&[1.0, 2.0, 3.0]),
                arm(&[2.0]),
                arm(&[]),
                arm(&[1.0, 5.0]),
            ],
            0.05,
            false,
        );
        assert_eq!(rows[0].delta, None);
        assert_eq!(rows[0].mean, Some(2.0));
        assert_eq!(rows[0].stddev, Some(1.0));
        assert_eq!(rows[1].mean, Some(2.0));
        assert_eq!(
            (rows[1].stddev, rows[1].delta, rows[1].p_value),
            (None, None, None)
        );
        assert_eq!(
            (rows[2].mean, rows[2].stddev, rows[2].delta),
            (None, None, None)
        );
        assert!(rows[3].delta.is_some() && rows[3].p_value_holm == rows[3].p_value);
        // All equal (not exactly representable): variance 0, not rounding noise.
        let rows = analyze_means(&[arm(&[9.99; 1000]), arm(&[9.99; 700])], 0.05, true);
        assert_eq!(rows[0].stddev, Some(0.0));
        assert_eq!(rows[1].delta, None);
        assert_eq!(rows[1].cuped_theta, None);
        // Control mean 0: delta defined, lift not.
        let rows = analyze_means(&[arm(&[0.0, 0.0, 0.0]), arm(&[0.0, 1.0, 2.0])], 0.05, false);
        assert_eq!(rows[1].delta, Some(1.0));
        assert!(rows[1].p_value.is_some());
        assert_eq!((rows[1].lift, rows[1].lift_ci_low), (None, None));
    }
}
