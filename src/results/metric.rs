//! `amba_metric_results` (SPEC §3c): a number per exposed user (a count of events or
//! the sum of a numeric property), capped, optionally CUPED-adjusted with a pre-assignment
//! window. SQL reduces the users to sufficient statistics per variant in one pass; the
//! statistics are the core's (`amba_core::metric`).

use super::counting::{
    check_event, experiment_for_results, run_counting, Slicing, UserSlice,
    COUNTED_ASSIGNMENTS_FROM, COUNTED_ASSIGNMENTS_WHERE,
};
use crate::errors::{raise_code, OrRaise};
use amba_core::metric::{self, MeanArm};
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;
use std::collections::HashMap;

/// How Y is capped.
#[derive(Clone, Copy, PartialEq)]
enum Cap {
    None,
    /// `$5`, an absolute value.
    Absolute,
    /// `$6`, a percentile of Y over the users of every variant, before capping.
    Percentile,
}

/// Y (and X with CUPED) per exposed user, then the cap, then the sums per variant, in one
/// pass; the statement is shaped to the call (no percentile sort without a percentile cap,
/// no X without CUPED). `$3` the value property (NULL: count events), `$4` CUPED days (a day
/// is 24 hours, whatever the session's time zone), `$5` the absolute cap, `$6` the cap
/// percentile. Every input is restricted to the slice of user ids.
fn sums_sql(cuped: bool, cap: Cap, slice: UserSlice) -> String {
    // The property is looked up once per event (`v`); a JSON number casts to float8 directly.
    let value = "CASE WHEN $3::text IS NULL THEN 1::float8 \
                      WHEN jsonb_typeof(v.amount) = 'number' THEN v.amount::float8 ELSE 0::float8 END";
    let (window, y, x) = if cuped {
        (
            "a.assigned_at - make_interval(secs => $4::int * 86400.0)",
            format!("coalesce(sum({value}) FILTER (WHERE e.occurred_at >= a.assigned_at), 0)"),
            format!("coalesce(sum({value}) FILTER (WHERE e.occurred_at < a.assigned_at), 0)"),
        )
    } else {
        // A user without events still has a row (the left join): it adds nothing.
        (
            "a.assigned_at",
            format!("coalesce(sum({value}) FILTER (WHERE e.occurred_at IS NOT NULL), 0)"),
            "0::float8".to_string(),
        )
    };
    let (cap_from, capped_y, capped_x) = match cap {
        Cap::None => ("", "p.y".to_string(), "p.x".to_string()),
        Cap::Absolute => ("", "least(p.y, $5::float8)".to_string(), "least(p.x, $5::float8)".to_string()),
        Cap::Percentile => (
            ", (SELECT percentile_cont($6::float8) WITHIN GROUP (ORDER BY y) AS c FROM per_user) cap",
            "least(p.y, cap.c)".to_string(),
            "least(p.x, cap.c)".to_string(),
        ),
    };
    format!(
        "WITH per_user AS ( \
           SELECT min(a.variant) AS variant, {y} AS y, {x} AS x \
             FROM {COUNTED_ASSIGNMENTS_FROM} \
             JOIN amba.exposures xp ON xp.experiment_id = a.experiment_id AND xp.user_id = a.user_id{xp_slice} \
             LEFT JOIN amba.events e \
               ON e.event = $2 AND e.user_id = a.user_id AND e.occurred_at >= {window}{e_slice} \
             CROSS JOIN LATERAL (SELECT e.properties -> $3::text AS amount) v \
            WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
            GROUP BY a.user_id), \
         capped AS (SELECT p.variant, {capped_y} AS y, {capped_x} AS x FROM per_user p{cap_from}) \
         SELECT variant, count(*)::float8, sum(y), sum(y * y), sum(x), sum(x * x), sum(x * y) \
           FROM capped GROUP BY variant",
        xp_slice = slice.filter("xp.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

/// One row of `amba_metric_results`: a field per column, in column order
/// (`amba_core::columns::METRIC_COLUMNS`; declared to pgrx in `metric_results_fn!`).
pub struct MetricRow {
    pub variant: String,
    pub is_control: bool,
    pub exposed_count: i64,
    pub mean: Option<f64>,
    pub stddev: Option<f64>,
    pub delta: Option<f64>,
    pub delta_ci_low: Option<f64>,
    pub delta_ci_high: Option<f64>,
    pub p_value: Option<f64>,
    pub p_value_holm: Option<f64>,
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
    pub cuped_theta: Option<f64>,
}

/// A `MetricRow` as pgrx's `TableIterator` takes it: the fields in column order.
type MetricTuple = (
    String,
    bool,
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
    Option<f64>,
);

impl MetricRow {
    fn into_tuple(self) -> MetricTuple {
        let MetricRow {
            variant,
            is_control,
            exposed_count,
            mean,
            stddev,
            delta,
            delta_ci_low,
            delta_ci_high,
            p_value,
            p_value_holm,
            lift,
            lift_ci_low,
            lift_ci_high,
            cuped_theta,
        } = self;
        (
            variant,
            is_control,
            exposed_count,
            mean,
            stddev,
            delta,
            delta_ci_low,
            delta_ci_high,
            p_value,
            p_value_holm,
            lift,
            lift_ci_low,
            lift_ci_high,
            cuped_theta,
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn metric_results(
    experiment_key: Option<&str>,
    event: Option<&str>,
    value_property: Option<&str>,
    alpha: Option<f64>,
    cap: Option<f64>,
    cap_percentile: Option<f64>,
    cuped_days: Option<i32>,
) -> Vec<MetricRow> {
    validate::experiment_key(experiment_key).or_raise();
    let event = check_event("event", event);
    if value_property.is_some() {
        check_event("value_property", value_property);
    }
    let alpha = validate::alpha(alpha).or_raise();
    if cap.is_some() && cap_percentile.is_some() {
        raise_code(
            ErrorCode::InvalidArgument,
            "give at most one of cap and cap_percentile",
        );
    }
    if cap.is_some_and(|c| !c.is_finite()) {
        raise_code(ErrorCode::InvalidArgument, "cap must be a finite number");
    }
    if cap_percentile.is_some_and(|q| !(q > 0.0 && q < 1.0)) {
        raise_code(
            ErrorCode::InvalidArgument,
            "cap_percentile must be strictly between 0 and 1",
        );
    }
    if cuped_days.is_some_and(|d| !(1..=365).contains(&d)) {
        raise_code(
            ErrorCode::InvalidArgument,
            "cuped_days must be between 1 and 365",
        );
    }

    let (variant_keys, arms) = metric_arms(
        experiment_key,
        event,
        value_property,
        cap,
        cap_percentile,
        cuped_days,
    );
    let rows = metric::analyze_means(&arms, alpha, cuped_days.is_some());
    variant_keys
        .into_iter()
        .zip(arms)
        .zip(rows)
        .enumerate()
        .map(|(i, ((variant, arm), r))| MetricRow {
            variant,
            is_control: i == 0,
            exposed_count: arm.n as i64,
            mean: r.mean,
            stddev: r.stddev,
            delta: r.delta,
            delta_ci_low: r.delta_ci_low,
            delta_ci_high: r.delta_ci_high,
            p_value: r.p_value,
            p_value_holm: r.p_value_holm,
            lift: r.lift,
            lift_ci_low: r.lift_ci_low,
            lift_ci_high: r.lift_ci_high,
            cuped_theta: r.cuped_theta,
        })
        .collect()
}

/// The per-variant sums of Y (SPEC §3c) over exposed users, in variant order: what
/// `amba_metric_results` and the guardrail check (SPEC §12) judge. Inputs checked by the
/// caller.
pub(crate) fn metric_arms(
    experiment_key: Option<&str>,
    event: &str,
    value_property: Option<&str>,
    cap: Option<f64>,
    cap_percentile: Option<f64>,
    cuped_days: Option<i32>,
) -> (Vec<String>, Vec<MeanArm>) {
    let (variant_keys, sums) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        let mut sums: HashMap<String, MeanArm> = HashMap::new();
        let args = vec![
            exp.id.into(),
            event.into(),
            value_property.into(),
            cuped_days.into(),
            cap.into(),
            cap_percentile.into(),
        ];
        let cap_mode = match (cap, cap_percentile) {
            (Some(_), _) => Cap::Absolute,
            (None, Some(_)) => Cap::Percentile,
            (None, None) => Cap::None,
        };
        // A percentile cap is a percentile over every user: one slice.
        let slicing = if cap_mode == Cap::Percentile {
            Slicing::Whole
        } else {
            Slicing::ByWork {
                events: &[event],
                properties: true,
            }
        };
        let sql = |slice| sums_sql(cuped_days.is_some(), cap_mode, slice);
        run_counting(client, exp.id, sql, slicing, args, |table| {
            for row in table {
                let get = |i: usize| row.get::<f64>(i).expect("a sum").unwrap_or(0.0);
                let arm = sums
                    .entry(row.get(1).expect("variant").expect("variant"))
                    .or_default();
                arm.n += get(2);
                arm.sum += get(3);
                arm.sum_sq += get(4);
                arm.x_sum += get(5);
                arm.x_sum_sq += get(6);
                arm.xy_sum += get(7);
            }
        });
        (exp.variant_keys.clone(), sums)
    });
    let arms: Vec<MeanArm> = variant_keys
        .iter()
        .map(|k| sums.get(k).copied().unwrap_or_default())
        .collect();
    (variant_keys, arms)
}

/// `amba_metric_results` and its twin `amba._metric_results` share one column list.
macro_rules! metric_results_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        fn $fn_name(
            experiment_key: Option<&str>,
            event: Option<&str>,
            value_property: default!(Option<&str>, "NULL"),
            alpha: default!(Option<f64>, 0.05),
            cap: default!(Option<f64>, "NULL"),
            cap_percentile: default!(Option<f64>, "NULL"),
            cuped_days: default!(Option<i32>, "NULL"),
        ) -> TableIterator<'static, (
            name!(variant, String),
            name!(is_control, bool),
            name!(exposed_count, i64),
            name!(mean, Option<f64>),
            name!(stddev, Option<f64>),
            name!(delta, Option<f64>),
            name!(delta_ci_low, Option<f64>),
            name!(delta_ci_high, Option<f64>),
            name!(p_value, Option<f64>),
            name!(p_value_holm, Option<f64>),
            name!(lift, Option<f64>),
            name!(lift_ci_low, Option<f64>),
            name!(lift_ci_high, Option<f64>),
            name!(cuped_theta, Option<f64>),
        )> {
            let rows = metric_results(
                experiment_key, event, value_property, alpha, cap, cap_percentile, cuped_days,
            );
            TableIterator::new(rows.into_iter().map(MetricRow::into_tuple))
        }
    };
}

metric_results_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_metric_results
);

#[pg_schema]
mod amba {
    use super::*;
    metric_results_fn!(
        #[pg_extern(name = "_metric_results", stable, parallel_unsafe)]
        metric_results_internal
    );
}
