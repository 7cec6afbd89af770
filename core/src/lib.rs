//! Pure core of Amba experiments: no database in sight.
//!
//! - [`bucket`]: the fixed, versioned bucketing (xxh3 → [0, 1) → weighted variant);
//! - [`condition`]: targeting conditions (GrowthBook's condition language), compiled once;
//! - [`validate`]: input rules of the contract (keys, ids, variants, statuses);
//! - [`distributions`]: Student's t, the normal, chi-square and Welch's degrees of
//!   freedom, shared by the two statistics modules;
//! - [`metric`]: the mean metrics of `amba_metric_results` (Welch t, lift, CUPED);
//! - [`stats`]: the statistics of `amba_results` (z-test, lift, intervals, chance to win,
//!   always-valid p-values, Holm);
//! - [`srm`]: the sample-ratio-mismatch test (Pearson's chi-square at assignment-time
//!   weights);
//! - [`interrupt`]: where long computations let PostgreSQL cancel them;
//! - [`slices`]: where to cut user ids into slices of equal work for parallel counting;
//! - [`columns`]: the columns of the results functions (name, SQL type), declared once for
//!   the extension, its HTTP wrappers and the MCP server.
//!
//! Every function here is small and tested against committed reference values.

pub mod bandit;
pub mod bucket;
pub mod columns;
pub mod condition;
pub mod distributions;
pub mod error;
pub mod interrupt;
pub mod metric;
pub mod quantile;
pub mod ratio;
pub mod sequential;
pub mod slices;
pub mod srm;
pub mod stats;
pub mod validate;

pub use error::{CoreError, ErrorCode};

/// `Some(x)` when x is finite: every statistic is `None` (SQL NULL), never NaN or ±inf.
pub(crate) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
