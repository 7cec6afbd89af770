//! Amba experiments: server-side A/B testing inside PostgreSQL.
//!
//! This crate is the thin extension layer: it moves data between SQL and the pure core
//! (`amba_core`: bucketing, validation, statistics). Hand-written SQL lives in `sql/`:
//! the data schema (`bootstrap.sql`), the experiment CRUD and audit trail (`api.sql`),
//! and roles, row-level security and the PostgREST surface (`http.sql`).

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod assign;
mod cache;
mod errors;
mod internal;
mod results;

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["bootstrap"]);
extension_sql_file!("../sql/http.sql", name = "http", finalize);

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
