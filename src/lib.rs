//! Amba experiments: server-side A/B testing inside PostgreSQL.
//!
//! This crate is the thin extension layer: it moves data between SQL and the pure core
//! (`amba_core`: bucketing, validation, statistics). Modules:
//! - `assign`: the hot path (assign, expose, peek, track, bucket);
//! - `results`: the results functions (count in SQL, statistics in the core), one file per
//!   function (`conversion`, `metric`, `daily`) and the counting engine they share
//!   (`counting`);
//! - `store`: the one door to the tables on the hot path (direct or SQL, chosen once per
//!   call), and the per-backend cache of experiment definitions;
//! - `spi`: SPI helpers; `locks`: advisory locks;
//! - `internal`: validators and helpers the hand-written SQL calls;
//! - `errors`: raising the contract's errors; `jsonb`: a jsonb argument passed through.
//!
//! Hand-written SQL lives in `sql/`: the data schema (`bootstrap.sql`), experiments,
//! overrides, aliases and the audit trail (`api.sql`), the PostgREST surface (`http.sql`),
//! the report page (`report.sql`), scale-out on Citus (`distribute.sql`), and grants and
//! row-level security (`access.sql`, last).

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod assign;
mod bandit;
mod errors;
mod guardrails;
mod internal;
mod jsonb;
mod locks;
mod results;
mod spi;
mod store;

/// Runs once per backend, when the library is loaded: amba's settings and its
/// invalidation callbacks.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // The core's long computations honour a cancel, statement_timeout and a terminate.
    amba_core::interrupt::install(|| {
        pgrx::check_for_interrupts!();
    });
    store::define_settings();
    store::invalidation::register();
}

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["bootstrap"]);
extension_sql_file!("../sql/http.sql", name = "http", requires = ["api"]);
extension_sql_file!("../sql/report.sql", name = "report", requires = ["http"]);
extension_sql_file!(
    "../sql/distribute.sql",
    name = "distribute",
    requires = ["report"]
);
extension_sql_file!("../sql/access.sql", name = "access", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
