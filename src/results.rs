//! `amba_results`: one pass over the experiment's assignments (joined to exposures and
//! to each user's latest conversion), aggregated per (variant, weight version) in SQL;
//! the statistics come from the pure core.

use crate::cache::{self, with_plan};
use crate::errors::{raise_code, OrRaise};
use amba_core::stats::{self, Arm};
use amba_core::{validate, ErrorCode};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static VERSIONS_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static ESTIMATE_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// A user converted when exposed and their latest `conversion_event` is at or after
/// their assignment; `max(occurred_at) >= assigned_at` says exactly that.
pub const COUNTS_SQL: &str = "SELECT a.variant, a.weight_version, \
       count(*) AS assigned, \
       count(x.user_id) AS exposed, \
       count(*) FILTER (WHERE x.user_id IS NOT NULL AND c.last_at >= a.assigned_at) AS converted \
     FROM amba.assignments a \
     LEFT JOIN amba.exposures x \
       ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id \
     LEFT JOIN (SELECT e.user_id, max(e.occurred_at) AS last_at \
                FROM amba.events e WHERE e.event = $2 GROUP BY e.user_id) c \
       ON c.user_id = a.user_id \
     WHERE a.experiment_id = $1 \
     GROUP BY a.variant, a.weight_version";

/// From this many assignments on (the planner's estimate) COUNTS_SQL runs as one process
/// with merge joins; below it the planner chooses freely, as for a hand-written query.
///
/// The three inputs of COUNTS_SQL come sorted by user from their indexes (assignments and
/// exposures by primary key, events by (event, user_id, occurred_at)), so merge joins can
/// stream them. The planner prefers hash joins (in parallel workers when it may), which
/// build hash tables of every exposed and every converting user and probe them once per
/// assignment: fine while they fit in the CPU caches, slower per user beyond. Measured on
/// the benchmark machine (BENCHMARKS.md): at 250k assignments the planner's parallel plan
/// takes 0.8x the time of the serial merge plan, at 500k 1.2x, at 1M 1.4x; the serial merge
/// plan costs the same per user at every size.
const MERGE_FROM_ASSIGNMENTS: f64 = 350_000.0;

/// The planner's estimate of the experiment's assignments: its share among the most common
/// values of amba.assignments.experiment_id (pg_stats, kept by ANALYZE/autovacuum) times the
/// table's rows. 0 when the experiment is not among them or there are no statistics yet.
const ESTIMATE_SQL: &str = "SELECT (coalesce((SELECT m.f FROM unnest(s.most_common_vals::text::bigint[], \
       s.most_common_freqs) AS m(v, f) WHERE m.v = $1), 0) * c.reltuples)::float8 \
     FROM pg_catalog.pg_stats s, pg_catalog.pg_class c \
     WHERE s.schemaname = 'amba' AND s.tablename = 'assignments' AND s.attname = 'experiment_id' \
       AND c.oid = 'amba.assignments'::regclass";

fn estimated_assignments(client: &pgrx::spi::SpiClient<'_>, experiment_id: i64) -> f64 {
    with_plan(&ESTIMATE_PLAN, client, ESTIMATE_SQL, &[pg_sys::INT8OID], false, |plan| {
        let table = client.select(plan, Some(1), &[experiment_id.into()]).expect("reading statistics");
        if table.is_empty() {
            0.0
        } else {
            table.first().get::<f64>(1).ok().flatten().unwrap_or(0.0)
        }
    })
}

/// Runs `f` with planner settings changed like a function's SET clause: saved before and
/// restored after (by PostgreSQL's abort processing on error).
fn with_settings<R>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> R) -> R {
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let result = f();
        pg_sys::AtEOXact_GUC(true, level);
        result
    }
}

const VERSIONS_SQL: &str = "SELECT version, variant_keys, weights \
     FROM amba.weight_versions WHERE experiment_id = $1";

#[derive(Default, Clone, Copy)]
struct Counts {
    assigned: i64,
    exposed: i64,
    converted: i64,
}


/// Expected exposures per variant: each exposed user counts toward the weight shares in
/// force when they were assigned (`versions`: version → keys and weights).
fn srm_expected(
    keys: &[String],
    exposed_by_version: &[(i32, i64)],
    versions: &HashMap<i32, (Vec<String>, Vec<f64>)>,
) -> Vec<f64> {
    let mut expected = vec![0.0; keys.len()];
    for (version, exposed) in exposed_by_version {
        let Some((version_keys, weights)) = versions.get(version) else { continue };
        let total: f64 = weights.iter().fold(0.0, |a, w| a + w);
        if !(total > 0.0) {
            continue;
        }
        for (k, w) in version_keys.iter().zip(weights) {
            if let Some(i) = keys.iter().position(|key| key == k) {
                expected[i] += *exposed as f64 * (w / total);
            }
        }
    }
    expected
}

#[pg_extern(stable, parallel_unsafe)]
fn amba_results(
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
    validate::experiment_key(experiment_key).or_raise();
    let key = experiment_key.unwrap();
    validate::event(conversion_event)
        .map_err(|e| amba_core::CoreError::invalid(e.detail.replacen("event", "conversion_event", 1)))
        .or_raise();
    let event = conversion_event.unwrap();
    let alpha = validate::alpha(alpha).or_raise();

    let (variant_keys, counts, exposed_by_version, versions) = pgrx::spi::Spi::connect(|client| {
        let exp = cache::lookup(client, key).unwrap_or_else(|| {
            raise_code(ErrorCode::ExperimentNotFound, format!("experiment {key:?} does not exist"))
        });
        let mut counts: HashMap<String, Counts> = HashMap::new();
        let mut exposed_by_version: HashMap<i32, i64> = HashMap::new();
        // Planned at every call (with this experiment's statistics), and run as SPI runs a
        // one-shot query: parallel workers allowed (a kept SPI plan never gets them).
        let settings: &[(&std::ffi::CStr, &std::ffi::CStr)] =
            if estimated_assignments(client, exp.id) >= MERGE_FROM_ASSIGNMENTS {
                &[(c"enable_hashjoin", c"off"), (c"max_parallel_workers_per_gather", c"0")]
            } else {
                &[]
            };
        {
            let table = with_settings(settings, || client.select(COUNTS_SQL, None, &[exp.id.into(), event.into()]))
                .expect("counting");
            for row in table {
                let variant: String = row.get(1).expect("variant").expect("variant");
                let version: i32 = row.get(2).expect("version").expect("version");
                let assigned: i64 = row.get(3).expect("assigned").unwrap_or(0);
                let exposed: i64 = row.get(4).expect("exposed").unwrap_or(0);
                let converted: i64 = row.get(5).expect("converted").unwrap_or(0);
                let c = counts.entry(variant).or_default();
                c.assigned += assigned;
                c.exposed += exposed;
                c.converted += converted;
                *exposed_by_version.entry(version).or_default() += exposed;
            }
        }
        let mut versions: HashMap<i32, (Vec<String>, Vec<f64>)> = HashMap::new();
        with_plan(&VERSIONS_PLAN, client, VERSIONS_SQL, &[pg_sys::INT8OID], false, |plan| {
            for row in client.select(plan, None, &[exp.id.into()]).expect("reading weight versions") {
                let version: i32 = row.get(1).expect("version").expect("version");
                let keys: Vec<String> = row.get(2).expect("keys").expect("keys");
                let weights: Vec<f64> = row.get(3).expect("weights").expect("weights");
                versions.insert(version, (keys, weights));
            }
        });
        let mut by_version: Vec<(i32, i64)> = exposed_by_version.into_iter().collect();
        by_version.sort();
        (exp.variant_keys.clone(), counts, by_version, versions)
    });

    // Variants of older weight versions that were removed since (they never had an
    // assignment) still count in the SRM test: users were allocated with them in place.
    let mut srm_keys = variant_keys.clone();
    for (_, (keys, _)) in versions.iter() {
        for k in keys {
            if !srm_keys.contains(k) {
                srm_keys.push(k.clone());
            }
        }
    }
    let per_variant: Vec<Counts> =
        variant_keys.iter().map(|k| counts.get(k).copied().unwrap_or_default()).collect();
    let observed: Vec<f64> = srm_keys
        .iter()
        .map(|k| counts.get(k).map(|c| c.exposed as f64).unwrap_or(0.0))
        .collect();
    let expected = srm_expected(&srm_keys, &exposed_by_version, &versions);
    let srm = if observed.iter().sum::<f64>() > 0.0 {
        stats::srm_p_value(&observed, &expected)
    } else {
        None
    };

    let arms: Vec<Arm> =
        per_variant.iter().map(|c| Arm::new(c.exposed as u64, c.converted as u64)).collect();
    let analysis = stats::analyze(&arms, alpha);
    let rows: Vec<_> = variant_keys
        .into_iter()
        .zip(per_variant)
        .zip(analysis)
        .enumerate()
        .map(|(i, ((variant, c), s))| {
            (
                variant,
                i == 0,
                c.assigned,
                c.exposed,
                c.converted,
                s.conversion_rate,
                s.z_test.map(|z| z.z_score),
                s.z_test.map(|z| z.p_value),
                s.effect.map(|e| e.lift),
                s.effect.map(|e| e.lift_ci_low),
                s.effect.map(|e| e.lift_ci_high),
                s.effect.map(|e| e.chance_to_win),
                s.p_value_holm,
                s.effect.map(|e| e.sequential_p_value),
                srm,
            )
        })
        .collect();
    TableIterator::new(rows)
}
