//! Bandits (SPEC §14): traffic that follows the winner, on amba's versioned weights.
//! `amba_bandit_update` estimates each arm per period (a period = a weight version, so
//! changing weights cannot bias the estimate), takes Gaussian posteriors, computes the
//! top-two Thompson weights exactly (`amba_core::bandit`), and writes them as a new weight
//! version: nobody already assigned moves. `amba_bandit_results` shows the same numbers.

use crate::errors::{raise_code, OrRaise};
use amba_core::bandit::{self, ArmEstimate, PeriodStats, Posterior};
use amba_core::{validate, ErrorCode};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A bandit's settings, as stored (defaults written out).
struct Settings {
    event: String,
    mean: bool,
    value_property: Option<String>,
    min_weight: f64,
    min_users: i64,
}

fn invalid(detail: String) -> ! {
    raise_code(ErrorCode::InvalidArgument, detail)
}

/// Checks `bandit` (SPEC §14) for an experiment with `weights`: an object with exactly
/// `event`, `kind`, `value_property`, `min_weight`, `min_users` (the last three optional);
/// a floor below 1/k; every arm's weight above 0.
fn parse(text: &str, weights: &[f64]) -> Settings {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| invalid(format!("bandit is not valid JSON ({e})")));
    let Some(object) = value.as_object() else {
        invalid(
            r#"bandit must be a JSON object such as {"event": "purchase", "kind": "conversion"}"#
                .into(),
        )
    };
    for key in object.keys() {
        if !["event", "kind", "value_property", "min_weight", "min_users"].contains(&key.as_str()) {
            invalid(format!("bandit has an unknown field {key:?}"));
        }
    }
    let event = object.get("event").and_then(Value::as_str);
    validate::event(event)
        .map_err(|e| amba_core::CoreError::invalid(format!("bandit.{}", e.detail)))
        .or_raise();
    let mean = match object.get("kind").and_then(Value::as_str) {
        Some("conversion") => false,
        Some("mean") => true,
        _ => invalid(r#"bandit.kind must be "conversion" or "mean""#.into()),
    };
    let value_property = match object.get("value_property") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            validate::event(Some(s))
                .map_err(|e| {
                    amba_core::CoreError::invalid(format!(
                        "bandit.value_property: {}",
                        e.detail.replacen("event", "value_property", 1)
                    ))
                })
                .or_raise();
            Some(s.clone())
        }
        Some(_) => invalid("bandit.value_property must be a string or null".into()),
    };
    if weights.len() > bandit::MAX_ARMS {
        invalid(format!(
            "a bandit has at most {} variants (its exact weights cost the cube of the arms), \
             not {}",
            bandit::MAX_ARMS,
            weights.len()
        ));
    }
    let k = weights.len() as f64;
    let min_weight = match object.get("min_weight") {
        None | Some(Value::Null) => 0.01,
        Some(v) => v
            .as_f64()
            .unwrap_or_else(|| invalid("bandit.min_weight must be a number".into())),
    };
    if !(min_weight > 0.0 && min_weight < 1.0 / k) {
        invalid(format!(
            "bandit.min_weight must be greater than 0 and below 1/{} (the number of variants), not {min_weight}",
            weights.len()
        ));
    }
    let min_users = match object.get("min_users") {
        None | Some(Value::Null) => 100,
        Some(v) => v.as_i64().filter(|&n| n >= 1).unwrap_or_else(|| {
            invalid("bandit.min_users must be a whole number of at least 1".into())
        }),
    };
    if let Some(i) = weights.iter().position(|&w| w <= 0.0) {
        invalid(format!(
            "a bandit needs every variant's weight above 0; variant {} has weight {}",
            i + 1,
            weights[i]
        ));
    }
    Settings {
        event: event.unwrap().to_string(),
        mean,
        value_property,
        min_weight,
        min_users,
    }
}

fn to_json(s: &Settings) -> Value {
    json!({
        "event": s.event,
        "kind": if s.mean { "mean" } else { "conversion" },
        "value_property": s.value_property,
        "min_weight": s.min_weight,
        "min_users": s.min_users,
    })
}

/// Per (variant, weight version): exposed users not overridden, ΣY and ΣY² (Y: 1 if the
/// user has the event at or after assignment, or — `mean` — their count of such events or
/// sum of `value_property`, as SPEC §3c's Y without cap).
const PERIOD_SUMS_SQL: &str = "\
    SELECT t.variant, t.weight_version, count(*)::float8, sum(t.y), \
           sum(CASE WHEN abs(t.y) < 1e-150 THEN 0::float8 ELSE t.y * t.y END) FROM ( \
      SELECT a.variant, a.weight_version, \
        CASE WHEN NOT $3 THEN (EXISTS (SELECT 1 FROM amba.events e WHERE e.event = $2 \
                 AND e.user_id = a.user_id AND e.occurred_at >= a.assigned_at))::int::float8 \
             WHEN $4::text IS NULL THEN (SELECT count(*)::float8 FROM amba.events e WHERE e.event = $2 \
                 AND e.user_id = a.user_id AND e.occurred_at >= a.assigned_at) \
             ELSE coalesce((SELECT sum((e.properties ->> $4)::float8) FROM amba.events e \
                 WHERE e.event = $2 AND e.user_id = a.user_id AND e.occurred_at >= a.assigned_at \
                   AND jsonb_typeof(e.properties -> $4) = 'number'), 0) END AS y \
      FROM amba.assignments a \
      JOIN amba.exposures x ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id \
      WHERE a.experiment_id = $1 AND NOT EXISTS (SELECT 1 FROM amba.overrides o \
            WHERE o.experiment_id = a.experiment_id AND o.user_id = a.user_id)) t \
    GROUP BY t.variant, t.weight_version";

/// What the update and the results read: the experiment (locked when `lock`), its
/// settings, and each arm's estimate, posterior and exposed users.
struct Bandit {
    id: i64,
    variant_keys: Vec<String>,
    weights: Vec<f64>,
    settings: Settings,
    estimates: Vec<ArmEstimate>,
    posteriors: Vec<Posterior>,
}

fn load(experiment_key: Option<&str>, lock: bool) -> Bandit {
    validate::experiment_key(experiment_key).or_raise();
    let key = experiment_key.unwrap();
    let sql = format!(
        "SELECT e.id, e.variant_keys, e.weights, e.bandit::text FROM amba.experiments e \
         WHERE e.key = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Spi::connect_mut(|client| {
        // A plain read in the statement's snapshot, like the sums below (an update would
        // take a new snapshot per query); the update's FOR UPDATE needs the update call.
        let row = if lock {
            client.update(&sql, None, &[key.into()])
        } else {
            client.select(&sql, None, &[key.into()])
        }
        .expect("reading the experiment");
        if row.is_empty() {
            raise_code(
                ErrorCode::ExperimentNotFound,
                format!("experiment {key:?} does not exist"),
            );
        }
        let row = row.first();
        let id: i64 = row.get(1).expect("id").expect("id");
        let variant_keys: Vec<String> = row.get(2).expect("keys").expect("keys");
        let weights: Vec<f64> = row.get(3).expect("weights").expect("weights");
        let Some(settings_text) = row.get::<String>(4).expect("bandit") else {
            invalid(format!(
                "experiment {key:?} is not a bandit (set its bandit first)"
            ))
        };
        let settings = parse(&settings_text, &weights);
        let mut periods: BTreeMap<i32, Vec<PeriodStats>> = BTreeMap::new();
        let rows: Vec<(String, i32, f64, f64, f64)> =
            crate::errors::values_in_double_range("the bandit's values", || {
                client
                    .select(
                        PERIOD_SUMS_SQL,
                        None,
                        &[
                            id.into(),
                            settings.event.as_str().into(),
                            settings.mean.into(),
                            settings.value_property.as_deref().into(),
                        ],
                    )
                    .expect("summing the arms")
                    .map(|row| {
                        (
                            row.get(1).expect("variant").expect("variant"),
                            row.get(2).expect("version").expect("version"),
                            row.get(3).expect("n").unwrap_or(0.0),
                            row.get(4).expect("sum").unwrap_or(0.0),
                            row.get(5).expect("sum_sq").unwrap_or(0.0),
                        )
                    })
                    .collect()
            });
        for (variant, version, n, sum, sum_sq) in rows {
            let Some(arm) = variant_keys.iter().position(|k| *k == variant) else {
                continue;
            };
            let period = periods
                .entry(version)
                .or_insert_with(|| vec![PeriodStats::default(); variant_keys.len()]);
            period[arm] = PeriodStats::from_sums(n as u64, sum, sum_sq);
        }
        let periods: Vec<Vec<PeriodStats>> = periods.into_values().collect();
        let mut estimates = bandit::period_weighted_estimates(&periods);
        estimates.resize(variant_keys.len(), ArmEstimate::default());
        let posteriors = estimates.iter().map(bandit::posterior).collect();
        Bandit {
            id,
            variant_keys,
            weights,
            settings,
            estimates,
            posteriors,
        }
    })
}

fn bandit_update(experiment_key: Option<&str>, _seed: Option<i64>) -> Value {
    crate::store::one_connection_per_node();
    let b = load(experiment_key, true);
    if let Some(i) = b
        .estimates
        .iter()
        .position(|e| (e.exposed as i64) < b.settings.min_users)
    {
        return json!({
            "updated": false,
            "reason": format!(
                "variant {:?} has {} exposed users; every variant needs min_users ({}) before the weights change",
                b.variant_keys[i], b.estimates[i].exposed, b.settings.min_users
            ),
        });
    }
    let Some(result) = bandit::bandit_weights(&b.posteriors, b.settings.min_weight) else {
        return json!({"updated": false, "reason": "the posteriors give no weights"});
    };
    let answer = json!({
        "weights": result.weights,
        "best_arm_probabilities": result.best_arm_probabilities,
        "updated": true,
    });
    Spi::run_with_args(
        "SELECT amba._apply_bandit_weights($1, $2, $3::text::jsonb)",
        &[
            b.id.into(),
            result.weights.clone().into(),
            answer.to_string().into(),
        ],
    )
    .expect("writing the weights");
    answer
}

type ResultTuple = (
    String,
    bool,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
);

fn bandit_results(experiment_key: Option<&str>) -> Vec<ResultTuple> {
    let b = load(experiment_key, false);
    let best = bandit::best_arm_probabilities(&b.posteriors);
    let total: f64 = b.weights.iter().sum();
    b.variant_keys
        .iter()
        .enumerate()
        .map(|(i, variant)| {
            // The posterior's interval; for an arm without data that is the prior's
            // (d_i = 0: SPEC §14), while its estimate (`mean`) is NULL.
            let (low, high) = b.posteriors[i].interval();
            (
                variant.clone(),
                i == 0,
                b.estimates[i].exposed as i64,
                b.estimates[i].mean,
                Some(low),
                Some(high),
                best.as_ref().map(|p| p[i]),
                b.weights[i] / total,
            )
        })
        .collect()
}

/// Sets a bandit's new weights as a new weight version (see the module comment).
#[pg_extern(volatile, parallel_unsafe)]
fn amba_bandit_update(
    experiment_key: Option<&str>,
    seed: default!(Option<i64>, "NULL"),
) -> pgrx::JsonB {
    pgrx::JsonB(bandit_update(experiment_key, seed))
}

/// A bandit's arms: the period-weighted estimate with its 95% posterior interval, the
/// probability of being best, and the weight in force now (its share).
#[pg_extern(stable, parallel_unsafe)]
fn amba_bandit_results(
    experiment_key: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(variant, String),
        name!(is_control, bool),
        name!(exposed_count, i64),
        name!(mean, Option<f64>),
        name!(ci_low, Option<f64>),
        name!(ci_high, Option<f64>),
        name!(best_arm_probability, Option<f64>),
        name!(weight, f64),
    ),
> {
    TableIterator::new(bandit_results(experiment_key))
}

#[pg_schema]
mod amba {
    use super::*;

    #[pg_extern(name = "_bandit_update", volatile, parallel_unsafe)]
    fn bandit_update_internal(experiment_key: Option<&str>, seed: Option<i64>) -> pgrx::JsonB {
        pgrx::JsonB(bandit_update(experiment_key, seed))
    }

    #[pg_extern(name = "_bandit_results", stable, parallel_unsafe)]
    fn bandit_results_internal(
        experiment_key: Option<&str>,
    ) -> TableIterator<
        'static,
        (
            name!(variant, String),
            name!(is_control, bool),
            name!(exposed_count, i64),
            name!(mean, Option<f64>),
            name!(ci_low, Option<f64>),
            name!(ci_high, Option<f64>),
            name!(best_arm_probability, Option<f64>),
            name!(weight, f64),
        ),
    > {
        TableIterator::new(bandit_results(experiment_key))
    }

    /// A bandit as stored (SPEC §14): checked against the experiment's weights, defaults
    /// written out; NULL for NULL or `{}` (an ordinary experiment).
    #[pg_extern(name = "_normalize_bandit", immutable, parallel_safe)]
    fn normalize_bandit(bandit: Option<&str>, weights: Option<Vec<f64>>) -> Option<pgrx::JsonB> {
        let text = bandit?;
        if serde_json::from_str::<Value>(text).is_ok_and(|v| v == json!({})) {
            return None;
        }
        let settings = parse(text, &weights.unwrap_or_default());
        Some(pgrx::JsonB(to_json(&settings)))
    }
}
