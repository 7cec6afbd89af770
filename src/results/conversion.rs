//! `amba_results` (and its twin `amba._results`, which the HTTP surface calls): validate,
//! count through SPI in one pass, call the core, shape rows.
//! The counts: one pass over the experiment's assignments (joined to exposures and to each
//! user's latest conversion), aggregated per (variant, weight version); overridden users
//! are left out (SPEC §3d).

use super::counting::{
    check_event, experiment_for_results, run_counting, weight_versions, Slicing, UserSlice,
    COUNTED_ASSIGNMENTS_FROM, COUNTED_ASSIGNMENTS_WHERE,
};
use crate::errors::OrRaise;
use amba_core::srm::{self, WeightVersion};
use amba_core::stats::{self, Arm};
use amba_core::validate;
use pgrx::prelude::*;
use std::collections::HashMap;

/// A user converted when exposed and their latest `conversion_event` is at or after
/// their assignment; `max(occurred_at) >= assigned_at` says exactly that. Every input is
/// restricted to the slice of user ids, so each slice is a merge of three index ranges.
/// The exposures are a subquery in user order: joined directly, the planner sorts them
/// (their index order by (experiment_id, user_id) does not count as user order on the
/// nullable side of an outer join).
pub(crate) fn counts_sql(slice: UserSlice) -> String {
    format!(
        "SELECT a.variant, a.weight_version, \
           count(*) AS assigned, \
           count(x.user_id) AS exposed, \
           count(*) FILTER (WHERE x.user_id IS NOT NULL AND c.last_at >= a.assigned_at) AS converted \
         FROM {COUNTED_ASSIGNMENTS_FROM} \
         LEFT JOIN (SELECT x.user_id FROM amba.exposures x \
                    WHERE x.experiment_id = $1{x_slice} ORDER BY x.user_id) x \
           ON x.user_id = a.user_id \
         LEFT JOIN (SELECT e.user_id, max(e.occurred_at) AS last_at \
                    FROM amba.events e WHERE e.event = $2{e_slice} GROUP BY e.user_id) c \
           ON c.user_id = a.user_id \
         WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
         GROUP BY a.variant, a.weight_version",
        x_slice = slice.filter("x.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub assigned: i64,
    pub exposed: i64,
    pub converted: i64,
}

/// One row of `amba_results`: a field per column, in column order
/// (`amba_core::columns::RESULT_COLUMNS`; declared to pgrx in `results_fn!`).
pub struct ResultRow {
    pub variant: String,
    pub is_control: bool,
    pub assigned_count: i64,
    pub exposed_count: i64,
    pub converted_count: i64,
    pub conversion_rate: Option<f64>,
    pub z_score: Option<f64>,
    pub p_value: Option<f64>,
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
    pub chance_to_win: Option<f64>,
    pub p_value_holm: Option<f64>,
    pub sequential_p_value: Option<f64>,
    pub srm_p_value: Option<f64>,
}

/// A `ResultRow` as pgrx's `TableIterator` takes it: the fields in column order.
pub(crate) type ResultTuple = (
    String,
    bool,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

impl ResultRow {
    pub(crate) fn into_tuple(self) -> ResultTuple {
        let ResultRow {
            variant,
            is_control,
            assigned_count,
            exposed_count,
            converted_count,
            conversion_rate,
            z_score,
            p_value,
            lift,
            lift_ci_low,
            lift_ci_high,
            chance_to_win,
            p_value_holm,
            sequential_p_value,
            srm_p_value,
        } = self;
        (
            variant,
            is_control,
            assigned_count,
            exposed_count,
            converted_count,
            conversion_rate,
            z_score,
            p_value,
            lift,
            lift_ci_low,
            lift_ci_high,
            chance_to_win,
            p_value_holm,
            sequential_p_value,
            srm_p_value,
        )
    }
}

pub(crate) fn results(
    experiment_key: Option<&str>,
    conversion_event: Option<&str>,
    alpha: Option<f64>,
) -> Vec<ResultRow> {
    validate::experiment_key(experiment_key).or_raise();
    let event = check_event("conversion_event", conversion_event);
    let alpha = validate::alpha(alpha).or_raise();

    let (variant_keys, by_group, versions) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        let mut by_group: Vec<(String, i32, Counts)> = Vec::new();
        run_counting(
            client,
            exp.id,
            counts_sql,
            Slicing::ByWork {
                events: &[event],
                properties: false,
            },
            vec![exp.id.into(), event.into()],
            |table| {
                for row in table {
                    let counts = Counts {
                        assigned: row.get(3).expect("assigned").unwrap_or(0),
                        exposed: row.get(4).expect("exposed").unwrap_or(0),
                        converted: row.get(5).expect("converted").unwrap_or(0),
                    };
                    by_group.push((
                        row.get(1).expect("variant").expect("variant"),
                        row.get(2).expect("version").expect("version"),
                        counts,
                    ));
                }
            },
        );
        (
            exp.variant_keys.clone(),
            by_group,
            weight_versions(client, exp.id),
        )
    });

    rows_from_counts(&variant_keys, &by_group, &versions, alpha)
}

/// The rows of `amba_results` from the counts per (variant, weight version): the
/// statistics of SPEC §3/§3b and the SRM test at assignment-time weights. Shared with
/// `amba_results_by`, which calls it once per dimension value.
pub(crate) fn rows_from_counts(
    variant_keys: &[String],
    by_group: &[(String, i32, Counts)],
    versions: &[WeightVersion],
    alpha: f64,
) -> Vec<ResultRow> {
    let mut per_key: HashMap<&str, Counts> = HashMap::new();
    let mut exposed_by_version: HashMap<i32, u64> = HashMap::new();
    for (variant, version, c) in by_group {
        let total = per_key.entry(variant.as_str()).or_default();
        total.assigned += c.assigned;
        total.exposed += c.exposed;
        total.converted += c.converted;
        *exposed_by_version.entry(*version).or_default() += c.exposed as u64;
    }
    let per_variant: Vec<Counts> = variant_keys
        .iter()
        .map(|k| per_key.get(k.as_str()).copied().unwrap_or_default())
        .collect();
    let exposed_by_key: Vec<(String, u64)> = per_key
        .iter()
        .map(|(k, c)| (k.to_string(), c.exposed as u64))
        .collect();
    let mut exposed_by_version: Vec<(i32, u64)> = exposed_by_version.into_iter().collect();
    exposed_by_version.sort();
    let srm =
        srm::srm_p_value_by_version(variant_keys, &exposed_by_key, &exposed_by_version, versions);

    let arms: Vec<Arm> = per_variant
        .iter()
        .map(|c| Arm::new(c.exposed as u64, c.converted as u64))
        .collect();
    let analysis = stats::analyze(&arms, alpha);
    variant_keys
        .iter()
        .cloned()
        .zip(per_variant)
        .zip(analysis)
        .enumerate()
        .map(|(i, ((variant, c), s))| ResultRow {
            variant,
            is_control: i == 0,
            assigned_count: c.assigned,
            exposed_count: c.exposed,
            converted_count: c.converted,
            conversion_rate: s.conversion_rate,
            z_score: s.z_test.map(|z| z.z_score),
            p_value: s.z_test.map(|z| z.p_value),
            lift: s.effect.map(|e| e.lift),
            lift_ci_low: s.effect.map(|e| e.lift_ci_low),
            lift_ci_high: s.effect.map(|e| e.lift_ci_high),
            chance_to_win: s.effect.map(|e| e.chance_to_win),
            p_value_holm: s.p_value_holm,
            sequential_p_value: s.effect.map(|e| e.sequential_p_value),
            srm_p_value: srm,
        })
        .collect()
}

/// Declares a results function: `amba_results` in the extension's schema and its twin
/// `amba._results` (which the HTTP surface calls) share one column list.
macro_rules! results_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        fn $fn_name(
            experiment_key: Option<&str>,
            conversion_event: Option<&str>,
            alpha: default!(Option<f64>, 0.05),
        ) -> TableIterator<'static, (
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
            let rows = results(experiment_key, conversion_event, alpha);
            TableIterator::new(rows.into_iter().map(ResultRow::into_tuple))
        }
    };
}

results_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_results
);

#[pg_schema]
mod amba {
    use super::*;
    results_fn!(
        #[pg_extern(name = "_results", stable, parallel_unsafe)]
        results_internal
    );
}
