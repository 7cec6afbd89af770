//! `amba_results_by` (SPEC §13): `amba_results`' columns per (dimension value, variant),
//! values ascending and the NULL group (users without that attribute) last, every variant
//! on each value, and `p_value_holm` adjusted over every comparison of the call. One pass:
//! the same counting as `amba_results`, grouped by the value stored with each assignment.

use super::conversion::{rows_from_counts, Counts, ResultRow};
use super::counting::{
    check_event, experiment_for_results, run_counting, weight_versions, Slicing, UserSlice,
    COUNTED_ASSIGNMENTS_FROM, COUNTED_ASSIGNMENTS_WHERE,
};
use crate::errors::{raise_code, OrRaise};
use amba_core::stats::holm;
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// `counts_sql` of `amba_results` with the dimension's value ($3) as a grouping column.
/// The values come as the exposures do: a subquery of the slice's rows in user order, so
/// each slice merges its own index range (joined directly, every slice would read the
/// experiment's dimension rows from its first user on). `DISTINCT ON (user_id)` changes no
/// row (the primary key is (experiment_id, user_id)); it tells the planner each user has
/// at most one, so the merge join needs no mark and restore and materializes neither
/// side (measured: about a tenth of the query at 1M users).
fn counts_by_sql(slice: UserSlice) -> String {
    format!(
        "SELECT d.value, a.variant, a.weight_version, \
           count(*) AS assigned, \
           count(x.user_id) AS exposed, \
           count(*) FILTER (WHERE x.user_id IS NOT NULL AND c.last_at >= a.assigned_at) AS converted \
         FROM {COUNTED_ASSIGNMENTS_FROM} \
         LEFT JOIN (SELECT DISTINCT ON (d.user_id) d.user_id, d.dimension_values ->> $3 AS value \
                    FROM amba.assignment_dimensions d \
                    WHERE d.experiment_id = $1{d_slice} ORDER BY d.user_id) d \
           ON d.user_id = a.user_id \
         LEFT JOIN (SELECT x.user_id FROM amba.exposures x \
                    WHERE x.experiment_id = $1{x_slice} ORDER BY x.user_id) x \
           ON x.user_id = a.user_id \
         LEFT JOIN (SELECT e.user_id, max(e.occurred_at) AS last_at \
                    FROM amba.events e WHERE e.event = $2{e_slice} GROUP BY e.user_id) c \
           ON c.user_id = a.user_id \
         WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
         GROUP BY 1, a.variant, a.weight_version",
        d_slice = slice.filter("d.user_id"),
        x_slice = slice.filter("x.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

type ByTuple = (Option<String>, super::conversion::ResultTuple);

fn results_by(
    experiment_key: Option<&str>,
    conversion_event: Option<&str>,
    dimension: Option<&str>,
    alpha: Option<f64>,
) -> Vec<(Option<String>, ResultRow)> {
    validate::experiment_key(experiment_key).or_raise();
    let event = check_event("conversion_event", conversion_event);
    let alpha = validate::alpha(alpha).or_raise();
    let dimension = check_event("dimension", dimension);

    // value (None: the NULL group, sorted last) → counts per (variant, weight version)
    let (variant_keys, groups, versions) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        if !exp.dimensions.iter().any(|d| d == dimension) {
            raise_code(
                ErrorCode::InvalidArgument,
                format!(
                    "{dimension:?} is not a dimension of experiment {:?} (its dimensions: {:?})",
                    experiment_key.unwrap_or_default(),
                    exp.dimensions
                ),
            );
        }
        let mut groups: BTreeMap<(bool, String), Vec<(String, i32, Counts)>> = BTreeMap::new();
        run_counting(
            client,
            exp.id,
            counts_by_sql,
            Slicing::ByWork {
                events: &[event],
                properties: false,
            },
            vec![exp.id.into(), event.into(), dimension.into()],
            |table| {
                for row in table {
                    let value: Option<String> = row.get(1).expect("value");
                    let counts = Counts {
                        assigned: row.get(4).expect("assigned").unwrap_or(0),
                        exposed: row.get(5).expect("exposed").unwrap_or(0),
                        converted: row.get(6).expect("converted").unwrap_or(0),
                    };
                    groups
                        .entry((value.is_none(), value.unwrap_or_default()))
                        .or_default()
                        .push((
                            row.get(2).expect("variant").expect("variant"),
                            row.get(3).expect("version").expect("version"),
                            counts,
                        ));
                }
            },
        );
        (
            exp.variant_keys.clone(),
            groups,
            weight_versions(client, exp.id),
        )
    });

    let mut rows: Vec<(Option<String>, ResultRow)> = Vec::new();
    for ((is_null, value), counts) in groups {
        let value = (!is_null).then_some(value);
        for row in rows_from_counts(&variant_keys, &counts, &versions, alpha) {
            rows.push((value.clone(), row));
        }
    }
    // Holm over every comparison of the call: all values × non-control variants.
    let p_values: Vec<Option<f64>> = rows
        .iter()
        .map(|(_, r)| if r.is_control { None } else { r.p_value })
        .collect();
    for ((_, row), adjusted) in rows.iter_mut().zip(holm(&p_values)) {
        row.p_value_holm = if row.is_control { None } else { adjusted };
    }
    rows
}

fn into_tuples(rows: Vec<(Option<String>, ResultRow)>) -> impl Iterator<Item = ByTuple> {
    rows.into_iter()
        .map(|(value, row)| (value, row.into_tuple()))
}

/// Declares `amba_results_by` and its twin `amba._results_by` with one column list.
macro_rules! results_by_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        fn $fn_name(
            experiment_key: Option<&str>,
            conversion_event: Option<&str>,
            dimension: Option<&str>,
            alpha: default!(Option<f64>, 0.05),
        ) -> TableIterator<'static, (
            name!(dimension_value, Option<String>),
            name!(variant, String),
            name!(is_control, bool),
            name!(assigned_count, i64),
            name!(exposed_count, i64),
            name!(converted_count, i64),
            name!(conversion_rate, Option<f64>),
            name!(z_score, Option<f64>),
            name!(p_value, Option<f64>),
            name!(lift, Option<f64>),
            name!(lift_ci_low, Option<f64>),
            name!(lift_ci_high, Option<f64>),
            name!(chance_to_win, Option<f64>),
            name!(p_value_holm, Option<f64>),
            name!(sequential_p_value, Option<f64>),
            name!(srm_p_value, Option<f64>),
        )> {
            TableIterator::new(
                into_tuples(results_by(experiment_key, conversion_event, dimension, alpha)).map(
                    |(value, r)| {
                        (value, r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11, r.12, r.13, r.14)
                    },
                ),
            )
        }
    };
}

results_by_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_results_by
);

#[pg_schema]
mod amba {
    use super::*;
    results_by_fn!(
        #[pg_extern(name = "_results_by", stable, parallel_unsafe)]
        results_by_internal
    );
}
