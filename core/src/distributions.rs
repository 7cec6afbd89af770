//! Probability distributions the statistics need, in one place: Student's t (two-sided
//! p-values and upper quantiles, accurate in relative terms deep into the tails and next to
//! the centre), the standard normal (CDF and a full-precision erfc), the chi-square
//! survival function, and the Welch–Satterthwaite degrees of freedom of a two-sample t-test.
//! [`crate::stats`] (`amba_results`) and [`crate::metric`] (`amba_metric_results`) both use
//! them; nothing here knows about experiments.

use crate::finite;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};
use statrs::function::erf::{erf, erfc};
use statrs::function::gamma::{gamma_ur, ln_gamma};

/// Welch–Satterthwaite degrees of freedom of the difference of two means with sample
/// variances `v_c`, `v_t` over `n_c`, `n_t` observations:
/// `(v_t/n_t + v_c/n_c)² / (v_t²/(n_t²(n_t−1)) + v_c²/(n_c²(n_c−1)))`.
pub fn welch_dof(v_c: f64, n_c: f64, v_t: f64, n_t: f64) -> f64 {
    let (a, b) = (v_t / n_t, v_c / n_c);
    (a + b).powi(2)
        / (v_t * v_t / (n_t * n_t * (n_t - 1.0)) + v_c * v_c / (n_c * n_c * (n_c - 1.0)))
}

/// Φ(x), the standard normal CDF (statrs' `Normal::cdf`, `erfc(−x/√2)/2`).
pub fn normal_cdf(x: f64) -> f64 {
    match Normal::new(0.0, 1.0) {
        Ok(standard_normal) => standard_normal.cdf(x),
        Err(_) => f64::NAN,
    }
}

/// P(X > x) for X chi-square with `dof` degrees of freedom (statrs' `ChiSquared::sf`).
/// None for dof <= 0 or NaN, or a result that is not finite.
pub fn chi_squared_sf(x: f64, dof: f64) -> Option<f64> {
    let chi2 = ChiSquared::new(dof).ok()?;
    finite(chi2.sf(x))
}

// ---------------------------------------------------------------------------------------
// Student's t: tail probabilities and quantiles, accurate in relative terms deep into the
// tails and next to the centre.

/// Below this many degrees of freedom the functions here answer None rather than risk an
/// inaccurate value (Welch's ν is never below 1: it is at least min(n_t, n_c) − 1).
pub const T_MIN_DOF: f64 = 0.01;

/// Two-sided p-value `2·P(T > |t|)` of Student's t with `dof` degrees of freedom (the
/// same as `2(1 − T(|t|; ν))`, without the cancellation that loses every p below 1e-16).
/// None for a NaN t or dof < [`T_MIN_DOF`] (or NaN).
pub fn t_two_sided_p_value(t: f64, dof: f64) -> Option<f64> {
    if t.is_nan() || !(dof >= T_MIN_DOF) {
        return None;
    }
    finite((2.0 * t_probabilities(t.abs(), dof).upper).min(1.0))
}

/// The upper quantile `T⁻¹(1 − p; ν)` for 0 < p <= 1/2 (so p = alpha/2 gives the
/// half-width factor of a two-sided 1 − alpha interval), by safeguarded Newton iteration
/// on the tail probabilities below: within about 1e-13 relative error wherever the result
/// is a double, for any p (alpha = 1e-300 included) and any dof >= [`T_MIN_DOF`]. None
/// outside that domain or where the quantile overflows a double.
/// (statrs' inverse incomplete beta function, used before, gave wrong answers for small
/// dof and small p, panicked for p <= 1e-200 and did not return for p = 1e-100.)
pub fn t_upper_quantile(p: f64, dof: f64) -> Option<f64> {
    if !(p > 0.0 && p <= 0.5) || !(dof >= T_MIN_DOF) {
        return None;
    }
    if p == 0.5 {
        return Some(0.0);
    }
    // Near the centre solve P(|T| < t) = 1 − 2p (exact in floating point for p >= 1/4),
    // elsewhere ln P(T > t) = ln p: both are well conditioned there.
    let central = p >= 0.25;
    let target = if central { 1.0 - 2.0 * p } else { p.ln() };
    // f(t) > 0 while t is below the quantile; f'(t) from the density.
    let f = |t: f64| {
        let pr = t_probabilities(t, dof);
        if central {
            target - pr.central
        } else {
            pr.upper.ln() - target
        }
    };
    let slope = |t: f64| {
        let pr = t_probabilities(t, dof);
        let density = t_density(t, dof);
        if central {
            -2.0 * density
        } else {
            -density / pr.upper
        }
    };
    // Bracket: f(lo) > 0 >= f(hi).
    let guess = initial_quantile_guess(p, dof);
    let mut lo = 0.0;
    let mut hi = if guess.is_finite() {
        (2.0 * guess).max(1.0)
    } else {
        1.0
    };
    while f(hi) > 0.0 {
        lo = hi;
        hi *= 16.0;
        if !hi.is_finite() {
            return None;
        }
    }
    let mut t = if guess.is_finite() {
        guess.clamp(lo, hi)
    } else {
        lo
    };
    if !(t > lo && t < hi) {
        t = if lo > 0.0 { (lo * hi).sqrt() } else { 0.5 * hi };
    }
    for _ in 0..400 {
        let value = f(t);
        if value == 0.0 {
            return finite(t);
        }
        if value > 0.0 {
            lo = t;
        } else {
            hi = t;
        }
        let step = value / slope(t);
        let mut next = t - step;
        if !(next > lo && next < hi) || !next.is_finite() {
            // Bisect, geometrically when the bracket spans orders of magnitude.
            next = if lo > 0.0 && hi / lo > 4.0 {
                (lo * hi).sqrt()
            } else {
                0.5 * (lo + hi)
            };
        }
        if (next - t).abs() <= 4.0 * f64::EPSILON * t || hi - lo <= 4.0 * f64::EPSILON * hi {
            return finite(next);
        }
        t = next;
    }
    finite(t)
}

/// A first guess for [`t_upper_quantile`] (the bracketing makes any positive guess work;
/// a good one saves iterations): the normal quantile with the first Cornish–Fisher term
/// for large dof, the power-law tail for small dof.
fn initial_quantile_guess(p: f64, dof: f64) -> f64 {
    // Upper normal quantile: z² ≈ l − ln l − ln 2π with l = −2 ln p (within 5% for p <= 0.05).
    let l = -2.0 * p.ln();
    let z = (l - l.ln() - (2.0 * std::f64::consts::PI).ln())
        .max(0.0)
        .sqrt();
    if dof >= 30.0 {
        return z + (z * z + 1.0) * z / (4.0 * dof);
    }
    // For large t, P(T > t) ≈ ν^(ν/2 − 1) t^(−ν) / B(ν/2, 1/2).
    let ln_t = ((dof / 2.0 - 1.0) * dof.ln() - ln_beta_half(dof / 2.0) - p.ln()) / dof;
    ln_t.exp().max(z)
}

/// Above this many degrees of freedom the regularized incomplete beta function is no
/// longer needed: Hill's normalizing transformation is within 2e-13 relative error
/// there (measured against 40-digit mpmath down to tails of 1e-300).
const T_TAIL_HILL_DOF: f64 = 1e4;

/// P(T > t) and P(|T| < t) = 1 − 2 P(T > t), each computed so that it keeps its relative
/// accuracy when it is small.
#[derive(Debug, Clone, Copy)]
struct TProbabilities {
    upper: f64,
    central: f64,
}

/// Tail probabilities of Student's t at t >= 0.
fn t_probabilities(t: f64, dof: f64) -> TProbabilities {
    let from_upper = |upper: f64| TProbabilities {
        upper,
        central: 1.0 - 2.0 * upper,
    };
    if t == f64::INFINITY {
        return from_upper(0.0);
    }
    if dof.is_infinite() || dof > T_TAIL_HILL_DOF {
        let y = if dof.is_infinite() {
            t
        } else {
            hill_normal_deviate(t, dof)
        };
        if !y.is_finite() {
            return from_upper(0.0); // t² overflowed: far beyond any representable tail
        }
        let x = y / std::f64::consts::SQRT_2;
        if x < 0.5 {
            return TProbabilities {
                upper: 0.5 * erfc(x),
                central: erf(x),
            };
        }
        return from_upper(0.5 * erfc_accurate(x));
    }
    // P(T > t) = I_h(ν/2, 1/2) / 2 with h = ν/(ν + t²); equivalently
    // (1 − I_x(1/2, ν/2)) / 2 with x = t²/(ν + t²). The continued fraction is evaluated on
    // whichever of the two converges, so neither probability comes from a difference near 0.
    let t2 = t * t;
    let a = dof / 2.0;
    let denom = dof + t2;
    let ln_beta = ln_beta_half(a);
    if !denom.is_finite() || t2 > 1e300 {
        // t² overflows (t > 1e150, so t² ≫ ν): h = ν/(ν + t²) ≈ ν/t² to far below double
        // rounding, x ≈ 1 and the continued fraction at h ≈ 0 is 1.
        let ln_h = dof.ln() - 2.0 * t.ln();
        return from_upper(0.5 * (a * ln_h - a.ln() - ln_beta).exp());
    }
    let h = dof / denom;
    let x = t2 / denom;
    // ln(h^a) = −a·ln(1 + t²/ν), and ln(x^(1/2)) = ln(t) − ln(√(ν + t²)): both exact in
    // relative terms where h or x is near 1.
    let ln_h_pow = -a * (t2 / dof).ln_1p();
    let ln_sqrt_x = t.ln() - 0.5 * denom.ln();
    if h < (a + 1.0) / (a + 2.5) {
        let front = (ln_h_pow + ln_sqrt_x - a.ln() - ln_beta).exp();
        let upper_twice = front * beta_continued_fraction(a, 0.5, h);
        TProbabilities {
            upper: 0.5 * upper_twice,
            central: 1.0 - upper_twice,
        }
    } else {
        let front = (ln_h_pow + ln_sqrt_x + std::f64::consts::LN_2 - ln_beta).exp();
        let central = front * beta_continued_fraction(0.5, a, x);
        TProbabilities {
            upper: 0.5 * (1.0 - central),
            central,
        }
    }
}

/// Density of Student's t at t.
fn t_density(t: f64, dof: f64) -> f64 {
    if dof.is_infinite() {
        return (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
    }
    (-ln_beta_half(dof / 2.0) - 0.5 * dof.ln() - (dof + 1.0) / 2.0 * (t * t / dof).ln_1p()).exp()
}

/// Hill (1970, CACM Algorithm 395): a normal deviate y with P(T_ν > t) ≈ P(Z > y), for
/// large ν.
fn hill_normal_deviate(t: f64, dof: f64) -> f64 {
    let a = dof - 0.5;
    let b = 48.0 * a * a;
    let y = a * (t * t / dof).ln_1p();
    (((((-0.4 * y - 3.3) * y - 24.0) * y - 85.5) / (0.8 * y * y + 100.0 + b) + y + 3.0) / b + 1.0)
        * y.sqrt()
}

/// erfc with full double precision: statrs' `erfc` is off by up to 1e-10 relative for
/// x >= 0.5, while its regularized upper incomplete gamma Q(1/2, x²) = erfc(x) is within
/// about 1e-13 (against mpmath). Below 0.5 statrs' erfc and erf are exact to 1 ulp or so.
pub fn erfc_accurate(x: f64) -> f64 {
    if x.is_nan() || x < 0.5 {
        erfc(x)
    } else if x > 30.0 {
        0.0 // erfc(27.3) is already below the smallest subnormal
    } else {
        gamma_ur(0.5, x * x)
    }
}

/// ln B(a, 1/2) = ln Γ(a) + ln √π − ln Γ(a + 1/2). For large a the difference of log-gammas
/// comes from its asymptotic series (Bernoulli polynomials at 1/2), not from subtracting
/// two large numbers.
fn ln_beta_half(a: f64) -> f64 {
    const LN_SQRT_PI: f64 = 0.572_364_942_924_700_1;
    if a < 15.0 {
        return ln_gamma(a) + LN_SQRT_PI - ln_gamma(a + 0.5);
    }
    // ln Γ(a + 1/2) − ln Γ(a) = ½ ln a − 1/(8a) + 1/(192a³) − 1/(640a⁵) + 17/(14336a⁷)
    //                           − 31/(18432a⁹) + …
    let r = 1.0 / (a * a);
    let series = (-1.0 / 8.0
        + r * (1.0 / 192.0 + r * (-1.0 / 640.0 + r * (17.0 / 14336.0 + r * (-31.0 / 18432.0)))))
        / a;
    LN_SQRT_PI - (0.5 * a.ln() + series)
}

/// Continued fraction of the regularized incomplete beta function (modified Lentz), so
/// that I_x(a, b) = x^a (1 − x)^b / (a B(a, b)) · cf; converges for x < (a + 1)/(a + b + 2).
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const MAX_ITERATIONS: u32 = 100_000;
    const FPMIN: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let tiny = |v: f64| if v.abs() < FPMIN { FPMIN } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / tiny(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=MAX_ITERATIONS {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / tiny(1.0 + aa * d);
        c = tiny(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / tiny(1.0 + aa * d);
        c = tiny(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_upper_quantile_edges() {
        // Accuracy against mpmath: tests/metric_reference.rs (204 quantiles).
        assert_eq!(t_upper_quantile(0.5, 3.0), Some(0.0));
        assert_eq!(t_upper_quantile(0.0, 3.0), None);
        assert_eq!(t_upper_quantile(0.6, 3.0), None);
        assert_eq!(t_upper_quantile(0.025, 0.0), None);
        // Where statrs panics or does not return: a number, and the right one.
        let q = t_upper_quantile(5e-301, 2.0).unwrap(); // P(T > t) = (1 − t/√(2 + t²))/2
        assert!(
            ((q - 1.0 / (2.0 * 5e-301f64).sqrt()) / q).abs() < 1e-12,
            "{q}"
        );
        assert!(t_upper_quantile(5e-101, 1000.0).is_some());
    }

    #[test]
    fn t_tail_known_values() {
        // scipy.stats.t.sf(t, dof) * 2
        let cases = [
            (2.0, 10.0, 0.07338803477074037),
            (0.5, 1.0, 0.7048327646991335),
            (40.0, 3.0, 3.4380680789158506e-05),
            (8.15440739518516, 99.0, 1.1194705006590606e-12),
            (1.96, 1e6, 0.04999606758526985),
            (1e-8, 5.0, 0.9999999924078662),
        ];
        for (t, dof, want) in cases {
            let got = t_two_sided_p_value(t, dof).unwrap();
            assert!(
                ((got - want) / want).abs() < 1e-12,
                "p({t}, {dof}) = {got}, want {want}"
            );
        }
        assert_eq!(t_two_sided_p_value(0.0, 3.0), Some(1.0));
        assert_eq!(t_two_sided_p_value(f64::INFINITY, 3.0), Some(0.0));
        assert_eq!(t_two_sided_p_value(1.0, 0.0), None);
    }
}
