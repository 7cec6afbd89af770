//! Guardrails (SPEC §12): `amba_check_guardrails` judges each guardrail of each active
//! experiment with an always-valid interval of the relative lift — safe to check every
//! minute for months — and pauses an experiment a guardrail trips, in the same
//! transaction, with an `auto_pause` audit row and a `pg_notify('amba', …)` per tripping
//! row (`amba._auto_pause` in sql/api.sql). The very next `amba_assign` sees the pause.
//!
//! The data are counted as the results functions count them: exposed users, overridden
//! users left out, events at or after assignment; a conversion guardrail's Y is 1 when the
//! user has the event (the converted users of `amba_results`), a mean's is Y of
//! `amba_metric_results` (no cap, no CUPED). All experiments checked by one call are
//! counted in one statement, one row per exposed user with a column per distinct
//! (event, kind, property) of their guardrails: a minute's schedule over many experiments
//! reads each user's events once, not once per guardrail (BENCHMARKS.md).

use crate::errors::{raise_code, OrRaise};
use amba_core::sequential::{self, ArmSums, Guardrail, GuardrailKind};
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;
use std::collections::HashMap;

/// One row of `amba_check_guardrails`.
struct CheckRow {
    experiment_key: String,
    guardrail: i32,
    variant: String,
    lift: Option<f64>,
    cs_low: Option<f64>,
    cs_high: Option<f64>,
    tripped: bool,
    paused: bool,
}

type CheckTuple = (
    String,
    i32,
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    bool,
    bool,
);

impl CheckRow {
    fn into_tuple(self) -> CheckTuple {
        let CheckRow {
            experiment_key,
            guardrail,
            variant,
            lift,
            cs_low,
            cs_high,
            tripped,
            paused,
        } = self;
        (
            experiment_key,
            guardrail,
            variant,
            lift,
            cs_low,
            cs_high,
            tripped,
            paused,
        )
    }
}

/// An experiment to check: its id, key, status, variants (the control first) and guardrails.
struct Checked {
    id: i64,
    key: String,
    status: String,
    variant_keys: Vec<String>,
    guardrails: Vec<Guardrail>,
}

/// The experiments to check: the one named (whatever its status: reported, touched only
/// when active), or every active experiment with guardrails.
fn experiments_to_check(experiment_key: Option<&str>) -> Vec<Checked> {
    const COLUMNS: &str =
        "SELECT e.id, e.key, e.status, e.variant_keys, coalesce(e.guardrails, '[]')::text \
                           FROM amba.experiments e";
    let (sql, args): (String, Vec<pgrx::datum::DatumWithOid>) = match experiment_key {
        Some(key) => (format!("{COLUMNS} WHERE e.key = $1"), vec![key.into()]),
        None => (
            format!(
                "{COLUMNS} WHERE e.status = 'active' AND e.guardrails IS NOT NULL ORDER BY e.id"
            ),
            vec![],
        ),
    };
    Spi::connect(|client| {
        client
            .select(&sql, None, &args)
            .expect("reading the experiments")
            .map(|row| Checked {
                id: row.get::<i64>(1).expect("id").expect("id"),
                key: row.get::<String>(2).expect("key").expect("key"),
                status: row.get::<String>(3).expect("status").expect("status"),
                variant_keys: row
                    .get::<Vec<String>>(4)
                    .expect("variants")
                    .expect("variants"),
                guardrails: sequential::guardrails_json(
                    &row.get::<String>(5)
                        .expect("guardrails")
                        .expect("guardrails"),
                )
                .or_raise(),
            })
            .collect()
    })
}

/// What a guardrail measures per user: the event, and for a mean the property summed
/// (`None`: the events counted). Guardrails that measure the same share a column.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Measure {
    event: String,
    mean_of: Option<Option<String>>,
}

impl Measure {
    fn of(guardrail: &Guardrail) -> Measure {
        Measure {
            event: guardrail.event.clone(),
            mean_of: match guardrail.kind {
                GuardrailKind::Conversion => None,
                GuardrailKind::Mean => Some(guardrail.value_property.clone()),
            },
        }
    }
}

/// Per experiment, measure and variant (in the experiment's variant order, the control
/// first; a variant nobody is exposed to has zero sums): n, ΣY, ΣY² of its exposed, counted
/// users — one statement for every experiment checked.
fn arm_sums(experiments: &[Checked]) -> HashMap<(i64, Measure), Vec<(String, ArmSums)>> {
    let mut measures: Vec<Measure> = Vec::new();
    for guardrail in experiments.iter().flat_map(|e| &e.guardrails) {
        let measure = Measure::of(guardrail);
        if !measures.contains(&measure) {
            measures.push(measure);
        }
    }
    let mut sums: HashMap<(i64, Measure), HashMap<String, ArmSums>> = HashMap::new();
    if !measures.is_empty() {
        let ids: Vec<i64> = experiments.iter().map(|e| e.id).collect();
        let events: Vec<String> = measures.iter().map(|m| m.event.clone()).collect();
        let mut args: Vec<pgrx::datum::DatumWithOid> = vec![ids.into(), events.into()];
        // Y per user and measure j: $(3 + 2j) the event, $(4 + 2j) the property.
        let mut per_user = Vec::new();
        let mut per_variant = Vec::new();
        for (j, measure) in measures.iter().enumerate() {
            let (event, property) = (3 + 2 * j, 4 + 2 * j);
            per_user.push(match &measure.mean_of {
                None => format!("(count(*) FILTER (WHERE ev.event = ${event}) > 0)::int::float8 AS y{j}"),
                // A value beyond ±1e100 (squares and sums must stay in double precision)
                // makes the user's Y NaN: that experiment's intervals are NULL and never
                // trip, and no other experiment's check fails with it. Below 1e-300, 0.
                Some(_) => format!(
                    "coalesce(sum(CASE WHEN ${property}::text IS NULL THEN 1::float8 \
                                       WHEN jsonb_typeof(ev.properties -> ${property}::text) <> 'number' THEN 0::float8 \
                                       WHEN abs((ev.properties -> ${property}::text)::numeric) > 1e100 THEN 'NaN'::float8 \
                                       WHEN abs((ev.properties -> ${property}::text)::numeric) < 1e-300 THEN 0::float8 \
                                       ELSE (ev.properties -> ${property}::text)::float8 END) \
                              FILTER (WHERE ev.event = ${event}), 0) AS y{j}"
                ),
            });
            // A square below double precision's smallest number is 0 (PostgreSQL would raise
            // an underflow for the whole statement).
            per_variant.push(format!(
                "sum(p.y{j}), sum(CASE WHEN abs(p.y{j}) < 1e-150 THEN 0::float8 ELSE p.y{j} * p.y{j} END)"
            ));
            args.push(measure.event.clone().into());
            args.push(measure.mean_of.clone().flatten().into());
        }
        let sql = format!(
            "SELECT p.experiment_id, p.variant, count(*)::float8, {per_variant} \
               FROM (SELECT a.experiment_id, min(a.variant) AS variant, {per_user} \
                       FROM amba.assignments a \
                       JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id \
                       LEFT JOIN amba.events ev ON ev.user_id = a.user_id AND ev.event = ANY($2) \
                                               AND ev.occurred_at >= a.assigned_at \
                      WHERE a.experiment_id = ANY($1) \
                        AND NOT EXISTS (SELECT 1 FROM amba.overrides o \
                                         WHERE o.experiment_id = a.experiment_id AND o.user_id = a.user_id) \
                      GROUP BY a.experiment_id, a.user_id) p \
              GROUP BY p.experiment_id, p.variant",
            per_variant = per_variant.join(", "),
            per_user = per_user.join(", "),
        );
        crate::errors::values_in_double_range("the guardrails' values", || {
            Spi::connect(|client| {
                for row in client
                    .select(&sql, None, &args)
                    .expect("counting the guardrails")
                {
                    let id: i64 = row.get(1).expect("experiment").expect("experiment");
                    let variant: String = row.get(2).expect("variant").expect("variant");
                    let n = row.get::<f64>(3).expect("n").unwrap_or(0.0) as u64;
                    for (j, measure) in measures.iter().enumerate() {
                        let get = |i: usize| row.get::<f64>(i).expect("a sum").unwrap_or(0.0);
                        sums.entry((id, measure.clone())).or_default().insert(
                            variant.clone(),
                            ArmSums {
                                n,
                                sum: get(4 + 2 * j),
                                sum_squares: get(5 + 2 * j),
                            },
                        );
                    }
                }
            })
        });
    }
    let mut arms = HashMap::new();
    for experiment in experiments {
        for guardrail in &experiment.guardrails {
            let key = (experiment.id, Measure::of(guardrail));
            let by_variant = sums.get(&key);
            let in_order = experiment
                .variant_keys
                .iter()
                .map(|v| {
                    let sums = by_variant
                        .and_then(|m| m.get(v))
                        .copied()
                        .unwrap_or_default();
                    (v.clone(), sums)
                })
                .collect();
            arms.insert(key, in_order);
        }
    }
    arms
}

/// Judges the guardrails; with `pause`, pauses each active experiment a guardrail trips
/// (`amba._auto_pause`). Without it nothing is written and `paused` is always false (the
/// report page's read-only view, `amba._guardrail_status`).
fn check_guardrails(experiment_key: Option<&str>, pause: bool) -> Vec<CheckRow> {
    if experiment_key.is_some() {
        validate::experiment_key(experiment_key).or_raise();
    }
    if pause {
        crate::store::one_connection_per_node();
    }
    let experiments = experiments_to_check(experiment_key);
    if let (Some(key), true) = (experiment_key, experiments.is_empty()) {
        raise_code(
            ErrorCode::ExperimentNotFound,
            format!("experiment {key:?} does not exist"),
        );
    }
    let arms = arm_sums(&experiments);
    let mut rows = Vec::new();
    for Checked {
        id,
        key,
        status,
        guardrails,
        ..
    } in experiments
    {
        let mut experiment_rows = Vec::new();
        for (index, guardrail) in guardrails.iter().enumerate() {
            let arms = &arms[&(id, Measure::of(guardrail))];
            let Some((_, control)) = arms.first() else {
                continue;
            };
            for (variant, sums) in &arms[1..] {
                let judged = sequential::evaluate(guardrail, control, sums);
                experiment_rows.push(CheckRow {
                    experiment_key: key.clone(),
                    guardrail: index as i32,
                    variant: variant.clone(),
                    lift: judged.lift,
                    cs_low: judged.cs_low,
                    cs_high: judged.cs_high,
                    tripped: judged.tripped,
                    paused: false,
                });
            }
        }
        let tripping: Vec<serde_json::Value> = experiment_rows
            .iter()
            .filter(|r| r.tripped)
            .map(|r| {
                serde_json::json!({
                    "guardrail": r.guardrail, "variant": r.variant,
                    "lift": r.lift, "cs_low": r.cs_low, "cs_high": r.cs_high,
                })
            })
            .collect();
        if pause && status == "active" && !tripping.is_empty() {
            let paused = Spi::get_one_with_args::<bool>(
                "SELECT amba._auto_pause($1, $2::jsonb)",
                &[
                    key.as_str().into(),
                    serde_json::Value::Array(tripping).to_string().into(),
                ],
            )
            .expect("pausing the experiment")
            .unwrap_or(false);
            for row in &mut experiment_rows {
                row.paused = paused;
            }
        }
        rows.extend(experiment_rows);
    }
    rows
}

/// The twin the public SQL wrapper and the HTTP surface call (a SQL wrapper, because the
/// argument and the first output column share a name, which PL/pgSQL refuses).
#[pg_schema]
mod amba {
    use super::*;

    #[pg_extern(name = "_check_guardrails", volatile, parallel_unsafe)]
    fn check_guardrails_internal(
        experiment_key: Option<&str>,
    ) -> TableIterator<
        'static,
        (
            name!(experiment_key, String),
            name!(guardrail, i32),
            name!(variant, String),
            name!(lift, Option<f64>),
            name!(cs_low, Option<f64>),
            name!(cs_high, Option<f64>),
            name!(tripped, bool),
            name!(paused, bool),
        ),
    > {
        TableIterator::new(
            check_guardrails(experiment_key, true)
                .into_iter()
                .map(CheckRow::into_tuple),
        )
    }

    /// The same rows as `_check_guardrails`, computed without pausing anything (`paused` is
    /// always false): what the report page shows. STABLE, so it cannot write.
    #[pg_extern(name = "_guardrail_status", stable, parallel_unsafe)]
    fn guardrail_status(
        experiment_key: Option<&str>,
    ) -> TableIterator<
        'static,
        (
            name!(experiment_key, String),
            name!(guardrail, i32),
            name!(variant, String),
            name!(lift, Option<f64>),
            name!(cs_low, Option<f64>),
            name!(cs_high, Option<f64>),
            name!(tripped, bool),
            name!(paused, bool),
        ),
    > {
        TableIterator::new(
            check_guardrails(experiment_key, false)
                .into_iter()
                .map(CheckRow::into_tuple),
        )
    }

    /// Guardrails as stored: checked once (SPEC §12), defaults written out; NULL for NULL
    /// or `[]` (none).
    #[pg_extern(name = "_normalize_guardrails", immutable, parallel_safe)]
    fn normalize_guardrails(guardrails: Option<&str>) -> Option<pgrx::JsonB> {
        let parsed = sequential::guardrails_json(guardrails?).or_raise();
        (!parsed.is_empty()).then(|| pgrx::JsonB(sequential::guardrails_to_json(&parsed)))
    }
}
