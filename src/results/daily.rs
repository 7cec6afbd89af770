//! `amba_results_daily` (SPEC §3e): the results as they stood at the end of each UTC
//! day, in one pass. SQL counts exposed users by (variant, day of first exposure, day they
//! converted — the later of exposure and first qualifying event); cumulative sums over the
//! days give each day's exposed and converted counts, and the core gives the statistics.

use super::counting::{
    check_event, experiment_for_results, run_counting, Slicing, UserSlice,
    COUNTED_ASSIGNMENTS_FROM, COUNTED_ASSIGNMENTS_WHERE,
};
use crate::errors::{raise_code, OrRaise};
use amba_core::stats::{self, Arm};
use amba_core::{validate, ErrorCode};
use pgrx::datum::Date;
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// One pass: per assigned user, the day of their first exposure, the day they converted
/// (the later of exposure and first qualifying event) and the day of their latest
/// `conversion_event` (any time: it bounds the days reported); then counted per
/// (variant, exposure day, conversion day). Grouped by user id alone (one assignment per
/// user and experiment), so the groups follow the merge joins' order with no sort. The
/// exposures are a subquery in user order (see `conversion::counts_sql`). Days are numbered
/// from 2000-01-01 (PostgreSQL's date epoch) so Rust sums run on integers; NULL exposure
/// day: assigned, never exposed.
fn counts_sql(slice: UserSlice) -> String {
    format!(
        "WITH per_user AS ( \
           SELECT min(a.variant) AS variant, min(xp.exposed_at) AS exposed_at, \
                  min(e.occurred_at) FILTER (WHERE e.occurred_at >= a.assigned_at) AS first_at, \
                  max(e.occurred_at) AS last_at \
             FROM {COUNTED_ASSIGNMENTS_FROM} \
             LEFT JOIN (SELECT xp.user_id, xp.exposed_at FROM amba.exposures xp \
                         WHERE xp.experiment_id = $1{xp_slice} ORDER BY xp.user_id) xp ON xp.user_id = a.user_id \
             LEFT JOIN amba.events e ON e.event = $2 AND e.user_id = a.user_id{e_slice} \
            WHERE {COUNTED_ASSIGNMENTS_WHERE}{a_slice} \
            GROUP BY a.user_id) \
         SELECT variant, \
                ((exposed_at AT TIME ZONE 'UTC')::date - date '2000-01-01') AS exposed_day, \
                CASE WHEN exposed_at IS NOT NULL AND first_at IS NOT NULL \
                     THEN ((greatest(exposed_at, first_at) AT TIME ZONE 'UTC')::date - date '2000-01-01') \
                END AS converted_day, \
                max((last_at AT TIME ZONE 'UTC')::date - date '2000-01-01') AS last_event_day, \
                count(*) \
           FROM per_user GROUP BY 1, 2, 3",
        xp_slice = slice.filter("xp.user_id"),
        e_slice = slice.filter("e.user_id"),
        a_slice = slice.filter("a.user_id"),
    )
}

/// One row of `amba_results_daily`: a field per column, in column order
/// (`amba_core::columns::DAILY_COLUMNS`; declared to pgrx in `results_daily_fn!`).
pub struct DailyRow {
    pub day: Date,
    pub variant: String,
    pub is_control: bool,
    pub exposed_count: i64,
    pub converted_count: i64,
    pub conversion_rate: Option<f64>,
    pub lift: Option<f64>,
    pub lift_ci_low: Option<f64>,
    pub lift_ci_high: Option<f64>,
    pub p_value: Option<f64>,
    pub sequential_p_value: Option<f64>,
    pub lift_cs_low: Option<f64>,
    pub lift_cs_high: Option<f64>,
}

/// A `DailyRow` as pgrx's `TableIterator` takes it: the fields in column order.
type DailyTuple = (
    Date,
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
);

impl DailyRow {
    fn into_tuple(self) -> DailyTuple {
        let DailyRow {
            day,
            variant,
            is_control,
            exposed_count,
            converted_count,
            conversion_rate,
            lift,
            lift_ci_low,
            lift_ci_high,
            p_value,
            sequential_p_value,
            lift_cs_low,
            lift_cs_high,
        } = self;
        (
            day,
            variant,
            is_control,
            exposed_count,
            converted_count,
            conversion_rate,
            lift,
            lift_ci_low,
            lift_ci_high,
            p_value,
            sequential_p_value,
            lift_cs_low,
            lift_cs_high,
        )
    }
}

/// The most days daily results span (a century and a day or so of leap years).
const MAX_DAYS: i64 = 36_600;
/// The most rows (days × variants) they hold in memory: about 100 MB.
const MAX_ROWS: i64 = 400_000;

fn results_daily(
    experiment_key: Option<&str>,
    conversion_event: Option<&str>,
    alpha: Option<f64>,
) -> Vec<DailyRow> {
    validate::experiment_key(experiment_key).or_raise();
    let event = check_event("conversion_event", conversion_event);
    let alpha = validate::alpha(alpha).or_raise();

    // (variant index, day) → new exposures, new conversions.
    let (variant_keys, new_exposed, new_converted, last_event_day) = Spi::connect(|client| {
        let exp = experiment_for_results(client, experiment_key);
        let index: BTreeMap<&str, usize> = exp
            .variant_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut new_exposed: BTreeMap<(i32, usize), i64> = BTreeMap::new();
        let mut new_converted: BTreeMap<(i32, usize), i64> = BTreeMap::new();
        let args = vec![exp.id.into(), event.into()];
        let mut last_event_day: Option<i32> = None;
        let slicing = Slicing::ByWork {
            events: &[event],
            properties: false,
        };
        run_counting(client, exp.id, counts_sql, slicing, args, |table| {
            for row in table {
                let variant: String = row.get(1).expect("variant").expect("variant");
                let Some(&v) = index.get(variant.as_str()) else {
                    continue;
                };
                let exposed_day: Option<i32> = row.get(2).expect("day");
                let converted_day: Option<i32> = row.get(3).expect("day");
                let last: Option<i32> = row.get(4).expect("day");
                let users: i64 = row.get(5).expect("count").unwrap_or(0);
                last_event_day = last_event_day.max(last);
                let Some(exposed_day) = exposed_day else {
                    continue;
                };
                *new_exposed.entry((exposed_day, v)).or_default() += users;
                if let Some(day) = converted_day {
                    *new_converted.entry((day, v)).or_default() += users;
                }
            }
        });
        (
            exp.variant_keys.clone(),
            new_exposed,
            new_converted,
            last_event_day,
        )
    });

    let Some(first_day) = new_exposed.keys().map(|(d, _)| *d).min() else {
        return Vec::new();
    };
    let last_day = new_exposed
        .keys()
        .map(|(d, _)| *d)
        .chain(new_converted.keys().map(|(d, _)| *d))
        .chain(last_event_day)
        .max()
        .unwrap_or(first_day);
    // An occurred_at centuries away (amba_track takes any timestamp) would ask for millions
    // of rows, held in memory: refused with the dates, so the stray event can be found.
    let span = i64::from(last_day) - i64::from(first_day) + 1;
    let rows_needed = span.saturating_mul(variant_keys.len() as i64);
    if span > MAX_DAYS || rows_needed > MAX_ROWS {
        let date = |day: i32| {
            Date::try_from(pgrx::pg_sys::DateADT::from(day))
                .map(|d| d.to_string())
                .unwrap_or_else(|_| day.to_string())
        };
        raise_code(
            ErrorCode::InvalidArgument,
            format!(
                "daily results of {:?} would span {span} days, from the first exposure on {} \
                 to an exposure or {event:?} event on {} ({rows_needed} rows for {} \
                 variants); at most {MAX_DAYS} days and {MAX_ROWS} rows: check the events' \
                 occurred_at",
                experiment_key.unwrap_or_default(),
                date(first_day),
                date(last_day),
                variant_keys.len()
            ),
        );
    }
    let n = variant_keys.len();
    let (mut exposed, mut converted) = (vec![0i64; n], vec![0i64; n]);
    let mut rows = Vec::new();
    for day in first_day..=last_day {
        pgrx::check_for_interrupts!();
        for v in 0..n {
            exposed[v] += new_exposed.get(&(day, v)).copied().unwrap_or(0);
            converted[v] += new_converted.get(&(day, v)).copied().unwrap_or(0);
        }
        let arms: Vec<Arm> = (0..n)
            .map(|v| Arm::new(exposed[v] as u64, converted[v] as u64))
            .collect();
        let analysis = stats::analyze(&arms, alpha);
        let date = Date::try_from(pgrx::pg_sys::DateADT::from(day)).expect("a valid date");
        for (v, s) in analysis.into_iter().enumerate() {
            let total_n = (exposed[v] + exposed[0]) as f64;
            let cs = s.effect.and_then(|e| {
                let var = stats::lift_variance_of(arms[0], arms[v])?;
                stats::lift_confidence_sequence(total_n, e.lift, var, alpha)
            });
            rows.push(DailyRow {
                day: date,
                variant: variant_keys[v].clone(),
                is_control: v == 0,
                exposed_count: exposed[v],
                converted_count: converted[v],
                conversion_rate: s.conversion_rate,
                lift: s.effect.map(|e| e.lift),
                lift_ci_low: s.effect.map(|e| e.lift_ci_low),
                lift_ci_high: s.effect.map(|e| e.lift_ci_high),
                p_value: s.z_test.map(|z| z.p_value),
                sequential_p_value: s.effect.map(|e| e.sequential_p_value),
                lift_cs_low: cs.map(|c| c.0),
                lift_cs_high: cs.map(|c| c.1),
            });
        }
    }
    rows
}

/// `amba_results_daily` and its twin `amba._results_daily` share one column list.
macro_rules! results_daily_fn {
    ($(#[$attr:meta])* $fn_name:ident) => {
        $(#[$attr])*
        fn $fn_name(
            experiment_key: Option<&str>,
            conversion_event: Option<&str>,
            alpha: default!(Option<f64>, 0.05),
        ) -> TableIterator<'static, (
            name!(day, Date),
            name!(variant, String),
            name!(is_control, bool),
            name!(exposed_count, i64),
            name!(converted_count, i64),
            name!(conversion_rate, Option<f64>),
            name!(lift, Option<f64>),
            name!(lift_ci_low, Option<f64>),
            name!(lift_ci_high, Option<f64>),
            name!(p_value, Option<f64>),
            name!(sequential_p_value, Option<f64>),
            name!(lift_cs_low, Option<f64>),
            name!(lift_cs_high, Option<f64>),
        )> {
            let rows = results_daily(experiment_key, conversion_event, alpha);
            TableIterator::new(rows.into_iter().map(DailyRow::into_tuple))
        }
    };
}

results_daily_fn!(
    #[pg_extern(stable, parallel_unsafe)]
    amba_results_daily
);

#[pg_schema]
mod amba {
    use super::*;
    results_daily_fn!(
        #[pg_extern(name = "_results_daily", stable, parallel_unsafe)]
        results_daily_internal
    );
}
