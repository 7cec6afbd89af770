//! The sample-ratio-mismatch test of `amba_results` (SPEC §3b) at assignment-time
//! weights: each exposed user counts toward the weight shares in force when they were
//! assigned, so re-weighting, adding variants or switching one off raises no false alarm.

use crate::distributions::chi_squared_sf;

/// Pearson's chi-square goodness of fit of observed exposure counts against expected
/// ones; variants with expected 0 are left out. `None` when fewer than two variants
/// expect anyone (no degrees of freedom) or nobody is expected at all.
pub fn srm_p_value(observed: &[f64], expected: &[f64]) -> Option<f64> {
    let mut statistic = 0.0;
    let mut cells = 0usize;
    for (o, e) in observed.iter().zip(expected) {
        if *e > 0.0 {
            statistic += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    if cells < 2 {
        return None;
    }
    chi_squared_sf(statistic, (cells - 1) as f64)
}

/// One set of weights an experiment has had (amba.weight_versions).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightVersion {
    pub version: i32,
    pub keys: Vec<String>,
    pub weights: Vec<f64>,
}

/// The keys the test runs over: the current variants in order, then variants of older
/// versions removed since (users were allocated with them in place).
pub fn srm_keys(current_keys: &[String], versions: &[WeightVersion]) -> Vec<String> {
    let mut keys = current_keys.to_vec();
    for v in versions {
        for k in &v.keys {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

/// Expected exposures per key: `E_i = Σ_versions exposed(version) · w_i / W` (a key absent
/// from a version has weight 0 there; a version with no positive weight is skipped).
pub fn expected_exposures(
    keys: &[String],
    exposed_by_version: &[(i32, u64)],
    versions: &[WeightVersion],
) -> Vec<f64> {
    let mut expected = vec![0.0; keys.len()];
    for &(version, exposed) in exposed_by_version {
        let Some(v) = versions.iter().find(|v| v.version == version) else {
            continue;
        };
        let total: f64 = v.weights.iter().fold(0.0, |a, w| a + w);
        if !(total > 0.0) {
            continue;
        }
        for (k, w) in v.keys.iter().zip(&v.weights) {
            if let Some(i) = keys.iter().position(|key| key == k) {
                expected[i] += exposed as f64 * (w / total);
            }
        }
    }
    expected
}

/// The SRM p-value from exposed users counted per variant key and per weight version.
/// `None` when nobody is exposed or fewer than two variants expect anyone.
pub fn srm_p_value_by_version(
    current_keys: &[String],
    exposed_by_key: &[(String, u64)],
    exposed_by_version: &[(i32, u64)],
    versions: &[WeightVersion],
) -> Option<f64> {
    let keys = srm_keys(current_keys, versions);
    let observed: Vec<f64> = keys
        .iter()
        .map(|k| {
            exposed_by_key
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, n)| *n as f64)
                .sum()
        })
        .collect();
    if !(observed.iter().sum::<f64>() > 0.0) {
        return None;
    }
    srm_p_value(
        &observed,
        &expected_exposures(&keys, exposed_by_version, versions),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i32, keys: &[&str], weights: &[f64]) -> WeightVersion {
        WeightVersion {
            version,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            weights: weights.to_vec(),
        }
    }
    fn s(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn srm_cases() {
        assert!(srm_p_value(&[0.0, 0.0], &[0.0, 0.0]).is_none());
        assert!(srm_p_value(&[10.0, 0.0], &[10.0, 0.0]).is_none());
        let balanced = srm_p_value(&[500.0, 500.0], &[500.0, 500.0]).unwrap();
        assert_eq!(balanced, 1.0);
        let skewed = srm_p_value(&[400.0, 600.0], &[500.0, 500.0]).unwrap();
        assert!(skewed < 1e-9, "{skewed}");
    }

    #[test]
    fn keys_keep_removed_variants_after_the_current_ones() {
        let versions = [
            v(1, &["c", "old", "t"], &[1.0, 1.0, 1.0]),
            v(2, &["c", "t", "new"], &[1.0, 1.0, 1.0]),
        ];
        assert_eq!(
            srm_keys(&s(&["c", "t", "new"]), &versions),
            s(&["c", "t", "new", "old"])
        );
    }

    #[test]
    fn reordered_and_switched_off_variants_map_by_key() {
        // v1: c/t 50/50 for 100 users; v2: t switched off (0), "new" added, for 200 users.
        let versions = [
            v(1, &["c", "t"], &[1.0, 1.0]),
            v(2, &["c", "new", "t"], &[1.0, 1.0, 0.0]),
        ];
        let keys = srm_keys(&s(&["c", "t", "new"]), &versions);
        let e = expected_exposures(&keys, &[(1, 100), (2, 200)], &versions);
        assert_eq!(e, vec![150.0, 50.0, 100.0]);
        // Observed exactly as expected: no mismatch at all.
        let by_key = [
            ("c".to_string(), 150),
            ("t".to_string(), 50),
            ("new".to_string(), 100),
        ];
        let p = srm_p_value_by_version(
            &s(&["c", "t", "new"]),
            &by_key,
            &[(1, 100), (2, 200)],
            &versions,
        )
        .unwrap();
        assert!((p - 1.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn nobody_exposed_is_none() {
        let versions = [v(1, &["c", "t"], &[1.0, 1.0])];
        assert_eq!(
            srm_p_value_by_version(&s(&["c", "t"]), &[], &[], &versions),
            None
        );
    }
}
