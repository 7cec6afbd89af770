//! Bandits (CONTRACT 14) against reference values, and a simulated bandit.
//!
//! The fixture is committed; regenerate it with
//!
//! ```text
//! AMBA_GROWTHBOOK_REPO=/path/to/growthbook python3 scripts/fixtures/bandit_reference.py
//! ```
//!
//! It holds per-period sums of simulated users (and the users' values for a small case) or
//! estimates given directly, the period-weighted estimates computed in Python from the raw
//! values, the posteriors, and best-arm / second-best probabilities by scipy.integrate.quad,
//! with GrowthBook's own Monte Carlo bandit (gbstats `Bandits.compute_result`, main branch,
//! 10⁴ draws) beside them.
//!
//! Tolerances (never loosened to make a case pass):
//! - estimates μ_i, σ²_i, posterior means and sds, interval ends: 1e-9 relative (a
//!   reference of exactly 0 must be 0); exposed counts exactly;
//! - best-arm, second-best and top-two probabilities and floored weights: 1e-6 absolute;
//!   each set sums to 1 within 1e-9;
//! - against gbstats' 10⁴ draws: ±0.02 (the contract's promise).
//!
//! The simulation (`simulated_bandit_*`) runs a 3-arm bandit over 20 periods with this
//! module's functions, with conversion rates that drift over time equally for all arms.

use amba_core::bandit::{
    bandit_weights, best_arm_probabilities, period_weighted_estimates, posterior,
    rank_probabilities, ArmEstimate, PeriodStats, Posterior,
};
use amba_core::srm::{srm_p_value, srm_p_value_by_version, WeightVersion};
use serde_json::Value;

const BANDIT_REFERENCE: &str = include_str!("fixtures/bandit_reference.json");

const REL: f64 = 1e-9;
const ABS_PROBABILITY: f64 = 1e-6;
const SUM_TO_ONE: f64 = 1e-9;
const GBSTATS: f64 = 0.02;

fn doc() -> Value {
    serde_json::from_str(BANDIT_REFERENCE).expect("fixture is valid JSON")
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

fn opt_f64(v: &Value) -> Option<f64> {
    if v.is_null() {
        None
    } else {
        Some(f(v))
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(f).collect()
}

fn relative_error(actual: f64, expected: f64) -> f64 {
    if actual == expected {
        0.0
    } else {
        (actual - expected).abs() / expected.abs()
    }
}

/// The case's inputs as the core takes them: per period and arm from the sums (and from
/// the values where the case has them), or the estimates themselves.
fn case_estimates(case: &Value, failures: &mut Vec<String>) -> Vec<ArmEstimate> {
    let name = case["name"].as_str().unwrap();
    if case["source"] == "estimates" {
        return case["estimates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| ArmEstimate {
                exposed: 0,
                mean: opt_f64(&e["mean"]),
                variance: opt_f64(&e["variance"]),
            })
            .collect();
    }
    let rows = case["periods"].as_array().unwrap();
    let from_sums: Vec<Vec<PeriodStats>> = rows
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    PeriodStats::from_sums(c["n"].as_u64().unwrap(), f(&c["sum"]), f(&c["sum_sq"]))
                })
                .collect()
        })
        .collect();
    let estimates = period_weighted_estimates(&from_sums);
    if rows[0][0].get("values").is_some() {
        let from_values: Vec<Vec<PeriodStats>> = rows
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| PeriodStats::from_values(&floats(&c["values"])))
                    .collect()
            })
            .collect();
        let by_values = period_weighted_estimates(&from_values);
        for (i, (a, b)) in by_values.iter().zip(&estimates).enumerate() {
            let close = a.exposed == b.exposed
                && relative_error(a.mean.unwrap(), b.mean.unwrap()) <= REL
                && relative_error(a.variance.unwrap(), b.variance.unwrap()) <= REL;
            if !close {
                failures.push(format!(
                    "{name}: arm {i}: from values {a:?}, from sums {b:?}"
                ));
            }
        }
    }
    // Against the estimates Python computed from the raw rows.
    let expected = case["expected"]["estimates"].as_array().unwrap();
    for (i, (got, want)) in estimates.iter().zip(expected).enumerate() {
        let ok = Some(got.exposed) == want["exposed"].as_u64()
            && match (got.mean, opt_f64(&want["mean"])) {
                (Some(a), Some(b)) => relative_error(a, b) <= REL,
                (None, None) => true,
                _ => false,
            }
            && match (got.variance, opt_f64(&want["variance"])) {
                (Some(a), Some(b)) => relative_error(a, b) <= REL,
                (None, None) => true,
                _ => false,
            };
        if !ok {
            failures.push(format!("{name}: arm {i}: estimate {got:?}, want {want}"));
        }
    }
    if estimates.len() != expected.len() {
        failures.push(format!(
            "{name}: {} arms, want {}",
            estimates.len(),
            expected.len()
        ));
    }
    estimates
}

#[test]
fn fixture_records_growthbook_commit_and_agreement() {
    let d = doc();
    let commit = d["growthbook_commit"].as_str().unwrap();
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    assert!(f(&d["max_abs_diff_weights"]) <= GBSTATS);
    assert!(f(&d["max_abs_diff_best_arm_probabilities"]) <= GBSTATS);
    assert!(d["cases"].as_array().unwrap().len() >= 10);
}

#[test]
fn estimates_posteriors_and_weights_match_reference() {
    let d = doc();
    let mut failures = Vec::new();
    let (mut worst_probability, mut worst_relative, mut worst_gbstats) = (0.0f64, 0.0f64, 0.0f64);
    let mut worst_sum = 0.0f64;
    for case in d["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = &case["expected"];
        let estimates = case_estimates(case, &mut failures);
        let posteriors: Vec<Posterior> = estimates.iter().map(posterior).collect();

        for (i, (p, want)) in posteriors
            .iter()
            .zip(expected["posteriors"].as_array().unwrap())
            .enumerate()
        {
            let (em, es) = (
                relative_error(p.mean, f(&want["mean"])),
                relative_error(p.sd, f(&want["sd"])),
            );
            let interval = p.interval();
            let want_interval = floats(&expected["intervals"][i]);
            let ei = relative_error(interval.0, want_interval[0])
                .max(relative_error(interval.1, want_interval[1]));
            worst_relative = worst_relative.max(em).max(es).max(ei);
            if em > REL || es > REL || ei > REL {
                failures.push(format!(
                    "{name}: arm {i}: posterior {p:?} interval {interval:?}, want {want} {want_interval:?}"
                ));
            }
        }

        let min_weight = f(&case["min_weight"]);
        let Some(w) = bandit_weights(&posteriors, min_weight) else {
            failures.push(format!("{name}: bandit_weights refused {posteriors:?}"));
            continue;
        };
        let ranks = rank_probabilities(&posteriors).unwrap();
        let second: Vec<f64> = ranks.iter().map(|r| r.second).collect();
        assert_eq!(
            best_arm_probabilities(&posteriors).unwrap(),
            w.best_arm_probabilities
        );
        for (label, got, key) in [
            ("best", &w.best_arm_probabilities, "best_arm_probabilities"),
            ("second", &second, "second_best_probabilities"),
            ("top-two", &w.top_two, "top_two"),
            ("weights", &w.weights, "weights"),
        ] {
            let want = floats(&expected[key]);
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            worst_probability = worst_probability.max(diff);
            if diff > ABS_PROBABILITY || got.len() != want.len() {
                failures.push(format!("{name}: {label} {got:?}, want {want:?}"));
            }
            let sum_error = (got.iter().sum::<f64>() - 1.0).abs();
            worst_sum = worst_sum.max(sum_error);
            if sum_error > SUM_TO_ONE {
                failures.push(format!("{name}: {label} sum to 1 + {sum_error:e}"));
            }
        }
        if w.weights.iter().any(|&p| p < min_weight) {
            failures.push(format!("{name}: a weight below the floor: {:?}", w.weights));
        }
        // GrowthBook's Monte Carlo estimate of the same weights.
        let gb = &case["gbstats"];
        for (got, key) in [
            (&w.weights, "weights"),
            (&w.best_arm_probabilities, "best_arm_probabilities"),
        ] {
            let want = floats(&gb[key]);
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            worst_gbstats = worst_gbstats.max(diff);
            if diff > GBSTATS {
                failures.push(format!("{name}: gbstats {key} {want:?}, ours {got:?}"));
            }
        }
    }
    println!(
        "bandit reference: worst probability difference {worst_probability:.1e}, worst relative \
         posterior difference {worst_relative:.1e}, worst sum-to-1 error {worst_sum:.1e}, worst \
         difference from gbstats' 1e4 draws {worst_gbstats:.4}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// A simulated bandit.

/// SplitMix64: small, seeded, good enough for Bernoulli draws.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform on [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

const ARMS: usize = 3;
const PERIODS: usize = 20;
const USERS_PER_PERIOD: u64 = 3000;
const MIN_WEIGHT: f64 = 0.01;
const REPETITIONS: usize = 100;
/// Arm 2 converts 3 points more than arms 0 and 1 in every period.
const EFFECT: [f64; ARMS] = [0.0, 0.0, 0.03];

/// The base conversion rate of period p, the same for every arm: high at first, then
/// falling, so that arms that gain traffic later see lower rates.
fn base_rate(p: usize) -> f64 {
    0.40 - 0.35 * (p as f64 / (PERIODS - 1) as f64).sqrt()
}

struct Run {
    /// weights[p]: the weights in force in period p (version p + 1).
    weights: Vec<[f64; ARMS]>,
    /// Users and conversions per period and arm.
    users: Vec<[u64; ARMS]>,
    conversions: Vec<[u64; ARMS]>,
    estimates: Vec<ArmEstimate>,
}

fn run_bandit(seed: u64) -> Run {
    let mut rng = SplitMix64(seed);
    let mut weights = vec![[1.0 / ARMS as f64; ARMS]];
    let mut users = Vec::new();
    let mut conversions = Vec::new();
    let mut estimates = Vec::new();
    for p in 0..PERIODS {
        let w = weights[p];
        let mut n = [0u64; ARMS];
        let mut c = [0u64; ARMS];
        for _ in 0..USERS_PER_PERIOD {
            let u = rng.uniform();
            let mut arm = ARMS - 1;
            let mut cumulative = 0.0;
            for (i, wi) in w.iter().enumerate() {
                cumulative += wi;
                if u < cumulative {
                    arm = i;
                    break;
                }
            }
            n[arm] += 1;
            if rng.uniform() < base_rate(p) + EFFECT[arm] {
                c[arm] += 1;
            }
        }
        users.push(n);
        conversions.push(c);
        // Update the weights from everything so far, as amba_bandit_update would.
        let periods: Vec<Vec<PeriodStats>> = users
            .iter()
            .zip(&conversions)
            .map(|(n, c)| {
                (0..ARMS)
                    .map(|i| PeriodStats::from_sums(n[i], c[i] as f64, c[i] as f64))
                    .collect()
            })
            .collect();
        estimates = period_weighted_estimates(&periods);
        if p + 1 < PERIODS {
            let posteriors: Vec<Posterior> = estimates.iter().map(posterior).collect();
            let next = bandit_weights(&posteriors, MIN_WEIGHT)
                .expect("weights")
                .weights;
            weights.push(next.try_into().unwrap());
        }
    }
    Run {
        weights,
        users,
        conversions,
        estimates,
    }
}

fn runs() -> Vec<Run> {
    (0..REPETITIONS as u64)
        .map(|r| run_bandit(0x5EED_0000 + r))
        .collect()
}

fn mean_and_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn simulated_bandit_moves_traffic_keeps_the_estimate_unbiased_and_srm_quiet() {
    let runs = runs();
    // The truth the period-weighted estimate targets: every period weighted by its users
    // (all periods have the same number), i.e. arm i's rate had everybody received it.
    let mean_base: f64 = (0..PERIODS).map(base_rate).sum::<f64>() / PERIODS as f64;
    let truth: Vec<f64> = EFFECT.iter().map(|e| mean_base + e).collect();

    // 1. Traffic follows the winner.
    let last = PERIODS - 5;
    let mut late_share = [0.0; ARMS];
    let mut final_weight = [0.0; ARMS];
    for run in &runs {
        let late: Vec<u64> = (0..ARMS)
            .map(|i| run.users[last..].iter().map(|n| n[i]).sum())
            .collect();
        let total: u64 = late.iter().sum();
        for i in 0..ARMS {
            late_share[i] += late[i] as f64 / total as f64 / REPETITIONS as f64;
            final_weight[i] += run.weights[PERIODS - 1][i] / REPETITIONS as f64;
        }
    }
    println!(
        "users in the last 5 periods by arm: {:.3?}; weights of the last period: {:.3?} \
         (period 1: 1/3 each)",
        late_share, final_weight
    );
    // Top-two Thompson sampling gives the best arm at most about one half: it is the
    // largest share, twice each of the others.
    assert!(late_share[2] > 0.45, "{late_share:?}");
    assert!(
        late_share[2] > 1.6 * late_share[0].max(late_share[1]),
        "{late_share:?}"
    );
    for run in &runs {
        let w = run.weights[PERIODS - 1];
        assert!(w[2] > w[0] && w[2] > w[1], "{w:?}");
        assert!(w.iter().all(|&x| x >= MIN_WEIGHT), "{w:?}");
    }

    // 2. The period-weighted estimate is unbiased; the naive pooled mean is not.
    let mut bias_weighted = vec![Vec::new(); ARMS];
    let mut bias_naive = vec![Vec::new(); ARMS];
    let mut diff_weighted = Vec::new();
    let mut diff_naive = Vec::new();
    for run in &runs {
        let mut naive = [0.0; ARMS];
        for i in 0..ARMS {
            assert!(
                run.users.iter().all(|n| n[i] >= 2),
                "every arm has 2 users per period"
            );
            let n: u64 = run.users.iter().map(|n| n[i]).sum();
            let c: u64 = run.conversions.iter().map(|c| c[i]).sum();
            naive[i] = c as f64 / n as f64;
            let weighted = run.estimates[i].mean.unwrap();
            bias_weighted[i].push(weighted - truth[i]);
            bias_naive[i].push(naive[i] - truth[i]);
        }
        diff_weighted.push(
            run.estimates[2].mean.unwrap() - run.estimates[0].mean.unwrap() - (truth[2] - truth[0]),
        );
        diff_naive.push(naive[2] - naive[0] - (truth[2] - truth[0]));
    }
    for i in 0..ARMS {
        let (bw, sew) = mean_and_se(&bias_weighted[i]);
        let (bn, sen) = mean_and_se(&bias_naive[i]);
        println!(
            "arm {i}: truth {:.4}; bias of the period-weighted estimate {bw:+.5} (se {sew:.5}), \
             of the pooled mean {bn:+.5} (se {sen:.5})",
            truth[i]
        );
        assert!(
            bw.abs() < 3.0 * sew.max(1e-4) && bw.abs() < 0.002,
            "arm {i}: {bw} ± {sew}"
        );
    }
    let (dw, sedw) = mean_and_se(&diff_weighted);
    let (dn, sedn) = mean_and_se(&diff_naive);
    println!(
        "arm 2 − arm 0 (truth {:.3}): bias period-weighted {dw:+.5} (se {sedw:.5}), pooled \
         {dn:+.5} (se {sedn:.5})",
        truth[2] - truth[0]
    );
    assert!(dw.abs() < 3.0 * sedw && dw.abs() < 0.002, "{dw} ± {sedw}");
    // The pooled difference is biased: arm 2 got its extra users when rates were lower.
    assert!(dn < -6.0 * sedn && dn < -0.004, "{dn} ± {sedn}");
    // And so are the pooled levels, in opposite directions.
    let (bn0, se0) = mean_and_se(&bias_naive[0]);
    let (bn2, se2) = mean_and_se(&bias_naive[2]);
    assert!(
        bn0 > 5.0 * se0 && bn2 < -5.0 * se2,
        "{bn0} ± {se0}, {bn2} ± {se2}"
    );

    // 3. SRM at assignment-time weights stays quiet; at today's weights it would not.
    let keys: Vec<String> = ["control", "b", "c"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let mut p_versions = Vec::new();
    let mut p_current = Vec::new();
    for run in &runs {
        let versions: Vec<WeightVersion> = run
            .weights
            .iter()
            .enumerate()
            .map(|(p, w)| WeightVersion {
                version: p as i32 + 1,
                keys: keys.clone(),
                weights: w.to_vec(),
            })
            .collect();
        let exposed_by_version: Vec<(i32, u64)> = run
            .users
            .iter()
            .enumerate()
            .map(|(p, n)| (p as i32 + 1, n.iter().sum()))
            .collect();
        let exposed_by_key: Vec<(String, u64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), run.users.iter().map(|n| n[i]).sum()))
            .collect();
        p_versions.push(
            srm_p_value_by_version(&keys, &exposed_by_key, &exposed_by_version, &versions).unwrap(),
        );
        let total: f64 = exposed_by_key.iter().map(|(_, n)| *n as f64).sum();
        let observed: Vec<f64> = exposed_by_key.iter().map(|(_, n)| *n as f64).collect();
        let expected: Vec<f64> = run.weights[PERIODS - 1].iter().map(|w| w * total).collect();
        p_current.push(srm_p_value(&observed, &expected).unwrap());
    }
    let alarms = p_versions.iter().filter(|&&p| p < 0.01).count();
    let (mean_p, _) = mean_and_se(&p_versions);
    let current_alarms = p_current.iter().filter(|&&p| p < 0.01).count();
    println!(
        "SRM over {REPETITIONS} runs: assignment-time weights: {alarms} below 0.01, mean p \
         {mean_p:.3}; today's weights for everybody: {current_alarms} below 0.01"
    );
    assert!(alarms <= 4, "{p_versions:?}");
    assert!((0.3..=0.7).contains(&mean_p), "{p_versions:?}");
    assert_eq!(current_alarms, REPETITIONS, "{p_current:?}");
}
