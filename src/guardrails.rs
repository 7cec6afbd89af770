//! Guardrails (SPEC §12): `amba_check_guardrails` judges each guardrail of each active
//! experiment with an always-valid interval of the relative lift — safe to check every
//! minute for months — and pauses an experiment a guardrail trips, in the same
//! transaction, with an `auto_pause` audit row and a `pg_notify('amba', …)` per tripping
//! row (`amba._auto_pause` in sql/api.sql). The very next `amba_assign` sees the pause.
//!
//! The data come from the same counting as the results functions: exposed users,
//! overridden users left out, events at or after assignment (`results::conversion` for
//! conversion guardrails, `results::metric::metric_arms` for means: no cap, no CUPED).

use crate::errors::{raise_code, OrRaise};
use crate::results::conversion::results;
use crate::results::metric::metric_arms;
use amba_core::sequential::{self, ArmSums, Guardrail, GuardrailKind};
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;

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

/// The experiments to check: the one named (whatever its status: reported, touched only
/// when active), or every active experiment with guardrails.
fn experiments_to_check(experiment_key: Option<&str>) -> Vec<(String, String, String)> {
    let (sql, args): (&str, Vec<pgrx::datum::DatumWithOid>) = match experiment_key {
        Some(key) => (
            "SELECT e.key, e.status, coalesce(e.guardrails, '[]')::text FROM amba.experiments e WHERE e.key = $1",
            vec![key.into()],
        ),
        None => (
            "SELECT e.key, e.status, e.guardrails::text FROM amba.experiments e \
              WHERE e.status = 'active' AND e.guardrails IS NOT NULL ORDER BY e.id",
            vec![],
        ),
    };
    Spi::connect(|client| {
        client
            .select(sql, None, &args)
            .expect("reading the experiments")
            .map(|row| {
                (
                    row.get::<String>(1).expect("key").expect("key"),
                    row.get::<String>(2).expect("status").expect("status"),
                    row.get::<String>(3).expect("guardrails").expect("guardrails"),
                )
            })
            .collect()
    })
}

/// Each variant's sums for one guardrail, in variant order (the control first).
fn arm_sums(key: &str, guardrail: &Guardrail) -> Vec<(String, ArmSums)> {
    match guardrail.kind {
        GuardrailKind::Conversion => results(Some(key), Some(&guardrail.event), Some(0.05))
            .into_iter()
            .map(|r| {
                let sums = ArmSums::conversion(r.exposed_count as u64, r.converted_count as u64);
                (r.variant, sums)
            })
            .collect(),
        GuardrailKind::Mean => {
            let (variants, arms) = metric_arms(
                Some(key),
                &guardrail.event,
                guardrail.value_property.as_deref(),
                None,
                None,
                None,
            );
            variants
                .into_iter()
                .zip(arms)
                .map(|(variant, arm)| {
                    let sums = ArmSums {
                        n: arm.n as u64,
                        sum: arm.sum,
                        sum_squares: arm.sum_sq,
                    };
                    (variant, sums)
                })
                .collect()
        }
    }
}

/// Judges the guardrails; with `pause`, pauses each active experiment a guardrail trips
/// (`amba._auto_pause`). Without it nothing is written and `paused` is always false (the
/// report page's read-only view, `amba._guardrail_status`).
fn check_guardrails(experiment_key: Option<&str>, pause: bool) -> Vec<CheckRow> {
    if experiment_key.is_some() {
        validate::experiment_key(experiment_key).or_raise();
    }
    let experiments = experiments_to_check(experiment_key);
    if let (Some(key), true) = (experiment_key, experiments.is_empty()) {
        raise_code(
            ErrorCode::ExperimentNotFound,
            format!("experiment {key:?} does not exist"),
        );
    }
    let mut rows = Vec::new();
    for (key, status, guardrails_text) in experiments {
        let guardrails = sequential::guardrails_json(&guardrails_text).or_raise();
        let mut experiment_rows = Vec::new();
        for (index, guardrail) in guardrails.iter().enumerate() {
            let arms = arm_sums(&key, guardrail);
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
