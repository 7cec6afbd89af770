//! The columns of the results functions, declared once: each column's name and SQL type
//! (spelled as PostgreSQL's `format_type` spells it), in order.
//!
//! The same columns appear in three hand-maintained places, each held to these lists by a
//! test: the Rust functions declared to pgrx (`src/results/`), with their twins in `amba`,
//! and the HTTP wrappers in `sql/http.sql` (`#[pg_test]`s in `src/tests.rs` read the
//! catalog), and the MCP tool descriptions (`mcp/src/tools.rs`, a unit test there).

/// `amba_results`, `amba._results` and `amba_api.experiments_results`: one row per variant.
pub const RESULT_COLUMNS: &[(&str, &str)] = &[
    ("variant", "text"),
    ("is_control", "boolean"),
    ("assigned_count", "bigint"),
    ("exposed_count", "bigint"),
    ("converted_count", "bigint"),
    ("conversion_rate", "double precision"),
    ("z_score", "double precision"),
    ("p_value", "double precision"),
    ("lift", "double precision"),
    ("lift_ci_low", "double precision"),
    ("lift_ci_high", "double precision"),
    ("chance_to_win", "double precision"),
    ("p_value_holm", "double precision"),
    ("sequential_p_value", "double precision"),
    ("srm_p_value", "double precision"),
];

/// `amba_metric_results`, `amba._metric_results` and `amba_api.experiments_metric_results`:
/// one row per variant.
pub const METRIC_COLUMNS: &[(&str, &str)] = &[
    ("variant", "text"),
    ("is_control", "boolean"),
    ("exposed_count", "bigint"),
    ("mean", "double precision"),
    ("stddev", "double precision"),
    ("delta", "double precision"),
    ("delta_ci_low", "double precision"),
    ("delta_ci_high", "double precision"),
    ("p_value", "double precision"),
    ("p_value_holm", "double precision"),
    ("lift", "double precision"),
    ("lift_ci_low", "double precision"),
    ("lift_ci_high", "double precision"),
    ("cuped_theta", "double precision"),
];

/// `amba_results_daily`, `amba._results_daily` and `amba_api.experiments_results_daily`:
/// one row per (day, variant).
pub const DAILY_COLUMNS: &[(&str, &str)] = &[
    ("day", "date"),
    ("variant", "text"),
    ("is_control", "boolean"),
    ("exposed_count", "bigint"),
    ("converted_count", "bigint"),
    ("conversion_rate", "double precision"),
    ("lift", "double precision"),
    ("lift_ci_low", "double precision"),
    ("lift_ci_high", "double precision"),
    ("p_value", "double precision"),
    ("sequential_p_value", "double precision"),
    ("lift_cs_low", "double precision"),
    ("lift_cs_high", "double precision"),
];

/// Each results function with its columns, by the name of the function in the
/// extension's schema.
pub const RESULTS_FUNCTIONS: &[(&str, &[(&str, &str)])] = &[
    ("amba_results", RESULT_COLUMNS),
    ("amba_metric_results", METRIC_COLUMNS),
    ("amba_results_daily", DAILY_COLUMNS),
];

/// The columns of the results function `function` (its name in the extension's schema).
pub fn of(function: &str) -> Option<&'static [(&'static str, &'static str)]> {
    RESULTS_FUNCTIONS
        .iter()
        .find(|(name, _)| *name == function)
        .map(|(_, columns)| *columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_identifiers_and_types_are_known() {
        for (function, columns) in RESULTS_FUNCTIONS {
            let mut names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            for name in &names {
                assert!(
                    name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{function}.{name}"
                );
            }
            names.sort();
            names.dedup();
            assert_eq!(names.len(), columns.len(), "{function}");
            for (name, ty) in *columns {
                assert!(
                    ["text", "boolean", "bigint", "double precision", "date"].contains(ty),
                    "{function}.{name}: {ty}"
                );
            }
        }
        assert_eq!(of("amba_results"), Some(RESULT_COLUMNS));
        assert_eq!(of("amba_report"), None);
    }
}
