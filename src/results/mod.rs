//! The results functions: SQL counts the experiment's users, the core (`amba_core`) does the
//! statistics, Rust shapes the rows. One file per public function, each declaring the
//! function in the extension's schema and its twin in `amba` (which the HTTP surface in
//! `sql/http.sql` and the report page call), with one column list for both:
//! - `conversion`: `amba_results` / `amba._results`, conversion rates per variant
//!   (SPEC §3d);
//! - `metric`: `amba_metric_results` / `amba._metric_results`, a number per user
//!   (SPEC §3c);
//! - `daily`: `amba_results_daily` / `amba._results_daily`, the results at the end of
//!   each UTC day (SPEC §3e);
//! - `counting`: the engine they share: the users every result counts, running a counting
//!   query in user-id slices with the plan that suits the experiment's size, the weight
//!   versions, and the checks every results function starts with.

mod by_dimension;
pub(crate) mod conversion;
pub(crate) mod counting;
mod daily;
pub(crate) mod metric;
mod ratio;
