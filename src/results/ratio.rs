//! `amba_ratio_results` and `amba_quantile_results` (SPEC §13): per variant, the ratio
//! ΣM/ΣD of two per-user metrics (revenue per order, clicks per session) or a quantile of
//! event values (p90 latency), each against the control with gbstats' `TwoSidedTTest`
//! (delta method), absolute and relative. Which users and events count: exposed users not
//! overridden, events at or after their assignment (SPEC §3c). One pass over the data.

use super::counting::{
    check_event, experiment_for_results, run_counting, Slicing, UserSlice,
    COUNTED_ASSIGNMENTS_FROM, COUNTED_ASSIGNMENTS_WHERE,
};
use crate::errors::{raise_code, OrRaise};
use amba_core::quantile::{analyze_quantile, QuantileStats};
use amba_core::ratio::{analyze_ratio, RatioStats};
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;
use std::collections::HashMap;

/// An event's value: 1 (count) when the property is NULL, else the property when it is a
/// JSON number, else 0 (SPEC §3c).
fn value(property: &str) -> String {
    format!(
        "CASE WHEN {property}::text IS NULL THEN 1::float8 \
              WHEN jsonb_typeof(e.properties -> {property}::text) = 'number' \
              THEN (e.properties -> {property}::text)::float8 ELSE 0::float8 END"
    )
}

/// M and D per exposed user, then the sums per variant. `$2`/`$3` the numerator's event
/// and property, `$4`/`$5` the denominator's. Users are grouped by the assignments' primary
/// key, so the variant comes with the group (no aggregate over every joined row).
fn ratio_sums_sql(slice: UserSlice) -> String {
    format!(
        "WITH per_user AS ( \
           SELECT a.variant, \
                  coalesce(sum({m}) FILTER (WHERE e.event = $2), 0) AS m, \
                  coalesce(sum({d}) FILTER (WHERE e.event = $4), 0) AS d \
             FROM {COUNTED_ASSIGNMENTS_FROM} \
             JOIN amba.exposures xp ON xp.experiment_id = a.experiment_id AND xp.user_id = a.user_id{xp_slice} \
             LEFT JOIN amba.events e \
               ON e.event IN ($2, $4) AND e.user_id = a.user_id AND e.occurred_at >= a.assigned_at{e_slice} \
            WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
            GROUP BY a.experiment_id, a.user_id) \
         SELECT variant, count(*)::float8, sum(m), sum(d), sum(m * m), sum(d * d), sum(m * d) \
           FROM per_user GROUP BY variant",
        m = value("$3"),
        d = value("$5"),
        xp_slice = slice.filter("xp.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

/// Each exposed user's event values that carry `$3` as a JSON number (an empty array for
/// a user without any: a cluster with s = d = 0), with users of equal values as one row and
/// their number: most exposed users have no value or one, so the rows that cross SPI are
/// about the distinct values, not the users.
fn quantile_values_sql(slice: UserSlice) -> String {
    format!(
        "SELECT variant, vals, count(*)::float8 FROM ( \
           SELECT a.variant, \
                  coalesce(array_agg((e.properties -> $3::text)::float8) FILTER (WHERE e.user_id IS NOT NULL), '{{}}') AS vals \
             FROM {COUNTED_ASSIGNMENTS_FROM} \
             JOIN amba.exposures xp ON xp.experiment_id = a.experiment_id AND xp.user_id = a.user_id{xp_slice} \
             LEFT JOIN amba.events e \
               ON e.event = $2 AND e.user_id = a.user_id AND e.occurred_at >= a.assigned_at \
              AND jsonb_typeof(e.properties -> $3::text) = 'number'{e_slice} \
            WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
            GROUP BY a.experiment_id, a.user_id) per_user \
          GROUP BY variant, vals",
        xp_slice = slice.filter("xp.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

type RatioTuple = (
    String,
    bool,
    i64,
    f64,
    f64,
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

fn ratio_results(
    experiment_key: Option<&str>,
    numerator_event: Option<&str>,
    numerator_property: Option<&str>,
    denominator_event: Option<&str>,
    denominator_property: Option<&str>,
    alpha: Option<f64>,
) -> Vec<RatioTuple> {
    validate::experiment_key(experiment_key).or_raise();
    let numerator = check_event("numerator_event", numerator_event);
    let denominator = check_event("denominator_event", denominator_event);
    if numerator_property.is_some() {
        check_event("numerator_property", numerator_property);
    }
    if denominator_property.is_some() {
        check_event("denominator_property", denominator_property);
    }
    let alpha = validate::alpha(alpha).or_raise();
    let (variant_keys, sums) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        let mut sums: HashMap<String, RatioStats> = HashMap::new();
        let args = vec![
            exp.id.into(),
            numerator.into(),
            numerator_property.into(),
            denominator.into(),
            denominator_property.into(),
        ];
        let slicing = Slicing::ByWork {
            events: &[numerator, denominator],
            properties: true,
        };
        run_counting(client, exp.id, ratio_sums_sql, slicing, args, |table| {
            for row in table {
                let get = |i: usize| row.get::<f64>(i).expect("a sum").unwrap_or(0.0);
                let arm = sums
                    .entry(row.get(1).expect("variant").expect("variant"))
                    .or_default();
                arm.n += get(2);
                arm.m_sum += get(3);
                arm.d_sum += get(4);
                arm.m_sum_sq += get(5);
                arm.d_sum_sq += get(6);
                arm.md_sum += get(7);
            }
        });
        (exp.variant_keys.clone(), sums)
    });
    let arms: Vec<RatioStats> = variant_keys
        .iter()
        .map(|k| sums.get(k).copied().unwrap_or_default())
        .collect();
    let rows = analyze_ratio(&arms, alpha);
    variant_keys
        .into_iter()
        .zip(arms)
        .zip(rows)
        .enumerate()
        .map(|(i, ((variant, arm), r))| {
            let c = r.comparison;
            (
                variant,
                i == 0,
                arm.n as i64,
                r.numerator_sum,
                r.denominator_sum,
                r.ratio,
                c.delta,
                c.delta_ci_low,
                c.delta_ci_high,
                c.p_value,
                c.p_value_holm,
                c.lift,
                c.lift_ci_low,
                c.lift_ci_high,
            )
        })
        .collect()
}

type QuantileTuple = (
    String,
    bool,
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
);

fn quantile_results(
    experiment_key: Option<&str>,
    event: Option<&str>,
    value_property: Option<&str>,
    quantile: Option<f64>,
    alpha: Option<f64>,
) -> Vec<QuantileTuple> {
    validate::experiment_key(experiment_key).or_raise();
    let event = check_event("event", event);
    let value_property = check_event("value_property", value_property);
    let nu = match quantile {
        Some(q) if q > 0.0 && q < 1.0 => q,
        _ => raise_code(
            ErrorCode::InvalidArgument,
            "quantile must be strictly between 0 and 1, e.g. 0.9",
        ),
    };
    let alpha = validate::alpha(alpha).or_raise();
    let (variant_keys, groups) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        let mut groups: HashMap<String, Vec<(Vec<f64>, f64)>> = HashMap::new();
        let args = vec![exp.id.into(), event.into(), value_property.into()];
        let slicing = Slicing::ByWork {
            events: &[event],
            properties: true,
        };
        run_counting(
            client,
            exp.id,
            quantile_values_sql,
            slicing,
            args,
            |table| {
                for row in table {
                    let variant: String = row.get(1).expect("variant").expect("variant");
                    let values: Vec<f64> = row.get(2).expect("values").unwrap_or_default();
                    let users: f64 = row.get(3).expect("users").expect("users");
                    groups.entry(variant).or_default().push((values, users));
                }
            },
        );
        (exp.variant_keys.clone(), groups)
    });
    let empty: Vec<(Vec<f64>, f64)> = Vec::new();
    let arms: Vec<QuantileStats> = variant_keys
        .iter()
        .map(|k| QuantileStats::from_user_groups(groups.get(k).unwrap_or(&empty), nu))
        .collect();
    let rows = analyze_quantile(&arms, alpha);
    variant_keys
        .into_iter()
        .zip(arms)
        .zip(rows)
        .enumerate()
        .map(|(i, ((variant, arm), r))| {
            let c = r.comparison;
            (
                variant,
                i == 0,
                arm.n_clusters as i64,
                r.event_count as i64,
                r.quantile_value,
                c.delta,
                c.delta_ci_low,
                c.delta_ci_high,
                c.p_value,
                c.p_value_holm,
                c.lift,
                c.lift_ci_low,
                c.lift_ci_high,
            )
        })
        .collect()
}

macro_rules! ratio_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        fn $fn_name(
            experiment_key: Option<&str>,
            numerator_event: Option<&str>,
            numerator_property: Option<&str>,
            denominator_event: Option<&str>,
            denominator_property: Option<&str>,
            alpha: default!(Option<f64>, 0.05),
        ) -> TableIterator<'static, (
            name!(variant, String),
            name!(is_control, bool),
            name!(exposed_count, i64),
            name!(numerator_sum, f64),
            name!(denominator_sum, f64),
            name!(ratio, Option<f64>),
            name!(delta, Option<f64>),
            name!(delta_ci_low, Option<f64>),
            name!(delta_ci_high, Option<f64>),
            name!(p_value, Option<f64>),
            name!(p_value_holm, Option<f64>),
            name!(lift, Option<f64>),
            name!(lift_ci_low, Option<f64>),
            name!(lift_ci_high, Option<f64>),
        )> {
            TableIterator::new(ratio_results(
                experiment_key,
                numerator_event,
                numerator_property,
                denominator_event,
                denominator_property,
                alpha,
            ))
        }
    };
}

macro_rules! quantile_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        fn $fn_name(
            experiment_key: Option<&str>,
            event: Option<&str>,
            value_property: Option<&str>,
            quantile: Option<f64>,
            alpha: default!(Option<f64>, 0.05),
        ) -> TableIterator<'static, (
            name!(variant, String),
            name!(is_control, bool),
            name!(exposed_count, i64),
            name!(event_count, i64),
            name!(quantile_value, Option<f64>),
            name!(delta, Option<f64>),
            name!(delta_ci_low, Option<f64>),
            name!(delta_ci_high, Option<f64>),
            name!(p_value, Option<f64>),
            name!(p_value_holm, Option<f64>),
            name!(lift, Option<f64>),
            name!(lift_ci_low, Option<f64>),
            name!(lift_ci_high, Option<f64>),
        )> {
            TableIterator::new(quantile_results(experiment_key, event, value_property, quantile, alpha))
        }
    };
}

ratio_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_ratio_results
);

quantile_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_quantile_results
);

#[pg_schema]
mod amba {
    use super::*;
    ratio_fn!(
        #[pg_extern(name = "_ratio_results", stable, parallel_unsafe)]
        ratio_results_internal
    );
    quantile_fn!(
        #[pg_extern(name = "_quantile_results", stable, parallel_unsafe)]
        quantile_results_internal
    );
}
