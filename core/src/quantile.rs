//! Quantile metrics of `amba_quantile_results` (CONTRACT §13): the statistic of gbstats
//! 0.8.0's `QuantileClusteredStatistic` (events clustered by user), tested with the
//! two-sided t-test that ratio metrics use ([`crate::ratio::two_sided_ttest`]).
//!
//! ## Sufficient statistics ([`QuantileStats::from_users`])
//!
//! Over the N counted values of a variant (events carrying the value, from its exposed
//! users), with `pd(q)` = PostgreSQL's `percentile_disc(q)` ([`percentile_disc`]) and
//! z = Φ⁻¹(0.975) = [`Z_975`] whatever alpha is:
//! - `n = n_star = N`, `quantile_hat = pd(nu)`;
//! - `quantile_lower = pd(max(0, nu − z·√(nu(1−nu)/N)))`,
//!   `quantile_upper = pd(min(1, nu + z·√(nu(1−nu)/N)))`;
//! - per user u with d_u values of which s_u are ≤ quantile_hat: `main_sum = Σs_u`,
//!   `main_sum_squares = Σs_u²`, `denominator_sum = Σd_u`, `denominator_sum_squares = Σd_u²`,
//!   `main_denominator_sum_product = Σs_u·d_u`; `n_clusters` = the number of exposed users
//!   (users without values count, with s_u = d_u = 0).
//!
//! ## Variance (gbstats `QuantileStatistic` / `QuantileClusteredStatistic`)
//!
//! - i.i.d. part: `v_iid = (n_star/n)·(n − 1)·((upper − lower)/(2z))²`;
//! - cluster correction, with C = n_clusters, `μ_s = Σs/C`, `μ_d = Σd/C`,
//!   `σ²_s = (Σs²/C − μ_s²)·C/(C−1)`, `σ²_d` likewise, `σ_sd = (Σsd/C − μ_s μ_d)·C/(C−1)`:
//!   `v_cluster = (σ²_s − 2μ_s σ_sd/μ_d + μ_s² σ²_d/μ_d²) / (C μ_d²)`;
//! - `variance_init = v_iid · v_cluster / (nu(1−nu)/n)`, 0 when n ≤ 1, nu = 0, C ≤ 1 or
//!   Σd ≤ 0;
//! - `variance = variance_init` for n < 100, else `max(variance_init, 1e-5)` (a floor).
//!
//! The test's sample size is n (events), its estimate `quantile_hat`.
//!
//! ## When gbstats has no answer (`_has_zero_variance`, and the test's own rule)
//!
//! - either arm with `n ≤ z²·nu/(1−nu)` or `n ≤ z²·(1−nu)/nu` (too few values for the
//!   bounds to lie inside the data; n = 0 and n = 1 included: 3.84 values for the median,
//!   34.6 for p90 or p10, 380 for p99);
//! - either arm with `variance_init ≤ 0` and n < 1000 (with n ≥ 1000 a zero
//!   `variance_init` passes, through the floor: the variance is 1e-5);
//! - the control's `quantile_hat` = 0.
//!
//! Formulas are evaluated in gbstats' order of operations; tests/ratio_quantile_reference.rs
//! checks them, and [`QuantileStats::from_users`], against gbstats and an independent
//! Python computation.

use crate::finite;
use crate::ratio::{compare_to_control, Comparison, TTestStatistic};

pub use crate::ratio::{two_sided_ttest, TestResult};

/// z = Φ⁻¹(0.975) (scipy `norm.ppf(0.975)`, bit for bit), the multiplier gbstats uses for
/// the quantile bounds and its size rule whatever alpha is.
pub const Z_975: f64 = 1.959963984540054;

/// Below this many values a zero `variance_init` means no answer (gbstats).
const ZERO_VARIANCE_MAX_N: f64 = 1000.0;
/// From this many values on the variance is at least [`VARIANCE_FLOOR`] (gbstats).
const FLOOR_MIN_N: f64 = 100.0;
const VARIANCE_FLOOR: f64 = 1e-5;

/// PostgreSQL's `percentile_disc(q)` over values sorted ascending: the first value whose
/// position in the ordering reaches the fraction q, i.e. the value at 1-based position
/// `max(1, ⌈q·N⌉)` (PostgreSQL's orderedsetaggs.c, `q·N` in double precision). `None` for
/// no values or q outside [0, 1] (PostgreSQL raises an error there).
pub fn percentile_disc(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let k = (q * sorted.len() as f64).ceil() as usize; // q in [0, 1]: k in [0, N]
    sorted.get(k.max(1).min(sorted.len()) - 1).copied()
}

/// [`percentile_disc`] over distinct values ascending, each with how often it occurs
/// (`n` in all): the value whose cumulative count first reaches `max(1, ⌈q·n⌉)`.
fn percentile_disc_counted(counted: &[(f64, f64)], n: f64, q: f64) -> Option<f64> {
    if counted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let k = (q * n).ceil().max(1.0);
    let mut seen = 0.0;
    for &(v, count) in counted {
        seen += count;
        if seen >= k {
            return Some(v);
        }
    }
    counted.last().map(|c| c.0)
}

/// Sufficient statistics of one variant of a quantile metric (CONTRACT §13; the fields of
/// gbstats' `QuantileClusteredStatistic`). With n = 0 the three quantile fields are not
/// used (0 from [`QuantileStats::from_users`]; the test has no answer there anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuantileStats {
    /// Number of values (counted events carrying the value).
    pub n: f64,
    /// The sample size the bounds were taken at (= n).
    pub n_star: f64,
    /// The quantile level, 0 < nu < 1.
    pub nu: f64,
    pub quantile_hat: f64,
    pub quantile_lower: f64,
    pub quantile_upper: f64,
    pub main_sum: f64,
    pub main_sum_squares: f64,
    pub denominator_sum: f64,
    pub denominator_sum_squares: f64,
    pub main_denominator_sum_product: f64,
    /// Exposed users of the variant.
    pub n_clusters: f64,
}

impl QuantileStats {
    /// The statistics of a variant from its exposed users' values (one list per user,
    /// empty for users without such events), at level `nu` (0 < nu < 1: the caller checks;
    /// outside it the quantile fields are 0 and the test has no answer).
    pub fn from_users<U: AsRef<[f64]>>(users: &[U], nu: f64) -> QuantileStats {
        let groups: Vec<(&[f64], f64)> = users.iter().map(|u| (u.as_ref(), 1.0)).collect();
        QuantileStats::from_user_groups(&groups, nu)
    }

    /// As [`QuantileStats::from_users`], with users that have the same values given once:
    /// `(values, users)`. The counting query groups users this way, so that the many users
    /// without values, or with one common value, cross SPI as one row.
    pub fn from_user_groups<U: AsRef<[f64]>>(groups: &[(U, f64)], nu: f64) -> QuantileStats {
        // Every value with the number of times it occurs, ascending.
        let mut values: Vec<(f64, f64)> = groups
            .iter()
            .flat_map(|(u, users)| u.as_ref().iter().map(move |&v| (v, *users)))
            .collect();
        values.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut counted: Vec<(f64, f64)> = Vec::with_capacity(values.len());
        for (v, k) in values {
            match counted.last_mut() {
                Some(last) if last.0.total_cmp(&v).is_eq() => last.1 += k,
                _ => counted.push((v, k)),
            }
        }
        let n: f64 = counted.iter().map(|c| c.1).sum();
        let mut stats = QuantileStats {
            n,
            n_star: n,
            nu,
            n_clusters: groups.iter().map(|g| g.1).sum(),
            ..QuantileStats::default()
        };
        if let Some(hat) = percentile_disc_counted(&counted, n, nu) {
            let half = Z_975 * (nu * (1.0 - nu) / n).sqrt();
            stats.quantile_hat = hat;
            stats.quantile_lower =
                percentile_disc_counted(&counted, n, (nu - half).max(0.0)).unwrap_or(hat);
            stats.quantile_upper =
                percentile_disc_counted(&counted, n, (nu + half).min(1.0)).unwrap_or(hat);
        }
        for (u, users) in groups {
            let u = u.as_ref();
            let d = u.len() as f64;
            let s = u.iter().filter(|&&v| v <= stats.quantile_hat).count() as f64;
            stats.main_sum += users * s;
            stats.main_sum_squares += users * s * s;
            stats.denominator_sum += users * d;
            stats.denominator_sum_squares += users * d * d;
            stats.main_denominator_sum_product += users * s * d;
        }
        stats
    }

    /// `quantile_value` of the row: `quantile_hat`, `None` when there are no values.
    pub fn quantile_value(&self) -> Option<f64> {
        if self.n > 0.0 {
            finite(self.quantile_hat)
        } else {
            None
        }
    }

    /// The cluster-corrected variance of the share of values ≤ quantile_hat
    /// (gbstats `get_cluster_variance`). Needs n_clusters ≥ 2 and denominator_sum > 0.
    fn cluster_variance(&self) -> f64 {
        let c = self.n_clusters;
        let mu_s = self.main_sum / c;
        let mu_n = self.denominator_sum / c;
        let sigma_2_s = (self.main_sum_squares / c - mu_s * mu_s) * c / (c - 1.0);
        let sigma_2_n = (self.denominator_sum_squares / c - mu_n * mu_n) * c / (c - 1.0);
        let sigma_s_n = (self.main_denominator_sum_product / c - mu_s * mu_n) * c / (c - 1.0);
        let num =
            sigma_2_s - 2.0 * mu_s * sigma_s_n / mu_n + mu_s.powi(2) * sigma_2_n / mu_n.powi(2);
        let den = c * mu_n.powi(2);
        num / den
    }

    /// gbstats' `variance_init`: `v_iid · v_cluster / (nu(1−nu)/n)`, 0 when n ≤ 1, nu = 0,
    /// n_clusters ≤ 1 or denominator_sum ≤ 0.
    pub fn variance_init(&self) -> f64 {
        if self.n <= 1.0 || self.nu == 0.0 || self.n_clusters <= 1.0 || self.denominator_sum <= 0.0
        {
            return 0.0;
        }
        let num = self.quantile_upper - self.quantile_lower;
        let den = 2.0 * Z_975;
        let v_iid = (self.n_star / self.n) * (self.n - 1.0) * (num / den).powi(2);
        let v_nu_iid = self.nu * (1.0 - self.nu) / self.n;
        v_iid * self.cluster_variance() / v_nu_iid
    }

    /// gbstats' `variance`: `variance_init` for n < 100, else at least 1e-5.
    pub fn variance(&self) -> f64 {
        let init = self.variance_init();
        if self.n < FLOOR_MIN_N || !(VARIANCE_FLOOR > init) {
            init
        } else {
            VARIANCE_FLOOR
        }
    }
}

impl TTestStatistic for QuantileStats {
    fn n(&self) -> f64 {
        self.n
    }

    fn mean(&self) -> f64 {
        self.quantile_hat
    }

    fn variance(&self) -> f64 {
        QuantileStats::variance(self)
    }

    /// gbstats' `QuantileStatistic._has_zero_variance`: too few values for the bounds
    /// (`n ≤ z²·nu/(1−nu)` or `n ≤ z²·(1−nu)/nu`), or `variance_init ≤ 0` with n < 1000.
    /// Also (where gbstats would divide by zero or compute NaN) nu outside (0, 1) and a
    /// variance that is not finite.
    fn has_zero_variance(&self) -> bool {
        let nu = self.nu;
        if !(nu > 0.0 && nu < 1.0) {
            return true;
        }
        let z2 = Z_975 * Z_975;
        if self.n <= z2 * nu / (1.0 - nu) || self.n <= z2 * (1.0 - nu) / nu {
            return true;
        }
        let init = self.variance_init();
        (init <= 0.0 && self.n < ZERO_VARIANCE_MAX_N) || !QuantileStats::variance(self).is_finite()
    }
}

/// One row of `amba_quantile_results` (apart from the variant and its exposed count).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuantileRow {
    /// n: the values counted.
    pub event_count: f64,
    /// quantile_hat, `None` without values.
    pub quantile_value: Option<f64>,
    pub comparison: Comparison,
}

/// The rows of `amba_quantile_results`, `arms[0]` the control (every arm at the same nu):
/// the quantile, and the comparisons of [`compare_to_control`] (Holm included).
pub fn analyze_quantile(arms: &[QuantileStats], alpha: f64) -> Vec<QuantileRow> {
    arms.iter()
        .zip(compare_to_control(arms, alpha))
        .map(|(arm, comparison)| QuantileRow {
            event_count: arm.n,
            quantile_value: arm.quantile_value(),
            comparison,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributions::erfc_accurate;

    #[test]
    fn z_is_the_normal_975_quantile() {
        // P(Z > z) = erfc(z/√2)/2 = 0.025 (to the accuracy of erfc, ~1e-13).
        let tail = 0.5 * erfc_accurate(Z_975 / std::f64::consts::SQRT_2);
        assert!((tail / 0.025 - 1.0).abs() < 1e-12, "{tail}");
    }

    #[test]
    fn percentile_disc_like_postgres() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile_disc(&v, 0.0), Some(1.0));
        assert_eq!(percentile_disc(&v, 0.1), Some(1.0)); // ⌈1⌉ = 1
        assert_eq!(percentile_disc(&v, 0.11), Some(2.0));
        assert_eq!(percentile_disc(&v, 0.5), Some(5.0));
        assert_eq!(percentile_disc(&v, 0.9), Some(9.0));
        assert_eq!(percentile_disc(&v, 1.0), Some(10.0));
        assert_eq!(percentile_disc(&[7.0], 0.3), Some(7.0));
        // q·N rounded up by double arithmetic, and down: what PostgreSQL 15 answers for
        // generate_series(1, 25) at 0.28 (7.000000000000001 → 8th) and 1..90 at 0.7
        // (62.99999999999999 → 63rd).
        let s25: Vec<f64> = (1..=25).map(f64::from).collect();
        let s90: Vec<f64> = (1..=90).map(f64::from).collect();
        assert_eq!(percentile_disc(&s25, 0.28), Some(8.0));
        assert_eq!(percentile_disc(&s25, 0.9), Some(23.0));
        assert_eq!(percentile_disc(&s90, 0.7), Some(63.0));
        assert_eq!(percentile_disc(&[], 0.5), None);
        assert_eq!(percentile_disc(&v, -0.1), None);
        assert_eq!(percentile_disc(&v, f64::NAN), None);
    }

    #[test]
    fn sums_from_users() {
        let users: Vec<Vec<f64>> = vec![vec![1.0, 5.0, 2.0], vec![], vec![3.0], vec![4.0, 4.0]];
        let s = QuantileStats::from_users(&users, 0.5);
        assert_eq!((s.n, s.n_star, s.n_clusters), (6.0, 6.0, 4.0));
        assert_eq!(s.quantile_hat, 3.0); // sorted 1 2 3 4 4 5, ⌈3⌉ = 3rd
        assert_eq!((s.quantile_lower, s.quantile_upper), (1.0, 5.0));
        // s_u = 2, 0, 1, 0; d_u = 3, 0, 1, 2
        assert_eq!((s.main_sum, s.main_sum_squares), (3.0, 5.0));
        assert_eq!((s.denominator_sum, s.denominator_sum_squares), (6.0, 14.0));
        assert_eq!(s.main_denominator_sum_product, 7.0);
        let empty = QuantileStats::from_users(&vec![Vec::<f64>::new(); 3], 0.9);
        assert_eq!(
            (empty.n, empty.n_clusters, empty.quantile_value()),
            (0.0, 3.0, None)
        );
        assert!(empty.has_zero_variance());
    }

    #[test]
    fn grouped_users_equal_the_users_one_by_one() {
        let users: Vec<Vec<f64>> = vec![
            vec![1.0, 5.0, 2.0],
            vec![],
            vec![3.0],
            vec![4.0, 4.0],
            vec![],
            vec![3.0],
            vec![3.0],
            vec![5.0, 1.0, 2.0],
        ];
        let groups: Vec<(Vec<f64>, f64)> = vec![
            (vec![], 2.0),
            (vec![3.0], 3.0),
            (vec![1.0, 5.0, 2.0], 1.0),
            (vec![4.0, 4.0], 1.0),
            (vec![5.0, 1.0, 2.0], 1.0),
        ];
        for nu in [0.1, 0.28, 0.5, 0.7, 0.9, 0.99] {
            assert_eq!(
                QuantileStats::from_user_groups(&groups, nu),
                QuantileStats::from_users(&users, nu),
                "nu {nu}"
            );
            // And against percentile_disc over every value, one by one.
            let mut all: Vec<f64> = users.iter().flatten().copied().collect();
            all.sort_by(f64::total_cmp);
            assert_eq!(
                Some(QuantileStats::from_user_groups(&groups, nu).quantile_hat),
                percentile_disc(&all, nu)
            );
        }
    }

    #[test]
    fn size_rule_floor_and_zero_variance() {
        // Median: 3 values are too few (3 ≤ 3.84), 4 are not.
        let three = QuantileStats::from_users(&[vec![1.0], vec![2.0], vec![3.0]], 0.5);
        assert!(three.has_zero_variance());
        // Every value equal: variance_init 0; no answer below 1000 values, 1e-5 from there.
        let equal = |n: usize| QuantileStats::from_users(&vec![vec![7.0]; n], 0.5);
        assert_eq!(equal(999).variance_init(), 0.0);
        assert!(equal(999).has_zero_variance());
        assert!(!equal(1000).has_zero_variance());
        assert_eq!(equal(1000).variance(), 1e-5);
        assert_eq!(equal(50).variance(), 0.0);
    }
}
