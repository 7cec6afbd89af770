//! Pure core of Amba experiments: no database in sight.
//!
//! - [`bucket`]: the fixed, versioned bucketing (xxh3 → [0, 1) → weighted variant);
//! - [`validate`]: input rules of the contract (keys, ids, variants, statuses);
//! - [`metric`]: the mean metrics of `amba_metric_results` (Welch t, lift, CUPED);
//! - [`stats`]: the statistics of `amba_results` (z-test, lift, intervals, chance to win,
//!   always-valid p-values, Holm, sample-ratio mismatch).
//!
//! Every function here is small and tested against committed reference values.

pub mod bucket;
pub mod error;
pub mod metric;
pub mod srm;
pub mod stats;
pub mod validate;

pub use error::{CoreError, ErrorCode};
