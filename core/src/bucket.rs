//! Bucketing, fixed by the contract and versioned: changing anything here would move
//! users who are not yet stored, so `BUCKETING_VERSION` must change with it and the
//! committed test vectors (`core/tests/fixtures/bucket_vectors.json`, from `scripts/fixtures/bucket_vectors.py`) must be regenerated.
//!
//! h = xxh3_64(utf8(experiment_key) || 0x00 || utf8(user_id)), seed 0;
//! bucket = (h >> 11) / 2^53 in [0, 1);
//! variant = first i with bucket < (w_1 + … + w_i) / W, else the last variant with w > 0.
//!
//! Two more buckets of a user come from the same rule with another separator byte, so
//! they are independent of the variant bucket and of each other:
//! - coverage (SPEC §10): xxh3_64(utf8(experiment_key) || 0x01 || utf8(user_id));
//! - layer (SPEC §11): xxh3_64(utf8(layer) || 0x02 || utf8(user_id)).

use xxhash_rust::xxh3::xxh3_64;

pub const BUCKETING_VERSION: u32 = 1;

const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

/// Separator byte of the variant hash.
pub const VARIANT_SEPARATOR: u8 = 0x00;
/// Separator byte of the coverage hash (SPEC §10).
pub const COVERAGE_SEPARATOR: u8 = 0x01;
/// Separator byte of the layer hash (SPEC §11).
pub const LAYER_SEPARATOR: u8 = 0x02;

/// xxh3_64 of `experiment_key`, a zero byte, then `user_id`.
pub fn hash(experiment_key: &str, user_id: &str) -> u64 {
    hash_separated(experiment_key, VARIANT_SEPARATOR, user_id)
}

/// xxh3_64 of `experiment_key`, the byte 0x01, then `user_id` (the coverage hash).
pub fn coverage_hash(experiment_key: &str, user_id: &str) -> u64 {
    hash_separated(experiment_key, COVERAGE_SEPARATOR, user_id)
}

/// xxh3_64 of `layer`, the byte 0x02, then `user_id` (the layer hash).
pub fn layer_hash(layer: &str, user_id: &str) -> u64 {
    hash_separated(layer, LAYER_SEPARATOR, user_id)
}

/// xxh3_64 of `key`, `separator`, then `user_id`.
#[inline]
fn hash_separated(key: &str, separator: u8, user_id: &str) -> u64 {
    let total = key.len() + 1 + user_id.len();
    // Keys are at most 128 bytes and user ids at most 512 characters: a stack buffer
    // covers the usual case without allocating.
    let mut stack = [0u8; 768];
    let mut heap;
    let buf: &mut [u8] = if total <= stack.len() {
        &mut stack[..total]
    } else {
        heap = vec![0u8; total];
        &mut heap[..]
    };
    buf[..key.len()].copy_from_slice(key.as_bytes());
    buf[key.len()] = separator;
    buf[key.len() + 1..].copy_from_slice(user_id.as_bytes());
    xxh3_64(buf)
}

/// The top 53 bits of the hash as a double in [0, 1).
pub fn bucket_of_hash(h: u64) -> f64 {
    (h >> 11) as f64 / TWO_POW_53
}

pub fn bucket(experiment_key: &str, user_id: &str) -> f64 {
    bucket_of_hash(hash(experiment_key, user_id))
}

/// The coverage bucket in [0, 1) (SPEC §10): a user not yet assigned is enrolled only if
/// it is below the experiment's coverage. Independent of the variant bucket.
pub fn coverage_bucket(experiment_key: &str, user_id: &str) -> f64 {
    bucket_of_hash(coverage_hash(experiment_key, user_id))
}

/// The layer bucket in [0, 1) (SPEC §11): the user can be enrolled only in the layer's
/// experiment whose range `[start, end)` holds it.
pub fn layer_bucket(layer: &str, user_id: &str) -> f64 {
    bucket_of_hash(layer_hash(layer, user_id))
}

/// Cumulative thresholds `(w_1 + … + w_i) / W`, summed left to right in double precision.
/// Precomputed once per experiment definition so assignment does no division.
pub fn thresholds(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().fold(0.0, |acc, w| acc + w);
    let mut running = 0.0;
    weights
        .iter()
        .map(|w| {
            running += w;
            running / total
        })
        .collect()
}

/// Index of the variant a bucket falls in, given the thresholds and weights of
/// [`thresholds`]. `None` only when no weight is positive (rejected at validation).
pub fn pick(bucket: f64, thresholds: &[f64], weights: &[f64]) -> Option<usize> {
    if let Some(i) = thresholds.iter().position(|t| bucket < *t) {
        return Some(i);
    }
    // Rounding left no threshold above the bucket: the last variant that can receive users.
    weights.iter().rposition(|w| *w > 0.0)
}

/// Index of the variant for a user: the whole rule in one call.
pub fn allocate(experiment_key: &str, user_id: &str, weights: &[f64]) -> Option<usize> {
    pick(
        bucket(experiment_key, user_id),
        &thresholds(weights),
        weights,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_in_unit_interval_and_uses_top_53_bits() {
        assert_eq!(bucket_of_hash(0), 0.0);
        assert_eq!(bucket_of_hash(u64::MAX), (TWO_POW_53 - 1.0) / TWO_POW_53);
        assert!(bucket_of_hash(u64::MAX) < 1.0);
        // The low 11 bits never matter.
        assert_eq!(bucket_of_hash(0x7ff), 0.0);
        assert_eq!(bucket_of_hash(0x800), 1.0 / TWO_POW_53);
    }

    #[test]
    fn hash_separates_key_and_user_with_a_zero_byte() {
        // Without the separator ("ab","c") and ("a","bc") would collide.
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
        let mut joined = b"ab".to_vec();
        joined.push(0);
        joined.extend_from_slice(b"c");
        assert_eq!(hash("ab", "c"), xxh3_64(&joined));
    }

    #[test]
    fn coverage_and_layer_hashes_differ_only_in_the_separator() {
        for (separator, h) in [
            (0u8, hash("exp", "u-1")),
            (1, coverage_hash("exp", "u-1")),
            (2, layer_hash("exp", "u-1")),
        ] {
            assert_eq!(
                h,
                xxh3_64(&[b"exp".as_slice(), &[separator], b"u-1"].concat())
            );
        }
        assert_ne!(hash("exp", "u-1"), coverage_hash("exp", "u-1"));
        assert_ne!(coverage_hash("exp", "u-1"), layer_hash("exp", "u-1"));
        assert_eq!(
            coverage_bucket("exp", "u-1"),
            bucket_of_hash(coverage_hash("exp", "u-1"))
        );
        assert_eq!(
            layer_bucket("exp", "u-1"),
            bucket_of_hash(layer_hash("exp", "u-1"))
        );
        let user: String = "é".repeat(512); // the heap path keeps the separator too
        assert_eq!(
            layer_hash("k", &user),
            xxh3_64(&[b"k".as_slice(), &[2], user.as_bytes()].concat())
        );
    }

    #[test]
    fn long_inputs_hash_like_short_ones() {
        let user: String = "é".repeat(512); // 1024 bytes: the heap path
        let mut joined = b"k".to_vec();
        joined.push(0);
        joined.extend_from_slice(user.as_bytes());
        assert_eq!(hash("k", &user), xxh3_64(&joined));
    }

    #[test]
    fn pick_follows_cumulative_weights() {
        let w = [50.0, 50.0];
        let t = thresholds(&w);
        assert_eq!(pick(0.0, &t, &w), Some(0));
        assert_eq!(pick(0.4999, &t, &w), Some(0));
        assert_eq!(pick(0.5, &t, &w), Some(1));
        assert_eq!(pick(0.99999, &t, &w), Some(1));
    }

    #[test]
    fn zero_weight_variants_receive_nobody() {
        let w = [1.0, 0.0, 1.0, 0.0];
        let t = thresholds(&w);
        for i in 0..1000 {
            let b = i as f64 / 1000.0;
            let v = pick(b, &t, &w).unwrap();
            assert!(v == 0 || v == 2, "bucket {b} went to {v}");
        }
        // A rounding miss falls to the last positive weight, never to a zero-weight tail.
        assert_eq!(pick(1.0, &t, &w), Some(2));
    }

    #[test]
    fn allocation_is_roughly_uniform() {
        let w = [1.0, 1.0, 2.0];
        let mut counts = [0usize; 3];
        for u in 0..40_000 {
            counts[allocate("exp", &format!("user-{u}"), &w).unwrap()] += 1;
        }
        // Expected 10k, 10k, 20k; 5 sigma is about 500.
        assert!((counts[0] as i64 - 10_000).abs() < 600, "{counts:?}");
        assert!((counts[1] as i64 - 10_000).abs() < 600, "{counts:?}");
        assert!((counts[2] as i64 - 20_000).abs() < 700, "{counts:?}");
    }
}
